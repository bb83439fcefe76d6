//! Tests of the wikitext parser (constructs, the three real pages with hand-written
//! expectations, fuzzing) and of the `extract` operator (graph, typing, relations,
//! incremental runs equal to full runs, determinism across worker counts).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array, ListArray, StringArray};
use fleming_artifacts::Table;
use fleming_runtime::Harness;
use serde_json::json;

use super::wikitext::{LinkContext, Parsed, parse};
use super::*;
use crate::ops::crawl::{PageRow, dump, page_row_id, pages_table, text_digest};

// ---------------------------------------------------------------------------------------
// Shared data.

/// `FLEMING_SHARED_DATA`, else `../shared/data` beside the repository; panics with a clear
/// message when missing (tests that need it must not pass silently).
pub fn shared_data() -> PathBuf {
    let dir = match std::env::var_os("FLEMING_SHARED_DATA") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
                .join("../../shared/data")
        }
    };
    assert!(
        dir.join("wiki").is_dir(),
        "shared data not found at {} (set FLEMING_SHARED_DATA to the directory holding wiki/ and kg/)",
        dir.display()
    );
    dir
}

fn real_pages() -> BTreeMap<String, String> {
    let xml =
        std::fs::read_to_string(shared_data().join("wiki/enwiki-20160501-medical-3pages.xml")).expect("read export");
    dump::read_str(&xml).expect("parse export").into_iter().map(|p| (p.title, p.text)).collect()
}

fn section_links(p: &Parsed, title: &str) -> Vec<(String, Option<String>, LinkContext)> {
    let idx = p.sections.iter().position(|s| s.title == title).unwrap_or_else(|| panic!("no section {title}")) as u32;
    p.links
        .iter()
        .filter(|l| l.section == idx)
        .map(|l| (l.target.clone(), l.label.clone(), l.context.clone()))
        .collect()
}

fn body(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>, LinkContext)> {
    list.iter().map(|(t, l)| (t.to_string(), l.map(str::to_string), LinkContext::Body)).collect()
}

// ---------------------------------------------------------------------------------------
// Constructs.

#[test]
fn links_labels_anchors_trails_and_pipe_trick() {
    let p = parse(
        "See [[heart attack|MI]], [[Tissue (biology)|]], [[nerve cell]]s, [[Lung#Structure|lungs]] and [[ pregnancy ]].",
    );
    let got: Vec<(&str, Option<&str>, Option<&str>)> =
        p.links.iter().map(|l| (l.target.as_str(), l.anchor.as_deref(), l.label.as_deref())).collect();
    assert_eq!(
        got,
        vec![
            ("Heart attack", None, Some("MI")),
            ("Tissue (biology)", None, Some("Tissue")),
            ("Nerve cell", None, Some("nerve cells")),
            ("Lung", Some("Structure"), Some("lungs")),
            ("Pregnancy", None, None),
        ]
    );
    assert_eq!(p.description.as_deref(), Some("See MI, Tissue, nerve cells, lungs and pregnancy."));
}

#[test]
fn templates_nested_parser_functions_and_params() {
    let text = "{{Infobox medical condition\n| name = Flu {{small|(influenza)}}\n| symptoms = [[Fever]], {{nowrap|[[cough]]}}, {{#if:{{{x|}}}|[[Hidden]]|[[Shown]]}}\n| ICD10 = {{ICD10|J|10||j|09}}\n| 1 = positional\n}}\n'''Influenza''' is an [[infectious disease]].";
    let p = parse(text);
    let ib = p.infobox.expect("infobox");
    assert_eq!(ib.name, "infobox medical condition");
    assert_eq!(ib.field("name").map(|f| f.text.as_str()), Some("Flu (influenza)"));
    let sym = ib.field("symptoms").expect("symptoms");
    assert_eq!(sym.raw, "[[Fever]], {{nowrap|[[cough]]}}, {{#if:{{{x|}}}|[[Hidden]]|[[Shown]]}}");
    assert_eq!(sym.links, vec!["Fever", "Cough", "Hidden", "Shown"]);
    assert_eq!(ib.field("icd10").map(|f| f.text.as_str()), Some("J10"));
    assert!(p.links.iter().any(|l| l.target == "Fever" && l.context == LinkContext::Infobox(1)));
    assert_eq!(p.description.as_deref(), Some("Influenza is an infectious disease."));
}

#[test]
fn headings_sections_and_parents() {
    let p = parse(
        "Lead.\n== Signs and symptoms ==\n[[Fever]]\n=== Early <!-- c --> ===\n[[Chills]]\n== [[Diagnosis]] ==  <!-- trailing -->\n[[X-ray]]\n=Not a heading\n",
    );
    let titles: Vec<(&str, u8, Option<u32>)> =
        p.sections.iter().map(|s| (s.title.as_str(), s.level, s.parent)).collect();
    assert_eq!(
        titles,
        vec![("", 0, None), ("Signs and symptoms", 2, Some(0)), ("Early", 3, Some(1)), ("Diagnosis", 2, Some(0))]
    );
    let secs: Vec<(&str, u32)> = p.links.iter().map(|l| (l.target.as_str(), l.section)).collect();
    assert_eq!(secs, vec![("Fever", 1), ("Chills", 2), ("Diagnosis", 3), ("X-ray", 3)]);
}

#[test]
fn refs_comments_nowiki_math_and_tags() {
    let text = "A<ref name=x>{{cite journal|title=[[Not a link]]}}</ref> b<ref name=x/> <!-- [[Hidden]] --> \
                <nowiki>[[Literal]]</nowiki> <math>\\frac{a}{b}</math> <span style=\"x\">[[Kept]]</span> 1 < 2 &amp; &ndash; &#x41;&#66;.";
    let p = parse(text);
    assert_eq!(p.refs, 2);
    let targets: Vec<&str> = p.links.iter().map(|l| l.target.as_str()).collect();
    assert_eq!(targets, vec!["Kept"]);
    assert_eq!(p.description.as_deref(), Some("A b [[Literal]] … Kept 1 < 2 & – AB."));
}

#[test]
fn categories_files_and_other_namespaces() {
    let p = parse(
        "[[File:X.jpg|thumb|A [[caption link]] here]] [[Category:Rare diseases|Sort]] [[:Category:Shown]] [[wikt:word|word]] [[fr:Grippe]] [[Category:Rare diseases]]",
    );
    assert_eq!(p.categories, vec!["Rare diseases"]);
    let targets: Vec<&str> = p.links.iter().map(|l| l.target.as_str()).collect();
    assert_eq!(targets, vec!["Caption link"]);
}

#[test]
fn tables_keep_their_links() {
    let p = parse("== Drugs ==\n{| class=\"wikitable\"\n! Drug !! Use\n|-\n| [[Aspirin]] || [[Pain]]\n|}\nAfter.");
    let targets: Vec<(&str, u32)> = p.links.iter().map(|l| (l.target.as_str(), l.section)).collect();
    assert_eq!(targets, vec![("Aspirin", 1), ("Pain", 1)]);
}

#[test]
fn redirects() {
    assert_eq!(parse("#REDIRECT [[heart attack#Signs]]").redirect.as_deref(), Some("Heart attack"));
    assert_eq!(parse("#redirect: [[Flu]] {{R from alias}}").redirect.as_deref(), Some("Flu"));
    assert_eq!(parse("Text #REDIRECT [[X]]").redirect, None);
}

#[test]
fn unbalanced_markup_falls_back_to_text() {
    let p = parse("{{broken [[Fine]] and ]] }} [[Also fine]] {{{{ [[x|y [[z]] ]]");
    let targets: Vec<&str> = p.links.iter().map(|l| l.target.as_str()).collect();
    assert!(targets.contains(&"Also fine"), "{targets:?}");
    assert!(targets.contains(&"Z"), "{targets:?}");
}

// ---------------------------------------------------------------------------------------
// The three real pages. Expectations written by hand from the raw wikitext.

#[test]
fn real_autism_page() {
    let pages = real_pages();
    let p = parse(&pages["Autism"]);
    let ib = p.infobox.as_ref().expect("infobox");
    assert_eq!(ib.name, "infobox disease");
    let names: Vec<&str> = ib.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "name",
            "image",
            "alt",
            "caption",
            "field",
            "diseasesdb",
            "icd10",
            "icd9",
            "omim",
            "medlineplus",
            "emedicinesubj",
            "emedicinetopic",
            "emedicine mult",
            "meshid",
            "genereviewsnbk",
            "genereviewsname"
        ]
    );
    let f = |n: &str| ib.field(n).unwrap_or_else(|| panic!("field {n}"));
    assert_eq!(f("name").raw, "Autism");
    assert_eq!(f("image").raw, "Autism-stacking-cans 2nd edit.jpg");
    assert_eq!(f("caption").text, "Repetitively stacking or lining up objects is associated with autism.");
    assert_eq!(f("field").raw, "[[Psychiatry]]");
    assert_eq!(f("field").text, "Psychiatry");
    assert_eq!(f("field").links, vec!["Psychiatry"]);
    assert_eq!(f("icd10").raw, "{{ICD10|F|84|0|f|80}}");
    assert_eq!(f("icd10").text, "F84.0");
    assert_eq!(f("icd9").text, "299.00");
    assert_eq!(f("diseasesdb").text, "1142");
    assert_eq!(f("omim").text, "209850");
    assert_eq!(f("medlineplus").text, "001526");
    assert_eq!(f("emedicine mult").raw, "{{eMedicine2|ped|180}}");
    assert_eq!(f("meshid").text, "D001321");
    assert_eq!(f("genereviewsname").text, "Autism overview");
    assert_eq!(
        p.description.as_deref(),
        Some(
            "Autism is a neurodevelopmental disorder characterized by impaired social interaction, verbal and non-verbal communication, and restricted and repetitive behavior."
        )
    );
    assert_eq!(
        p.categories,
        vec![
            "Autism",
            "Communication disorders",
            "Mental and behavioural disorders",
            "Neurological disorders",
            "Neurological disorders in children",
            "Pervasive developmental disorders",
            "Psychiatric diagnosis"
        ]
    );
    // Sections and their nesting.
    let sec = |t: &str| p.sections.iter().find(|s| s.title == t).unwrap_or_else(|| panic!("section {t}"));
    assert_eq!(sec("Social development").level, 3);
    let parent = sec("Medication").parent.expect("parent") as usize;
    assert_eq!(p.sections[parent].title, "Management");
    // Every link of "Medication" (refs excluded).
    assert_eq!(
        section_links(&p, "Medication"),
        body(&[
            ("Psychoactive drug", Some("psychoactive drugs")),
            ("Anticonvulsant", Some("anticonvulsants")),
            ("Antidepressant", Some("antidepressants")),
            ("Stimulant", Some("stimulants")),
            ("Antipsychotic", Some("antipsychotics")),
            ("Risperidone", None),
            ("Aripiprazole", None),
        ])
    );
    // {{main|…}} renders a link.
    assert_eq!(section_links(&p, "Causes")[0], ("Causes of autism".into(), None, LinkContext::Template("main".into())));
    // A sample of the lead.
    let lead = section_links(&p, "");
    for want in [
        ("Autism spectrum", None, LinkContext::Template("hatnote".into())),
        ("Neurodevelopmental disorder", None, LinkContext::Body),
        ("Interpersonal relationship", Some("social interaction"), LinkContext::Body),
        ("Language acquisition", Some("verbal"), LinkContext::Body),
        ("Non-verbal communication", None, LinkContext::Body),
        ("Regressive autism", Some("regress"), LinkContext::Body),
        ("Synapse", Some("synapses"), LinkContext::Body),
        ("Asperger syndrome", None, LinkContext::Body),
    ] {
        let want = (want.0.to_string(), want.1.map(str::to_string), want.2);
        assert!(lead.contains(&want), "lead lacks {want:?}");
    }
    assert!(p.refs > 100, "{}", p.refs);
}

#[test]
fn real_abortion_page() {
    let pages = real_pages();
    let p = parse(&pages["Abortion"]);
    let ib = p.infobox.as_ref().expect("infobox");
    assert_eq!(ib.name, "infobox medical condition");
    let names: Vec<&str> = ib.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "name",
            "image",
            "caption",
            "field",
            "icd10",
            "icd9",
            "diseasesdb",
            "icdo",
            "omim",
            "medlineplus",
            "emedicinesubj",
            "emedicinetopic",
            "meshid"
        ]
    );
    let f = |n: &str| ib.field(n).unwrap_or_else(|| panic!("field {n}"));
    assert_eq!(f("name").text, "Induced abortion");
    assert_eq!(f("image").text, "");
    assert_eq!(f("caption").raw, "");
    assert_eq!(f("field").raw, "[[Obstetrics]] and [[gynecology]]");
    assert_eq!(f("field").text, "Obstetrics and gynecology");
    assert_eq!(f("field").links, vec!["Obstetrics", "Gynecology"]);
    assert_eq!(f("icd10").text, "O04");
    assert_eq!(f("icd9").text, "779.6");
    assert_eq!(f("diseasesdb").text, "4153");
    assert_eq!(f("medlineplus").text, "002912");
    assert_eq!(f("emedicinetopic").text, "252560");
    assert_eq!(f("meshid").text, "D000028");
    assert_eq!(
        p.description.as_deref(),
        Some(
            "Abortion is the ending of pregnancy by removing a fetus or embryo before it can survive outside the uterus."
        )
    );
    assert_eq!(
        p.categories,
        vec!["Abortion", "Ethically disputed practices", "Fertility", "Gender studies", "Human reproduction", "RTT"]
    );
    // Every link of "Spontaneous" (refs excluded), after its {{Main|Miscarriage}}.
    let mut want = vec![("Miscarriage".to_string(), None, LinkContext::Template("main".into()))];
    want.extend(body(&[
        ("Gestational age", Some("week of gestation")),
        ("Live birth (human)", Some("live-born")),
        ("Premature birth", None),
        ("In utero", None),
        ("Fetal viability", Some("viability")),
        ("Childbirth", Some("delivery")),
        ("Stillbirth", Some("stillborn")),
        ("First trimester", None),
        ("Clinically silent", Some("aware of the conception")),
        ("Chromosomal abnormalities", None),
        ("Vascular disease", None),
        ("Systemic lupus erythematosus", Some("lupus")),
        ("Diabetes mellitus", Some("diabetes")),
        ("Physical trauma", Some("trauma")),
        ("Feticide", None),
    ]));
    assert_eq!(section_links(&p, "Spontaneous"), want);
    // A sample of "Medical".
    let medical = section_links(&p, "Medical");
    for w in [
        ("Abortifacient", None),
        ("Prostaglandin", None),
        ("Prostaglandin analogue", Some("analogs")),
        ("Antiprogestin", Some("antiprogestogen")),
        ("Mifepristone", None),
        ("Misoprostol", None),
        ("Gemeprost", None),
        ("Methotrexate", None),
    ] {
        let w = (w.0.to_string(), w.1.map(str::to_string), LinkContext::Body);
        assert!(medical.contains(&w), "Medical lacks {w:?}");
    }
    // A heading made of a template and text.
    assert!(p.sections.iter().any(|s| s.title == "Other animals" && s.level == 2));
}

#[test]
fn real_anatomy_page() {
    let pages = real_pages();
    let p = parse(&pages["Anatomy"]);
    assert!(p.infobox.is_none());
    assert_eq!(
        p.description.as_deref(),
        Some(
            "Anatomy is the branch of biology concerned with the study of the structure of organisms and their parts."
        )
    );
    assert_eq!(p.categories, vec!["Anatomy", "Anatomical terminology", "Morphology"]);
    // Every link of "Epithelium", the file caption's included.
    assert_eq!(
        section_links(&p, "Epithelium"),
        body(&[
            ("H&E stain", None),
            ("Epithelial tissue", None),
            ("Cell adhesion molecule", Some("cell adhesion molecules")),
            ("Squamous epithelial cell", Some("squamous")),
            ("Simple cuboidal epithelium", Some("cuboidal")),
            ("Columnar epithelial cell", Some("columnar")),
            ("Basal lamina", None),
            ("Basement membrane", None),
            ("Respiratory tract", None),
            ("Pseudostratified ciliated columnar epithelium", Some("ciliated")),
            ("Microvilli", None),
            ("Intestinal villi", None),
            ("Skin", None),
            ("Keratin", Some("keratinised")),
            ("Keratinocyte", Some("Keratinocytes")),
            ("Epidermis (skin)", Some("skin")),
            ("Cuticle", None),
            ("Glycoproteins", None),
            ("Gland", Some("glands")),
        ])
    );
    let arthro = section_links(&p, "Arthropod anatomy");
    let main: Vec<&str> =
        arthro.iter().filter(|l| l.2 == LinkContext::Template("main".into())).map(|l| l.0.as_str()).collect();
    assert_eq!(main, vec!["Arthropod", "Insect morphology", "Spider anatomy"]);
    let sec = |t: &str| p.sections.iter().find(|s| s.title == t).unwrap_or_else(|| panic!("section {t}"));
    assert_eq!(sec("Human anatomy").level, 4);
    assert_eq!(p.sections[sec("Human anatomy").parent.expect("parent") as usize].title, "Mammal anatomy");
}

// ---------------------------------------------------------------------------------------
// Fuzzing: no input may panic or hang.

mod fuzz {
    use proptest::prelude::*;

    use super::parse;
    use crate::ops::extract::wikitext::{normalize_title, normalized_title};

    const PIECES: &[&str] = &[
        "{{",
        "}}",
        "{{{",
        "}}}",
        "[[",
        "]]",
        "[",
        "]",
        "|",
        "=",
        "==",
        "\n",
        "\n==",
        "==\n",
        "<ref>",
        "</ref>",
        "<ref name=a/>",
        "<!--",
        "-->",
        "<nowiki>",
        "</nowiki>",
        "<math>",
        "</math>",
        "&amp;",
        "&#x41;",
        "&#99999999;",
        "&",
        "'''",
        "''",
        "{|",
        "|}",
        "|-",
        "!",
        "#REDIRECT ",
        "Category:",
        "File:",
        ":",
        "#",
        "http://x.org",
        " ",
        "a",
        "Ü",
        "text",
        "Infobox disease",
        "__NOTOC__",
        "<span>",
        "</span>",
        "<",
        ">",
        "{{#if:",
        "\u{0}",
    ];

    fn wikitext() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![prop::sample::select(PIECES).prop_map(str::to_string), "\\PC{0,6}"], 0..200)
            .prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

        #[test]
        fn never_panics(text in wikitext()) {
            let p = parse(&text);
            // Everything the parser reports points inside what it found.
            for l in &p.links {
                prop_assert!((l.section as usize) < p.sections.len());
                prop_assert!(!l.target.is_empty());
            }
        }

        #[test]
        fn never_panics_on_arbitrary_strings(text in "\\PC{0,400}") {
            let _ = parse(&text);
        }

        /// The borrowing fast path normalises exactly as `normalize_title` does.
        #[test]
        fn normalized_title_is_normalize_title(t in "[ _a-zA-Z&;#0-9\t\u{a0}é]{0,12}") {
            prop_assert_eq!(normalized_title(&t).into_owned(), normalize_title(&t));
        }
    }

    /// Pathological inputs stay linear: a megabyte of unclosed openers parses quickly.
    #[test]
    fn adversarial_inputs_are_fast() {
        for unit in ["{{", "[[", "<ref>", "<!--", "{{{", "[[a|", "{{x|[[", "==", "'''''", "[http://a "] {
            let text = unit.repeat(1_000_000 / unit.len());
            let t = std::time::Instant::now();
            let _ = parse(&text);
            assert!(t.elapsed().as_secs_f64() < 5.0, "{unit:?} took {:?}", t.elapsed());
        }
    }
}

// ---------------------------------------------------------------------------------------
// The operator.

fn row(title: &str, text: &str) -> PageRow {
    let (links, categories, _) = crate::ops::crawl::scan(title, text);
    PageRow {
        id: page_row_id(title),
        page_id: (crate::ops::extract::rules::h(title) % 1_000_000) as i64,
        title: title.to_string(),
        ns: 0,
        revision_id: Some(1),
        timestamp: None,
        wikitext: text.to_string(),
        categories,
        links,
        redirect_to: super::wikitext::parse_redirect(text),
        url: String::new(),
        digest: text_digest(title, text),
        depth: None,
    }
}

fn small_wiki() -> Vec<PageRow> {
    vec![
        row(
            "Influenza",
            "{{Infobox medical condition (new)\n| name = Influenza\n| symptoms = [[Fever]], [[cough]]\n| treatment = [[Oseltamivir]]\n| field = [[Infectious disease (medical specialty)|Infectious disease]]\n}}\n\
             '''Influenza''' is an [[infectious disease]] caused by an [[influenza virus]].\n\
             == Signs and symptoms ==\nPatients have [[myalgia|muscle pain]], [[headache]] and [[United States|American]] doctors.\n\
             == Diagnosis ==\nA [[rapid influenza diagnostic test]] or [[Polymerase chain reaction|PCR]].\n\
             == Complications ==\n[[Pneumonia]].\n== History ==\n[[Spanish flu]].\n[[Category:Influenza]]",
        ),
        row(
            "Oseltamivir",
            "{{Infobox drug\n| drug_name = Oseltamivir\n| class = [[Neuraminidase inhibitor]]\n}}\n'''Oseltamivir''' is an [[antiviral drug]].\n\
             == Medical uses ==\nUsed for [[influenza]] and [[flu]].\n== Side effects ==\n[[Nausea]] and [[vomiting]].\n== Contraindications ==\n[[Kidney failure]].",
        ),
        row("Flu", "#REDIRECT [[Influenza]]"),
        row(
            "Fever",
            "{{Infobox symptom\n| name = Fever}}\n'''Fever''' is a [[body temperature]] above normal.\n== Causes ==\n[[Influenza]] and [[malaria]].",
        ),
        row(
            "Pneumonia",
            "{{Infobox medical condition\n| name = Pneumonia}}\n'''Pneumonia''' is an inflammation of the [[lung]].\n== Signs and symptoms ==\n[[Cough]], [[fever]].\n== Differential diagnosis ==\n[[Influenza]].",
        ),
        row("List of things", "Just a [[list]]."),
    ]
}

fn lexicon_file(dir: &std::path::Path) -> PathBuf {
    let p = dir.join("lexicon.tsv");
    std::fs::write(
        &p,
        "name\ttype\tcanonical\nFever\tsymptom\nCough\tsymptom\nHeadache\tsymptom\nMyalgia\tsymptom\nMuscle ache\tsymptom\tMyalgia\n\
         Nausea\tsymptom\nVomiting\tsymptom\nPneumonia\tdisease\nKidney failure\tdisease\nMalaria\tdisease\nInfluenza\tdisease\n\
         Grippe\tdisease\tInfluenza\nOseltamivir\tdrug\nNeuraminidase inhibitor\tdrug\nRapid influenza diagnostic test\ttest\n\
         Polymerase chain reaction\ttest\nInfluenza virus\tpathogen\nLung\tanatomy\n",
    )
    .unwrap();
    p
}

fn run(rows: Vec<PageRow>, threads: usize, lexicon: &std::path::Path) -> fleming_runtime::harness::HarnessOutput {
    Harness::new(Arc::new(Extract))
        .param("lexicon", lexicon.to_string_lossy().to_string())
        .threads(threads)
        .input("pages", pages_table(rows).unwrap())
        .run()
        .unwrap()
}

fn strings(t: &Table, col: &str) -> Vec<String> {
    let b = t.concat().unwrap();
    let c = b.column_by_name(col).unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    (0..c.len()).map(|i| if c.is_null(i) { String::new() } else { c.value(i).to_string() }).collect()
}

fn relations_of(out: &fleming_runtime::harness::HarnessOutput) -> Vec<(String, String, String)> {
    let t = out.table("relations").unwrap();
    let (s, p, o) = (strings(t, "subject_name"), strings(t, "predicate"), strings(t, "object_name"));
    let mut v: Vec<(String, String, String)> = s.into_iter().zip(p).zip(o).map(|((a, b), c)| (a, b, c)).collect();
    v.sort();
    v
}

#[test]
fn extracts_typed_entities_and_relations() {
    let dir = tempfile::tempdir().unwrap();
    let lex = lexicon_file(dir.path());
    let out = run(small_wiki(), 1, &lex);
    let rels = relations_of(&out);
    let has = |s: &str, p: &str, o: &str| rels.contains(&(s.to_string(), p.to_string(), o.to_string()));
    assert!(has("Influenza", "has_symptom", "Fever"), "{rels:#?}");
    assert!(has("Influenza", "has_symptom", "Cough"));
    assert!(has("Influenza", "has_symptom", "Myalgia"));
    assert!(has("Influenza", "has_symptom", "Headache"));
    assert!(has("Influenza", "treated_by", "Oseltamivir"));
    assert!(has("Influenza", "diagnosed_by", "Rapid influenza diagnostic test"));
    assert!(has("Influenza", "diagnosed_by", "Polymerase chain reaction"));
    assert!(has("Pneumonia", "complication_of", "Influenza"));
    assert!(has("Oseltamivir", "drug_class", "Neuraminidase inhibitor"));
    assert!(has("Oseltamivir", "adverse_effect", "Nausea"));
    assert!(has("Oseltamivir", "contraindicated_with", "Kidney failure"));
    assert!(has("Pneumonia", "differential_diagnosis", "Influenza"));
    // The symptom page's "Causes": inverse has_symptom; "Flu" resolves to Influenza.
    assert!(has("Malaria", "has_symptom", "Fever"));
    // Noise is not a relation: a country under "Signs and symptoms", history links.
    assert!(!rels.iter().any(|r| r.2 == "United States" || r.2 == "Spanish flu"), "{rels:#?}");
    // Specialty from the infobox `field`.
    assert!(has("Influenza", "specialty", "Infectious disease (medical specialty)"));
    // Relations are in (subject, predicate, object) order: an entity's relations together.
    let t = out.table("relations").unwrap();
    let (subjects, predicates, objects) = (strings(t, "subject"), strings(t, "predicate"), strings(t, "object"));
    let order: Vec<(&String, u8, &String)> = (0..subjects.len())
        .map(|i| (&subjects[i], Predicate::parse(&predicates[i]).unwrap() as u8, &objects[i]))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "relations out of order: {order:?}");
    // Relations carry evidence and parents.
    let b = t.concat().unwrap();
    let idx = (0..b.num_rows())
        .find(|&i| strings(t, "subject_name")[i] == "Influenza" && strings(t, "object_name")[i] == "Fever")
        .unwrap();
    let parents = b.column_by_name("parents").unwrap().as_any().downcast_ref::<ListArray>().unwrap().value(idx);
    let parents = parents.as_any().downcast_ref::<StringArray>().unwrap();
    let parents: Vec<&str> = (0..parents.len()).map(|i| parents.value(i)).collect();
    assert!(
        parents.contains(&page_row_id("Influenza").as_str()) && parents.contains(&page_row_id("Fever").as_str()),
        "{parents:?}"
    );
    assert_eq!(strings(t, "evidence_field")[idx], "symptoms");
    let conf = b.column_by_name("confidence").unwrap().as_any().downcast_ref::<Float64Array>().unwrap().value(idx);
    assert!((conf - 0.9).abs() < 1e-9);
    // Entities: types, aliases (labels, redirects, lexicon synonyms), descriptions, degrees.
    let e = out.table("entities").unwrap();
    let names = strings(e, "name");
    let find = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("no entity {n}"));
    let types = strings(e, "type");
    assert_eq!(types[find("Influenza")], "disease");
    assert_eq!(types[find("Oseltamivir")], "drug");
    assert_eq!(types[find("Fever")], "symptom-sign");
    assert_eq!(types[find("Lung")], "anatomy");
    assert_eq!(types[find("United States")], "other");
    assert!(!names.contains(&"Flu".to_string()), "the redirect is merged");
    let eb = e.concat().unwrap();
    let aliases =
        eb.column_by_name("aliases").unwrap().as_any().downcast_ref::<ListArray>().unwrap().value(find("Influenza"));
    let aliases = aliases.as_any().downcast_ref::<StringArray>().unwrap();
    let aliases: Vec<&str> = (0..aliases.len()).map(|i| aliases.value(i)).collect();
    assert!(aliases.contains(&"Flu") && aliases.contains(&"Grippe"), "{aliases:?}");
    let myalgia =
        eb.column_by_name("aliases").unwrap().as_any().downcast_ref::<ListArray>().unwrap().value(find("Myalgia"));
    let myalgia = myalgia.as_any().downcast_ref::<StringArray>().unwrap();
    assert!((0..myalgia.len()).any(|i| myalgia.value(i) == "muscle pain"));
    assert_eq!(
        strings(e, "description")[find("Influenza")],
        "Influenza is an infectious disease caused by an influenza virus."
    );
    let degree = eb.column_by_name("degree").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    let n_inf = rels.iter().filter(|r| r.0 == "Influenza" || r.2 == "Influenza").count() as i64;
    assert_eq!(degree.value(find("Influenza")), n_inf);
    // `Flu` and `influenza` links both count towards Influenza's frequency.
    let freq = eb.column_by_name("frequency").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(freq.value(find("Influenza")), 4);
}

#[test]
fn output_does_not_depend_on_workers() {
    let dir = tempfile::tempdir().unwrap();
    let lex = lexicon_file(dir.path());
    let one = run(small_wiki(), 1, &lex);
    let three = run(small_wiki(), 3, &lex);
    for port in ["entities", "relations", "rejects"] {
        assert_eq!(one.digest(port).unwrap(), three.digest(port).unwrap(), "{port}");
    }
}

/// Runs extract on `after` with `before` as the previous run, and from scratch; both must
/// give the same bytes.
fn incremental_equals_full(
    before: Vec<PageRow>,
    after: Vec<PageRow>,
    lex: &std::path::Path,
) -> serde_json::Map<String, serde_json::Value> {
    incremental_equals_full_with(before, after, lex, true)
}

/// [`incremental_equals_full`]; without `share_memo` the rerun finds no facts in the memo
/// and reads the previous pages' text.
fn incremental_equals_full_with(
    before: Vec<PageRow>,
    after: Vec<PageRow>,
    lex: &std::path::Path,
    share_memo: bool,
) -> serde_json::Map<String, serde_json::Value> {
    let op = Arc::new(Extract);
    let memo = Harness::new_memo(op.as_ref());
    let rerun_memo = if share_memo { memo.clone() } else { Harness::new_memo(op.as_ref()) };
    let first = Harness::new(op.clone())
        .param("lexicon", lex.to_string_lossy().to_string())
        .memo(memo.clone())
        .input("pages", pages_table(before.clone()).unwrap())
        .run()
        .unwrap();
    let mut outputs = BTreeMap::new();
    for port in ["entities", "relations", "rejects"] {
        // In batches of two rows, as a table read back from Parquet comes in batches.
        let t = first.table(port).unwrap();
        let all = t.concat().unwrap();
        let parts = (0..all.num_rows()).step_by(2).map(|i| all.slice(i, 2.min(all.num_rows() - i))).collect();
        outputs.insert(port.to_string(), Table::new(t.schema.clone(), parts));
    }
    let mut inputs = BTreeMap::new();
    inputs.insert("pages".to_string(), vec![pages_table(before).unwrap()]);
    let params = json!({"lexicon": lex.to_string_lossy(), "min_confidence": 0.5});
    let full = Harness::new(op.clone())
        .param("lexicon", lex.to_string_lossy().to_string())
        .input("pages", pages_table(after.clone()).unwrap())
        .run()
        .unwrap();
    // One thread, then two (the tables are then built in slices): the same bytes. The
    // metrics are the first run's (the second finds the first's facts in the memo).
    let mut metrics = None;
    for threads in [1, 2] {
        let inc = Harness::new(op.clone())
            .param("lexicon", lex.to_string_lossy().to_string())
            .memo(rerun_memo.clone())
            .threads(threads)
            .input("pages", pages_table(after.clone()).unwrap())
            .previous(params.clone(), inputs.clone(), outputs.clone())
            .unwrap()
            .run()
            .unwrap();
        assert_eq!(inc.metrics.get("mode").and_then(|m| m.as_str()), Some("incremental"), "{:?}", inc.metrics);
        for port in ["entities", "relations", "rejects"] {
            if inc.digest(port).unwrap() != full.digest(port).unwrap() {
                let a = inc.table(port).unwrap();
                let b = full.table(port).unwrap();
                panic!(
                    "{port} differ with {threads} threads:\nincremental:\n{}\nfull:\n{}",
                    arrow::util::pretty::pretty_format_batches(&[a.concat().unwrap()]).unwrap(),
                    arrow::util::pretty::pretty_format_batches(&[b.concat().unwrap()]).unwrap()
                );
            }
        }
        metrics.get_or_insert(inc.metrics);
    }
    metrics.unwrap_or_default()
}

#[test]
fn incremental_edit_equals_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let lex = lexicon_file(dir.path());
    let before = small_wiki();
    let mut after = before.clone();
    // Edit one page: a symptom removed, another added, a new section.
    after[0] = row(
        "Influenza",
        &after[0]
            .wikitext
            .replace("[[headache]]", "[[sore throat]]")
            .replace("== History ==", "== Risk factors ==\n[[Pregnancy]]\n== History =="),
    );
    let m = incremental_equals_full(before.clone(), after.clone(), &lex);
    assert_eq!(m.get("parsed_pages").and_then(|v| v.as_u64()), Some(1), "only the edited page is parsed: {m:?}");
    // With an empty memo, both versions of the page are parsed (the old one from the
    // previous input's text, which the diff itself does not read).
    let m = incremental_equals_full_with(before, after, &lex, false);
    assert_eq!(m.get("parsed_pages").and_then(|v| v.as_u64()), Some(2), "{m:?}");
}

#[test]
fn incremental_add_remove_and_redirect_changes_equal_full_run() {
    let dir = tempfile::tempdir().unwrap();
    let lex = lexicon_file(dir.path());
    let before = small_wiki();
    // A page added, one removed.
    let mut after = before.clone();
    after.retain(|r| r.title != "Pneumonia");
    after.push(row("Malaria", "{{Infobox medical condition\n| name = Malaria\n| symptoms = [[Fever]], [[Headache]]}}\n'''Malaria''' is a disease."));
    incremental_equals_full(before.clone(), after, &lex);
    // A redirect retargeted, one added, one turned into an article.
    let mut after = before.clone();
    after.retain(|r| r.title != "Flu");
    after.push(row("Flu", "#REDIRECT [[Fever]]"));
    after.push(row("Grippe", "#REDIRECT [[Influenza]]"));
    after.push(row("Cough", "{{Infobox symptom}}\n'''Cough''' is a reflex.\n== Causes ==\n[[Flu]]."));
    incremental_equals_full(before.clone(), after.clone(), &lex);
    // And back.
    incremental_equals_full(after, before, &lex);
}

/// A previous output that does not come from the previous input (here: made without the
/// `Pneumonia` page that the input has) cannot be updated: the rerun says so and makes a
/// full run, whose result is right.
#[test]
fn incremental_falls_back_when_the_previous_output_does_not_fit_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let lex = lexicon_file(dir.path());
    let op = Arc::new(Extract);
    let mut without = small_wiki();
    without.retain(|r| r.title != "Pneumonia");
    let first = run(without, 1, &lex);
    let mut outputs = BTreeMap::new();
    for port in ["entities", "relations", "rejects"] {
        outputs.insert(port.to_string(), first.table(port).unwrap().clone());
    }
    let mut inputs = BTreeMap::new();
    inputs.insert("pages".to_string(), vec![pages_table(small_wiki()).unwrap()]);
    // Pneumonia edited: its old records are taken from lists that never had them.
    let mut after = small_wiki();
    for r in after.iter_mut().filter(|r| r.title == "Pneumonia") {
        *r = row("Pneumonia", &r.wikitext.replace("[[Cough]], ", ""));
    }
    let params = json!({"lexicon": lex.to_string_lossy(), "min_confidence": 0.5});
    let inc = Harness::new(op)
        .param("lexicon", lex.to_string_lossy().to_string())
        .input("pages", pages_table(after.clone()).unwrap())
        .previous(params, inputs, outputs)
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(inc.metrics.get("mode").and_then(|m| m.as_str()), Some("full"), "{:?}", inc.metrics);
    let reason = inc.metrics.get("full_reason").and_then(|m| m.as_str()).unwrap_or_default();
    assert!(reason.contains("inconsistent"), "{reason}");
    let full = run(after, 1, &lex);
    for port in ["entities", "relations", "rejects"] {
        assert_eq!(inc.digest(port).unwrap(), full.digest(port).unwrap(), "{port}");
    }
}

mod incremental_fuzz {
    use proptest::prelude::*;

    use super::*;

    const TITLES: &[&str] =
        &["Influenza", "Fever", "Cough", "Pneumonia", "Oseltamivir", "Malaria", "Flu", "Nausea", "Lung", "Grippe"];

    fn page_text() -> impl Strategy<Value = String> {
        let link = prop::sample::select(TITLES).prop_map(|t| format!("[[{t}]]"));
        let labelled = (prop::sample::select(TITLES), prop::sample::select(&["x", "the thing", "y"][..]))
            .prop_map(|(t, l)| format!("[[{t}|{l}]]"));
        let section = prop::sample::select(
            &["Signs and symptoms", "Treatment", "Complications", "Medical uses", "Causes", "History"][..],
        )
        .prop_map(|s| format!("\n== {s} ==\n"));
        let infobox = prop::sample::select(
            &[
                "{{Infobox medical condition}}\n",
                "{{Infobox drug\n| class = [[Oseltamivir]]}}\n",
                "{{Infobox symptom}}\n",
                "",
            ][..],
        )
        .prop_map(str::to_string);
        let redirect = prop::sample::select(TITLES).prop_map(|t| format!("#REDIRECT [[{t}]]"));
        prop_oneof![
            4 => (infobox, prop::collection::vec(prop_oneof![link, labelled, section], 0..12)).prop_map(|(i, v)| format!("{i}'''X''' is.{}", v.concat())),
            1 => redirect,
        ]
    }

    fn wiki() -> impl Strategy<Value = Vec<(usize, String)>> {
        prop::collection::vec((0..TITLES.len(), page_text()), 1..8)
    }

    fn rows(pages: &[(usize, String)]) -> Vec<PageRow> {
        let mut seen = std::collections::HashSet::new();
        pages.iter().filter(|(t, _)| seen.insert(*t)).map(|(t, text)| row(TITLES[*t], text)).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// Any edit of any small wiki: the incremental result is the full result.
        #[test]
        fn incremental_is_full(before in wiki(), after in wiki()) {
            let dir = tempfile::tempdir().unwrap();
            let lex = lexicon_file(dir.path());
            let (b, a) = (rows(&before), rows(&after));
            // Some pages replaced, added or removed.
            let mut mixed = b.clone();
            for (i, p) in a.iter().enumerate() {
                mixed.retain(|r| r.title != p.title);
                if i % 3 != 2 {
                    mixed.push(p.clone());
                }
            }
            incremental_equals_full(b, mixed, &lex);
        }
    }
}

/// A pages table holding more than the 2 GiB of text that one `Utf8` array can: the view
/// joins its batches' wikitext with 64-bit offsets instead of failing.
#[test]
fn pages_with_more_than_2_gib_of_text_make_one_view() {
    // Two batches share one 1.1 GB text buffer, so the test holds 1.1 GB plus the joined 2.2.
    let big: Arc<StringArray> = Arc::new(StringArray::from(vec!["x".repeat(1_100_000_000)]));
    let batch = |id: &str, title: &str| {
        RecordBatch::try_from_iter([
            ("id", Arc::new(StringArray::from(vec![id])) as ArrayRef),
            ("title", Arc::new(StringArray::from(vec![title])) as ArrayRef),
            ("wikitext", big.clone() as ArrayRef),
        ])
        .unwrap()
    };
    let (a, b) = (batch("p1", "Big one"), batch("p2", "Big two"));
    let view = PagesView::new(&Table::new(a.schema(), vec![a, b])).unwrap();
    assert_eq!(view.len(), 2);
    assert_eq!((view.text(0).len(), view.text(1).len()), (1_100_000_000, 1_100_000_000));
    assert_eq!(view.title.value(1), "Big two");
}

/// Real-style pages outside medicine (a programming language, animals, a person, a
/// disambiguation page) whose
/// titles the lexicon knows as medical, beside pages that are medical, with the infoboxes
/// Wikipedia gives them.
fn pages_outside_medicine() -> Vec<PageRow> {
    vec![
        row(
            "MUMPS",
            "{{Short description|Programming language}}\n{{Infobox programming language\n| name = MUMPS\n| paradigm = [[Imperative programming|Imperative]], [[Procedural programming|procedural]]\n| designer = Neil Pappalardo, Curt Marble, Robert Greenes\n| released = {{start date and age|1966}}\n| influenced = [[Caché ObjectScript]], [[GT.M]]\n}}\n\
             '''MUMPS''' (\"Massachusetts General Hospital Utility Multi-Programming System\"), or '''M''', is an imperative, high-level [[programming language]] with an integrated [[key–value database]].\n\
             == History ==\nMUMPS was developed at the [[Massachusetts General Hospital]] in 1966.\n== Symptoms ==\nNot a disease: see [[Mumps (disease)|mumps]].\n\
             [[Category:Programming languages created in 1966]]",
        ),
        row(
            "Cat",
            "{{Speciesbox\n| name = Cat\n| status = DOM\n| genus = Felis\n| species = catus\n| authority = [[Carl Linnaeus|Linnaeus]], [[10th edition of Systema Naturae|1758]]\n}}\n\
             The '''cat''' (''Felis catus'') is a small domesticated [[carnivore|carnivorous]] [[mammal]].\n\
             == Health ==\nCats get [[Feline immunodeficiency virus|FIV]] and [[toxoplasmosis]].\n[[Category:Mammals described in 1758]]",
        ),
        row(
            "Dog",
            "{{Taxobox\n| name = Dog\n| regnum = [[Animal]]ia\n| phylum = [[Chordate|Chordata]]\n| classis = [[Mammal]]ia\n| genus = ''[[Canis]]''\n}}\n\
             The '''dog''' is a domesticated descendant of the [[wolf]].\n== Diseases ==\n[[Rabies]] and [[Canine parvovirus|parvovirus]].\n[[Category:Mammals described in 1758]]",
        ),
        row(
            "Tommy John",
            "{{Infobox baseball biography\n| name = Tommy John\n| position = [[Pitcher]]\n| bats = Right\n| throws = Left\n| debutteam = [[Cleveland Indians]]\n}}\n\
             '''Thomas Edward John Jr.''' is an American former [[professional baseball]] [[pitcher]].\n== Injury ==\nHe underwent [[ulnar collateral ligament reconstruction]] in 1974.\n[[Category:1943 births]]",
        ),
        row(
            "Escherichia coli",
            "{{Speciesbox\n| genus = Escherichia\n| species = coli\n| authority = ([[Walter Migula|Migula]] 1895)\n}}\n\
             '''''Escherichia coli''''' is a [[Gram-negative bacteria|gram-negative]], [[rod-shaped]] [[coliform bacteria|coliform bacterium]].\n\
             [[Category:Gut flora bacteria]]",
        ),
        row(
            "Staphylococcus aureus",
            "{{Automatic taxobox\n| taxon = Staphylococcus aureus\n| authority = [[Alexander Ogston|Rosenbach]] 1884\n}}\n'''''Staphylococcus aureus''''' is a [[Gram-positive bacteria|Gram-positive]] [[coccus|spherical bacterium]].",
        ),
        row(
            "MS",
            "'''MS''' or '''Ms''' may refer to:\n== Medicine ==\n* [[Multiple sclerosis]]\n* [[Mass spectrometry]]\n== Computing ==\n* [[Microsoft]]\n{{disambiguation}}\n[[Category:Disambiguation pages]]",
        ),
        // Pages without an infobox: their categories speak for them.
        row(
            "Mole",
            "{{Other uses}}\n'''Moles''' are small [[mammal]]s adapted to a [[fossorial|subterranean]] lifestyle.\n\
             == Diet ==\nMoles eat [[earthworm]]s.\n[[Category:Moles (animals)]]\n[[Category:Mammals of Europe]]",
        ),
        row(
            "SAS",
            "'''SAS''' (previously \"Statistical Analysis System\") is a [[statistical software]] suite developed by [[SAS Institute]].\n\
             == Procedures ==\nSAS procedures analyse [[clinical trial]] data.\n\
             [[Category:Statistical software]]\n[[Category:Fourth-generation programming languages]]",
        ),
        row(
            "Lou Gehrig",
            "'''Henry Louis Gehrig''' was an American [[baseball]] [[first baseman]].\n\
             == Illness ==\nHe was diagnosed with [[amyotrophic lateral sclerosis]] in 1939.\n\
             [[Category:1903 births]]\n[[Category:1941 deaths]]\n[[Category:Deaths from motor neuron disease]]",
        ),
        // A medical page without an infobox keeps its lexicon type.
        row(
            "Myalgia",
            "'''Myalgia''' is [[pain]] in a muscle.\n[[Category:Symptoms and signs: Musculoskeletal system]]\n[[Category:Pain]]",
        ),
        row(
            "Influenza A virus",
            "{{Virusbox\n| name = Influenza A virus\n| parent = Alphainfluenzavirus\n}}\n'''''Influenza A virus''''' causes [[influenza]] in birds and some mammals.",
        ),
    ]
}

#[test]
fn a_pages_own_infobox_outranks_the_lexicon_outside_medicine() {
    let dir = tempfile::tempdir().unwrap();
    let lex = dir.path().join("lexicon.tsv");
    // Each non-medical title is a medical name: a disease, an imaging test (CAT), a
    // procedure's colloquial name; the bacteria are there as MeSH lists them.
    std::fs::write(
        &lex,
        "name\ttype\tcanonical\nMumps\tdisease\nMS\tdisease\tMultiple sclerosis\nCAT\ttest\nDog\tanatomy\nTommy John\tprocedure\nEscherichia coli\tpathogen\nStaphylococcus aureus\tpathogen\nInfluenza\tdisease\nMole\tsymptom\nSAS\tdisease\tSleep apnea syndrome\nLou Gehrig\tdisease\tAmyotrophic lateral sclerosis\nMyalgia\tsymptom\nFever\tsymptom\nPneumonia\tdisease\nOseltamivir\tdrug\n",
    )
    .unwrap();
    let mut pages = small_wiki();
    pages.extend(pages_outside_medicine());
    let out = run(pages, 1, &lex);
    let e = out.table("entities").unwrap();
    let (names, types) = (strings(e, "name"), strings(e, "type"));
    let type_of = |n: &str| types[names.iter().position(|x| x == n).unwrap_or_else(|| panic!("no entity {n}"))].clone();
    let truth = [
        ("MUMPS", "other"),
        ("Cat", "other"),
        ("Dog", "other"),
        ("Tommy John", "other"),
        ("MS", "other"),
        ("Escherichia coli", "pathogen"),
        ("Staphylococcus aureus", "pathogen"),
        ("Influenza A virus", "pathogen"),
        ("Mole", "other"),
        ("SAS", "other"),
        ("Lou Gehrig", "other"),
        ("Myalgia", "symptom-sign"),
        ("Influenza", "disease"),
        ("Oseltamivir", "drug"),
        ("Fever", "symptom-sign"),
        ("Pneumonia", "disease"),
    ];
    let got: Vec<(&str, String)> = truth.iter().map(|(n, _)| (*n, type_of(n))).collect();
    // Precision of the medical types over these pages (every type but `other`).
    let medical: Vec<_> = got.iter().filter(|(_, t)| t != "other").collect();
    let right = medical.iter().filter(|(n, t)| truth.iter().any(|(m, u)| m == n && u == t)).count();
    assert_eq!((right, medical.len()), (8, 8), "{got:?}");
    for ((n, want), (_, t)) in truth.iter().zip(&got) {
        assert_eq!(t, want, "{n}");
    }
    // A non-medical page reads no relations from its sections ("Symptoms", "Diseases").
    let rels = relations_of(&out);
    let outside = ["MUMPS", "Cat", "Dog", "Tommy John", "MS", "Mole", "SAS", "Lou Gehrig"];
    assert!(!rels.iter().any(|r| outside.contains(&r.0.as_str())), "{rels:#?}");
}

#[test]
fn categories_speak_for_a_page_without_an_infobox_only_when_decisive() {
    use super::rules::{CATEGORY_NOT_MEDICAL, CATEGORY_ORGANISM, categories_declare};
    let c = |cats: &[&str]| categories_declare(&cats.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    // A person, even one who died of a disease.
    assert_eq!(c(&["1903 births", "Deaths from motor neuron disease"]), Some(CATEGORY_NOT_MEDICAL));
    assert_eq!(c(&["Living people"]), Some(CATEGORY_NOT_MEDICAL));
    // Software ("generation" and "design" are not medical words).
    assert_eq!(c(&["Fourth-generation programming languages", "Software design"]), Some(CATEGORY_NOT_MEDICAL));
    assert_eq!(c(&["Mammals of Europe"]), Some(CATEGORY_ORGANISM));
    // Any medical category leaves it to the lexicon; so do categories that say nothing.
    assert_eq!(c(&["Mammals of Europe", "Zoonoses", "Parasitic diseases"]), None);
    assert_eq!(c(&["Symptoms and signs: Musculoskeletal system"]), None);
    assert_eq!(c(&["Eponyms", "Articles with short description"]), None);
    assert_eq!(c(&[]), None);
}
