//! `curated`: load a published multiple-choice benchmark into the `questions` table.
//!
//! Built-in formats: MedQA (JSONL), MedMCQA (JSONL, `cop` 1-based), PubMedQA (JSON keyed
//! by PMID, yes/no/maybe with the abstract as context, optionally joined with a separate
//! answer key), MMLU (CSV without header; a directory loads every `*.csv`, the subject
//! from the file name), MMLU-Pro (JSONL, up to 10 options), CMExam (gzipped JSONL, options
//! in one string, multi-letter answers kept as a set and marked `multi_answer`). The
//! `mapping` format reads any JSONL / JSON / CSV file from field paths given in YAML
//! (MedXpertQA, Medbullets, CareQA, JMED and formats never seen before).
//!
//! Records that cannot become a question (malformed, no stem, no options, an answer that
//! names no option) go to `rejects` with the line and the reason; nothing is dropped
//! silently. Exact duplicates are kept (ids made unique by a `~2` suffix): `validate`
//! removes duplicates, with reasons, across all sources.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use anyhow::{Context, anyhow, bail};
use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use fleming_artifacts::Table;
use fleming_runtime::context::OpContext;
use fleming_runtime::op::{
    ColumnSpec, Execution, InputPorts, OpSpec, Operator, Outputs, ParamSpec, ParamType, PortSpec,
};
use serde_json::{Map, Value, json};

use crate::ops::load::truncate;
use crate::questions::{self, Choice, Question, label};

static SPEC: LazyLock<OpSpec> = LazyLock::new(|| OpSpec {
    name: "curated",
    version: 1,
    summary: "Load a curated benchmark (MedQA, MedMCQA, PubMedQA, MMLU, MMLU-Pro, CMExam, or a YAML mapping) as questions",
    doc: "Reads a published multiple-choice file into the `questions` table. The file's content \
          digest (not its path) is in the stage key. Unreadable records go to `rejects` with the \
          reason. `format: mapping` reads any JSONL/JSON/CSV from field paths (`a.b.0`).",
    params: vec![
        ParamSpec::required(
            "format",
            ParamType::Enum(vec!["medqa", "medmcqa", "pubmedqa", "mmlu", "mmlu-pro", "cmexam", "mapping"]),
            "Which published format the file is in",
        ),
        ParamSpec::required(
            "path",
            ParamType::InputPath,
            "File to read (a directory: every file of the format in it, sorted); `.gz` is decompressed",
        ),
        ParamSpec::optional(
            "answers",
            ParamType::InputPath,
            "PubMedQA: a separate answer key {pmid: yes|no|maybe} (the official test half)",
        ),
        ParamSpec::optional(
            "source",
            ParamType::Str,
            "Value of the `source` column and id prefix (default: the format name)",
        ),
        ParamSpec::optional(
            "language",
            ParamType::Str,
            "Value of the `language` column (default: `zh` for CMExam, else `en`)",
        ),
        ParamSpec::optional(
            "subject",
            ParamType::Str,
            "Subject for every row when the file has none (MMLU: the file name)",
        ),
        ParamSpec::optional("mapping", ParamType::Object(mapping_fields()), "format `mapping`: where each field is"),
    ],
    inputs: InputPorts::Fixed(vec![]),
    outputs: vec![
        PortSpec::table_with("questions", questions::columns(), "the items, in the questions schema, in file order"),
        PortSpec::table_with("rejects", rejects_columns(), "records that could not become a question, with the reason"),
    ],
    execution: Execution::Cpu,
    fingerprint: crate::fingerprints::curated.to_string(),
});

fn mapping_fields() -> Vec<ParamSpec> {
    vec![
        ParamSpec::with_default(
            "file",
            ParamType::Enum(vec!["auto", "jsonl", "json", "csv", "tsv"]),
            json!("auto"),
            "File format; `auto` from the extension",
        ),
        ParamSpec::optional(
            "records",
            ParamType::Str,
            "JSON: path to the list (or id-keyed object) of records inside the document, e.g. `data`",
        ),
        ParamSpec::with_default(
            "header",
            ParamType::Bool,
            json!(true),
            "CSV: first line names the columns (else they are `0`, `1`, …)",
        ),
        ParamSpec::optional(
            "id",
            ParamType::Str,
            "Field path of the record's id (default: the id-keyed object's key, else a content digest)",
        ),
        ParamSpec::required("question", ParamType::Str, "Field path of the stem"),
        ParamSpec::optional(
            "options",
            ParamType::Str,
            "Field path of the options: a map {A: text}, a list of texts, a list of objects, or one string `A. x\\nB. y`",
        ),
        ParamSpec::optional(
            "option_fields",
            ParamType::List(Box::new(ParamType::Str)),
            "Instead of `options`: one field per option, in order (e.g. [opa, opb, opc, opd])",
        ),
        ParamSpec::with_default(
            "option_text",
            ParamType::Str,
            json!("text"),
            "List of objects: the key holding an option's text",
        ),
        ParamSpec::with_default(
            "option_label",
            ParamType::Str,
            json!("label"),
            "List of objects: the key holding an option's label (absent: A, B, … by position)",
        ),
        ParamSpec::required("answer", ParamType::Str, "Field path of the answer"),
        ParamSpec::with_default(
            "answer_type",
            ParamType::Enum(vec!["auto", "letter", "index", "text"]),
            json!("auto"),
            "How the answer names the option: a letter, a position, or the option's text (a one-element list is unwrapped); `auto` tries letter, index, text",
        ),
        ParamSpec::with_default(
            "index_base",
            ParamType::Int,
            json!(0),
            "For index answers: 0 or 1 (the first option's index)",
        )
        .range(Some(0.0), Some(1.0)),
        ParamSpec::optional(
            "context",
            ParamType::Str,
            "Field path of supporting text (a list is joined with blank lines)",
        ),
        ParamSpec::optional("explanation", ParamType::Str, "Field path of the explanation"),
        ParamSpec::optional("subject", ParamType::Str, "Field path of the subject"),
    ]
}

fn rejects_columns() -> Vec<ColumnSpec> {
    vec![
        ColumnSpec::new("id", DataType::Utf8, false),
        ColumnSpec::new("line", DataType::Int64, false),
        ColumnSpec::new("reason", DataType::Utf8, false),
        ColumnSpec::new("raw", DataType::Utf8, false),
    ]
}

/// The `curated` operator.
#[derive(Default)]
pub struct Curated;

impl Curated {
    /// The operator.
    pub fn new() -> Self {
        Curated
    }
}

/// A record that could not become a question.
struct Reject {
    file: String,
    line: i64,
    reason: String,
    raw: String,
}

/// One raw record: where it was, and its fields.
struct Record {
    file: String,
    line: i64,
    key: Option<String>,
    value: Value,
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "gz") {
        flate2::read::MultiGzDecoder::new(file)
            .read_to_end(&mut bytes)
            .with_context(|| format!("decompressing {}", path.display()))?;
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow!("{} is not UTF-8 text (bad byte at offset {})", path.display(), e.utf8_error().valid_up_to())
    })
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The files to read: the path itself, or the files of a directory with one of `exts`.
fn files(path: &Path, exts: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = file_name(p).to_lowercase();
            let n = n.strip_suffix(".gz").unwrap_or(&n).to_string();
            exts.iter().any(|e| n.ends_with(&format!(".{e}")))
        })
        .collect();
    out.sort();
    if out.is_empty() {
        bail!("{} holds no {} file", path.display(), exts.join("/"));
    }
    Ok(out)
}

fn read_jsonl(path: &Path, out: &mut Vec<Record>, rejects: &mut Vec<Reject>) -> anyhow::Result<()> {
    let text = read_text(path)?;
    let file = file_name(path);
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i as i64 + 1;
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => out.push(Record { file: file.clone(), line: n, key: None, value: v }),
            Ok(_) => rejects.push(Reject {
                file: file.clone(),
                line: n,
                reason: "not a JSON object".into(),
                raw: truncate(line, 4096),
            }),
            Err(e) => rejects.push(Reject {
                file: file.clone(),
                line: n,
                reason: format!("malformed JSON: {e}"),
                raw: truncate(line, 4096),
            }),
        }
    }
    Ok(())
}

fn read_json(
    path: &Path,
    records: Option<&str>,
    out: &mut Vec<Record>,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<()> {
    let text = read_text(path)?;
    let file = file_name(path);
    let doc: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{}: malformed JSON: {e}", path.display()))?;
    let doc = match records {
        Some(p) => get_path(&doc, p).cloned().ok_or_else(|| anyhow!("{}: no `{p}` in the document", path.display()))?,
        None => doc,
    };
    match doc {
        Value::Array(items) => {
            for (i, v) in items.into_iter().enumerate() {
                if v.is_object() {
                    out.push(Record { file: file.clone(), line: i as i64 + 1, key: None, value: v });
                } else {
                    rejects.push(Reject {
                        file: file.clone(),
                        line: i as i64 + 1,
                        reason: "record is not an object".into(),
                        raw: truncate(&v.to_string(), 4096),
                    });
                }
            }
        }
        Value::Object(m) => {
            for (i, (k, v)) in m.into_iter().enumerate() {
                if v.is_object() {
                    out.push(Record { file: file.clone(), line: i as i64 + 1, key: Some(k), value: v });
                } else {
                    rejects.push(Reject {
                        file: file.clone(),
                        line: i as i64 + 1,
                        reason: format!("record `{k}` is not an object"),
                        raw: truncate(&v.to_string(), 4096),
                    });
                }
            }
        }
        _ => bail!("{}: expected a list of records or an object of records", path.display()),
    }
    Ok(())
}

fn read_csv(
    path: &Path,
    delimiter: u8,
    header: bool,
    out: &mut Vec<Record>,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<()> {
    let text = read_text(path)?;
    let file = file_name(path);
    let mut reader =
        csv::ReaderBuilder::new().delimiter(delimiter).has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut names: Option<Vec<String>> = None;
    for (i, rec) in reader.records().enumerate() {
        let line = match &rec {
            Ok(r) => r.position().map(|p| p.line() as i64).unwrap_or(i as i64 + 1),
            Err(e) => e.position().map(|p| p.line() as i64).unwrap_or(i as i64 + 1),
        };
        let r = match rec {
            Ok(r) => r,
            Err(e) => {
                rejects.push(Reject {
                    file: file.clone(),
                    line,
                    reason: format!("malformed CSV: {e}"),
                    raw: String::new(),
                });
                continue;
            }
        };
        if i == 0 && header {
            names = Some(r.iter().map(|s| s.trim().to_string()).collect());
            continue;
        }
        let mut m = Map::new();
        for (j, cell) in r.iter().enumerate() {
            let name = names.as_ref().and_then(|n| n.get(j).cloned()).unwrap_or_else(|| j.to_string());
            m.insert(name, Value::String(cell.to_string()));
        }
        if let Some(n) = &names
            && n.len() != r.len()
        {
            rejects.push(Reject {
                file: file.clone(),
                line,
                reason: format!("expected {} fields, found {}", n.len(), r.len()),
                raw: truncate(&r.iter().collect::<Vec<_>>().join(","), 4096),
            });
            continue;
        }
        out.push(Record { file: file.clone(), line, key: None, value: Value::Object(m) });
    }
    Ok(())
}

/// A value by dotted path (`a.b.0`); a key containing dots is tried whole first.
pub fn get_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(x) = v.get(path) {
        return Some(x);
    }
    let mut cur = v;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(text_of).collect();
            (!parts.is_empty()).then(|| parts.join("\n\n"))
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(_) => Some(v.to_string()),
    }
}

fn field(v: &Value, path: Option<&str>) -> Option<String> {
    path.and_then(|p| get_path(v, p)).and_then(text_of).filter(|s| !s.trim().is_empty())
}

/// Options from a value: a map {A: text}, a list of texts, a list of objects, or one
/// string of lettered lines.
fn options_of(v: &Value, text_key: &str, label_key: &str) -> Result<Vec<Choice>, String> {
    match v {
        Value::Object(m) => Ok(m.iter().map(|(k, t)| Choice::new(k.trim(), text_of(t).unwrap_or_default())).collect()),
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, it) in items.iter().enumerate() {
                match it {
                    Value::Object(o) => {
                        let text = o
                            .get(text_key)
                            .and_then(text_of)
                            .ok_or_else(|| format!("option {} has no `{text_key}`", i + 1))?;
                        let l = o
                            .get(label_key)
                            .and_then(text_of)
                            .map(|s| s.trim().to_string())
                            .unwrap_or_else(|| label(i));
                        out.push(Choice::new(l, text));
                    }
                    other => out.push(Choice::new(label(i), text_of(other).unwrap_or_default())),
                }
            }
            Ok(out)
        }
        Value::String(s) => options_from_string(s),
        _ => Err("options are neither a map, a list nor text".into()),
    }
}

/// `A 原发病\nB 出血部位` (CMExam: a literal backslash-n), `A. x\nB. y`, `(A) x` lines.
/// Labels are kept as written (a few CMExam items start at `B`); they must increase; a
/// line without a label continues the previous option.
fn options_from_string(s: &str) -> Result<Vec<Choice>, String> {
    let normalised = s.replace("\\n", "\n");
    let mut out: Vec<Choice> = Vec::new();
    for line in normalised.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let body = line.strip_prefix('(').unwrap_or(line);
        let mut chars = body.chars();
        let first = chars.next();
        let rest: String = chars.collect();
        let starts_option = matches!(first, Some(c) if c.is_ascii_uppercase())
            && (rest.is_empty() || rest.starts_with([' ', ')', '.', ':', '、', '．', '：', '\t']))
            && out.last().is_none_or(|p: &Choice| p.label.as_bytes()[0] < first.map(|c| c as u8).unwrap_or(0));
        match (starts_option, first) {
            (true, Some(c)) => {
                let text = rest.trim_start_matches([')', '.', ':', '、', '．', '：']).trim();
                out.push(Choice::new(c.to_string(), text));
            }
            _ => match out.last_mut() {
                Some(prev) => {
                    prev.text.push('\n');
                    prev.text.push_str(line);
                }
                None => return Err(format!("option text does not start with a label: {}", truncate(line, 80))),
            },
        }
    }
    if out.is_empty() {
        return Err("no options in the option text".into());
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq)]
enum AnswerType {
    Auto,
    Letter,
    Index,
    Text,
}

/// Resolves an answer to option label(s). Multi-letter answers (`ABD`) become a set.
fn resolve_answer(v: &Value, options: &[Choice], ty: AnswerType, base: i64) -> Result<(String, bool), String> {
    let v = match v {
        Value::Array(a) if a.len() == 1 => &a[0],
        Value::Array(a) if a.is_empty() => return Err("the answer is an empty list".into()),
        Value::Array(a) => {
            // Several answers: each must resolve.
            let mut labels = Vec::new();
            for x in a {
                labels.push(resolve_answer(x, options, ty, base)?.0);
            }
            labels.sort();
            labels.dedup();
            return Ok((labels.join(","), labels.len() > 1));
        }
        other => other,
    };
    let has = |l: &str| options.iter().any(|c| c.label == l);
    let by_index = |i: i64| -> Result<(String, bool), String> {
        let k = i - base;
        if k < 0 || k as usize >= options.len() {
            return Err(format!("answer index {i} is outside the {} options ({base}-based)", options.len()));
        }
        Ok((options[k as usize].label.clone(), false))
    };
    let as_int = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    if ty == AnswerType::Index || (ty == AnswerType::Auto && matches!(v, Value::Number(_))) {
        return match as_int {
            Some(i) => by_index(i),
            None => Err(format!("answer {v} is not an index")),
        };
    }
    let s = text_of(v).ok_or_else(|| "no answer".to_string())?;
    let t = s.trim().trim_end_matches(['.', ')']).trim_start_matches('(').trim();
    if ty != AnswerType::Text {
        if has(t) {
            return Ok((t.to_string(), false));
        }
        let up = t.to_uppercase();
        if has(&up) {
            return Ok((up, false));
        }
        // A set of letters: "ABD", "A,B,D".
        let letters: Vec<String> =
            up.chars().filter(|c| !matches!(c, ',' | ' ' | ';')).map(|c| c.to_string()).collect();
        if letters.len() > 1 && letters.len() <= options.len() && letters.iter().all(|l| has(l)) {
            let mut l = letters;
            l.sort();
            l.dedup();
            let multi = l.len() > 1;
            return Ok((l.join(","), multi));
        }
        if ty == AnswerType::Letter {
            return Err(format!(
                "answer `{}` names no option (options: {})",
                truncate(&s, 60),
                options.iter().map(|c| c.label.as_str()).collect::<Vec<_>>().join(", ")
            ));
        }
        if ty == AnswerType::Auto
            && let Some(i) = as_int
        {
            return by_index(i);
        }
    }
    let found: Vec<&Choice> = options.iter().filter(|c| c.text.trim() == s.trim()).collect();
    match found.as_slice() {
        [one] => Ok((one.label.clone(), false)),
        [] => {
            let lower = s.trim().to_lowercase();
            let ci: Vec<&Choice> = options.iter().filter(|c| c.text.trim().to_lowercase() == lower).collect();
            match ci.as_slice() {
                [one] => Ok((one.label.clone(), false)),
                _ => Err(format!("answer `{}` matches no option", truncate(&s, 80))),
            }
        }
        _ => Err(format!("answer `{}` matches several options", truncate(&s, 80))),
    }
}

/// Per-format settings.
struct Ctx<'a> {
    source: String,
    language: String,
    subject: Option<String>,
    answer_key: Option<&'a HashMap<String, String>>,
    mapping: Option<&'a Map<String, Value>>,
}

/// A built question without its final id, or why not.
type Built = Result<(Option<String>, Question), String>;

fn base_question(c: &Ctx<'_>) -> Question {
    Question {
        source: c.source.clone(),
        language: c.language.clone(),
        subject: c.subject.clone(),
        ..Default::default()
    }
}

fn need(v: &Value, key: &str) -> Result<String, String> {
    field(v, Some(key)).ok_or_else(|| format!("no `{key}`"))
}

fn meta_of(v: &Value, keys: &[&str]) -> Option<String> {
    let m: Map<String, Value> =
        keys.iter().filter_map(|k| v.get(*k).filter(|x| !x.is_null()).map(|x| ((*k).to_string(), x.clone()))).collect();
    (!m.is_empty()).then(|| Value::Object(m).to_string())
}

fn medqa(r: &Record, c: &Ctx<'_>) -> Built {
    let v = &r.value;
    let mut q = base_question(c);
    q.question = need(v, "question")?;
    q.options = options_of(v.get("options").ok_or("no `options`")?, "text", "label")?;
    let (ans, multi) = match v.get("answer_idx") {
        Some(a) if !a.is_null() => resolve_answer(a, &q.options, AnswerType::Letter, 0)?,
        _ => resolve_answer(v.get("answer").ok_or("no `answer`")?, &q.options, AnswerType::Text, 0)?,
    };
    if let (Some(text), false) = (field(v, Some("answer")), multi)
        && q.option_text(&ans).is_some_and(|t| t.trim() != text.trim())
    {
        return Err(format!("`answer_idx` {ans} and `answer` text disagree"));
    }
    q.answer = ans;
    q.multi_answer = multi;
    q.meta = meta_of(v, &["meta_info"]);
    Ok((None, q))
}

fn medmcqa(r: &Record, c: &Ctx<'_>) -> Built {
    let v = &r.value;
    let mut q = base_question(c);
    q.question = need(v, "question")?;
    q.options = ["opa", "opb", "opc", "opd"]
        .iter()
        .enumerate()
        .map(|(i, k)| Choice::new(label(i), field(v, Some(k)).unwrap_or_default()))
        .collect();
    (q.answer, q.multi_answer) = resolve_answer(v.get("cop").ok_or("no `cop`")?, &q.options, AnswerType::Index, 1)?;
    q.explanation = field(v, Some("exp"));
    q.subject = field(v, Some("subject_name")).or(q.subject);
    q.meta = meta_of(v, &["topic_name", "choice_type"]);
    Ok((field(v, Some("id")), q))
}

fn pubmedqa(r: &Record, c: &Ctx<'_>) -> Built {
    let v = &r.value;
    let mut q = base_question(c);
    q.question = need(v, "QUESTION")?;
    let contexts: Vec<String> =
        v.get("CONTEXTS").and_then(Value::as_array).map(|a| a.iter().filter_map(text_of).collect()).unwrap_or_default();
    let labels: Vec<String> =
        v.get("LABELS").and_then(Value::as_array).map(|a| a.iter().filter_map(text_of).collect()).unwrap_or_default();
    if contexts.is_empty() {
        return Err("no `CONTEXTS`".into());
    }
    let ctx: Vec<String> = contexts
        .iter()
        .enumerate()
        .map(|(i, t)| match labels.get(i) {
            Some(l) if !l.is_empty() => format!("{l}: {t}"),
            _ => t.clone(),
        })
        .collect();
    q.context = Some(ctx.join("\n"));
    q.options = vec![Choice::new("A", "yes"), Choice::new("B", "no"), Choice::new("C", "maybe")];
    let key = r.key.clone();
    let decision = match (c.answer_key, &key) {
        (Some(k), Some(pmid)) => k.get(pmid).cloned().ok_or_else(|| format!("PMID {pmid} is not in the answer key"))?,
        (Some(_), None) => return Err("record has no PMID to look up in the answer key".into()),
        (None, _) => need(v, "final_decision")?,
    };
    (q.answer, q.multi_answer) =
        resolve_answer(&Value::String(decision.to_lowercase()), &q.options, AnswerType::Text, 0)?;
    q.explanation = field(v, Some("LONG_ANSWER"));
    q.meta = meta_of(v, &["MESHES", "YEAR"]);
    Ok((key, q))
}

fn mmlu(r: &Record, c: &Ctx<'_>) -> Built {
    let v = &r.value;
    let mut q = base_question(c);
    q.question = need(v, "0")?;
    q.options =
        (1..=4).map(|i| Choice::new(label(i - 1), field(v, Some(&i.to_string())).unwrap_or_default())).collect();
    (q.answer, q.multi_answer) =
        resolve_answer(v.get("5").ok_or("no answer column (6th)")?, &q.options, AnswerType::Letter, 0)?;
    if c.subject.is_none() {
        q.subject = Some(
            r.file
                .trim_end_matches(".gz")
                .trim_end_matches(".csv")
                .trim_end_matches("_test")
                .trim_end_matches("_dev")
                .trim_end_matches("_val")
                .to_string(),
        );
    }
    Ok((None, q))
}

fn mmlu_pro(r: &Record, c: &Ctx<'_>) -> Built {
    let v = &r.value;
    let mut q = base_question(c);
    q.question = need(v, "question")?;
    let opts = v.get("options").and_then(Value::as_array).ok_or("no `options` list")?;
    // MMLU-Pro pads some lists with "N/A".
    q.options = opts
        .iter()
        .filter_map(text_of)
        .filter(|t| t.trim() != "N/A")
        .enumerate()
        .map(|(i, t)| Choice::new(label(i), t))
        .collect();
    let ans = match v.get("answer") {
        Some(a) if !a.is_null() => resolve_answer(a, &q.options, AnswerType::Letter, 0)?,
        _ => resolve_answer(v.get("answer_index").ok_or("no `answer`")?, &q.options, AnswerType::Index, 0)?,
    };
    if let Some(i) = v.get("answer_index").and_then(Value::as_i64)
        && q.options.get(i as usize).map(|o| o.label.as_str()) != Some(ans.0.as_str())
    {
        return Err(format!("`answer` {} and `answer_index` {i} disagree", ans.0));
    }
    (q.answer, q.multi_answer) = ans;
    q.subject = field(v, Some("category")).or(q.subject);
    q.meta = meta_of(v, &["src", "cot_content"]);
    Ok((field(v, Some("question_id")), q))
}

fn cmexam(r: &Record, c: &Ctx<'_>) -> Built {
    let v = &r.value;
    let mut q = base_question(c);
    q.question = need(v, "Question")?;
    q.options = options_from_string(&need(v, "Options")?)?;
    (q.answer, q.multi_answer) =
        resolve_answer(v.get("Answer").ok_or("no `Answer`")?, &q.options, AnswerType::Letter, 0)?;
    q.explanation = field(v, Some("Explanation")).filter(|e| e != "nan");
    q.meta = meta_of(v, &["Medical Discipline", "Competency", "Difficulty level", "Question Type"]);
    Ok((None, q))
}

fn mapped(r: &Record, c: &Ctx<'_>) -> Built {
    let m = c.mapping.ok_or("format `mapping` needs the `mapping` parameter")?;
    let s = |k: &str| m.get(k).and_then(Value::as_str);
    let v = &r.value;
    let mut q = base_question(c);
    q.question = field(v, s("question")).ok_or_else(|| format!("no `{}`", s("question").unwrap_or("question")))?;
    let text_key = s("option_text").unwrap_or("text");
    let label_key = s("option_label").unwrap_or("label");
    q.options = match (s("options"), m.get("option_fields").and_then(Value::as_array)) {
        (Some(p), _) => options_of(get_path(v, p).ok_or_else(|| format!("no `{p}`"))?, text_key, label_key)?,
        (None, Some(fields)) => fields
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|f| field(v, Some(f)))
            .enumerate()
            .map(|(i, t)| Choice::new(label(i), t))
            .collect(),
        (None, None) => return Err("the mapping names neither `options` nor `option_fields`".into()),
    };
    let ty = match s("answer_type").unwrap_or("auto") {
        "letter" => AnswerType::Letter,
        "index" => AnswerType::Index,
        "text" => AnswerType::Text,
        _ => AnswerType::Auto,
    };
    let base = m.get("index_base").and_then(Value::as_i64).unwrap_or(0);
    let ap = s("answer").ok_or("the mapping has no `answer`")?;
    (q.answer, q.multi_answer) =
        resolve_answer(get_path(v, ap).ok_or_else(|| format!("no `{ap}`"))?, &q.options, ty, base)?;
    q.context = field(v, s("context"));
    q.explanation = field(v, s("explanation"));
    q.subject = field(v, s("subject")).or(q.subject);
    let id = field(v, s("id")).or_else(|| r.key.clone());
    Ok((id, q))
}

fn read_answer_key(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let v: Value =
        serde_json::from_str(&read_text(path)?).map_err(|e| anyhow!("{}: malformed JSON: {e}", path.display()))?;
    let m =
        v.as_object().ok_or_else(|| anyhow!("{}: the answer key must be an object {{pmid: label}}", path.display()))?;
    Ok(m.iter().filter_map(|(k, v)| text_of(v).map(|t| (k.clone(), t))).collect())
}

/// Reads the records of a file in the format's container.
fn read_records(
    format: &str,
    path: &Path,
    mapping: Option<&Map<String, Value>>,
    rejects: &mut Vec<Reject>,
) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    match format {
        "medqa" | "medmcqa" | "mmlu-pro" | "cmexam" => {
            for f in files(path, &["jsonl", "json"])? {
                read_jsonl(&f, &mut out, rejects)?;
            }
        }
        "pubmedqa" => {
            for f in files(path, &["json"])? {
                read_json(&f, None, &mut out, rejects)?;
            }
        }
        "mmlu" => {
            for f in files(path, &["csv"])? {
                read_csv(&f, b',', false, &mut out, rejects)?;
            }
        }
        "mapping" => {
            let m = mapping.ok_or_else(|| anyhow!("format `mapping` needs the `mapping` parameter"))?;
            let file = m.get("file").and_then(Value::as_str).unwrap_or("auto");
            let header = m.get("header").and_then(Value::as_bool).unwrap_or(true);
            let records = m.get("records").and_then(Value::as_str);
            for f in files(path, &["jsonl", "json", "csv", "tsv"])? {
                let kind = match file {
                    "auto" => {
                        let n = file_name(&f).to_lowercase();
                        let n = n.strip_suffix(".gz").unwrap_or(&n).to_string();
                        match n.rsplit('.').next() {
                            Some("jsonl" | "ndjson") => "jsonl",
                            Some("json") => "json",
                            Some("csv") => "csv",
                            Some("tsv") => "tsv",
                            _ => bail!(
                                "cannot tell the format of {} from its extension; set `mapping.file`",
                                f.display()
                            ),
                        }
                    }
                    k => k,
                };
                match kind {
                    "jsonl" => read_jsonl(&f, &mut out, rejects)?,
                    "json" => read_json(&f, records, &mut out, rejects)?,
                    "csv" => read_csv(&f, b',', header, &mut out, rejects)?,
                    _ => read_csv(&f, b'\t', header, &mut out, rejects)?,
                }
            }
        }
        other => bail!("unknown format `{other}`"),
    }
    Ok(out)
}

/// A record that could not become a question: id, line, reason, raw text.
pub type RejectRow = (String, i64, String, String);

/// Reads a curated file into questions and rejects (the operator without the runtime).
pub fn load(
    format: &str,
    path: &Path,
    answers: Option<&Path>,
    source: Option<&str>,
    language: Option<&str>,
    subject: Option<&str>,
    mapping: Option<&Map<String, Value>>,
) -> anyhow::Result<(Vec<Question>, Vec<RejectRow>)> {
    let mut rejects = Vec::new();
    let records = read_records(format, path, mapping, &mut rejects)?;
    let key = match answers {
        Some(p) => Some(read_answer_key(p)?),
        None => None,
    };
    let source = source.map(str::to_string).unwrap_or_else(|| format.to_string());
    let c = Ctx {
        source: source.clone(),
        language: language
            .map(str::to_string)
            .unwrap_or_else(|| if format == "cmexam" { "zh".into() } else { "en".into() }),
        subject: subject.map(str::to_string),
        answer_key: key.as_ref(),
        mapping,
    };
    let build: fn(&Record, &Ctx<'_>) -> Built = match format {
        "medqa" => medqa,
        "medmcqa" => medmcqa,
        "pubmedqa" => pubmedqa,
        "mmlu" => mmlu,
        "mmlu-pro" => mmlu_pro,
        "cmexam" => cmexam,
        _ => mapped,
    };
    let many_files = records.iter().any(|r| r.file != records[0].file);
    let mut out = Vec::with_capacity(records.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in &records {
        match build(r, &c) {
            Ok((native, mut q)) => {
                if q.options.len() < 2 {
                    rejects.push(Reject {
                        file: r.file.clone(),
                        line: r.line,
                        reason: format!("{} option(s); a question needs at least 2", q.options.len()),
                        raw: truncate(&r.value.to_string(), 4096),
                    });
                    continue;
                }
                let base = match native {
                    Some(n) => format!("{source}-{n}"),
                    None => questions::content_id(&format!("{source}-"), &q.question, &q.options),
                };
                let count = seen.entry(base.clone()).or_insert(0);
                *count += 1;
                q.id = if *count == 1 { base } else { format!("{base}~{count}") };
                if many_files {
                    let mut meta: Map<String, Value> =
                        q.meta.as_deref().and_then(|m| serde_json::from_str(m).ok()).unwrap_or_default();
                    meta.insert("file".into(), json!(r.file));
                    q.meta = Some(Value::Object(meta).to_string());
                }
                out.push(q);
            }
            Err(reason) => rejects.push(Reject {
                file: r.file.clone(),
                line: r.line,
                reason,
                raw: truncate(&r.value.to_string(), 4096),
            }),
        }
    }
    let rejects = rejects
        .into_iter()
        .map(|r| {
            let id = if many_files { format!("{}:{}", r.file, r.line) } else { format!("line-{}", r.line) };
            (id, r.line, r.reason, r.raw)
        })
        .collect();
    Ok((out, rejects))
}

fn rejects_table(rejects: &[(String, i64, String, String)]) -> anyhow::Result<Table> {
    let schema = Arc::new(Schema::new(
        rejects_columns().into_iter().map(|c| Field::new(c.name, c.data_type, c.nullable)).collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(rejects.iter().map(|r| r.0.as_str()).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rejects.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(rejects.iter().map(|r| r.3.as_str()).collect::<Vec<_>>())),
        ],
    )?;
    Ok(Table::new(schema, vec![batch]))
}

impl Operator for Curated {
    fn spec(&self) -> &OpSpec {
        &SPEC
    }

    fn validate(&self, ctx: &fleming_runtime::op::ValidateCtx<'_>) -> Vec<fleming_runtime::op::ParamIssue> {
        let mut issues = Vec::new();
        let format = ctx.params.opt_str("format").unwrap_or("");
        let mapping = ctx.params.get("mapping");
        if format == "mapping" && mapping.is_null() {
            issues.push(fleming_runtime::op::ParamIssue {
                param: vec!["mapping".into()],
                message: "format `mapping` needs `mapping:` (question, options or option_fields, answer)".into(),
            });
        }
        if format == "mapping"
            && let Some(m) = mapping.as_object()
            && m.get("options").is_none_or(Value::is_null)
            && m.get("option_fields").is_none_or(Value::is_null)
        {
            issues.push(fleming_runtime::op::ParamIssue {
                param: vec!["mapping".into()],
                message: "the mapping needs `options` or `option_fields`".into(),
            });
        }
        if format != "mapping" && !mapping.is_null() {
            issues.push(fleming_runtime::op::ParamIssue {
                param: vec!["mapping".into()],
                message: format!("`mapping` is only read with `format: mapping` (format is `{format}`)"),
            });
        }
        if format != "pubmedqa" && !ctx.params.get("answers").is_null() {
            issues.push(fleming_runtime::op::ParamIssue {
                param: vec!["answers".into()],
                message: "`answers` (a separate answer key) is only read with `format: pubmedqa`".into(),
            });
        }
        issues
    }

    fn run(&self, ctx: &mut OpContext) -> anyhow::Result<Outputs> {
        let format = ctx.params.str("format")?.to_string();
        let path = ctx.params.path("path")?;
        let answers = ctx.params.opt_path("answers");
        let mapping = ctx.params.get("mapping").as_object().cloned();
        ctx.progress.set_message(&format!("reading {}", path.display()));
        let (items, rejects) = load(
            &format,
            &path,
            answers.as_deref(),
            ctx.params.opt_str("source"),
            ctx.params.opt_str("language"),
            ctx.params.opt_str("subject"),
            mapping.as_ref(),
        )?;
        ctx.cancel.check()?;
        let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
        for r in &rejects {
            let head = r.2.split(['`', ':']).next().unwrap_or("").trim().to_string();
            *by_reason.entry(head).or_default() += 1;
        }
        ctx.metric("rows", items.len() as u64);
        ctx.metric("rejected", rejects.len() as u64);
        ctx.metric("multi_answer", items.iter().filter(|q| q.multi_answer).count() as u64);
        ctx.metric("rejected_by_reason", json!(by_reason));
        ctx.progress.set_position(items.len() as u64);
        Ok(Outputs::new().table("questions", questions::to_table(&items)?).table("rejects", rejects_table(&rejects)?))
    }
}

#[cfg(test)]
mod tests;
