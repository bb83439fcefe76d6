//! `gc` and `verify` of a remote store ([`fleming_artifacts::remote`]): the metadata is
//! pulled first, so that the local pass decides what is live for every machine; then the
//! remote objects nothing refers to are deleted (once older than a grace period: a run on
//! another machine uploads its objects before the cache entry that refers to them), and
//! every remote object is rehashed as downloaded.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use fleming_artifacts::remote::Listed;
use fleming_artifacts::{ArtifactKind, Digest, Store, digest_file};

/// The directories a remote gc or verify reads whole first.
pub(super) const METADATA: &[&str] = &["refs", "cache", "runs", "checks"];

/// An object of the remote store: a table file, or a tree's listing and files.
pub(super) struct RemoteObject {
    pub digest: Digest,
    pub kind: ArtifactKind,
    /// Its remote names (a tree's listing first).
    pub parts: Vec<String>,
    pub bytes: u64,
    /// When its newest part was written.
    pub age: Duration,
}

/// Every object of the remote store. Names that are no object are left out.
pub(super) fn remote_objects(store: &Store) -> anyhow::Result<Vec<RemoteObject>> {
    let Some(r) = store.remote() else { return Ok(Vec::new()) };
    let mut by_digest: BTreeMap<(String, bool), Vec<Listed>> = BTreeMap::new();
    for item in r.list("objects")? {
        let mut parts = item.rel.splitn(3, '/');
        let (Some("objects"), Some(prefix), Some(rest)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (stem, tree) = if let Some(s) = rest.strip_suffix(".parquet") {
            (s, false)
        } else if let Some(s) = rest.strip_suffix(".tree.json") {
            (s, true)
        } else if let Some((s, _file)) = rest.split_once(".tree/") {
            (s, true)
        } else {
            continue;
        };
        by_digest.entry((format!("{prefix}{stem}"), tree)).or_default().push(item);
    }
    let now = Utc::now();
    let mut out = Vec::new();
    for ((hex, tree), mut items) in by_digest {
        let Ok(digest) = hex.parse::<Digest>() else { continue };
        // The listing first, so that deleting in order unpublishes the tree at once.
        items.sort_by_key(|i| !i.rel.ends_with(".tree.json"));
        let newest = items.iter().map(|i| i.last_modified).max().unwrap_or(now);
        out.push(RemoteObject {
            digest,
            kind: if tree { ArtifactKind::Tree } else { ArtifactKind::Table },
            bytes: items.iter().map(|i| i.size).sum(),
            parts: items.into_iter().map(|i| i.rel).collect(),
            age: (now - newest).to_std().unwrap_or(Duration::ZERO),
        });
    }
    Ok(out)
}

/// The remote objects that no live digest names and that are older than `grace`.
pub(super) fn unreferenced(
    store: &Store,
    live: &HashSet<Digest>,
    grace: Duration,
) -> anyhow::Result<Vec<RemoteObject>> {
    Ok(remote_objects(store)?.into_iter().filter(|o| !live.contains(&o.digest) && o.age >= grace).collect())
}

/// Deletes remote names, in order.
pub(super) fn delete(store: &Store, rels: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let Some(r) = store.remote() else { return Ok(()) };
    for rel in rels {
        r.delete(&rel)?;
    }
    Ok(())
}

/// Downloads and rehashes a remote object; the reason it is corrupt, if it is.
pub(super) fn check(store: &Store, o: &RemoteObject) -> anyhow::Result<Option<String>> {
    let Some(r) = store.remote() else { return Ok(None) };
    let dir = store.new_tmp_dir("verify")?;
    let result = (|| -> anyhow::Result<Option<String>> {
        let actual = match o.kind {
            ArtifactKind::Table => {
                let file = dir.join("object");
                if !r.download(&o.parts[0], &file, &store.tmp_dir())? {
                    return Ok(Some("vanished while verifying".into()));
                }
                digest_file(&file)?
            }
            ArtifactKind::Tree => match store.download_tree(&o.digest) {
                Ok(Some((tree, got))) => {
                    let _ = std::fs::remove_dir_all(&tree);
                    got
                }
                Ok(None) => return Ok(Some("a tree without its listing (an interrupted upload)".into())),
                Err(e) => return Ok(Some(format!("{e}"))),
            },
        };
        Ok((actual != o.digest).then(|| format!("content digest is {}, not {}", actual.short(12), o.digest.short(12))))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
