//! Fingerprints the code that computes each operator, so that the runtime can warn when
//! it changed without a version bump.
//!
//! An operator module is `src/ops/<name>.rs` or `src/ops/<name>/` (without `tests.rs`
//! files). Its fingerprint covers:
//! - its own files;
//! - every module it uses, transitively: other operator modules (`crate::ops::<other>`,
//!   e.g. the knowledge-graph model validate borrows from sample) and the crate's shared
//!   modules (`crate::llm`, `crate::questions`, …);
//! - the shared question format (`questions/`) when it uses `fleming_questions` or
//!   `crate::questions`;
//! - for a worker operator (one with a file `worker/src/ops/<name>.rs`), the worker's
//!   operator code, the model library and the dispatch protocol;
//! - for a module that starts the torch worker's model server (`crate::served`), the
//!   server and the model library.
//!
//! The result is `fingerprints::<module>` constants; an operator names its own, so a name
//! that matches no module fails the build.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Files of a module: a `.rs` file, or every `.rs` file under a directory but `tests.rs`.
fn files(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_file() {
        if p.extension().is_some_and(|x| x == "rs") {
            out.push(p.to_path_buf());
        }
        return;
    }
    let Ok(entries) = fs::read_dir(p) else { return };
    for e in entries.flatten() {
        let q = e.path();
        if q.is_dir() {
            files(&q, out);
        } else if q.extension().is_some_and(|x| x == "rs") && q.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(q);
        }
    }
}

/// Identifiers that follow `prefix` in `text` (`crate::ops::` → `sample`, …).
fn referenced(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        let ident: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !ident.is_empty() {
            out.insert(ident);
        }
    }
    out
}

/// A node of the dependency graph: an operator module (`ops/x`), a shared module of this
/// crate (`x`), or a directory outside it (`../model/src`).
fn node_files(node: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(op) = node.strip_prefix("ops/") {
        files(&Path::new("src/ops").join(format!("{op}.rs")), &mut out);
        files(&Path::new("src/ops").join(op), &mut out);
    } else if node.starts_with("../") {
        files(Path::new(node), &mut out);
    } else {
        files(&Path::new("src").join(format!("{node}.rs")), &mut out);
        files(&Path::new("src").join(node), &mut out);
    }
    out.sort();
    out
}

fn main() {
    println!("cargo:rerun-if-changed=src");
    for d in ["../questions/src", "../model/src", "../dispatch/src", "../worker/src"] {
        println!("cargo:rerun-if-changed={d}");
    }
    let Ok(dir) = fs::read_dir("src/ops") else { return };
    let mut ops: Vec<String> = dir
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let stem = p.file_stem()?.to_str()?.to_string();
            (stem != "mod" && (p.is_dir() || p.extension().is_some_and(|x| x == "rs"))).then_some(stem)
        })
        .collect();
    ops.sort();
    ops.dedup();
    let shared: BTreeSet<String> = fs::read_dir("src")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let p = e.path();
                    let stem = p.file_stem()?.to_str()?.to_string();
                    (!["lib", "ops"].contains(&stem.as_str())).then_some(stem)
                })
                .collect()
        })
        .unwrap_or_default();
    let worker_sources = [
        "../worker/src/ops/mod.rs",
        "../worker/src/ops/common.rs",
        "../worker/src/run.rs",
        "../model/src",
        "../dispatch/src",
    ];
    let served_sources = ["../worker/src/serve.rs", "../worker/src/main.rs", "../model/src"];

    // Direct dependencies of every node.
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut todo: Vec<String> = ops.iter().map(|o| format!("ops/{o}")).collect();
    while let Some(node) = todo.pop() {
        if deps.contains_key(&node) {
            continue;
        }
        let mut d = BTreeSet::new();
        if !node.starts_with("../") {
            let text: String = node_files(&node)
                .iter()
                .map(|f| fs::read_to_string(f).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            for o in referenced(&text, "crate::ops::") {
                if ops.contains(&o) {
                    d.insert(format!("ops/{o}"));
                }
            }
            for m in referenced(&text, "crate::") {
                if shared.contains(&m) {
                    d.insert(m);
                }
            }
            if text.contains("fleming_questions") || node == "questions" {
                d.insert("../questions/src".to_string());
            }
            if node == "served" {
                d.extend(served_sources.iter().map(|s| s.to_string()));
            }
            if let Some(op) = node.strip_prefix("ops/") {
                let own = format!("../worker/src/ops/{op}.rs");
                if Path::new(&own).is_file() {
                    d.insert(own);
                    d.insert("../questions/src".to_string());
                    d.extend(worker_sources.iter().map(|s| s.to_string()));
                }
            }
        }
        d.remove(&node);
        todo.extend(d.iter().cloned());
        deps.insert(node, d);
    }

    let mut code = String::from(
        "/// Source fingerprints by operator module: its files, the modules it uses, and the\n\
         /// worker and model code it runs on (see `build.rs`).\n\
         #[allow(non_upper_case_globals)]\n\
         pub mod fingerprints {\n",
    );
    for op in &ops {
        let mut closure = BTreeSet::new();
        let mut stack = vec![format!("ops/{op}")];
        while let Some(n) = stack.pop() {
            if closure.insert(n.clone()) {
                stack.extend(deps.get(&n).into_iter().flatten().cloned());
            }
        }
        let mut h = blake3::Hasher::new();
        for node in &closure {
            for f in node_files(node) {
                println!("cargo:rerun-if-changed={}", f.display());
                h.update(f.to_string_lossy().as_bytes());
                h.update(&[0]);
                h.update(&fs::read(&f).unwrap_or_default());
            }
        }
        let hex = h.finalize().to_hex();
        let uses: Vec<&str> = closure.iter().filter(|n| **n != format!("ops/{op}")).map(String::as_str).collect();
        code.push_str(&format!(
            "    /// `{op}`{}\n    pub const {op}: &str = {:?};\n",
            if uses.is_empty() { String::new() } else { format!(", with {}", uses.join(", ")) },
            &hex.as_str()[..16]
        ));
    }
    code.push_str("}\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("fingerprints.rs");
    if let Err(e) = fs::write(&out, code) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
