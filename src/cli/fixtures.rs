//! `fleming fixtures wiki`: renders a realistic MediaWiki export from structured medical
//! facts, for tests and benchmarks at the paper's scale (100k+ entities).
//!
//! The facts come from the shared knowledge tables (`FLEMING_SHARED_DATA`, default
//! `../shared/data`): Hetionet (disease–symptom, compound–disease, disease–disease,
//! disease–anatomy, class–compound, compound–side effect, compound–gene, disease–gene),
//! PharmacotherapyDB (indications and non-indications), the Disease Ontology (names,
//! synonyms, definitions, and the `has_symptom` / `located_in` / `has_material_basis_in`
//! phrases of its definitions) and MeSH (descriptors, typed by tree). Pages are rendered the
//! way Wikipedia writes them — infoboxes, a lead sentence, sections ("Signs and symptoms",
//! "Treatment", "Medical uses", "Side effects", "Clinical significance", …), references
//! with citation templates, tables, comments, HTML entities, link labels, redirects for
//! synonyms — with noise: links to places, institutions and years in "History" and
//! "Epidemiology", links of the wrong kind inside relation sections, `{{main}}` and
//! `{{citation needed}}`. Past the real facts, synthetic rare diseases (a gene-related form
//! of a real disease, with a subset of its facts) reach the requested entity count.
//!
//! It writes `wiki.xml` (and `wiki.xml.bz2` with `--bz2`), `lexicon.tsv` (every entity's
//! type, and synonyms), `truth.tsv` (every fact rendered: subject, predicate, object) and
//! `stats.json`. The same seed gives the same bytes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fleming_operators::ops::extract::wikitext::{Target, classify_target, normalize_title};

/// `fleming fixtures …`
#[derive(Args, Debug)]
pub struct FixturesArgs {
    /// What to generate.
    #[command(subcommand)]
    pub what: What,
}

/// Fixture kinds.
#[derive(Subcommand, Debug)]
pub enum What {
    /// A MediaWiki export rendered from the shared medical knowledge tables.
    Wiki(WikiArgs),
}

/// `fleming fixtures wiki`
#[derive(Args, Debug, Clone)]
pub struct WikiArgs {
    /// Output directory (wiki.xml, lexicon.tsv, truth.tsv, stats.json).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Entities to reach: real facts first, then synthetic rare diseases.
    #[arg(long, default_value_t = 100_000)]
    pub entities: usize,
    /// The shared data directory (with kg/).
    #[arg(long, env = "FLEMING_SHARED_DATA", value_name = "DIR")]
    pub shared: Option<PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also write wiki.xml.bz2.
    #[arg(long)]
    pub bz2: bool,
}

/// Runs `fleming fixtures …`.
pub fn run(args: &FixturesArgs) -> anyhow::Result<i32> {
    match &args.what {
        What::Wiki(w) => {
            let shared = w.shared.clone().unwrap_or_else(default_shared);
            let t = std::time::Instant::now();
            let fx = generate(&shared, w.entities, w.seed)?;
            fx.write(&w.out, w.bz2)?;
            println!(
                "{}: {} pages ({} redirects), {} entities, {} facts, {:.1} MB of wikitext in {:.1}s",
                w.out.display(),
                fx.stats.pages,
                fx.stats.redirects,
                fx.stats.entities,
                fx.truth.len(),
                fx.stats.bytes as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            Ok(0)
        }
    }
}

/// `../shared/data` beside the current directory's repository.
pub fn default_shared() -> PathBuf {
    PathBuf::from("../shared/data")
}

/// A generated fixture.
pub struct Fixture {
    /// Pages: (title, wikitext), in page-id order.
    pub pages: Vec<(String, String)>,
    /// Lexicon rows: (name, type, canonical).
    pub lexicon: Vec<(String, &'static str, String)>,
    /// Facts rendered: (subject, predicate, object), normalised titles.
    pub truth: BTreeSet<(String, &'static str, String)>,
    /// Counts.
    pub stats: Stats,
}

/// Fixture counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Pages, redirects included.
    pub pages: usize,
    /// Redirect pages.
    pub redirects: usize,
    /// Distinct entities (page titles and link targets, noise excluded).
    pub entities: usize,
    /// Synthetic diseases added.
    pub synthetic: usize,
    /// Wikitext bytes.
    pub bytes: usize,
    /// Facts per predicate.
    pub facts: BTreeMap<String, usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Ty {
    Disease,
    Symptom,
    Drug,
    Anatomy,
    Gene,
    Pathogen,
    Mechanism,
    Test,
    Procedure,
}

impl Ty {
    fn as_str(self) -> &'static str {
        match self {
            Ty::Disease => "disease",
            Ty::Symptom => "symptom-sign",
            Ty::Drug => "drug",
            Ty::Anatomy => "anatomy",
            Ty::Gene => "gene",
            Ty::Pathogen => "pathogen",
            Ty::Mechanism => "mechanism",
            Ty::Test => "test-imaging",
            Ty::Procedure => "procedure",
        }
    }
}

/// Predicates the fixture renders, with the types their subject and object must have
/// (the extractor's rules).
const PREDS: &[(&str, &[Ty], &[Ty])] = &[
    ("has_symptom", &[Ty::Disease], &[Ty::Symptom]),
    ("treated_by", &[Ty::Disease], &[Ty::Drug]),
    ("differential_diagnosis", &[Ty::Disease], &[Ty::Disease]),
    ("located_in", &[Ty::Disease], &[Ty::Anatomy]),
    ("associated_gene", &[Ty::Disease], &[Ty::Gene]),
    ("caused_by", &[Ty::Disease], &[Ty::Pathogen, Ty::Gene]),
    ("drug_class", &[Ty::Drug], &[Ty::Drug]),
    ("adverse_effect", &[Ty::Drug], &[Ty::Symptom]),
    ("mechanism", &[Ty::Drug], &[Ty::Gene]),
    ("contraindicated_with", &[Ty::Drug], &[Ty::Disease]),
];

/// Most facts of one predicate on one page.
const CAPS: &[(&str, usize)] = &[
    ("has_symptom", 25),
    ("treated_by", 15),
    ("differential_diagnosis", 8),
    ("located_in", 10),
    ("associated_gene", 20),
    ("caused_by", 5),
    ("drug_class", 4),
    ("adverse_effect", 25),
    ("mechanism", 10),
    ("contraindicated_with", 10),
];

/// splitmix64: small, seedable, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

#[derive(Clone, Debug)]
struct Entity {
    name: String,
    ty: Ty,
    synonyms: Vec<String>,
    description: Option<String>,
}

/// The knowledge: entities by normalised name, facts by subject.
#[derive(Default)]
struct Kb {
    entities: BTreeMap<String, Entity>,
    facts: BTreeMap<String, BTreeSet<(&'static str, String)>>,
    inverse: BTreeMap<String, BTreeSet<(&'static str, String)>>,
    /// Gene -> processes it takes part in (rendered as plain links on gene pages).
    functions: BTreeMap<String, Vec<String>>,
    /// MeSH descriptors (normalised names) in file order.
    mesh: Vec<String>,
    /// Lower-cased name -> the entity's key (names differing only in case are one entity).
    folded: BTreeMap<String, String>,
}

/// Whether a name can be a page title and a link target.
fn usable(name: &str) -> bool {
    let n = name.trim();
    !n.is_empty()
        && n.len() <= 120
        && !n.contains(['[', ']', '{', '}', '|', '#', '<', '>', '\n', '\t', ':', '='])
        && !n.contains("''")
        && !n.starts_with(['*', '!', '-', '.', '/', '~'])
        && matches!(classify_target(n), Target::Article { .. })
}

impl Kb {
    fn add(&mut self, name: &str, ty: Ty) -> Option<String> {
        let name = name.trim();
        if !usable(name) {
            return None;
        }
        let key = normalize_title(name);
        let key = self.folded.entry(key.to_lowercase()).or_insert(key).clone();
        let e = self.entities.entry(key.clone()).or_insert_with(|| Entity {
            name: key.clone(),
            ty,
            synonyms: Vec::new(),
            description: None,
        });
        (e.ty == ty).then_some(key)
    }

    fn fact(&mut self, s: &str, p: &'static str, o: &str) {
        let (Some(se), Some(oe)) = (self.entities.get(s), self.entities.get(o)) else { return };
        if s == o {
            return;
        }
        let Some((_, st, ot)) = PREDS.iter().find(|(n, _, _)| *n == p) else { return };
        if !st.contains(&se.ty) || !ot.contains(&oe.ty) {
            return;
        }
        self.facts.entry(s.to_string()).or_default().insert((p, o.to_string()));
        self.inverse.entry(o.to_string()).or_default().insert((p, s.to_string()));
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!("reading {} (set FLEMING_SHARED_DATA or --shared to the shared data directory)", path.display())
    })
}

/// Phrases after a Disease Ontology relation word: `has_symptom fever, has_symptom rash`.
fn do_phrases<'a>(text: &'a str, rel: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(rel) {
        rest = &rest[i + rel.len()..];
        let end = rest.find([',', '.', ';', '(']).unwrap_or(rest.len());
        let mut phrase = &rest[..end];
        for stop in [
            " and ",
            " or ",
            " that ",
            " which ",
            " caused_by",
            " transmitted_by",
            " located_in",
            " has_symptom",
            " results_in",
        ] {
            if let Some(j) = phrase.find(stop) {
                phrase = &phrase[..j];
            }
        }
        let phrase = phrase.trim();
        if !phrase.is_empty() && phrase.split_whitespace().count() <= 4 {
            out.push(phrase);
        }
    }
    out
}

fn load(shared: &Path) -> anyhow::Result<Kb> {
    let kg = shared.join("kg");
    if !kg.is_dir() {
        bail!("no knowledge tables at {} (set FLEMING_SHARED_DATA or --shared)", kg.display());
    }
    let mut kb = Kb::default();
    // Disease Ontology: names, synonyms, definitions.
    let names = read(&kg.join("disease-ontology/term-names.tsv"))?;
    let mut doid: BTreeMap<String, String> = BTreeMap::new();
    for line in names.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 3
            && f[2] == "name"
            && let Some(k) = kb.add(f[1], Ty::Disease)
        {
            doid.insert(f[0].to_string(), k);
        }
    }
    for line in names.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() >= 3
            && f[2] == "exact-synonym"
            && let Some(k) = doid.get(f[0])
            && usable(f[1])
            && let Some(e) = kb.entities.get_mut(k)
        {
            let s = normalize_title(f[1]);
            if s.to_lowercase() != k.to_lowercase() && !e.synonyms.contains(&s) {
                e.synonyms.push(s);
            }
        }
    }
    let desc = read(&kg.join("disease-ontology/description.tsv"))?;
    let mut phrases: Vec<(String, &'static str, String, Ty)> = Vec::new();
    for line in desc.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            continue;
        }
        let Some(k) = doid.get(f[0]).cloned() else { continue };
        let text = f[2].trim();
        if !text.is_empty()
            && let Some(e) = kb.entities.get_mut(&k)
        {
            let clean = text.replace('_', " ");
            e.description = Some(clean.split(". ").next().unwrap_or(&clean).trim_end_matches('.').to_string());
        }
        for p in do_phrases(text, "has_symptom ") {
            phrases.push((k.clone(), "has_symptom", p.to_string(), Ty::Symptom));
        }
        for p in do_phrases(text, "located_in ") {
            phrases.push((k.clone(), "located_in", p.to_string(), Ty::Anatomy));
        }
        for p in do_phrases(text, "has_material_basis_in ") {
            let words: Vec<&str> = p.split_whitespace().collect();
            let binomial = words.len() >= 2
                && words[0].chars().next().is_some_and(char::is_uppercase)
                && words[1].chars().next().is_some_and(char::is_lowercase);
            if p.contains("virus") || binomial {
                phrases.push((k.clone(), "caused_by", p.to_string(), Ty::Pathogen));
            }
        }
    }
    // Hetionet nodes and edges.
    let nodes = read(&kg.join("hetionet/hetionet-v1.0-nodes.tsv"))?;
    let mut het: BTreeMap<String, String> = BTreeMap::new();
    for line in nodes.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            continue;
        }
        let ty = match f[2] {
            "Disease" => Ty::Disease,
            "Symptom" | "Side Effect" => Ty::Symptom,
            "Compound" | "Pharmacologic Class" => Ty::Drug,
            "Anatomy" => Ty::Anatomy,
            "Gene" => Ty::Gene,
            "Biological Process" | "Pathway" | "Molecular Function" => Ty::Mechanism,
            _ => continue,
        };
        if let Some(k) = kb.add(f[1], ty) {
            het.insert(f[0].to_string(), k);
        }
    }
    for (s, p, o, ty) in &phrases {
        if let Some(ok) = kb.add(o, *ty) {
            kb.fact(s, p, &ok);
        }
    }
    let edges_path = kg.join("hetionet/hetionet-v1.0-edges-5k-sample.sif.gz");
    let (mut reader, _) = fleming_operators::ops::crawl::dump::open(&edges_path, 1)
        .with_context(|| format!("reading {}", edges_path.display()))?;
    let mut edges = String::new();
    std::io::Read::read_to_string(&mut reader, &mut edges)?;
    for line in edges.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            continue;
        }
        let (Some(a), Some(b)) = (het.get(f[0]).cloned(), het.get(f[2]).cloned()) else { continue };
        match f[1] {
            "DpS" => kb.fact(&a, "has_symptom", &b),
            "CtD" | "CpD" => kb.fact(&b, "treated_by", &a),
            "DrD" => kb.fact(&a, "differential_diagnosis", &b),
            "DlA" => kb.fact(&a, "located_in", &b),
            "PCiC" => kb.fact(&b, "drug_class", &a),
            "CcSE" => kb.fact(&a, "adverse_effect", &b),
            "CbG" => kb.fact(&a, "mechanism", &b),
            "DaG" => kb.fact(&a, "associated_gene", &b),
            "GpBP" | "GpPW" => kb.functions.entry(a).or_default().push(b),
            _ => {}
        }
    }
    // PharmacotherapyDB.
    let ind = read(&kg.join("pharmacotherapydb/catalog_indications.tsv"))?;
    for line in ind.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 5 {
            continue;
        }
        let (Some(d), Some(c)) = (kb.add(f[2], Ty::Disease), kb.add(f[3], Ty::Drug)) else { continue };
        match f[4] {
            "DM" | "SYM" => kb.fact(&d, "treated_by", &c),
            "NOT" => kb.fact(&c, "contraindicated_with", &d),
            _ => {}
        }
    }
    // Synonyms must name one entity only, and no entity of their own (case-insensitively).
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for e in kb.entities.values() {
        for s in &e.synonyms {
            *uses.entry(s.to_lowercase()).or_insert(0) += 1;
        }
    }
    let folded: HashSet<String> = kb.folded.keys().cloned().collect();
    for e in kb.entities.values_mut() {
        e.synonyms.retain(|s| {
            let l = s.to_lowercase();
            uses.get(&l) == Some(&1) && !folded.contains(&l)
        });
    }
    // At most so many facts per subject and predicate (a page lists a few dozen at most).
    let mut rng = Rng(0xFAC7);
    let mut kept: BTreeMap<String, BTreeSet<(&'static str, String)>> = BTreeMap::new();
    for (s, facts) in std::mem::take(&mut kb.facts) {
        for (p, cap) in CAPS {
            let mut objs: Vec<String> = facts.iter().filter(|(q, _)| q == p).map(|(_, o)| o.clone()).collect();
            while objs.len() > *cap {
                let i = rng.below(objs.len());
                objs.remove(i);
            }
            for o in objs {
                kept.entry(s.clone()).or_default().insert((p, o));
            }
        }
    }
    kb.inverse.clear();
    for (s, facts) in &kept {
        for (p, o) in facts {
            kb.inverse.entry(o.clone()).or_default().insert((p, s.clone()));
        }
    }
    kb.facts = kept;
    // MeSH descriptors: extra pages past the facts.
    let tree = read(&kg.join("mesh/tree-numbers.tsv"))?;
    let mut seen = HashSet::new();
    for line in tree.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 || !seen.insert(f[0].to_string()) {
            continue;
        }
        let t = f[2];
        let ty = if t.starts_with("C23.888") {
            Ty::Symptom
        } else if t.starts_with('C') {
            Ty::Disease
        } else if t.starts_with('D') {
            Ty::Drug
        } else if t.starts_with("E01") {
            Ty::Test
        } else if t.starts_with("E02") || t.starts_with("E04") {
            Ty::Procedure
        } else if t.starts_with('A') {
            Ty::Anatomy
        } else {
            continue;
        };
        let name = match f[1].split_once(", ") {
            Some((a, b)) if !b.contains(',') => format!("{b} {}", a.to_lowercase()),
            _ => f[1].to_string(),
        };
        if let Some(k) = kb.add(&name, ty) {
            kb.mesh.push(k);
        }
    }
    Ok(kb)
}

/// Noise: links that are not medical entities.
const PLACES: &[&str] = &[
    "United States",
    "Europe",
    "World Health Organization",
    "Centers for Disease Control and Prevention",
    "India",
    "China",
    "Germany",
    "United Kingdom",
    "Japan",
    "Brazil",
    "National Institutes of Health",
    "Johns Hopkins Hospital",
    "Mayo Clinic",
    "The Lancet",
    "New England Journal of Medicine",
    "Paris",
    "London",
    "Africa",
    "Middle Ages",
];
const PEOPLE: &[&str] = &[
    "William Osler",
    "Robert Koch",
    "Louis Pasteur",
    "Hippocrates",
    "Galen",
    "Rudolf Virchow",
    "Paul Ehrlich",
    "Alexander Fleming",
];
const SPECIALTIES: &[&str] = &[
    "Internal medicine",
    "Neurology",
    "Cardiology",
    "Infectious disease (medical specialty)|Infectious disease",
    "Dermatology",
    "Medical genetics",
];
const JOURNALS: &[&str] = &[
    "N Engl J Med",
    "Lancet",
    "BMJ",
    "JAMA",
    "Nat Rev Dis Primers",
    "Orphanet J Rare Dis",
    "Cochrane Database Syst Rev",
];

struct Renderer<'a> {
    kb: &'a Kb,
    rng: Rng,
    refs: u64,
    /// Entities with a page (and so redirects for their synonyms).
    pages: &'a HashSet<String>,
    /// Every entity linked so far.
    linked: BTreeSet<String>,
}

impl Renderer<'_> {
    /// A link to an entity: sometimes lower-cased, sometimes through a synonym's redirect or
    /// with a label.
    fn link(&mut self, key: &str) -> String {
        self.linked.insert(key.to_string());
        let e = &self.kb.entities[key];
        let roll = self.rng.below(10);
        if roll == 0 && !e.synonyms.is_empty() && self.pages.contains(key) {
            let s = self.rng.pick(&e.synonyms).clone();
            return format!("[[{s}]]");
        }
        if roll == 1 && !e.synonyms.is_empty() {
            let s = self.rng.pick(&e.synonyms).to_lowercase();
            return format!("[[{}|{s}]]", e.name);
        }
        if roll <= 4 && e.name.chars().nth(1).is_some_and(char::is_lowercase) {
            let mut c = e.name.chars();
            let first: String = c.next().map(|f| f.to_lowercase().collect()).unwrap_or_default();
            return format!("[[{first}{}]]", c.as_str());
        }
        format!("[[{}]]", e.name)
    }

    fn list(&mut self, keys: &[String]) -> String {
        let links: Vec<String> = keys.iter().map(|k| self.link(k)).collect();
        match links.len() {
            0 => String::new(),
            1 => links[0].clone(),
            n => format!("{} and {}", links[..n - 1].join(", "), links[n - 1]),
        }
    }

    fn cite(&mut self, topic: &str) -> String {
        self.refs += 1;
        let year = 1990 + self.rng.below(30);
        let journal = *self.rng.pick(JOURNALS);
        let pmid = 10_000_000 + self.rng.below(20_000_000);
        match self.rng.below(4) {
            0 => format!(
                "<ref name=\"r{}\">{{{{cite journal |vauthors=Smith J, Lee K |title={topic}: a review |journal={journal} |year={year} |volume={} |pages={}–{} |pmid={pmid} |doi=10.1000/x{pmid}}}}}</ref>",
                self.rng.below(90) + 1,
                self.rng.below(400),
                self.rng.below(400) + 400,
                self.refs
            ),
            1 => format!(
                "<ref>{{{{cite book |last=Jones |first=A |title=Textbook of {topic} |publisher=[[Elsevier]] |year={year} |isbn=978-0-{pmid}}}}}</ref>"
            ),
            2 => format!(
                "<ref>{{{{cite web |url=https://example.org/{pmid} |title={topic} |website=[[MedlinePlus]] |access-date=1 May {year}}}}}</ref>"
            ),
            _ => format!("<ref name=\"r{}\" />", 1 + self.rng.below(self.refs as usize)),
        }
    }

    fn objects(&self, key: &str, pred: &str) -> Vec<String> {
        self.kb
            .facts
            .get(key)
            .map(|f| f.iter().filter(|(p, _)| *p == pred).map(|(_, o)| o.clone()).collect())
            .unwrap_or_default()
    }

    fn subjects(&self, key: &str, pred: &str) -> Vec<String> {
        self.kb
            .inverse
            .get(key)
            .map(|f| f.iter().filter(|(p, _)| *p == pred).map(|(_, s)| s.clone()).collect())
            .unwrap_or_default()
    }

    fn noise_sentence(&mut self) -> String {
        match self.rng.below(5) {
            0 => format!(
                "It was first described in [[{}]] by [[{}]] in the [[{}s]].",
                self.rng.pick(PLACES),
                self.rng.pick(PEOPLE),
                1850 + 10 * self.rng.below(15)
            ),
            1 => format!("Rates are higher in [[{}]] than in [[{}]].", self.rng.pick(PLACES), self.rng.pick(PLACES)),
            2 => format!(
                "The [[{}]] publishes guidance on it.{{{{citation needed|date=May 2016}}}}",
                self.rng.pick(PLACES)
            ),
            3 => format!("About {}&nbsp;in 100,000 people are affected each year.", 1 + self.rng.below(50)),
            _ => format!("Research funded by the [[{}]] continues.", self.rng.pick(PLACES)),
        }
    }

    /// A disease page: infobox, lead, sections for each kind of fact, noise.
    fn disease(&mut self, key: &str, truth: &mut BTreeSet<(String, &'static str, String)>) -> String {
        let e = self.kb.entities[key].clone();
        let sym = self.objects(key, "has_symptom");
        let drugs = self.objects(key, "treated_by");
        let diff = self.objects(key, "differential_diagnosis");
        let loc = self.objects(key, "located_in");
        let genes = self.objects(key, "associated_gene");
        let causes = self.objects(key, "caused_by");
        let mut t = String::new();
        t.push_str(
            "{{Use dmy dates|date=May 2016}}\n<!-- Please follow WP:MEDMOS -->\n{{Infobox medical condition (new)\n",
        );
        t.push_str(&format!("| name = {}\n", e.name));
        if !e.synonyms.is_empty() {
            t.push_str(&format!(
                "| synonyms = {}\n",
                e.synonyms.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        t.push_str(&format!("| field = [[{}]]\n", self.rng.pick(SPECIALTIES)));
        // Some facts only in the infobox, some only in sections, some in both.
        let in_box: Vec<String> = sym.iter().take(3).filter(|_| self.rng.chance(0.7)).cloned().collect();
        if !in_box.is_empty() {
            let l = self.list(&in_box);
            t.push_str(&format!("| symptoms = {}\n", l.replace(" and ", ", ")));
        }
        let drugs_box: Vec<String> = drugs.iter().take(2).filter(|_| self.rng.chance(0.5)).cloned().collect();
        if !drugs_box.is_empty() {
            let l = self.list(&drugs_box);
            t.push_str(&format!("| medication = {}\n", l.replace(" and ", ", ")));
        }
        t.push_str(&format!(
            "| ICD10 = {{{{ICD10|{}|{:02}|{}|{}|{:02}}}}}\n}}}}\n",
            (b'A' + self.rng.below(26) as u8) as char,
            self.rng.below(99),
            self.rng.below(9),
            'x',
            self.rng.below(99)
        ));
        let what = e.description.clone().unwrap_or_else(|| "a rare disease".into());
        let what = what.trim_start_matches("A ").trim_start_matches("An ").to_string();
        let syn = e.synonyms.first().map(|s| format!(" (also known as ''{s}'')")).unwrap_or_default();
        t.push_str(&format!("'''{}'''{syn} is a {what}.{}", e.name, self.cite(&e.name)));
        if let Some(first) = sym.first() {
            let l = self.link(first);
            t.push_str(&format!(" People often have {l}."));
        }
        t.push(' ');
        t.push_str(&self.noise_sentence());
        t.push_str("\n\n");
        let rest: Vec<String> = sym.iter().filter(|s| !in_box.contains(s) || self.rng.chance(0.5)).cloned().collect();
        if !rest.is_empty() || self.rng.chance(0.3) {
            t.push_str("== Signs and symptoms ==\n");
            for chunk in rest.chunks(4) {
                let l = self.list(chunk);
                let c = self.cite("symptoms");
                t.push_str(&match self.rng.below(3) {
                    0 => format!("Common signs and symptoms include {l}.{c} "),
                    1 => format!("Patients may present with {l}.{c} "),
                    _ => format!("Other features are {l}.{c} "),
                });
            }
            // Wrong-kind links inside the section: a place, a related disease.
            if !diff.is_empty() && self.rng.chance(0.5) {
                let d = self.link(&diff[0]);
                t.push_str(&format!("The presentation can resemble {d}. "));
            }
            t.push_str(&format!("Cases were reported at the [[{}]].\n\n", self.rng.pick(PLACES)));
        }
        if !causes.is_empty() || !genes.is_empty() {
            if !causes.is_empty() {
                t.push_str("== Causes ==\n");
                let l = self.list(&causes);
                let c = self.cite("causes");
                t.push_str(&format!("It is caused by {l}.{c}\n\n"));
            }
            if !genes.is_empty() {
                t.push_str("== Genetics ==\n");
                for chunk in genes.chunks(5) {
                    let l = self.list(chunk);
                    t.push_str(&format!(
                        "Variants in {l} have been associated with the condition.{} ",
                        self.cite("genetics")
                    ));
                }
                t.push_str("\n\n");
            }
        }
        let rest_drugs: Vec<String> =
            drugs.iter().filter(|d| !drugs_box.contains(d) || self.rng.chance(0.5)).cloned().collect();
        if !rest_drugs.is_empty() {
            t.push_str("== Treatment ==\n");
            if self.rng.chance(0.3) {
                t.push_str(&format!("{{{{main|Management of {}}}}}\n", e.name));
            }
            for chunk in rest_drugs.chunks(4) {
                let l = self.list(chunk);
                t.push_str(&format!("Treatment options include {l}.{} ", self.cite("treatment")));
            }
            t.push_str("Care is usually coordinated by a [[physician]].\n");
            if rest_drugs.len() >= 2 && self.rng.chance(0.4) {
                t.push_str("{| class=\"wikitable\"\n! Medication !! Notes\n");
                for d in rest_drugs.iter().take(3) {
                    let l = self.link(d);
                    t.push_str(&format!("|-\n| {l} || first line\n"));
                }
                t.push_str("|}\n");
            }
            t.push('\n');
        }
        if !diff.is_empty() {
            t.push_str("== Differential diagnosis ==\n");
            let l = self.list(&diff);
            t.push_str(&format!("It should be distinguished from {l}.{}\n\n", self.cite("diagnosis")));
        }
        if !loc.is_empty() {
            t.push_str("== Affected organs ==\n");
            let l = self.list(&loc);
            t.push_str(&format!("The disease mainly affects the {l}.\n\n"));
        }
        t.push_str("== Epidemiology ==\n");
        let n = self.noise_sentence();
        t.push_str(&format!("{n} <!-- figures need updating -->\n\n== History ==\n"));
        let n = self.noise_sentence();
        t.push_str(&n);
        if let Some(d) = drugs.first() {
            // A drug in an unmapped section: not a relation.
            let l = self.link(d);
            t.push_str(&format!(" Early reports compared it with results seen with {l}."));
        }
        t.push_str("\n\n== See also ==\n");
        for d in diff.iter().take(2) {
            let l = self.link(d);
            t.push_str(&format!("* {l}\n"));
        }
        t.push_str("\n== References ==\n{{Reflist}}\n\n[[Category:Rare diseases]]\n[[Category:Medical conditions]]\n");
        for (p, objs) in [
            ("has_symptom", &sym),
            ("treated_by", &drugs),
            ("differential_diagnosis", &diff),
            ("located_in", &loc),
            ("associated_gene", &genes),
            ("caused_by", &causes),
        ] {
            for o in objs.iter() {
                truth.insert((key.to_string(), p, o.clone()));
            }
        }
        t
    }

    /// A drug page.
    fn drug(
        &mut self,
        key: &str,
        pages: &HashSet<String>,
        truth: &mut BTreeSet<(String, &'static str, String)>,
    ) -> String {
        let e = self.kb.entities[key].clone();
        let class = self.objects(key, "drug_class");
        let se = self.objects(key, "adverse_effect");
        let mech = self.objects(key, "mechanism");
        let contra = self.objects(key, "contraindicated_with");
        // Indications rendered here when the disease has no page of its own, or sometimes.
        let uses: Vec<String> = self
            .subjects(key, "treated_by")
            .into_iter()
            .filter(|d| !pages.contains(d) || self.rng.chance(0.3))
            .collect();
        let mut t = format!("{{{{Infobox drug\n| drug_name = {}\n| type = ?\n", e.name);
        if !class.is_empty() {
            let l = self.list(&class);
            t.push_str(&format!("| class = {}\n", l.replace(" and ", ", ")));
        }
        t.push_str("| routes_of_administration = [[Oral administration|By mouth]]\n}}\n");
        t.push_str(&format!(
            "'''{}''' is a [[medication]].{} {}\n\n",
            e.name,
            self.cite(&e.name),
            self.noise_sentence()
        ));
        if !uses.is_empty() {
            t.push_str("== Medical uses ==\n");
            let l = self.list(&uses);
            t.push_str(&format!("{} is used to treat {l}.{}\n\n", e.name, self.cite("uses")));
        }
        if !contra.is_empty() {
            t.push_str("== Contraindications ==\n");
            let l = self.list(&contra);
            t.push_str(&format!("It should not be used in people with {l}.\n\n"));
        }
        if !se.is_empty() {
            t.push_str("== Side effects ==\n");
            for chunk in se.chunks(6) {
                let l = self.list(chunk);
                t.push_str(&format!("Side effects include {l}.{} ", self.cite("adverse effects")));
            }
            t.push_str(&format!("Reports were collected by the [[{}]].\n\n", self.rng.pick(PLACES)));
        }
        if !mech.is_empty() {
            t.push_str("== Mechanism of action ==\n");
            let l = self.list(&mech);
            t.push_str(&format!("It binds {l}.\n\n"));
        }
        t.push_str(&format!(
            "== History ==\n{}\n\n== References ==\n{{{{Reflist}}}}\n\n[[Category:Drugs]]\n",
            self.noise_sentence()
        ));
        for (p, objs) in
            [("drug_class", &class), ("adverse_effect", &se), ("mechanism", &mech), ("contraindicated_with", &contra)]
        {
            for o in objs.iter() {
                truth.insert((key.to_string(), p, o.clone()));
            }
        }
        for d in &uses {
            truth.insert((d.clone(), "treated_by", key.to_string()));
        }
        t
    }

    /// An anatomy page: diseases located in it under "Clinical significance".
    fn anatomy(&mut self, key: &str, truth: &mut BTreeSet<(String, &'static str, String)>) -> String {
        let e = self.kb.entities[key].clone();
        let dis = self.subjects(key, "located_in");
        let mut t = format!(
            "{{{{Infobox anatomy\n| Name = {}\n}}}}\nThe '''{}''' is a part of the body.{}\n\n== Structure ==\n{}\n\n",
            e.name,
            e.name,
            self.cite(&e.name),
            self.noise_sentence()
        );
        if !dis.is_empty() {
            t.push_str("== Clinical significance ==\n");
            for chunk in dis.chunks(6) {
                let l = self.list(chunk);
                t.push_str(&format!("Diseases of the {} include {l}. ", e.name.to_lowercase()));
            }
            t.push_str("\n\n");
        }
        t.push_str("[[Category:Anatomy]]\n");
        for d in dis {
            truth.insert((d, "located_in", key.to_string()));
        }
        t
    }

    /// A symptom page: the diseases presenting it under "Causes".
    fn symptom(&mut self, key: &str, truth: &mut BTreeSet<(String, &'static str, String)>) -> String {
        let e = self.kb.entities[key].clone();
        let dis: Vec<String> = self.subjects(key, "has_symptom").into_iter().take(12).collect();
        let mut t = format!("'''{}''' is a [[medical sign]] or symptom.{}\n\n", e.name, self.cite(&e.name));
        if !dis.is_empty() {
            t.push_str("== Causes ==\n");
            let l = self.list(&dis);
            t.push_str(&format!("It occurs in {l}.\n\n"));
        }
        t.push_str("== History ==\n");
        t.push_str(&self.noise_sentence());
        t.push_str("\n\n[[Category:Symptoms and signs]]\n");
        for d in dis {
            truth.insert((d, "has_symptom", key.to_string()));
        }
        t
    }

    /// A gene page: its processes, as plain links.
    fn gene(&mut self, key: &str) -> String {
        let e = self.kb.entities[key].clone();
        let f: Vec<String> =
            self.kb.functions.get(key).map(|v| v.iter().take(8).cloned().collect()).unwrap_or_default();
        let mut t = format!(
            "{{{{Infobox gene}}}}\n'''{}''' is a [[gene]] in humans.{}\n\n== Function ==\n",
            e.name,
            self.cite(&e.name)
        );
        if !f.is_empty() {
            let l = self.list(&f);
            t.push_str(&format!("The protein takes part in {l}.\n"));
        }
        t.push_str("\n[[Category:Genes]]\n");
        t
    }

    /// A short page for other entities (MeSH descriptors).
    fn stub(&mut self, key: &str) -> String {
        let e = self.kb.entities[key].clone();
        format!(
            "'''{}''' is a medical term ({}).{}\n\n== See also ==\n* [[Medicine]]\n\n{{{{Medicine-stub}}}}\n",
            e.name,
            e.ty.as_str(),
            self.cite(&e.name)
        )
    }
}

/// Generates a fixture with at least `target` entities.
pub fn generate(shared: &Path, target: usize, seed: u64) -> anyhow::Result<Fixture> {
    let mut kb = load(shared)?;
    let mut rng = Rng(seed ^ 0x5EED);
    // Page units in order: diseases by number of facts, then drugs, anatomy and symptoms
    // with facts, then the other diseases, MeSH descriptors, genes with functions.
    let nfacts = |k: &str, kb: &Kb| {
        kb.facts.get(k).map(|f| f.len()).unwrap_or(0) + kb.inverse.get(k).map(|f| f.len()).unwrap_or(0)
    };
    let by_ty = |ty: Ty, kb: &Kb| -> Vec<String> {
        let mut v: Vec<(usize, String)> =
            kb.entities.iter().filter(|(_, e)| e.ty == ty).map(|(k, _)| (nfacts(k, kb), k.clone())).collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.into_iter().map(|(_, k)| k).collect()
    };
    let diseases = by_ty(Ty::Disease, &kb);
    // Pages with facts, interleaved: three diseases, two drugs, an anatomy page, a symptom.
    let mut queues: Vec<(Ty, std::collections::VecDeque<String>, usize)> =
        [(Ty::Disease, 3), (Ty::Drug, 2), (Ty::Anatomy, 1), (Ty::Symptom, 1)]
            .into_iter()
            .map(|(ty, w)| (ty, by_ty(ty, &kb).into_iter().filter(|k| nfacts(k, &kb) > 0).collect(), w))
            .collect();
    let mut units: Vec<(Ty, String)> = Vec::new();
    while queues.iter().any(|q| !q.1.is_empty()) {
        for (ty, q, w) in queues.iter_mut() {
            for _ in 0..*w {
                if let Some(k) = q.pop_front() {
                    units.push((*ty, k));
                }
            }
        }
    }
    units.extend(diseases.iter().filter(|k| nfacts(k, &kb) == 0).map(|k| (Ty::Disease, k.clone())));
    let mut unit_set: HashSet<String> = units.iter().map(|(_, k)| k.clone()).collect();
    for k in kb.mesh.clone() {
        if unit_set.insert(k.clone()) {
            units.push((kb.entities[&k].ty, k));
        }
    }
    for k in kb.functions.keys().cloned().collect::<Vec<_>>() {
        if unit_set.insert(k.clone()) {
            units.push((Ty::Gene, k));
        }
    }
    // Choose units until the entity count is reached (a unit brings its page and the
    // entities its page links to).
    let mut chosen: Vec<(Ty, String)> = Vec::new();
    let mut entities: HashSet<String> = HashSet::new();
    let touched = |ty: Ty, k: &str, kb: &Kb| -> Vec<String> {
        let mut v = vec![k.to_string()];
        let subjects = |p: &'static str| -> Vec<String> {
            kb.inverse.get(k).into_iter().flatten().filter(|(q, _)| *q == p).map(|(_, s)| s.clone()).collect()
        };
        match ty {
            Ty::Disease => v.extend(kb.facts.get(k).into_iter().flatten().map(|(_, o)| o.clone())),
            Ty::Drug => {
                v.extend(kb.facts.get(k).into_iter().flatten().map(|(_, o)| o.clone()));
                v.extend(subjects("treated_by"));
            }
            Ty::Gene => v.extend(kb.functions.get(k).into_iter().flatten().take(8).cloned()),
            Ty::Symptom => v.extend(subjects("has_symptom").into_iter().take(12)),
            Ty::Anatomy => v.extend(subjects("located_in")),
            _ => {}
        }
        v
    };
    for (ty, k) in &units {
        if entities.len() >= target {
            break;
        }
        entities.extend(touched(*ty, k, &kb));
        chosen.push((*ty, k.clone()));
    }
    // Synthetic rare diseases past the real ones.
    let parents: Vec<String> = diseases
        .iter()
        .filter(|k| kb.facts.get(*k).is_some_and(|f| f.iter().any(|(p, _)| *p == "has_symptom")))
        .cloned()
        .collect();
    let genes: Vec<String> = kb.entities.iter().filter(|(_, e)| e.ty == Ty::Gene).map(|(k, _)| k.clone()).collect();
    let mut synthetic = 0usize;
    let mut tries = 0usize;
    while entities.len() < target && !parents.is_empty() && !genes.is_empty() && tries < target * 20 {
        tries += 1;
        let parent = rng.pick(&parents).clone();
        let gene = rng.pick(&genes).clone();
        let name = format!("{gene}-related {}", parent.to_lowercase());
        let Some(key) = kb.add(&name, Ty::Disease) else { continue };
        if entities.contains(&key) {
            continue;
        }
        let pf: Vec<(&'static str, String)> =
            kb.facts.get(&parent).map(|f| f.iter().cloned().collect()).unwrap_or_default();
        for (p, o) in pf {
            if (p == "has_symptom" || p == "treated_by" || p == "located_in") && rng.chance(0.6) {
                kb.fact(&key, p, &o);
            }
        }
        kb.fact(&key, "associated_gene", &gene);
        kb.fact(&key, "differential_diagnosis", &parent);
        if let Some(e) = kb.entities.get_mut(&key) {
            e.description = Some(format!("rare form of {} associated with variants in {gene}", parent.to_lowercase()));
        }
        entities.extend(touched(Ty::Disease, &key, &kb));
        chosen.push((Ty::Disease, key));
        synthetic += 1;
    }
    // Render.
    let page_keys: HashSet<String> = chosen.iter().map(|(_, k)| k.clone()).collect();
    let mut r = Renderer { kb: &kb, rng: Rng(seed), refs: 0, pages: &page_keys, linked: BTreeSet::new() };
    let mut truth = BTreeSet::new();
    let mut pages: Vec<(String, String)> = Vec::new();
    let mut redirects = 0;
    for (ty, k) in &chosen {
        let text = match ty {
            Ty::Disease if nfacts(k, &kb) > 0 || kb.entities[k].description.is_some() => r.disease(k, &mut truth),
            Ty::Drug if nfacts(k, &kb) > 0 => r.drug(k, &page_keys, &mut truth),
            Ty::Anatomy if nfacts(k, &kb) > 0 => r.anatomy(k, &mut truth),
            Ty::Symptom if nfacts(k, &kb) > 0 => r.symptom(k, &mut truth),
            Ty::Gene => r.gene(k),
            _ => r.stub(k),
        };
        pages.push((kb.entities[k].name.clone(), text));
    }
    // Redirects for synonyms that are not entities of their own.
    let titles: HashSet<String> = pages.iter().map(|(t, _)| t.clone()).collect();
    let mut redirect_pages = Vec::new();
    let mut used: HashSet<String> = HashSet::new();
    for (_, k) in &chosen {
        for s in &kb.entities[k].synonyms {
            if !titles.contains(s) && used.insert(s.clone()) {
                redirect_pages
                    .push((s.clone(), format!("#REDIRECT [[{}]] {{{{R from synonym}}}}", kb.entities[k].name)));
                redirects += 1;
            }
        }
    }
    pages.extend(redirect_pages);
    // Interleave the order deterministically so related pages are not adjacent.
    let n = pages.len();
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, r.rng.below(i + 1));
    }
    let pages: Vec<(String, String)> = order.into_iter().map(|i| pages[i].clone()).collect();
    // Lexicon: every entity the fixture mentions, with its synonyms.
    let mut lexicon: Vec<(String, &'static str, String)> = Vec::new();
    let mut mentioned: BTreeSet<String> = std::mem::take(&mut r.linked);
    mentioned.extend(page_keys.iter().cloned());
    for k in &mentioned {
        let Some(e) = kb.entities.get(k) else { continue };
        lexicon.push((e.name.clone(), e.ty.as_str(), String::new()));
        for s in &e.synonyms {
            {
                lexicon.push((s.clone(), e.ty.as_str(), e.name.clone()));
            }
        }
    }
    let mut stats = Stats {
        pages: pages.len(),
        redirects,
        entities: mentioned.len(),
        synthetic,
        bytes: pages.iter().map(|(_, t)| t.len()).sum(),
        facts: BTreeMap::new(),
    };
    for (_, p, _) in &truth {
        *stats.facts.entry(p.to_string()).or_insert(0) += 1;
    }
    Ok(Fixture { pages, lexicon, truth, stats })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

impl Fixture {
    /// The export as XML.
    pub fn xml(&self) -> String {
        let mut x = String::with_capacity(self.stats.bytes + self.pages.len() * 400);
        x.push_str("<mediawiki xmlns=\"http://www.mediawiki.org/xml/export-0.10/\" version=\"0.10\" xml:lang=\"en\">\n  <siteinfo>\n    <sitename>Fleming fixture wiki</sitename>\n    <dbname>fixturewiki</dbname>\n    <base>https://fixture.wiki/wiki/Main_Page</base>\n    <generator>fleming fixtures wiki</generator>\n    <case>first-letter</case>\n  </siteinfo>\n");
        for (i, (title, text)) in self.pages.iter().enumerate() {
            let id = i + 1;
            let redirect = fleming_operators::ops::extract::wikitext::parse_redirect(text)
                .map(|t| format!("    <redirect title=\"{}\" />\n", xml_escape(&t)))
                .unwrap_or_default();
            x.push_str(&format!(
                "  <page>\n    <title>{}</title>\n    <ns>0</ns>\n    <id>{id}</id>\n{redirect}    <revision>\n      <id>{}</id>\n      <timestamp>2016-05-01T00:00:00Z</timestamp>\n      <contributor><username>Fixture</username><id>1</id></contributor>\n      <model>wikitext</model>\n      <format>text/x-wiki</format>\n      <text xml:space=\"preserve\">{}</text>\n    </revision>\n  </page>\n",
                xml_escape(title),
                1_000_000 + id,
                xml_escape(text)
            ));
        }
        x.push_str("</mediawiki>\n");
        x
    }

    /// Writes wiki.xml (and .bz2), lexicon.tsv, truth.tsv and stats.json into `dir`.
    pub fn write(&self, dir: &Path, bz2: bool) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let xml = self.xml();
        std::fs::write(dir.join("wiki.xml"), &xml)?;
        if bz2 {
            let f = std::fs::File::create(dir.join("wiki.xml.bz2"))?;
            fleming_operators::ops::crawl::dump::write_bz2(xml.as_bytes(), f)?;
        }
        let mut lex = std::io::BufWriter::new(std::fs::File::create(dir.join("lexicon.tsv"))?);
        writeln!(lex, "name\ttype\tcanonical")?;
        for (n, t, c) in &self.lexicon {
            writeln!(lex, "{n}\t{t}\t{c}")?;
        }
        lex.flush()?;
        let mut tr = std::io::BufWriter::new(std::fs::File::create(dir.join("truth.tsv"))?);
        writeln!(tr, "subject\tpredicate\tobject")?;
        for (s, p, o) in &self.truth {
            writeln!(tr, "{s}\t{p}\t{o}")?;
        }
        tr.flush()?;
        let stats = serde_json::json!({
            "pages": self.stats.pages,
            "redirects": self.stats.redirects,
            "entities": self.stats.entities,
            "synthetic": self.stats.synthetic,
            "bytes": self.stats.bytes,
            "facts": self.stats.facts,
        });
        std::fs::write(dir.join("stats.json"), serde_json::to_string_pretty(&stats)?)?;
        Ok(())
    }
}

/// Precision and recall per predicate of extracted relations against the truth: for each
/// predicate (true positives, extracted, true).
pub fn evaluate(
    truth: &BTreeSet<(String, String, String)>,
    extracted: &BTreeSet<(String, String, String)>,
) -> BTreeMap<String, (usize, usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for t in truth {
        let e = out.entry(t.1.clone()).or_default();
        e.2 += 1;
        if extracted.contains(t) {
            e.0 += 1;
        }
    }
    let preds: HashSet<&String> = truth.iter().map(|t| &t.1).collect();
    for x in extracted {
        if preds.contains(&x.1) {
            out.entry(x.1.clone()).or_default().1 += 1;
        }
    }
    out
}

/// Reads a truth.tsv.
pub fn read_truth(path: &Path) -> anyhow::Result<BTreeSet<(String, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect())
}
