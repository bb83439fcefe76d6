//! Where each node of a YAML document is: a map from the node's path (mapping keys and
//! sequence indices) to its line and column, built from the event stream of
//! `saphyr-parser` (serde_norway, which builds the values, keeps no positions). This pass
//! also rejects what serde would silently accept or that would cost unbounded memory:
//! duplicate keys, non-scalar keys, nesting deeper than [`MAX_DEPTH`], several documents.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

use crate::diagnostic::{Diagnostic, Pos};

/// Deepest nesting accepted in a pipeline file.
pub const MAX_DEPTH: usize = 64;

/// One segment of a node path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A node path, e.g. `stages / clean / params / query`.
pub type Path = Vec<Seg>;

/// Builds a path from keys.
pub fn path(keys: &[&str]) -> Path {
    keys.iter().map(|k| Seg::Key((*k).to_string())).collect()
}

/// Positions of the nodes of one document.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    values: HashMap<Path, Pos>,
    keys: HashMap<Path, Pos>,
}

impl Positions {
    /// Position of the value at `path`, or of its nearest ancestor that has one.
    pub fn value(&self, path: &[Seg]) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            p = &p[..p.len() - 1];
        }
    }

    /// Position of the key that introduces `path` (falls back to the value's position).
    pub fn key(&self, path: &[Seg]) -> Option<Pos> {
        self.keys.get(path).copied().or_else(|| self.value(path))
    }
}

enum Frame {
    Map { path: Path, key: Option<String>, seen: HashMap<String, Pos>, expect_key: bool },
    Seq { path: Path, index: usize },
}

/// Scans `text`; returns positions, or the problems found (syntax errors stop the scan).
pub fn scan(text: &str) -> Result<Positions, Vec<Diagnostic>> {
    let mut out = Positions::default();
    let mut errors = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut documents = 0usize;
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        let (event, span) = match next {
            Ok(x) => x,
            Err(e) => {
                let m = e.marker();
                errors.push(Diagnostic::at(
                    Some(Pos { line: m.line(), col: m.col() + 1 }),
                    format!("YAML syntax error: {}", e.info()),
                ));
                return Err(errors);
            }
        };
        let pos = Pos { line: span.start.line(), col: span.start.col() + 1 };
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    errors
                        .push(Diagnostic::at(Some(pos), "a pipeline file holds one YAML document; found a second one"));
                    return Err(errors);
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                value_done(&mut stack);
            }
            Event::Scalar(..) | Event::Alias(_) | Event::MappingStart(..) | Event::SequenceStart(..) => {
                // Is this node a mapping key?
                if let Some(Frame::Map { path, key, seen, expect_key }) = stack.last_mut()
                    && *expect_key
                {
                    match &event {
                        Event::Scalar(s, ..) => {
                            let k = s.to_string();
                            if let Some(first) = seen.get(&k) {
                                errors.push(Diagnostic::at(Some(pos), format!("duplicate key `{k}`")).help(format!(
                                    "`{k}` is already set at line {}, column {}",
                                    first.line, first.col
                                )));
                            } else {
                                seen.insert(k.clone(), pos);
                            }
                            let mut kp = path.clone();
                            kp.push(Seg::Key(k.clone()));
                            out.keys.insert(kp, pos);
                            *key = Some(k);
                            *expect_key = false;
                            continue;
                        }
                        _ => {
                            errors.push(Diagnostic::at(Some(pos), "mapping keys must be plain strings"));
                            return Err(errors);
                        }
                    }
                }
                let node_path = match stack.last() {
                    None => Vec::new(),
                    Some(Frame::Map { path, key, .. }) => {
                        let mut p = path.clone();
                        p.push(Seg::Key(key.clone().unwrap_or_default()));
                        p
                    }
                    Some(Frame::Seq { path, index }) => {
                        let mut p = path.clone();
                        p.push(Seg::Index(*index));
                        p
                    }
                };
                out.values.entry(node_path.clone()).or_insert(pos);
                match event {
                    Event::MappingStart(..) | Event::SequenceStart(..) => {
                        if stack.len() >= MAX_DEPTH {
                            errors.push(Diagnostic::at(
                                Some(pos),
                                format!("nesting deeper than {MAX_DEPTH} levels is not accepted"),
                            ));
                            return Err(errors);
                        }
                        stack.push(match event {
                            Event::MappingStart(..) => {
                                Frame::Map { path: node_path, key: None, seen: HashMap::new(), expect_key: true }
                            }
                            _ => Frame::Seq { path: node_path, index: 0 },
                        });
                    }
                    _ => value_done(&mut stack),
                }
            }
            _ => {}
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn value_done(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { expect_key, .. }) => *expect_key = true,
        Some(Frame::Seq { index, .. }) => *index += 1,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_duplicates() {
        let text = "name: x\nstages:\n  a:\n    op: load\n    params: {path: f.csv}\n  b: [1, 2]\n";
        let p = scan(text).unwrap();
        assert_eq!(p.value(&path(&["stages", "a", "op"])), Some(Pos { line: 4, col: 9 }));
        assert_eq!(p.key(&path(&["stages", "a", "op"])), Some(Pos { line: 4, col: 5 }));
        assert_eq!(p.value(&path(&["stages", "a", "params", "path"])), Some(Pos { line: 5, col: 20 }));
        let mut idx = path(&["stages", "b"]);
        idx.push(Seg::Index(1));
        assert_eq!(p.value(&idx), Some(Pos { line: 6, col: 10 }));
        let errs = scan("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(errs[0].pos, Some(Pos { line: 3, col: 1 }));
        assert!(errs[0].message.contains("duplicate key `a`"));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let errs = scan(&"[".repeat(100)).unwrap_err();
        assert!(errs[0].message.contains("nesting deeper than 64"), "{errs:?}");
        // Far deeper input stops at the parser's own recursion limit, without a stack overflow.
        let errs = scan(&"[".repeat(100_000)).unwrap_err();
        assert!(errs[0].message.contains("recursion limit exceeded"), "{errs:?}");
    }
}
