//! Anonymisation: names, dates, phone numbers, e-mail addresses, record numbers and
//! street addresses are replaced by placeholders (`[NAME]`, `[DATE]`, `[PHONE]`,
//! `[EMAIL]`, `[RECORD]`, `[ADDRESS]`), and counted.
//!
//! Clinical text is full of numbers (ages, doses, lab values, blood pressures) and of
//! eponyms (Parkinson disease, Graves), so the patterns are anchored: dates need a
//! day-month-year shape or a month name; phones a 10-digit grouping or a `+` prefix; record
//! numbers a cue (`MRN`, `record number`, `SSN`, …) or the SSN shape; names an honorific, a
//! cue (`named`, `Patient:`) or a first name from a list followed by a capitalised word.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::{Regex, RegexSet};

/// What kinds of data to replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `[NAME]`
    Name,
    /// `[DATE]`
    Date,
    /// `[PHONE]`
    Phone,
    /// `[EMAIL]`
    Email,
    /// `[RECORD]`
    Record,
    /// `[ADDRESS]`
    Address,
}

impl Kind {
    /// All kinds.
    pub const ALL: [Kind; 6] = [Kind::Email, Kind::Record, Kind::Phone, Kind::Date, Kind::Address, Kind::Name];

    /// Its parameter name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Name => "names",
            Kind::Date => "dates",
            Kind::Phone => "phones",
            Kind::Email => "emails",
            Kind::Record => "records",
            Kind::Address => "addresses",
        }
    }

    /// Its placeholder.
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Name => "[NAME]",
            Kind::Date => "[DATE]",
            Kind::Phone => "[PHONE]",
            Kind::Email => "[EMAIL]",
            Kind::Record => "[RECORD]",
            Kind::Address => "[ADDRESS]",
        }
    }

    /// By parameter name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

const MONTHS: &str = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)";

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| re(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"));
static RECORD: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"(?i:\b(?:MRN|medical record(?: number| no\.?)?|record (?:number|no\.?)|patient (?:id|number)|hospital (?:number|no\.?)|chart (?:number|no\.?)|account (?:number|no\.?)|SSN|social security number|NHS number|ID)\s*(?:is\s+)?[:#]?\s*)[A-Z]{0,3}-?\d[\dA-Z-]{3,}\b|\b\d{3}-\d{2}-\d{4}\b",
    )
});
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    re(r"(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b|\+\d{1,3}(?:[\s.-]?\d{2,4}){3,5}\b")
});
static DATE: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"\b(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:19|20)?\d{{2}}|(?:19|20)\d{{2}}-\d{{1,2}}-\d{{1,2}}|{m}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{{2}}|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{m}\.?,?\s+(?:19|20)\d{{2}}|{m}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?)\b",
        m = MONTHS
    ))
});
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Circle|Highway|Hwy)\b(?:,?\s+(?:Apt|Suite|Unit)\.?\s*\d+[A-Z]?)?(?:,\s+[A-Z][a-z]+(?:\s[A-Z][a-z]+)?(?:,\s+[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?)?",
    )
});
/// The patterns above in one set: a single scan says which of them can match at all.
static ANY: LazyLock<RegexSet> = LazyLock::new(|| {
    match RegexSet::new([EMAIL.as_str(), RECORD.as_str(), PHONE.as_str(), DATE.as_str(), ADDRESS.as_str()]) {
        Ok(s) => s,
        Err(e) => panic!("invalid anonymisation pattern set: {e}"),
    }
});

static NAME_CUE: LazyLock<Regex> = LazyLock::new(|| {
    re(
        r"\b(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sr|Sra)\.?\s+[A-Z][a-zA-Z'-]+(?:\s+[A-Z][a-zA-Z'-]+)?|(?:\bnamed|\bPatient:|\bpatient name:?|\bName:)\s+[A-Z][a-zA-Z'-]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][a-zA-Z'-]+)?",
    )
});

fn re(s: &str) -> Regex {
    // ASCII classes and word boundaries: Unicode `\b` keeps the regex engine off its DFA
    // on non-ASCII text (a bounded backtracker instead, 5x slower on MedQA-length items),
    // and what these patterns find (digits, e-mails, Latin-script names) is ASCII.
    match Regex::new(&format!("(?-u){s}")) {
        Ok(r) => r,
        // The patterns are constants covered by tests; an invalid one is a bug.
        Err(e) => panic!("invalid anonymisation pattern: {e}"),
    }
}

/// Common given names (US census and international); a listed name followed by a
/// capitalised word is taken as a person's name.
const FIRST_NAMES: &str = "james john robert michael william david richard joseph thomas charles christopher daniel matthew anthony mark donald steven paul andrew joshua kenneth kevin brian george timothy ronald edward jason jeffrey ryan jacob gary nicholas eric jonathan stephen larry justin scott brandon benjamin samuel gregory alexander frank patrick raymond jack dennis jerry tyler aaron jose adam nathan henry douglas zachary peter kyle noah ethan jeremy walter christian keith roger terry austin sean gerald carl harold dylan arthur lawrence jordan jesse bryan billy bruce gabriel joe logan alan juan albert willie elijah wayne randy vincent mason roy ralph bobby russell bradley philip eugene mary patricia jennifer linda elizabeth barbara susan jessica sarah karen lisa nancy betty sandra margaret ashley kimberly emily donna michelle carol amanda melissa deborah stephanie dorothy rebecca sharon laura cynthia amy kathleen angela shirley brenda emma anna pamela nicole samantha katherine christine helen debra rachel carolyn janet maria catherine heather diane olivia julie joyce victoria ruth virginia lauren kelly christina joan evelyn judith andrea hannah megan cheryl jacqueline martha madison teresa gloria sara janice ann kathryn abigail sophia frances jean alice judy isabella julia grace amber denise danielle marilyn beverly charlotte natalie theresa diana brittany doris kayla alexis lori marie ahmed mohammed muhammad ali fatima aisha omar hassan yusuf ibrahim wei li ming hiroshi yuki kenji sakura priya raj rahul anil sunita deepak arjun ananya carlos luis miguel jorge pedro sofia lucia elena ana juan diego pablo javier hans klaus jurgen anna ingrid lars sven olga ivan dmitri natasha pierre jean marie francois chloe giulia marco luca matteo chen zhang wang liu yang huang zhao wu zhou xu sun ma zhu hu guo he lin luo";

static FIRST: LazyLock<HashSet<&'static str>> = LazyLock::new(|| FIRST_NAMES.split_whitespace().collect());

/// Words that start clinical phrases and must never be taken as surnames.
const NOT_SURNAMES: &str = "disease syndrome sign test reflex criteria score scale classification maneuver fracture palsy phenomenon tumor tumour lymphoma sarcoma ulcer cell cells node nodes law";
static NOT_SURNAME: LazyLock<HashSet<&'static str>> = LazyLock::new(|| NOT_SURNAMES.split_whitespace().collect());

/// Counts of replacements by kind (in [`Kind::ALL`] order).
pub type Counts = [u64; 6];

fn idx(k: Kind) -> usize {
    Kind::ALL.iter().position(|x| *x == k).unwrap_or(0)
}

/// An anonymiser for a set of kinds.
#[derive(Clone)]
pub struct Anonymiser {
    kinds: Vec<Kind>,
}

impl Anonymiser {
    /// Replaces the given kinds.
    pub fn new(kinds: &[Kind]) -> Self {
        let mut k: Vec<Kind> = Kind::ALL.into_iter().filter(|x| kinds.contains(x)).collect();
        k.dedup();
        Anonymiser { kinds: k }
    }

    /// The text with every match replaced; `None` when nothing matched (no allocation).
    pub fn apply(&self, text: &str, counts: &mut Counts) -> Option<String> {
        let mut cur: Option<String> = None;
        let hits = ANY.matches(text);
        for &k in &self.kinds {
            // While the text is unchanged, the set's single scan rules patterns out (after a
            // replacement, each pattern looks at the new text itself).
            let ruled_out = |i: usize| cur.is_none() && !hits.matched(i);
            let src = cur.as_deref().unwrap_or(text);
            let replaced = match k {
                Kind::Email if ruled_out(0) => None,
                Kind::Record if ruled_out(1) => None,
                Kind::Phone if ruled_out(2) => None,
                Kind::Date if ruled_out(3) => None,
                Kind::Address if ruled_out(4) => None,
                Kind::Email => src.contains('@').then(|| replace(&EMAIL, src, k)).flatten(),
                Kind::Record => replace(&RECORD, src, k),
                Kind::Phone => has_digits(src, 7).then(|| replace(&PHONE, src, k)).flatten(),
                Kind::Date => replace(&DATE, src, k),
                Kind::Address => has_digits(src, 1).then(|| replace(&ADDRESS, src, k)).flatten(),
                Kind::Name => names(src),
            };
            if let Some((s, n)) = replaced {
                counts[idx(k)] += n;
                cur = Some(s);
            }
        }
        cur
    }
}

fn has_digits(s: &str, n: usize) -> bool {
    s.bytes().filter(u8::is_ascii_digit).take(n).count() >= n
}

fn replace(r: &Regex, s: &str, k: Kind) -> Option<(String, u64)> {
    let mut n = 0u64;
    let mut out = String::new();
    let mut last = 0;
    for m in r.find_iter(s) {
        if n == 0 {
            out.reserve(s.len());
        }
        out.push_str(&s[last..m.start()]);
        out.push_str(k.placeholder());
        last = m.end();
        n += 1;
    }
    if n == 0 {
        return None;
    }
    out.push_str(&s[last..]);
    Some((out, n))
}

fn is_cap_word(w: &str) -> bool {
    let mut c = w.chars();
    matches!(c.next(), Some(x) if x.is_ascii_uppercase())
        && w.len() > 1
        && c.all(|x| x.is_ascii_alphabetic() || x == '\'' || x == '-')
}

/// Names: cue patterns, then a listed first name followed by a capitalised word (or a
/// listed first name alone after a cue like "Mr").
fn names(s: &str) -> Option<(String, u64)> {
    let mut total = 0;
    let mut cur: Option<String> = None;
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        if let Some((t, n)) = replace(&NAME_CUE, s, Kind::Name) {
            total += n;
            cur = Some(t);
        }
    } else {
        return None;
    }
    let src = cur.as_deref().unwrap_or(s);
    // Token scan for "Firstname Lastname".
    let bytes = src.as_bytes();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    let word_at = |i: usize| -> (usize, usize) {
        let mut j = i;
        while j < bytes.len() && (bytes[j].is_ascii_alphabetic() || bytes[j] == b'\'' || bytes[j] == b'-') {
            j += 1;
        }
        (i, j)
    };
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_uppercase() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let (s1, e1) = word_at(i);
            let w1 = &src[s1..e1];
            if e1 - s1 >= 2 && FIRST.contains(w1.to_ascii_lowercase().as_str()) {
                // Optional middle initial, then a capitalised surname.
                let mut k = e1;
                if bytes.get(k) == Some(&b' ')
                    && bytes.get(k + 1).is_some_and(u8::is_ascii_uppercase)
                    && bytes.get(k + 2) == Some(&b'.')
                    && bytes.get(k + 3) == Some(&b' ')
                {
                    k += 3;
                }
                if bytes.get(k) == Some(&b' ') {
                    let (s2, e2) = word_at(k + 1);
                    let w2 = &src[s2..e2];
                    if is_cap_word(w2)
                        && !NOT_SURNAME.contains(w2.to_ascii_lowercase().as_str())
                        && !FIRST.contains(w2.to_ascii_lowercase().as_str())
                        || (is_cap_word(w2)
                            && FIRST.contains(w2.to_ascii_lowercase().as_str())
                            && e2 < bytes.len()
                            && bytes[e2] != b' ')
                    {
                        spans.push((s1, e2));
                        i = e2;
                        continue;
                    }
                }
            }
            i = e1.max(i + 1);
            continue;
        }
        i += 1;
    }
    if spans.is_empty() {
        return cur.map(|c| (c, total));
    }
    let mut out = String::with_capacity(src.len());
    let mut last = 0;
    for (a, b) in &spans {
        out.push_str(&src[last..*a]);
        out.push_str(Kind::Name.placeholder());
        last = *b;
    }
    out.push_str(&src[last..]);
    Some((out, total + spans.len() as u64))
}

/// A planted test set (tests and the benchmark): sentences with names, dates, phones, e-mails, record numbers and
/// addresses in varied clinical contexts, plus clean clinical sentences (for precision).
/// Each entry: the text, how many items were planted in it, and its template number.
pub fn planted(n: usize, seed: u64) -> Vec<(String, usize, usize)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let first =
        ["John", "Mary", "Ahmed", "Wei", "Priya", "Carlos", "Olga", "James", "Linda", "Kenji", "Fatima", "Pierre"];
    let last = [
        "Smith",
        "Garcia",
        "Okafor",
        "Nakamura",
        "Schmidt",
        "Rossi",
        "Kowalski",
        "Nguyen",
        "Haddad",
        "Johansson",
        "Brown",
        "Patel",
    ];
    let months = ["January", "Feb", "March", "Apr.", "June", "September", "Oct", "December"];
    let streets = ["Oak Street", "Maple Ave", "Elm Road", "Sunset Boulevard", "Park Lane", "Cedar Drive"];
    let clinical = [
        "A 54-year-old woman presents with fatigue for 3 weeks; hemoglobin is 9.8 g/dL and MCV 72 fL.",
        "Blood pressure is 150/95 mm Hg, pulse 104/min, respirations 22/min, and temperature 38.4°C.",
        "He takes metformin 500 mg twice daily and lisinopril 10 mg daily.",
        "Graves disease and Hashimoto thyroiditis are autoimmune; Addison disease is adrenal.",
        "Platelets are 45,000/mm3 and the INR is 2.3 after 2 days of heparin 5000 units.",
        "Which of the following is the most likely diagnosis in this 7-year-old boy?",
    ];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let f = first[rng.random_range(0..first.len())];
        let l = last[rng.random_range(0..last.len())];
        let (text, planted) = match i % 8 {
            0 => (format!("{f} {l}, a 63-year-old man, reports chest pain."), 1),
            1 => (
                format!(
                    "The patient was admitted on {}/{}/20{:02} with fever.",
                    rng.random_range(1..13),
                    rng.random_range(1..29),
                    rng.random_range(0..25)
                ),
                1,
            ),
            2 => (
                format!(
                    "She was born {} {}, 19{} and has asthma.",
                    months[rng.random_range(0..months.len())],
                    rng.random_range(1..29),
                    rng.random_range(40..99)
                ),
                1,
            ),
            3 => (
                format!(
                    "Contact the clinic at ({}) {}-{:04} for results.",
                    rng.random_range(200..999),
                    rng.random_range(200..999),
                    rng.random_range(0..10000)
                ),
                1,
            ),
            4 => (
                format!(
                    "Send the report to {}.{}@hospital-{}.org today.",
                    f.to_lowercase(),
                    l.to_lowercase(),
                    rng.random_range(1..99)
                ),
                1,
            ),
            5 => (format!("MRN: {} — history of diabetes.", rng.random_range(1_000_000..99_999_999)), 1),
            6 => (
                format!(
                    "Dr. {l} examined the patient at {} {}.",
                    rng.random_range(1..9999),
                    streets[rng.random_range(0..streets.len())]
                ),
                2,
            ),
            _ => (clinical[rng.random_range(0..clinical.len())].to_string(), 0),
        };
        out.push((text, planted, i % 8));
    }
    out
}

/// Recall and precision of the anonymiser on a planted set.
#[derive(Clone, Copy, Debug)]
pub struct Score {
    /// Planted items replaced.
    pub recall: f64,
    /// Replacements that were planted items.
    pub precision: f64,
    /// Items planted.
    pub planted: usize,
    /// Replacements made where nothing was planted (beyond the planted count).
    pub false_positives: usize,
}

/// Scores the anonymiser (all kinds) on `set` (from [`planted`]).
pub fn score(set: &[(String, usize, usize)]) -> Score {
    let anon = Anonymiser::new(&Kind::ALL);
    let (mut planted_total, mut found, mut false_pos) = (0usize, 0usize, 0usize);
    for (text, n, _) in set {
        let mut counts = [0u64; 6];
        let out = anon.apply(text, &mut counts).unwrap_or_else(|| text.clone());
        let placeholders: usize = Kind::ALL.iter().map(|k| out.matches(k.placeholder()).count()).sum();
        planted_total += n;
        found += placeholders.min(*n);
        false_pos += placeholders.saturating_sub(*n);
    }
    Score {
        recall: found as f64 / planted_total.max(1) as f64,
        precision: found as f64 / (found + false_pos).max(1) as f64,
        planted: planted_total,
        false_positives: false_pos,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(s: &str) -> (String, Counts) {
        let mut c = [0; 6];
        let out = Anonymiser::new(&Kind::ALL).apply(s, &mut c).unwrap_or_else(|| s.to_string());
        (out, c)
    }

    #[test]
    fn replaces_each_kind() {
        let (s, c) = anon(
            "Mr. John Smith (MRN: 12345678, john.smith@example.org, (555) 123-4567) was seen on 03/14/2021 at 42 Oak Street.",
        );
        assert_eq!(s, "[NAME] ([RECORD], [EMAIL], [PHONE]) was seen on [DATE] at [ADDRESS].");
        assert_eq!(c, [1, 1, 1, 1, 1, 1]);
        let (s, _) = anon("Mary Johnson, born January 5, 1980, SSN 123-45-6789.");
        assert_eq!(s, "[NAME], born [DATE], [RECORD].");
    }

    #[test]
    fn leaves_clinical_text_alone() {
        for t in [
            "A 45-year-old man has a blood pressure of 150/90 mm Hg and a pulse of 110/min for 3 days.",
            "Parkinson disease, Graves disease and Down syndrome; Charles law; Wilson disease.",
            "Hemoglobin 10.2 g/dL, leukocytes 12,500/mm3, platelets 250,000/mm3; dose 2.5 mg/kg every 8 hours.",
            "Which of the following is the most likely diagnosis? (A) James fracture",
        ] {
            assert_eq!(anon(t).0, t);
        }
    }
}
