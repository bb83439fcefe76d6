//! Stage keys.
//!
//! A stage key is BLAKE3 over a canonical JSON encoding of
//! `{"op", "version", "params", "inputs", "files"}` where
//! - `params` are the resolved parameters that enter the key (defaults filled; `llm:`
//!   references replaced by what of the endpoint can change answers),
//! - `inputs` maps each input port to the list of digests of the artifacts connected to it
//!   (digests of content, not upstream keys: an upstream rerun that produces the same
//!   bytes leaves this stage cached — early cutoff),
//! - `files` maps each input-path parameter to the content digest of the file or tree it
//!   names (never the path, so clones and machines share cache hits).
//!
//! Canonical JSON: object keys sorted, no whitespace, integers as integers, floats with an
//! integral value written as integers, other floats in shortest round-trip form.

use std::collections::BTreeMap;

use fleming_artifacts::Digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything a stage key is made of, kept in refs so that `status` can say what changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyParts {
    /// Operator name.
    pub op: String,
    /// Operator version.
    pub version: u32,
    /// Key-relevant parameters.
    pub params: Value,
    /// Input port -> digests of connected artifacts.
    pub inputs: BTreeMap<String, Vec<Digest>>,
    /// Input-path parameter -> content digest.
    pub files: BTreeMap<String, Digest>,
}

impl KeyParts {
    /// The stage key.
    pub fn key(&self) -> Digest {
        let mut doc = serde_json::Map::new();
        doc.insert("op".into(), Value::from(self.op.clone()));
        doc.insert("version".into(), Value::from(self.version));
        doc.insert("params".into(), self.params.clone());
        doc.insert(
            "inputs".into(),
            Value::Object(
                self.inputs
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::Array(v.iter().map(|d| Value::from(d.hex())).collect())))
                    .collect(),
            ),
        );
        doc.insert(
            "files".into(),
            Value::Object(self.files.iter().map(|(k, d)| (k.clone(), Value::from(d.hex()))).collect()),
        );
        Digest::of_parts("fleming-stage-key-v1", [canonical_json(&Value::Object(doc)).as_bytes()])
    }
}

/// The canonical text of a JSON value (see the module docs).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                out.push_str(&u.to_string());
            } else if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    out.push_str(&(f as i64).to_string());
                } else {
                    out.push_str(
                        &serde_json::Number::from_f64(f).map(|n| n.to_string()).unwrap_or_else(|| "null".into()),
                    );
                }
            }
        }
        Value::String(s) => out.push_str(&serde_json::to_string(s).unwrap_or_default()),
        Value::Array(items) => {
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(it, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push(':');
                write_canonical(&m[*k], out);
            }
            out.push('}');
        }
    }
}

/// Differences between two JSON values as `path: old -> new` lines (for "params changed").
pub fn json_diff(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into("", old, new, &mut out);
    out
}

fn diff_into(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if canonical_json(old) == canonical_json(new) {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                diff_into(&p, a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null), out);
            }
        }
        // Lists of the same length: the items that changed, by index (`endpoints[1].model`).
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_into(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ => out.push(format!("{}: {} -> {}", if path.is_empty() { "(all)" } else { path }, short(old), short(new))),
    }
}

fn short(v: &Value) -> String {
    let s = canonical_json(v);
    if s.chars().count() > 60 { format!("{}…", s.chars().take(57).collect::<String>()) } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_is_order_and_number_insensitive() {
        assert_eq!(canonical_json(&json!({"b": 1.0, "a": [1, 2.5]})), r#"{"a":[1,2.5],"b":1}"#);
        let a = KeyParts {
            op: "x".into(),
            version: 1,
            params: json!({"a": 1, "b": 2}),
            inputs: BTreeMap::new(),
            files: BTreeMap::new(),
        };
        let mut b = a.clone();
        b.params = json!({"b": 2.0, "a": 1});
        assert_eq!(a.key(), b.key());
        b.version = 2;
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn diff_lists_changed_leaves() {
        let d = json_diff(&json!({"a": 1, "b": {"c": "x"}}), &json!({"a": 1, "b": {"c": "y"}, "d": true}));
        assert_eq!(d, vec!["b.c: \"x\" -> \"y\"", "d: null -> true"]);
    }
}
