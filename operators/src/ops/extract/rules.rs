//! From one page to keyed records: what the page says about entities (its own entity,
//! the entities it links to, their aliases and likely types) and relations.
//!
//! Two steps. [`PageFacts`] is what the parser found, independent of any lexicon or
//! setting (it is what the record memo keeps). [`records`] interprets the facts with the
//! lexicon and the relation rules:
//!
//! - the page's type comes from its infobox, else the lexicon (never against a
//!   non-medical infobox; a taxobox is a pathogen only when the lexicon says so); a page
//!   without an infobox whose categories are about a person, an organism or a topic
//!   outside medicine (and none about medicine) counts as having such an infobox;
//! - an infobox field (`symptoms`, `treatment`, `drug_class`, …) or a section
//!   ("Signs and symptoms", "Diagnosis", "Contraindications", …) of a page of a given type
//!   maps to a predicate and the type its objects should have; each link there is evidence
//!   for a relation, with a confidence that depends on where it is (infobox field 0.9,
//!   section 0.75) and on whether the linked name's lexicon type fits (unknown: 0.6 in an
//!   infobox, 0.4 in a section; a type that does not fit: no relation);
//! - every link is a mention of its target, its label an alias, and a link in an infobox
//!   field with one expected type is a vote for that type.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::lexicon::{EntityType, Lexicon};
use super::wikitext::{self, LinkContext, Parsed, normalize_title};

/// A relation predicate. Relations are stored in one canonical direction (see
/// [`Predicate::as_str`] for the reading).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Predicate {
    /// disease has_symptom symptom.
    HasSymptom = 0,
    /// disease diagnosed_by test.
    DiagnosedBy = 1,
    /// disease treated_by drug or procedure.
    TreatedBy = 2,
    /// disease caused_by cause (pathogen, gene, exposure).
    CausedBy = 3,
    /// disease risk_factor factor.
    RiskFactor = 4,
    /// complication complication_of disease.
    ComplicationOf = 5,
    /// disease differential_diagnosis disease.
    DifferentialDiagnosis = 6,
    /// drug contraindicated_with condition.
    ContraindicatedWith = 7,
    /// disease or drug mechanism process / target.
    Mechanism = 8,
    /// disease located_in anatomy.
    LocatedIn = 9,
    /// drug drug_class class.
    DrugClass = 10,
    /// drug adverse_effect effect.
    AdverseEffect = 11,
    /// disease associated_gene gene.
    AssociatedGene = 12,
    /// disease prevented_by measure.
    PreventedBy = 13,
    /// anatomy part_of anatomy.
    PartOf = 14,
    /// drug interacts_with drug.
    InteractsWith = 15,
    /// condition specialty field.
    Specialty = 16,
}

/// All predicates, in index order.
pub const PREDICATES: [Predicate; 17] = [
    Predicate::HasSymptom,
    Predicate::DiagnosedBy,
    Predicate::TreatedBy,
    Predicate::CausedBy,
    Predicate::RiskFactor,
    Predicate::ComplicationOf,
    Predicate::DifferentialDiagnosis,
    Predicate::ContraindicatedWith,
    Predicate::Mechanism,
    Predicate::LocatedIn,
    Predicate::DrugClass,
    Predicate::AdverseEffect,
    Predicate::AssociatedGene,
    Predicate::PreventedBy,
    Predicate::PartOf,
    Predicate::InteractsWith,
    Predicate::Specialty,
];

impl Predicate {
    /// The name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Predicate::HasSymptom => "has_symptom",
            Predicate::DiagnosedBy => "diagnosed_by",
            Predicate::TreatedBy => "treated_by",
            Predicate::CausedBy => "caused_by",
            Predicate::RiskFactor => "risk_factor",
            Predicate::ComplicationOf => "complication_of",
            Predicate::DifferentialDiagnosis => "differential_diagnosis",
            Predicate::ContraindicatedWith => "contraindicated_with",
            Predicate::Mechanism => "mechanism",
            Predicate::LocatedIn => "located_in",
            Predicate::DrugClass => "drug_class",
            Predicate::AdverseEffect => "adverse_effect",
            Predicate::AssociatedGene => "associated_gene",
            Predicate::PreventedBy => "prevented_by",
            Predicate::PartOf => "part_of",
            Predicate::InteractsWith => "interacts_with",
            Predicate::Specialty => "specialty",
        }
    }

    /// The predicate of an index.
    pub fn from_index(i: u8) -> Option<Predicate> {
        PREDICATES.get(i as usize).copied()
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Predicate> {
        PREDICATES.iter().copied().find(|p| p.as_str() == s)
    }
}

/// What the parser found on a page (memoised per page).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PageFacts {
    /// Redirect target (normalised).
    pub redirect: Option<String>,
    /// Infobox template name.
    pub infobox: Option<String>,
    /// Infobox field names.
    pub fields: Vec<String>,
    /// Section titles (index 0: the lead, "").
    pub sections: Vec<String>,
    /// Enclosing section of each section.
    pub parents: Vec<Option<u32>>,
    /// Article links.
    pub links: Vec<FactLink>,
    /// First sentence of the lead.
    pub description: Option<String>,
}

/// One article link on a page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FactLink {
    /// Normalised target.
    pub target: String,
    /// Label when it differs.
    pub label: Option<String>,
    /// Section index.
    pub section: u32,
    /// Infobox field index, when in the infobox.
    pub field: Option<u32>,
    /// Inside another template's arguments (or rendered by `{{main}}` and kin).
    pub template: bool,
}

impl PageFacts {
    /// Facts of a parse.
    pub fn from_parsed(p: &Parsed) -> Self {
        PageFacts {
            redirect: p.redirect.clone(),
            // A disambiguation page has no infobox; its template says as much about it.
            // Without either, the page's categories may say what it is (a person, an
            // animal, software) — still the page's own word, above a lexicon match.
            infobox: p
                .infobox
                .as_ref()
                .map(|i| i.name.clone())
                .or_else(|| p.templates.iter().find(|t| is_disambiguation(t)).map(|_| DISAMBIGUATION.to_string()))
                .or_else(|| categories_declare(&p.categories).map(str::to_string)),
            fields: p.infobox.as_ref().map(|i| i.fields.iter().map(|f| f.name.clone()).collect()).unwrap_or_default(),
            sections: p.sections.iter().map(|s| s.title.clone()).collect(),
            parents: p.sections.iter().map(|s| s.parent).collect(),
            links: p
                .links
                .iter()
                .map(|l| FactLink {
                    target: l.target.clone(),
                    label: l.label.clone(),
                    section: l.section,
                    field: match l.context {
                        LinkContext::Infobox(i) => Some(i),
                        _ => None,
                    },
                    template: matches!(l.context, LinkContext::Template(_)),
                })
                .collect(),
            description: p.description.clone(),
        }
    }

    /// Parses wikitext into facts.
    pub fn of_text(text: &str) -> Self {
        PageFacts::from_parsed(&wikitext::parse(text))
    }
}

/// What a page's own infobox says about what the page is. It outranks a lexicon match
/// on the title: a page about a programming language or a person that shares its name
/// with a medical abbreviation is not medical, and an animal is not a pathogen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Declared {
    /// A medical infobox: its type.
    Medical(EntityType),
    /// A taxobox (animals, plants, microbes alike): a pathogen only when other evidence
    /// says so (the lexicon, or medical pages naming it as a cause).
    Organism,
    /// An infobox of another field (a person, a programming language, a film, a place).
    NotMedical,
    /// No infobox, or one that says nothing either way.
    Unknown,
}

/// The `infobox` of a disambiguation page (`{{disambiguation}}`, `{{hndis}}`, …): a list
/// of other pages sharing a name ("MS", "ALS"), never an entity of its own type.
pub const DISAMBIGUATION: &str = "disambiguation";

/// A template marking a disambiguation page.
fn is_disambiguation(template: &str) -> bool {
    matches!(
        template,
        "disambiguation"
            | "disambig"
            | "dab"
            | "disamb"
            | "hndis"
            | "geodis"
            | "surname"
            | "given name"
            | "letter-number combination disambiguation"
    ) || template.ends_with(" disambiguation")
}

/// The `infobox` of a page without one whose categories say it is about a person or
/// about something outside medicine (software, a film, a place).
pub const CATEGORY_NOT_MEDICAL: &str = "categories: not medical";

/// The `infobox` of a page without one whose categories say it is about an organism
/// ("Mammals of Europe", "Taxa named by Carl Linnaeus").
pub const CATEGORY_ORGANISM: &str = "categories: organism";

/// What a page's categories declare, as a pseudo-infobox name, when they are decisive:
/// a person (births, deaths, living people — even "Deaths from motor neuron disease"),
/// else — when no category is medical — an organism or a topic outside medicine.
pub fn categories_declare(categories: &[String]) -> Option<&'static str> {
    let cats: Vec<String> = categories.iter().map(|c| c.trim().to_lowercase()).collect();
    let person = |c: &str| {
        c.ends_with(" births") || c.ends_with(" deaths") || c.starts_with("deaths from ") || c == "living people"
    };
    if cats.iter().any(|c| person(c)) {
        return Some(CATEGORY_NOT_MEDICAL);
    }
    const MEDICAL: &[&str] = &[
        "disease",
        "disorder",
        "syndrome",
        "symptom",
        "medic",
        "drug",
        "pharma",
        "infect",
        "pathogen",
        "parasit",
        "cancer",
        "tumo",
        "neoplasm",
        "anatom",
        "surg",
        "therap",
        "vaccin",
        "antibiotic",
        "virus",
        "viral",
        "bacteri",
        "fung",
        "genes",
        "genetic",
        "protein",
        "enzyme",
        "health",
        "psychiatr",
        "neurolog",
        "clinical",
        "diagnos",
        "injur",
        "poison",
        "toxi",
        "hormone",
        "receptor",
    ];
    if cats.iter().any(|c| MEDICAL.iter().any(|w| c.contains(w))) {
        return None;
    }
    const ORGANISM: &[&str] = &[
        " described in ",
        "taxa named by",
        "mammals",
        "birds",
        "reptiles",
        "snakes",
        "amphibians",
        "fish",
        "insects",
        "spiders",
        "moths",
        "butterflies",
        "beetles",
        "plants",
        "trees",
        "flora of",
        "fauna of",
        "animals",
    ];
    const OUTSIDE: &[&str] = &[
        "programming language",
        "software",
        "video games",
        "albums",
        "songs",
        "films",
        "television",
        "novels",
        "books",
        "bands",
        "companies",
        "populated places",
        "cities",
        "villages",
        "rivers",
        "mountains",
        "sports",
        "football",
        "railway",
        "ships",
        "aircraft",
        "musical groups",
    ];
    if cats.iter().any(|c| ORGANISM.iter().any(|w| c.contains(w))) {
        Some(CATEGORY_ORGANISM)
    } else if cats.iter().any(|c| OUTSIDE.iter().any(|w| c.contains(w))) {
        Some(CATEGORY_NOT_MEDICAL)
    } else {
        None
    }
}

/// What an infobox declares (see [`Declared`]).
pub fn declared(infobox: Option<&str>) -> Declared {
    let Some(name) = infobox else { return Declared::Unknown };
    let n = name.trim().to_lowercase();
    let medical = match n.as_str() {
        "infobox medical condition" | "infobox medical condition (new)" | "infobox disease" | "infobox disorder" => {
            EntityType::Disease
        }
        "infobox drug" | "drugbox" | "infobox drug class" | "chembox" => EntityType::Drug,
        "infobox symptom" | "infobox sign" | "infobox medical sign" => EntityType::SymptomSign,
        "infobox anatomy" | "infobox bone" | "infobox muscle" | "infobox nerve" | "infobox artery" | "infobox vein"
        | "infobox brain" | "infobox organ" | "infobox lymph" | "infobox ligament" | "infobox joint" => {
            EntityType::Anatomy
        }
        "infobox medical intervention" | "infobox procedure" | "infobox surgery" | "infobox interventions" => {
            EntityType::Procedure
        }
        "infobox diagnostic" | "infobox medical test" | "infobox diagnostic test" => EntityType::TestImaging,
        "infobox gene" | "infobox protein" | "infobox enzyme" | "gnf protein box" => EntityType::Gene,
        "infobox bacteria" | "infobox virus" | "virusbox" => EntityType::Pathogen,
        "taxobox" | "automatic taxobox" | "speciesbox" | "subspeciesbox" | "infraspeciesbox" | CATEGORY_ORGANISM => {
            return Declared::Organism;
        }
        CATEGORY_NOT_MEDICAL => return Declared::NotMedical,
        // Infoboxes we do not list but whose name says they may be medical: no verdict.
        _ if [
            "medic", "drug", "disease", "chem", "anatom", "gene", "protein", "symptom", "syndrome", "pathogen",
            "virus", "bacteri", "health", "pharma",
        ]
        .iter()
        .any(|w| n.contains(w)) =>
        {
            return Declared::Unknown;
        }
        _ if n.starts_with("infobox") || n == DISAMBIGUATION => return Declared::NotMedical,
        _ => return Declared::Unknown,
    };
    Declared::Medical(medical)
}

/// The type of a page for reading its relations: its infobox's, else (only when the
/// infobox says nothing against it) the lexicon's.
pub fn page_type(infobox: Option<&str>, title: &str, lexicon: &super::lexicon::Lexicon) -> Option<EntityType> {
    match declared(infobox) {
        Declared::Medical(t) => Some(t),
        Declared::Organism => lexicon.type_of(title).filter(|t| *t == EntityType::Pathogen),
        Declared::NotMedical => None,
        Declared::Unknown => lexicon.type_of(title),
    }
}

use EntityType as T;

/// One rule: where links are evidence of a predicate.
struct Rule {
    /// Section titles (lower case) or infobox field names.
    names: &'static [&'static str],
    predicate: Predicate,
    /// The page is the object (the link the subject).
    inverse: bool,
    /// Types the linked entity should have (empty: any).
    expect: &'static [EntityType],
}

const DISEASE_SECTIONS: &[Rule] = &[
    Rule {
        names: &[
            "signs and symptoms",
            "symptoms",
            "signs",
            "symptoms and signs",
            "clinical features",
            "presentation",
            "clinical presentation",
            "characteristics",
        ],
        predicate: Predicate::HasSymptom,
        inverse: false,
        expect: &[T::SymptomSign],
    },
    Rule {
        names: &[
            "diagnosis",
            "diagnostic",
            "diagnostic criteria",
            "screening",
            "investigations",
            "tests",
            "diagnostic tests",
            "imaging",
        ],
        predicate: Predicate::DiagnosedBy,
        inverse: false,
        expect: &[T::TestImaging, T::Procedure],
    },
    Rule {
        names: &[
            "treatment",
            "treatments",
            "management",
            "therapy",
            "medication",
            "medications",
            "pharmacotherapy",
            "surgery",
        ],
        predicate: Predicate::TreatedBy,
        inverse: false,
        expect: &[T::Drug, T::Procedure],
    },
    Rule {
        names: &["causes", "cause", "etiology", "aetiology", "causative agent"],
        predicate: Predicate::CausedBy,
        inverse: false,
        expect: &[T::Pathogen, T::Gene, T::Disease, T::Drug, T::Mechanism],
    },
    Rule { names: &["risk factors", "risks"], predicate: Predicate::RiskFactor, inverse: false, expect: &[] },
    Rule {
        names: &["complications", "prognosis and complications"],
        predicate: Predicate::ComplicationOf,
        inverse: true,
        expect: &[T::Disease, T::SymptomSign],
    },
    Rule {
        names: &["differential diagnosis", "differential diagnoses", "differential"],
        predicate: Predicate::DifferentialDiagnosis,
        inverse: false,
        expect: &[T::Disease],
    },
    Rule {
        names: &["pathophysiology", "mechanism", "mechanisms", "pathogenesis"],
        predicate: Predicate::Mechanism,
        inverse: false,
        expect: &[T::Mechanism, T::Gene],
    },
    Rule { names: &["genetics", "genetic"], predicate: Predicate::AssociatedGene, inverse: false, expect: &[T::Gene] },
    Rule {
        names: &["prevention"],
        predicate: Predicate::PreventedBy,
        inverse: false,
        expect: &[T::Drug, T::Procedure],
    },
    Rule {
        names: &["location", "affected organs", "sites"],
        predicate: Predicate::LocatedIn,
        inverse: false,
        expect: &[T::Anatomy],
    },
];

const DISEASE_FIELDS: &[Rule] = &[
    Rule { names: &["symptoms"], predicate: Predicate::HasSymptom, inverse: false, expect: &[T::SymptomSign] },
    Rule {
        names: &["complications"],
        predicate: Predicate::ComplicationOf,
        inverse: true,
        expect: &[T::Disease, T::SymptomSign],
    },
    Rule { names: &["causes"], predicate: Predicate::CausedBy, inverse: false, expect: &[] },
    Rule { names: &["risks", "risk factors"], predicate: Predicate::RiskFactor, inverse: false, expect: &[] },
    Rule {
        names: &["diagnosis"],
        predicate: Predicate::DiagnosedBy,
        inverse: false,
        expect: &[T::TestImaging, T::Procedure],
    },
    Rule {
        names: &["differential"],
        predicate: Predicate::DifferentialDiagnosis,
        inverse: false,
        expect: &[T::Disease],
    },
    Rule {
        names: &["treatment", "medication"],
        predicate: Predicate::TreatedBy,
        inverse: false,
        expect: &[T::Drug, T::Procedure],
    },
    Rule { names: &["prevention"], predicate: Predicate::PreventedBy, inverse: false, expect: &[] },
    Rule {
        names: &["location", "localization"],
        predicate: Predicate::LocatedIn,
        inverse: false,
        expect: &[T::Anatomy],
    },
    Rule { names: &["genes", "gene"], predicate: Predicate::AssociatedGene, inverse: false, expect: &[T::Gene] },
    Rule { names: &["specialty", "field"], predicate: Predicate::Specialty, inverse: false, expect: &[] },
];

const DRUG_SECTIONS: &[Rule] = &[
    Rule {
        names: &["medical uses", "medical use", "uses", "indications", "therapeutic uses"],
        predicate: Predicate::TreatedBy,
        inverse: true,
        expect: &[T::Disease, T::SymptomSign],
    },
    Rule {
        names: &["contraindications"],
        predicate: Predicate::ContraindicatedWith,
        inverse: false,
        expect: &[T::Disease, T::SymptomSign],
    },
    Rule {
        names: &["side effects", "adverse effects", "adverse reactions"],
        predicate: Predicate::AdverseEffect,
        inverse: false,
        expect: &[T::SymptomSign, T::Disease],
    },
    Rule {
        names: &["mechanism of action", "pharmacology", "pharmacodynamics", "mechanism"],
        predicate: Predicate::Mechanism,
        inverse: false,
        expect: &[T::Gene, T::Mechanism],
    },
    Rule {
        names: &["interactions", "drug interactions"],
        predicate: Predicate::InteractsWith,
        inverse: false,
        expect: &[T::Drug],
    },
    Rule {
        names: &["drug class", "classification"],
        predicate: Predicate::DrugClass,
        inverse: false,
        expect: &[T::Drug],
    },
];

const DRUG_FIELDS: &[Rule] = &[
    Rule {
        names: &["drug class", "class", "drug_class"],
        predicate: Predicate::DrugClass,
        inverse: false,
        expect: &[T::Drug],
    },
    Rule {
        names: &["indication", "indications", "uses"],
        predicate: Predicate::TreatedBy,
        inverse: true,
        expect: &[T::Disease, T::SymptomSign],
    },
    Rule {
        names: &["target", "targets"],
        predicate: Predicate::Mechanism,
        inverse: false,
        expect: &[T::Gene, T::Mechanism],
    },
];

const ANATOMY_SECTIONS: &[Rule] = &[
    Rule {
        names: &["clinical significance", "diseases", "disorders", "pathology", "clinical relevance"],
        predicate: Predicate::LocatedIn,
        inverse: true,
        expect: &[T::Disease],
    },
    Rule { names: &["structure", "location"], predicate: Predicate::PartOf, inverse: false, expect: &[T::Anatomy] },
];

const ANATOMY_FIELDS: &[Rule] = &[Rule {
    names: &["part of", "partof", "system"],
    predicate: Predicate::PartOf,
    inverse: false,
    expect: &[T::Anatomy],
}];

const SYMPTOM_SECTIONS: &[Rule] = &[Rule {
    names: &["causes", "cause", "differential diagnosis", "associated conditions"],
    predicate: Predicate::HasSymptom,
    inverse: true,
    expect: &[T::Disease],
}];

fn rules_for(t: EntityType) -> (&'static [Rule], &'static [Rule]) {
    match t {
        T::Disease => (DISEASE_SECTIONS, DISEASE_FIELDS),
        T::Drug => (DRUG_SECTIONS, DRUG_FIELDS),
        T::Anatomy => (ANATOMY_SECTIONS, ANATOMY_FIELDS),
        T::SymptomSign => (SYMPTOM_SECTIONS, DISEASE_FIELDS),
        _ => (&[], &[]),
    }
}

/// The strings behind the graph's hashes (keys are already uniform hashes: FxHash is
/// enough, SipHash costs more than the rest of a lookup).
pub type Names = rustc_hash::FxHashMap<u64, String>;

/// Confidence in thousandths.
pub type Conf = u16;

/// Hash of a string into the 64-bit key space of the graph (never 0): XXH3-64, a specified
/// (so stable) hash that is fast on the short strings it gets millions of (BLAKE3 was 7% of
/// a full run). Keys need no resistance to crafted collisions: a collision merges two
/// entities, and 64 bits make one unlikely below billions of names.
pub fn h(s: &str) -> u64 {
    let v = twox_hash::XxHash3_64::oneshot(s.as_bytes());
    if v == 0 { 1 } else { v }
}

/// An entity's id: its key hash as 16 hex digits.
pub fn entity_id(key_hash: u64) -> String {
    Hex16::new(key_hash).as_str().to_string()
}

/// A u64 as 16 lower-case hex digits, on the stack (ids are written for every row).
pub struct Hex16([u8; 16]);

impl Hex16 {
    /// The digits of `v`.
    pub fn new(v: u64) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut b = [0u8; 16];
        for (i, d) in b.iter_mut().enumerate() {
            *d = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
        }
        Hex16(b)
    }

    /// The digits as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// What a page says about its own entity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OwnVal {
    /// The page (hash of its row id).
    pub page: u64,
    /// Infobox name (hash; 0: none).
    pub infobox: u64,
    /// First sentence (hash; 0: none).
    pub description: u64,
}

/// One page's evidence for a relation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SupportVal {
    /// The page (hash of its row id).
    pub page: u64,
    /// Section title (hash; 0: none).
    pub section: u64,
    /// Infobox field (hash; 0: none).
    pub field: u64,
    /// Confidence in thousandths.
    pub conf: Conf,
}

/// A relation key: (subject, predicate index, object).
pub type RelKey = (u64, u8, u64);

/// A record of the graph, keyed by resolved entity key hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rec {
    /// Occurrences of links to an entity (the diff is the count).
    Freq(u64),
    /// A page touches an entity (mentions it, is it, or redirects to it).
    Touch(u64, u64),
    /// An alias (label or redirect title) used for an entity (the diff is the count).
    Alias(u64, u64),
    /// A type vote (type index) for an entity.
    Vote(u64, u8),
    /// A page is the entity's own page.
    Own(u64, OwnVal),
    /// A page supports a relation.
    Support(RelKey, SupportVal),
    /// Relations of an entity that an incremental run keeps as they are (the diff is the
    /// count); added to the degree the dataflow counts over the rebuilt relations.
    DegreeBase(u64),
    /// Pages of an entity's previous row, which an incremental run keeps as a list (the diff
    /// is their count); the changed pages' touches add to it and take from it.
    PagesBase(u64),
}

impl Rec {
    /// The entity keys a record is about.
    pub fn keys(&self) -> (u64, Option<u64>) {
        match *self {
            Rec::Freq(k)
            | Rec::Touch(k, _)
            | Rec::Alias(k, _)
            | Rec::Vote(k, _)
            | Rec::Own(k, _)
            | Rec::DegreeBase(k)
            | Rec::PagesBase(k) => (k, None),
            Rec::Support((s, _, o), _) => (s, Some(o)),
        }
    }
}

/// Interpretation settings.
pub struct Interp<'a> {
    /// The lexicon.
    pub lexicon: &'a Lexicon,
    /// Relations below this confidence (thousandths) are dropped.
    pub min_conf: Conf,
}

/// A page as the interpreter sees it.
pub struct PageRef<'a> {
    /// Row id.
    pub id: &'a str,
    /// Title.
    pub title: &'a str,
    /// `redirect_to` of the row, if set.
    pub redirect_to: Option<&'a str>,
    /// Whether the wikitext's `#REDIRECT` makes the page a redirect (only when the table
    /// has no `redirect_to` column).
    pub text_redirects: bool,
}

/// Maps a normalised title to the title it redirects to (if any).
pub type Resolve<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The records of one page, with the strings their hashes stand for. `resolve` maps a
/// normalised title to the title it redirects to (if any).
pub fn records(
    page: &PageRef<'_>,
    facts: &PageFacts,
    interp: &Interp<'_>,
    resolve: &Resolve<'_>,
    names: &mut Names,
) -> Vec<(Rec, i64)> {
    let mut out = Vec::new();
    let name = |s: &str, names: &mut Names| -> u64 {
        let k = h(s);
        names.entry(k).or_insert_with(|| s.to_string());
        k
    };
    let title = normalize_title(page.title);
    if title.is_empty() {
        return out;
    }
    let page_h = name(page.id, names);
    let res = |t: &str| resolve(t).unwrap_or_else(|| t.to_string());
    let redirect = match page.text_redirects {
        false => page.redirect_to.map(normalize_title),
        true => facts.redirect.clone(),
    };
    if let Some(target) = redirect.filter(|t| !t.is_empty() && *t != title) {
        // A redirect: its title is an alias of the (resolved) target.
        let t = res(&target);
        let tk = name(&t, names);
        let alias = name(&title, names);
        out.push((Rec::Touch(tk, page_h), 1));
        out.push((Rec::Alias(tk, alias), 1));
        return out;
    }
    let own_key_s = res(&title);
    let own_key = name(&own_key_s, names);
    let infobox = facts.infobox.as_deref().map(|n| name(n, names)).unwrap_or(0);
    let description = facts.description.as_deref().map(|d| name(d, names)).unwrap_or(0);
    out.push((Rec::Own(own_key, OwnVal { page: page_h, infobox, description }), 1));
    out.push((Rec::Touch(own_key, page_h), 1));
    let page_type = page_type(facts.infobox.as_deref(), &title, interp.lexicon);
    let (section_rules, field_rules) = page_type.map(rules_for).unwrap_or((&[], &[]));
    // The rule of each section: its own, else its parent's.
    let mut section_rule: Vec<Option<usize>> = Vec::with_capacity(facts.sections.len());
    for (i, s) in facts.sections.iter().enumerate() {
        let l = s.trim().to_lowercase();
        let own = section_rules.iter().position(|r| r.names.contains(&l.as_str()));
        let inherited =
            facts.parents.get(i).copied().flatten().and_then(|p| section_rule.get(p as usize).copied().flatten());
        section_rule.push(own.or(inherited));
    }
    let mut freq: BTreeMap<u64, i64> = BTreeMap::new();
    let mut aliases: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut votes: BTreeSet<(u64, u8)> = BTreeSet::new();
    let mut supports: BTreeMap<RelKey, SupportVal> = BTreeMap::new();
    for l in &facts.links {
        let target = res(&l.target);
        if target == own_key_s {
            continue;
        }
        let tk = name(&target, names);
        *freq.entry(tk).or_insert(0) += 1;
        if let Some(label) = &l.label {
            let lab = label.trim();
            if !lab.is_empty()
                && lab.len() <= 80
                && !lab.eq_ignore_ascii_case(&target)
                && !lab.eq_ignore_ascii_case(&l.target)
            {
                aliases.insert((tk, name(lab, names)));
            }
        }
        if l.template {
            continue;
        }
        let (rule, field_name, base) = match l.field {
            Some(fi) => {
                let fname = facts.fields.get(fi as usize).map(String::as_str).unwrap_or("");
                (field_rules.iter().find(|r| r.names.contains(&fname)), Some(fname), (900, 600))
            }
            None => {
                let r = section_rule.get(l.section as usize).copied().flatten().map(|i| &section_rules[i]);
                (r, None, (750, 400))
            }
        };
        let Some(rule) = rule else { continue };
        let known = interp.lexicon.type_of(&target).or_else(|| interp.lexicon.type_of(&l.target));
        let conf: Conf = match known {
            _ if rule.expect.is_empty() => base.0,
            Some(t) if rule.expect.contains(&t) => base.0,
            Some(_) => continue,
            None => base.1,
        };
        // Infobox fields are reliable enough to vote for the linked entity's type (section
        // links are not: they often point at people, places and concepts).
        if rule.expect.len() == 1 && l.field.is_some() {
            votes.insert((tk, rule.expect[0] as u8));
        }
        if conf < interp.min_conf {
            continue;
        }
        let (s, o) = if rule.inverse { (tk, own_key) } else { (own_key, tk) };
        let section = if l.field.is_some() {
            0
        } else {
            facts.sections.get(l.section as usize).filter(|s| !s.is_empty()).map(|s| name(s, names)).unwrap_or(0)
        };
        let field = field_name.map(|f| name(f, names)).unwrap_or(0);
        let sup = SupportVal { page: page_h, section, field, conf };
        let key = (s, rule.predicate as u8, o);
        match supports.get(&key) {
            Some(prev) if better(prev, &sup) => {}
            _ => {
                supports.insert(key, sup);
            }
        }
    }
    for (k, n) in freq {
        out.push((Rec::Freq(k), n));
        out.push((Rec::Touch(k, page_h), 1));
    }
    for (k, a) in aliases {
        out.push((Rec::Alias(k, a), 1));
    }
    for (k, t) in votes {
        out.push((Rec::Vote(k, t), 1));
    }
    for (k, s) in supports {
        out.push((Rec::Support(k, s), 1));
    }
    out
}

/// Whether support `a` is better evidence than `b` (higher confidence, then infobox over
/// section, then the smaller hashes, for a total order).
pub fn better(a: &SupportVal, b: &SupportVal) -> bool {
    (std::cmp::Reverse(a.conf), std::cmp::Reverse(a.field != 0), a.page, a.section, a.field)
        < (std::cmp::Reverse(b.conf), std::cmp::Reverse(b.field != 0), b.page, b.section, b.field)
}
