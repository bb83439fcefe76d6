//! Fingerprints each operator's source (`src/ops/<name>.rs` or `src/ops/<name>/`, without
//! `tests.rs` files) so that the runtime can warn when an operator changed without a
//! version bump.

use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && p.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(p);
        }
    }
}

fn main() {
    let ops = Path::new("src/ops");
    println!("cargo:rerun-if-changed=src/ops");
    let mut entries: Vec<(String, String)> = Vec::new();
    let Ok(dir) = fs::read_dir(ops) else { return };
    let mut items: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
    items.sort();
    for p in items {
        let name = match p.file_stem().and_then(|s| s.to_str()) {
            Some(n) if n != "mod" => n.to_string(),
            _ => continue,
        };
        let mut srcs = Vec::new();
        if p.is_dir() {
            files(&p, &mut srcs);
        } else if p.extension().is_some_and(|x| x == "rs") {
            srcs.push(p.clone());
        }
        srcs.sort();
        let mut h = blake3::Hasher::new();
        for s in &srcs {
            println!("cargo:rerun-if-changed={}", s.display());
            h.update(s.strip_prefix(ops).unwrap_or(s).to_string_lossy().as_bytes());
            h.update(&[0]);
            h.update(&fs::read(s).unwrap_or_default());
        }
        entries.push((name, h.finalize().to_hex()[..16].to_string()));
    }
    let mut code =
        String::from("/// Source fingerprints by operator module.\npub const FINGERPRINTS: &[(&str, &str)] = &[\n");
    for (n, f) in entries {
        code.push_str(&format!("    ({n:?}, {f:?}),\n"));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("fingerprints.rs");
    if let Err(e) = fs::write(&out, code) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
