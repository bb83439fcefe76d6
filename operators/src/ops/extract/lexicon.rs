//! The typing lexicon: entity names (and synonyms) with their type.
//!
//! The `lexicon` parameter names a file or a directory. A file (or every `*.tsv` directly in
//! a directory) in fleming's own format has a header `name<TAB>type[<TAB>canonical]`: a name,
//! one of the [`EntityType`]s, and optionally the canonical name it is a synonym of. A
//! directory laid out like the shared knowledge tables is also understood:
//! `hetionet/hetionet-v1.0-nodes.tsv` (node kinds), `disease-ontology/term-names.tsv`
//! (diseases and their synonyms), `mesh/symptoms.tsv` and `mesh/tree-numbers.tsv` (MeSH
//! tree branches: C23.888 signs and symptoms, C diseases, D drugs, E01 diagnosis, E02–E05
//! procedures, A anatomy, B03/B04 bacteria and viruses, G processes). When sources
//! disagree the first wins, in that order: fleming's format, Disease Ontology, Hetionet,
//! MeSH symptoms, MeSH tree.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

/// Entity types, in a fixed order (the index is stored in `type_votes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityType {
    /// Disease or disorder.
    Disease = 0,
    /// Symptom or sign.
    SymptomSign = 1,
    /// Drug or drug class.
    Drug = 2,
    /// Diagnostic test or imaging.
    TestImaging = 3,
    /// Procedure (surgery, therapy).
    Procedure = 4,
    /// Anatomical structure.
    Anatomy = 5,
    /// Pathogen (bacterium, virus, fungus, parasite).
    Pathogen = 6,
    /// Gene or protein.
    Gene = 7,
    /// Mechanism or pathophysiology (process, pathway).
    Mechanism = 8,
    /// Anything else.
    Other = 9,
}

/// All types in index order.
pub const TYPES: [EntityType; 10] = [
    EntityType::Disease,
    EntityType::SymptomSign,
    EntityType::Drug,
    EntityType::TestImaging,
    EntityType::Procedure,
    EntityType::Anatomy,
    EntityType::Pathogen,
    EntityType::Gene,
    EntityType::Mechanism,
    EntityType::Other,
];

impl EntityType {
    /// The name used in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::Disease => "disease",
            EntityType::SymptomSign => "symptom-sign",
            EntityType::Drug => "drug",
            EntityType::TestImaging => "test-imaging",
            EntityType::Procedure => "procedure",
            EntityType::Anatomy => "anatomy",
            EntityType::Pathogen => "pathogen",
            EntityType::Gene => "gene",
            EntityType::Mechanism => "mechanism",
            EntityType::Other => "other",
        }
    }

    /// Parses a type name (also a few synonyms).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_lowercase().as_str() {
            "disease" | "disorder" | "condition" => EntityType::Disease,
            "symptom-sign" | "symptom" | "sign" | "finding" => EntityType::SymptomSign,
            "drug" | "compound" | "medication" | "drug-class" => EntityType::Drug,
            "test-imaging" | "test" | "imaging" | "diagnostic" => EntityType::TestImaging,
            "procedure" | "surgery" | "therapy" => EntityType::Procedure,
            "anatomy" => EntityType::Anatomy,
            "pathogen" | "bacterium" | "virus" => EntityType::Pathogen,
            "gene" | "protein" => EntityType::Gene,
            "mechanism" | "process" | "pathway" | "pathophysiology" => EntityType::Mechanism,
            "other" => EntityType::Other,
            _ => return None,
        })
    }

    /// The type of an index.
    pub fn from_index(i: usize) -> EntityType {
        TYPES.get(i).copied().unwrap_or(EntityType::Other)
    }
}

/// Names to types and synonyms.
#[derive(Debug, Default)]
pub struct Lexicon {
    /// Lower-cased name -> (type, canonical name).
    entries: rustc_hash::FxHashMap<String, (EntityType, String)>,
    /// Lower-cased canonical name -> synonyms.
    synonyms: HashMap<String, Vec<String>>,
    /// Digest of everything read (enters the output's state fingerprint).
    pub digest: String,
}

impl Lexicon {
    /// An empty lexicon.
    pub fn empty() -> Self {
        Lexicon { digest: "none".into(), ..Default::default() }
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no names.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The type of a name (case-insensitive).
    pub fn type_of(&self, name: &str) -> Option<EntityType> {
        // Called for every link: short ASCII names are lower-cased on the stack.
        let mut buf = [0u8; 64];
        let key = match buf.get_mut(..name.len()) {
            Some(b) if name.is_ascii() => {
                b.copy_from_slice(name.as_bytes());
                b.make_ascii_lowercase();
                std::str::from_utf8(b).ok()
            }
            _ => None,
        };
        match key {
            Some(k) => self.entries.get(k),
            None => self.entries.get(&name.to_lowercase()),
        }
        .map(|(t, _)| *t)
    }

    /// Synonyms of a name (when it is canonical in the lexicon), sorted.
    pub fn synonyms_of(&self, name: &str) -> &[String] {
        self.synonyms.get(&name.to_lowercase()).map(|v| v.as_slice()).unwrap_or(&[])
    }

    fn add(&mut self, name: &str, ty: EntityType, canonical: Option<&str>) {
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        let key = name.to_lowercase();
        if self.entries.contains_key(&key) {
            return;
        }
        let canon = canonical.map(str::trim).filter(|c| !c.is_empty()).unwrap_or(name).to_string();
        if canon.to_lowercase() != key {
            self.synonyms.entry(canon.to_lowercase()).or_default().push(name.to_string());
        }
        self.entries.insert(key, (ty, canon));
    }

    /// Loads a file or a directory (see the module docs).
    pub fn load(path: &Path) -> anyhow::Result<Lexicon> {
        let mut lex = Lexicon::default();
        let mut hasher = blake3::Hasher::new();
        let read = |p: &Path, hasher: &mut blake3::Hasher| -> anyhow::Result<Option<String>> {
            if !p.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(p).with_context(|| format!("reading the lexicon {}", p.display()))?;
            hasher.update(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
            hasher.update(text.as_bytes());
            Ok(Some(text))
        };
        if path.is_file() {
            let text = read(path, &mut hasher)?.unwrap_or_default();
            lex.add_own(&text, path)?;
        } else if path.is_dir() {
            let mut own: Vec<_> = std::fs::read_dir(path)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tsv"))
                .collect();
            own.sort();
            for p in own {
                if let Some(t) = read(&p, &mut hasher)? {
                    lex.add_own(&t, &p)?;
                }
            }
            if let Some(t) = read(&path.join("disease-ontology/term-names.tsv"), &mut hasher)? {
                // doid, name, type (name / exact-synonym / ...): canonical is the `name` row.
                let mut canon: HashMap<&str, &str> = HashMap::new();
                for line in t.lines().skip(1) {
                    let f: Vec<&str> = line.split('\t').collect();
                    if f.len() >= 3 && f[2] == "name" {
                        canon.insert(f[0], f[1]);
                    }
                }
                for line in t.lines().skip(1) {
                    let f: Vec<&str> = line.split('\t').collect();
                    if f.len() >= 3 && (f[2] == "name" || f[2] == "exact-synonym") {
                        lex.add(f[1], EntityType::Disease, canon.get(f[0]).copied());
                    }
                }
            }
            if let Some(t) = read(&path.join("hetionet/hetionet-v1.0-nodes.tsv"), &mut hasher)? {
                for line in t.lines().skip(1) {
                    let f: Vec<&str> = line.split('\t').collect();
                    if f.len() < 3 {
                        continue;
                    }
                    let ty = match f[2] {
                        "Disease" => EntityType::Disease,
                        "Symptom" | "Side Effect" => EntityType::SymptomSign,
                        "Compound" | "Pharmacologic Class" => EntityType::Drug,
                        "Anatomy" => EntityType::Anatomy,
                        "Gene" => EntityType::Gene,
                        "Biological Process" | "Pathway" | "Molecular Function" => EntityType::Mechanism,
                        _ => continue,
                    };
                    lex.add(f[1], ty, None);
                }
            }
            if let Some(t) = read(&path.join("mesh/symptoms.tsv"), &mut hasher)? {
                for line in t.lines().skip(1) {
                    if let Some(name) = line.split('\t').nth(1) {
                        lex.add(&mesh_name(name), EntityType::SymptomSign, None);
                    }
                }
            }
            if let Some(t) = read(&path.join("mesh/tree-numbers.tsv"), &mut hasher)? {
                // Several tree numbers per descriptor: the most specific known branch wins.
                let mut best: HashMap<String, EntityType> = HashMap::new();
                let mut order: Vec<String> = Vec::new();
                for line in t.lines().skip(1) {
                    let f: Vec<&str> = line.split('\t').collect();
                    if f.len() < 3 {
                        continue;
                    }
                    let Some(ty) = mesh_type(f[2]) else { continue };
                    let name = mesh_name(f[1]);
                    match best.get(&name) {
                        Some(prev) if mesh_rank(*prev) <= mesh_rank(ty) => {}
                        Some(_) => {
                            best.insert(name, ty);
                        }
                        None => {
                            order.push(name.clone());
                            best.insert(name, ty);
                        }
                    }
                }
                for n in order {
                    if let Some(ty) = best.get(&n) {
                        lex.add(&n, *ty, None);
                    }
                }
            }
        } else {
            anyhow::bail!("the lexicon {} does not exist", path.display());
        }
        for v in lex.synonyms.values_mut() {
            v.sort();
            v.dedup();
        }
        lex.digest = hasher.finalize().to_hex()[..32].to_string();
        Ok(lex)
    }

    /// fleming's own format: `name<TAB>type[<TAB>canonical]`, with a header line.
    fn add_own(&mut self, text: &str, path: &Path) -> anyhow::Result<()> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or("");
        if !header.to_lowercase().starts_with("name\ttype") {
            // Not in fleming's format (e.g. another TSV in the directory): skip it.
            tracing::debug!("lexicon: skipping {} (header is not `name<TAB>type`)", path.display());
            return Ok(());
        }
        for (i, line) in lines.enumerate() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 2 {
                continue;
            }
            let ty = EntityType::parse(f[1])
                .with_context(|| format!("{}:{}: unknown type `{}`", path.display(), i + 2, f[1]))?;
            self.add(f[0], ty, f.get(2).copied());
        }
        Ok(())
    }
}

/// MeSH names are often inverted ("Abdomen, Acute"): un-invert two-part names.
fn mesh_name(name: &str) -> String {
    match name.split_once(", ") {
        Some((a, b)) if !b.contains(',') && !a.is_empty() => format!("{} {}", b, a.to_lowercase()),
        _ => name.to_string(),
    }
}

fn mesh_type(tree: &str) -> Option<EntityType> {
    Some(if tree.starts_with("C23.888") {
        EntityType::SymptomSign
    } else if tree.starts_with('C') {
        EntityType::Disease
    } else if tree.starts_with('D') {
        EntityType::Drug
    } else if tree.starts_with("E01") {
        EntityType::TestImaging
    } else if tree.starts_with("E02") || tree.starts_with("E03") || tree.starts_with("E04") || tree.starts_with("E05") {
        EntityType::Procedure
    } else if tree.starts_with('A') {
        EntityType::Anatomy
    } else if tree.starts_with("B03") || tree.starts_with("B04") || tree.starts_with("B01.300") {
        EntityType::Pathogen
    } else if tree.starts_with('G') {
        EntityType::Mechanism
    } else {
        return None;
    })
}

/// Lower is preferred when a MeSH descriptor sits in several branches.
fn mesh_rank(t: EntityType) -> u8 {
    match t {
        EntityType::SymptomSign => 0,
        EntityType::Disease => 1,
        EntityType::Pathogen => 2,
        EntityType::TestImaging => 3,
        EntityType::Procedure => 4,
        EntityType::Drug => 5,
        EntityType::Anatomy => 6,
        EntityType::Mechanism => 7,
        _ => 8,
    }
}
