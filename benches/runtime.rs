//! Runtime benchmarks (issue "Inspection and speed"). Run in release:
//!
//! ```sh
//! cargo bench --bench runtime            # all
//! cargo bench --bench runtime -- noop    # one: noop | status | digest
//! ```
//!
//! - `noop`: wall time of a cached no-op `fleming run` of a 10-stage pipeline (median of 21).
//! - `status`: wall time of `fleming status` on a synthetic 10,000-stage pipeline, all cached.
//! - `digest`: throughput of fleming's digest of a 1 GB table (the Parquet object) against
//!   `b3sum` on the same file, in the same run (needs `b3sum` on PATH: `cargo install b3sum`).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn fleming() -> &'static str {
    env!("CARGO_BIN_EXE_fleming")
}

fn run(dir: &Path, args: &[&str]) -> Duration {
    let start = Instant::now();
    let out = Command::new(fleming()).current_dir(dir).args(args).output().expect("run fleming");
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "fleming {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn noop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows: String =
        (0..10_000).map(|i| format!("{{\"id\": \"r{i}\", \"x\": {i}, \"t\": \"text {i}\"}}\n")).collect();
    std::fs::write(dir.path().join("rows.jsonl"), rows).expect("write");
    std::fs::write(dir.path().join("more.csv"), "id,y\na,1\nb,2\n").expect("write");
    let yaml = r#"
name: bench10
stages:
  rows: { op: load, params: { path: rows.jsonl } }
  more: { op: load, params: { path: more.csv } }
  big: { op: sql, inputs: { t: rows }, params: { query: "select * from t where x > 100" } }
  small: { op: sql, inputs: { t: rows }, params: { query: "select * from t where x < 100" } }
  joined: { op: sql, inputs: { a: big, b: more }, params: { query: "select a.id, a.x from a left join b on a.id = b.id" } }
  counts: { op: sql, inputs: { t: joined }, params: { query: "select count(*) as n from t" } }
  top: { op: sql, inputs: { t: big }, params: { query: "select * from t order by x desc limit 10" } }
  both: { op: sql, inputs: { a: top, b: small }, params: { query: "select id from a union all select id from b" } }
  out1: { op: export, inputs: { table: both }, params: { path: out/both.jsonl } }
  out2: { op: export, inputs: { table: counts }, params: { path: out/counts.parquet } }
"#;
    std::fs::write(dir.path().join("p.yaml"), yaml).expect("write");
    run(dir.path(), &["run", "-q", "p.yaml"]);
    run(dir.path(), &["run", "-q", "p.yaml"]); // warm the stat cache past its racy window
    std::thread::sleep(Duration::from_secs(3));
    run(dir.path(), &["run", "-q", "p.yaml"]);
    let times: Vec<Duration> = (0..21).map(|_| run(dir.path(), &["run", "-q", "p.yaml"])).collect();
    let m = median(times.clone());
    let max = times.iter().max().copied().unwrap_or_default();
    println!(
        "noop: cached no-op `fleming run` of 10 stages: median {:.1} ms, max {:.1} ms (target < 100 ms)",
        ms(m),
        ms(max)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn status() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("seed.jsonl"), "{\"id\": \"a\", \"x\": 1}\n{\"id\": \"b\", \"x\": 2}\n")
        .expect("write");
    let mut yaml = String::from("name: bench10k\nstages:\n  s0: { op: load, params: { path: seed.jsonl } }\n");
    // A wide and deep DAG: each stage reads one of the previous 100.
    for i in 1..10_000 {
        let up = if i < 100 { 0 } else { i - 1 - (i * 7919) % 100 };
        yaml.push_str(&format!(
            "  s{i}: {{ op: sql, inputs: {{ t: s{up} }}, params: {{ query: \"select id, x + {} as x from t\" }} }}\n",
            i % 7
        ));
    }
    std::fs::write(dir.path().join("p.yaml"), yaml).expect("write");
    let start = Instant::now();
    run(dir.path(), &["run", "-q", "-j", "2", "p.yaml"]);
    println!("status: first run of 10,000 stages took {:.0} s", start.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_secs(3));
    run(dir.path(), &["status", "p.yaml"]);
    let times: Vec<Duration> = (0..5).map(|_| run(dir.path(), &["status", "p.yaml"])).collect();
    println!("status: `fleming status` of 10,000 cached stages: median {:.0} ms (target < 1000 ms)", ms(median(times)));
}

fn digest() {
    use arrow::array::{ArrayRef, BinaryArray, Int64Array, StringArray};
    use fleming_artifacts::{Store, Table};
    use std::sync::Arc;
    let b3sum = which("b3sum")
        .unwrap_or_else(|| panic!("the digest benchmark compares with `b3sum`; install it: cargo install b3sum"));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("store");
    // ~1 GB of rows that do not compress.
    let mut batches = Vec::new();
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let rows_per_batch = 8192usize;
    let mut total = 0usize;
    while total < 1_030_000_000 {
        let ids: ArrayRef =
            Arc::new(StringArray::from_iter_values((0..rows_per_batch).map(|_| format!("{:016x}", next()))));
        // Random bytes: incompressible, so the object on disk is as large as the table.
        let blob: ArrayRef = Arc::new(BinaryArray::from_iter_values(
            (0..rows_per_batch).map(|_| (0..12).flat_map(|_| next().to_le_bytes()).collect::<Vec<u8>>()),
        ));
        let n: ArrayRef = Arc::new(Int64Array::from_iter_values((0..rows_per_batch).map(|_| next() as i64)));
        let b = arrow::array::RecordBatch::try_from_iter(vec![("id", ids), ("blob", blob), ("n", n)]).expect("batch");
        total += rows_per_batch * (16 + 96 + 8); // data bytes per row: id, blob, n
        batches.push(b);
    }
    let table = Table::new(batches[0].schema(), batches);
    let start = Instant::now();
    let aref = store.put_table(&table).expect("put");
    let put = start.elapsed();
    let path = store.object_path(aref.kind, &aref.digest);
    let gb = aref.bytes as f64 / 1e9;
    println!(
        "digest: table object is {:.2} GB; writing it (encode + hash + fsync) took {:.1} s",
        gb,
        put.as_secs_f64()
    );
    // Warm the page cache, then alternate the two, best of 5 each.
    let _ = std::fs::read(&path);
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        let d = fleming_artifacts::digest_file(&path).expect("digest");
        ours.push(s.elapsed());
        assert_eq!(d, aref.digest);
        let s = Instant::now();
        let out = Command::new(&b3sum).arg("--no-names").arg(&path).output().expect("b3sum");
        theirs.push(s.elapsed());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), d.hex(), "b3sum disagrees");
    }
    let (o, t) = (ours.iter().min().copied().unwrap_or_default(), theirs.iter().min().copied().unwrap_or_default());
    let (go, gt) = (gb / o.as_secs_f64(), gb / t.as_secs_f64());
    println!(
        "digest: fleming {go:.2} GB/s, b3sum {gt:.2} GB/s on the same file: {:.0}% of b3sum (target ≥ 80%)",
        100.0 * go / gt
    );
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("runtime benchmarks: run with `cargo bench --bench runtime`");
        return;
    }
    let which_bench: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let want = |n: &str| which_bench.is_empty() || which_bench.iter().any(|w| w == n);
    if want("noop") {
        noop();
    }
    if want("digest") {
        digest();
    }
    if want("status") {
        status();
    }
}
