//! Parameters: checking what a pipeline gives against an operator's declared
//! [`ParamSpec`]s (types, bounds, unknown and missing names), filling defaults, and typed
//! access for operator implementations.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use serde_json::{Map, Value};

use crate::diagnostic::suggestion;
use crate::op::{ParamDefault, ParamSpec, ParamType};
use crate::spec::positions::Seg;

/// A problem with one parameter, located by its path inside `params`.
#[derive(Clone, Debug)]
pub struct ParamError {
    /// Path inside `params`.
    pub path: Vec<Seg>,
    /// Point at the key (unknown names) rather than the value.
    pub at_key: bool,
    /// What is wrong.
    pub message: String,
    /// A hint.
    pub help: Option<String>,
}

/// What resolution needs to know about the pipeline.
#[derive(Default)]
pub struct ResolveCtx<'a> {
    /// Entry names of each top-level section (for [`ParamType::SectionRef`]).
    pub sections: BTreeMap<&'a str, Vec<&'a str>>,
    /// Parameter paths whose value came wholly from one `${VAR}`: their text is converted
    /// to the declared type (`"8"` becomes 8 for an integer parameter).
    pub interpolated: HashSet<Vec<Seg>>,
}

/// Resolved parameters: checked, defaults filled, numbers normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    values: Map<String, Value>,
    base_dir: PathBuf,
}

impl Params {
    /// Checks `given` against `specs` and fills defaults. All problems are reported.
    pub fn resolve(
        specs: &[ParamSpec],
        given: &Map<String, Value>,
        base_dir: &Path,
        ctx: &ResolveCtx<'_>,
    ) -> Result<Params, Vec<ParamError>> {
        let mut errors = Vec::new();
        let values = resolve_object(specs, given, &[], ctx, &mut errors);
        if errors.is_empty() { Ok(Params { values, base_dir: base_dir.to_path_buf() }) } else { Err(errors) }
    }

    /// Parameters from already-resolved values (e.g. a worker reading its job).
    pub fn from_resolved(values: Map<String, Value>, base_dir: &Path) -> Params {
        Params { values, base_dir: base_dir.to_path_buf() }
    }

    /// All values as a JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(self.values.clone())
    }

    /// The values as a map.
    pub fn values(&self) -> &Map<String, Value> {
        &self.values
    }

    /// The directory relative paths are resolved against (the pipeline file's).
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// The parameters that enter the stage key.
    pub fn key_json(&self, specs: &[ParamSpec]) -> Value {
        let mut m = Map::new();
        for s in specs.iter().filter(|s| s.in_key) {
            if let Some(v) = self.values.get(s.name) {
                m.insert(s.name.to_string(), v.clone());
            }
        }
        Value::Object(m)
    }

    /// A subset of parameters, for an operator's record-memo key.
    pub fn select(&self, names: &[&str]) -> Value {
        let mut m = Map::new();
        for n in names {
            m.insert((*n).to_string(), self.values.get(*n).cloned().unwrap_or(Value::Null));
        }
        Value::Object(m)
    }

    /// A raw value (`Null` if absent).
    pub fn get(&self, name: &str) -> &Value {
        self.values.get(name).unwrap_or(&Value::Null)
    }

    /// A value decoded into any deserialisable type.
    pub fn get_as<T: serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<T> {
        serde_json::from_value(self.get(name).clone()).with_context(|| format!("parameter `{name}`"))
    }

    /// A string parameter.
    pub fn str(&self, name: &str) -> anyhow::Result<&str> {
        self.get(name).as_str().ok_or_else(|| anyhow!("parameter `{name}` is not a string"))
    }

    /// An optional string parameter.
    pub fn opt_str(&self, name: &str) -> Option<&str> {
        self.get(name).as_str()
    }

    /// An integer parameter.
    pub fn i64(&self, name: &str) -> anyhow::Result<i64> {
        self.get(name).as_i64().ok_or_else(|| anyhow!("parameter `{name}` is not an integer"))
    }

    /// A non-negative integer parameter.
    pub fn u64(&self, name: &str) -> anyhow::Result<u64> {
        self.get(name).as_u64().ok_or_else(|| anyhow!("parameter `{name}` is not a non-negative integer"))
    }

    /// A number parameter.
    pub fn f64(&self, name: &str) -> anyhow::Result<f64> {
        self.get(name).as_f64().ok_or_else(|| anyhow!("parameter `{name}` is not a number"))
    }

    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> anyhow::Result<bool> {
        self.get(name).as_bool().ok_or_else(|| anyhow!("parameter `{name}` is not a boolean"))
    }

    /// A path parameter, made absolute against the pipeline file's directory.
    pub fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        Ok(self.resolve_path(self.str(name)?))
    }

    /// An optional path parameter.
    pub fn opt_path(&self, name: &str) -> Option<PathBuf> {
        self.opt_str(name).map(|s| self.resolve_path(s))
    }

    /// Makes a path absolute against the pipeline file's directory.
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) }
    }
}

/// Every input-path value in resolved params, with its parameter path, in a stable order.
/// Their content digests enter the stage key (named by [`display_path`], e.g. `source.dump`).
pub fn input_paths(specs: &[ParamSpec], values: &Map<String, Value>) -> Vec<(Vec<Seg>, String)> {
    input_paths_with_kind(specs, values).into_iter().map(|(s, p, _)| (s, p)).collect()
}

/// What an input path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputPathKind {
    /// A file or directory, hashed whole.
    Any,
    /// A Hugging Face model directory: only its model files are hashed.
    ModelDir,
}

/// [`input_paths`] with what each path names.
pub fn input_paths_with_kind(
    specs: &[ParamSpec],
    values: &Map<String, Value>,
) -> Vec<(Vec<Seg>, String, InputPathKind)> {
    let mut out = Vec::new();
    collect_paths(specs, values, &[], &mut out);
    out
}

type PathList = Vec<(Vec<Seg>, String, InputPathKind)>;

fn collect_paths(specs: &[ParamSpec], values: &Map<String, Value>, prefix: &[Seg], out: &mut PathList) {
    for s in specs {
        if let Some(v) = values.get(s.name) {
            collect_typed_paths(&s.ty, v, &join(prefix, s.name), out);
        }
    }
}

fn collect_typed_paths(ty: &ParamType, v: &Value, path: &[Seg], out: &mut PathList) {
    match (ty, v) {
        (ParamType::InputPath, Value::String(s)) => out.push((path.to_vec(), s.clone(), InputPathKind::Any)),
        (ParamType::ModelDir, Value::String(s)) => out.push((path.to_vec(), s.clone(), InputPathKind::ModelDir)),
        (ParamType::List(t), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let mut p = path.to_vec();
                p.push(Seg::Index(i));
                collect_typed_paths(t, item, &p, out);
            }
        }
        (ParamType::Map(t), Value::Object(m)) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                collect_typed_paths(t, &m[k], &join(path, k), out);
            }
        }
        (ParamType::Object(fields), Value::Object(m)) => collect_paths(fields, m, path, out),
        _ => {}
    }
}

fn err(path: &[Seg], message: String) -> ParamError {
    ParamError { path: path.to_vec(), at_key: false, message, help: None }
}

fn join(path: &[Seg], key: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(Seg::Key(key.to_string()));
    p
}

fn resolve_object(
    specs: &[ParamSpec],
    given: &Map<String, Value>,
    path: &[Seg],
    ctx: &ResolveCtx<'_>,
    errors: &mut Vec<ParamError>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for key in given.keys() {
        if !specs.iter().any(|s| s.name == key) {
            errors.push(ParamError {
                path: join(path, key),
                at_key: true,
                message: format!("unknown parameter `{}`", display_path(&join(path, key))),
                help: Some(suggestion(key, specs.iter().map(|s| s.name))),
            });
        }
    }
    for s in specs {
        let p = join(path, s.name);
        match given.get(s.name) {
            Some(Value::Null) if matches!(s.default, ParamDefault::Optional) => {
                out.insert(s.name.to_string(), Value::Null);
            }
            Some(v) => {
                if let Some(v) = check(&s.ty, v, &p, s, ctx, errors) {
                    out.insert(s.name.to_string(), v);
                }
            }
            None => match &s.default {
                ParamDefault::Required => errors.push(ParamError {
                    path: path.to_vec(),
                    at_key: true,
                    message: format!(
                        "missing required parameter `{}` ({}): {}",
                        display_path(&p),
                        s.ty.describe(),
                        s.doc
                    ),
                    help: None,
                }),
                ParamDefault::Optional => {
                    out.insert(s.name.to_string(), Value::Null);
                }
                ParamDefault::Value(v) => {
                    // Defaults go through the same normalisation as given values.
                    let v = check(&s.ty, v, &p, s, ctx, &mut Vec::new()).unwrap_or_else(|| v.clone());
                    out.insert(s.name.to_string(), v);
                }
            },
        }
    }
    out
}

/// Renders a parameter path as `a.b[2].c`.
pub fn display_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The typed value of an interpolated string, for number and boolean parameters.
fn coerce_interpolated(ty: &ParamType, text: &str) -> Option<Value> {
    let t = text.trim();
    match ty {
        ParamType::Int => t.parse::<i64>().ok().map(Value::from),
        ParamType::Float => t.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
        ParamType::Bool => match t {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        _ => None,
    }
}

fn check(
    ty: &ParamType,
    v: &Value,
    path: &[Seg],
    spec: &ParamSpec,
    ctx: &ResolveCtx<'_>,
    errors: &mut Vec<ParamError>,
) -> Option<Value> {
    let name = display_path(path);
    if let Value::String(text) = v
        && ctx.interpolated.contains(path)
        && let Some(typed) = coerce_interpolated(ty, text)
    {
        return check(ty, &typed, path, spec, &ResolveCtx::default(), errors);
    }
    let mismatch = |errors: &mut Vec<ParamError>| {
        errors.push(err(path, format!("parameter `{name}` must be {}, found {}", ty.describe(), kind_of(v))));
        None
    };
    let bounds = |x: f64, errors: &mut Vec<ParamError>| -> bool {
        if let Some(min) = spec.min
            && x < min
        {
            errors.push(err(path, format!("parameter `{name}` must be at least {min}, found {x}")));
            return false;
        }
        if let Some(max) = spec.max
            && x > max
        {
            errors.push(err(path, format!("parameter `{name}` must be at most {max}, found {x}")));
            return false;
        }
        true
    };
    match ty {
        ParamType::Str => v.as_str().map(|_| v.clone()).or_else(|| mismatch(errors)),
        ParamType::Bool => v.as_bool().map(Value::Bool).or_else(|| mismatch(errors)),
        ParamType::Int => match v.as_i64() {
            Some(i) => bounds(i as f64, errors).then(|| Value::from(i)),
            None => match v.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => bounds(f, errors).then(|| Value::from(f as i64)),
                _ => mismatch(errors),
            },
        },
        ParamType::Float => match v.as_f64() {
            Some(f) => bounds(f, errors).then(|| Value::from(f)),
            None => mismatch(errors),
        },
        ParamType::InputPath | ParamType::OutputPath | ParamType::ModelDir => match v.as_str() {
            Some("") => {
                errors.push(err(path, format!("parameter `{name}` is an empty path")));
                None
            }
            Some(_) => Some(v.clone()),
            None => mismatch(errors),
        },
        ParamType::Enum(options) => match v.as_str() {
            Some(s) if options.contains(&s) => Some(v.clone()),
            Some(s) => {
                errors.push(ParamError {
                    path: path.to_vec(),
                    at_key: false,
                    message: format!("parameter `{name}` must be one of {}, found `{s}`", options.join(", ")),
                    help: Some(suggestion(s, options.iter().copied())),
                });
                None
            }
            None => mismatch(errors),
        },
        ParamType::SectionRef(section) => match v.as_str() {
            Some(s) => {
                let names = ctx.sections.get(section).cloned().unwrap_or_default();
                if names.contains(&s) {
                    Some(v.clone())
                } else {
                    errors.push(ParamError {
                        path: path.to_vec(),
                        at_key: false,
                        message: format!(
                            "parameter `{name}` names `{s}`, which is not an entry of the `{section}:` section"
                        ),
                        help: Some(if names.is_empty() {
                            format!("add a top-level `{section}:` section with an entry `{s}`")
                        } else {
                            suggestion(s, names.iter().copied())
                        }),
                    });
                    None
                }
            }
            None => mismatch(errors),
        },
        ParamType::List(inner) => match v {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let mut p = path.to_vec();
                    p.push(Seg::Index(i));
                    match check(inner, item, &p, spec, ctx, errors) {
                        Some(x) => out.push(x),
                        None => ok = false,
                    }
                }
                ok.then_some(Value::Array(out))
            }
            _ => mismatch(errors),
        },
        ParamType::Map(inner) => match v {
            Value::Object(m) => {
                let mut out = Map::new();
                let mut ok = true;
                for (k, item) in m {
                    match check(inner, item, &join(path, k), spec, ctx, errors) {
                        Some(x) => {
                            out.insert(k.clone(), x);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(Value::Object(out))
            }
            _ => mismatch(errors),
        },
        ParamType::Object(fields) => match v {
            Value::Object(m) => {
                let before = errors.len();
                let out = resolve_object(fields, m, path, ctx, errors);
                (errors.len() == before).then_some(Value::Object(out))
            }
            _ => mismatch(errors),
        },
        ParamType::Json => Some(v.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<ParamSpec> {
        vec![
            ParamSpec::required("path", ParamType::InputPath, "file"),
            ParamSpec::with_default("rows", ParamType::Int, json!(10), "rows").range(Some(1.0), None),
            ParamSpec::with_default("ratio", ParamType::Float, json!(1), "ratio"),
            ParamSpec::with_default("format", ParamType::Enum(vec!["csv", "jsonl"]), json!("csv"), "fmt"),
            ParamSpec::optional(
                "source",
                ParamType::Object(vec![ParamSpec::optional("dump", ParamType::InputPath, "dump")]),
                "src",
            ),
        ]
    }

    #[test]
    fn defaults_and_normalisation() {
        let given = json!({"path": "a.csv", "ratio": 2}).as_object().unwrap().clone();
        let p = Params::resolve(&specs(), &given, Path::new("/base"), &ResolveCtx::default()).unwrap();
        assert_eq!(p.i64("rows").unwrap(), 10);
        assert_eq!(p.get("ratio"), &json!(2.0));
        assert_eq!(p.path("path").unwrap(), PathBuf::from("/base/a.csv"));
        assert_eq!(p.get("source"), &Value::Null);
    }

    #[test]
    fn errors_are_all_reported() {
        let given =
            json!({"rows": 0, "format": "jsnl", "pth": "x", "source": {"dmp": "x"}}).as_object().unwrap().clone();
        let errs = Params::resolve(&specs(), &given, Path::new("/"), &ResolveCtx::default()).unwrap_err();
        let msgs: Vec<String> = errs.iter().map(|e| e.message.clone()).collect();
        assert!(msgs.iter().any(|m| m.contains("unknown parameter `pth`")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("missing required parameter `path`")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("at least 1")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("one of csv, jsonl")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("unknown parameter `source.dmp`")), "{msgs:?}");
        let jsnl = errs.iter().find(|e| e.message.contains("jsnl")).unwrap();
        assert_eq!(jsnl.help.as_deref(), Some("did you mean `jsonl`?"));
    }

    #[test]
    fn nested_input_paths_are_found() {
        let given = json!({"path": "a.csv", "source": {"dump": "d.xml"}}).as_object().unwrap().clone();
        let p = Params::resolve(&specs(), &given, Path::new("/"), &ResolveCtx::default()).unwrap();
        let paths: Vec<(String, String)> =
            input_paths(&specs(), p.values()).into_iter().map(|(k, v)| (display_path(&k), v)).collect();
        assert_eq!(
            paths,
            vec![("path".to_string(), "a.csv".to_string()), ("source.dump".to_string(), "d.xml".to_string())]
        );
    }
}
