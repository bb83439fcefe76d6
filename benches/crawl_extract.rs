//! Benchmarks of `crawl` and `extract` on a generated wiki at the paper's scale.
//!
//! ```sh
//! cargo bench --bench crawl_extract                  # 100k entities (needs ../shared/data)
//! cargo bench --bench crawl_extract -- --entities 20000
//! cargo bench --bench crawl_extract -- --only extract [--workers N]  # extract only (profiling)
//! cargo bench --bench crawl_extract -- --only extract [--pairs N]  # extract -w 1 / -w 2 alone
//! cargo bench --bench crawl_extract -- --only incremental [--times N]  # incremental extract
//! cargo bench --bench crawl_extract -- --only multistream  # crawl of a multistream dump, -w 1 / 2
//! cargo bench --bench crawl_extract -- --only cluster [--pairs N]  # extract on 1, 2, 4 processes
//! cargo bench --bench crawl_extract -- --only memory  # this machine's cost of fresh memory
//! ```
//!
//! It generates the fixture (`fleming fixtures wiki`, cached under
//! `$CARGO_TARGET_DIR/bench-fixtures/`), then measures: crawl from the `.bz2` dump (time,
//! breakdown, peak RSS in a child process), crawl's rerun after 1% of the pages changed
//! (decompress, parse, diff, write), crawl from a multistream copy of the dump on 1 and 2
//! threads (decompression alone, and the whole crawl), extract with 1 and 2 workers (MB/s of wikitext;
//! `--pairs N` runs of each, default 3, alternating, the fastest counting),
//! extract's incremental rerun after 1% of the pages changed (checked equal to a full run),
//! and relation precision/recall per predicate against the generator's truth. Under
//! `cargo test` (no `--bench` argument) it does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, StringArray};
use fleming::cli::fixtures;
use fleming_artifacts::Table;
use fleming_operators::ops::crawl::Crawl;
use fleming_operators::ops::extract::Extract;
use fleming_runtime::Harness;
use fleming_runtime::harness::HarnessOutput;
use serde_json::{Value, json};

/// The allocator of the `fleming` binary, so that figures match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0)
        .unwrap_or(0.0)
}

/// CLOCK_MONOTONIC in seconds (the clock `perf record -k CLOCK_MONOTONIC` stamps samples with).
fn monotonic_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn metric(out: &HarnessOutput, name: &str) -> f64 {
    out.metrics.get(name).and_then(Value::as_f64).unwrap_or(0.0)
}

/// A metric as recorded (number or text; null when absent).
fn raw(out: &HarnessOutput, name: &str) -> Value {
    out.metrics.get(name).cloned().unwrap_or(Value::Null)
}

/// Metrics of a run as "a / b / c s".
fn breakdown(out: &HarnessOutput, names: &[&str]) -> String {
    let v: Vec<String> = names.iter().map(|n| format!("{:.2}", metric(out, n))).collect();
    format!("{} s", v.join(" / "))
}

fn crawl(dump: &Path, previous: Option<&Table>) -> HarnessOutput {
    crawl_on(dump, previous, 1)
}

/// [`crawl`] with `threads` workers (a multistream dump is decompressed on that many).
fn crawl_on(dump: &Path, previous: Option<&Table>, threads: usize) -> HarnessOutput {
    let mut h = Harness::new(Arc::new(Crawl::new()))
        .param("dump", dump.to_string_lossy().to_string())
        .param("max_pages", 0)
        .threads(threads);
    if let Some(p) = previous {
        let mut outputs = BTreeMap::new();
        outputs.insert("pages".to_string(), p.clone());
        h = h.previous(json!({}), BTreeMap::new(), outputs).expect("previous");
    }
    h.run().expect("crawl")
}

/// Child mode: crawl a dump, print the peak RSS (MiB) and the stage's seconds.
fn child_crawl(dump: &Path) {
    let t = Instant::now();
    let out = crawl(dump, None);
    let secs = t.elapsed().as_secs_f64();
    println!("{} {} {}", peak_rss_mib(), secs, out.table("pages").map(|t| t.num_rows()).unwrap_or(0));
}

/// A multistream copy of the fixture's dump (as Wikipedia's: 100 pages per bz2 stream):
/// decompression alone, then the whole crawl, on 1 and 2 threads, alternating, twice.
fn multistream(dir: &Path, note: &mut impl FnMut(&str, String)) {
    let path = dir.join("wiki-multistream.xml.bz2");
    if !path.exists() {
        let xml = std::fs::read(dir.join("wiki.xml")).expect("the fixture's xml");
        let file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        fleming_operators::ops::crawl::dump::write_bz2_multistream(&xml, 100, file).expect("write multistream");
    }
    let mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let mut alone = [Vec::new(), Vec::new()];
    let mut whole = [Vec::new(), Vec::new()];
    for _ in 0..2 {
        for threads in [1, 2] {
            let t = Instant::now();
            let (mut r, _) = fleming_operators::ops::crawl::dump::open(&path, threads).expect("open");
            let n = std::io::copy(&mut r, &mut std::io::sink()).expect("decompress");
            alone[threads - 1].push(format!("{:.2}", t.elapsed().as_secs_f64()));
            assert!(n > 0);
            let t = Instant::now();
            let out = crawl_on(&path, None, threads);
            whole[threads - 1].push(format!("{:.2}", t.elapsed().as_secs_f64()));
            assert!(out.table("pages").map(|t| t.num_rows()).unwrap_or(0) > 0);
        }
    }
    note(
        &format!("multistream bz2 ({mb:.1} MB): decompression alone, 1 / 2 threads"),
        format!("{} / {} s", alone[0].join(", "), alone[1].join(", ")),
    );
    note(
        "multistream bz2: crawl full run, -w 1 / -w 2",
        format!("{} / {} s", whole[0].join(", "), whole[1].join(", ")),
    );
}

fn strings(t: &Table, col: &str) -> Vec<String> {
    let b = t.concat().expect("concat");
    let c = b.column_by_name(col).expect("column");
    let c = c.as_any().downcast_ref::<StringArray>().expect("strings");
    (0..c.len()).map(|i| if c.is_null(i) { String::new() } else { c.value(i).to_string() }).collect()
}

/// The fixture with 1% of its article pages edited: half of them get a symptom link in a
/// new section; the other half get their first sentence changed and their last article link
/// unlinked (so that entities and relations also lose support).
fn edited(fx: &fixtures::Fixture) -> fixtures::Fixture {
    let mut pages = fx.pages.clone();
    let n = pages.len();
    let step = 100;
    let mut changed = 0;
    for (i, (_, text)) in pages.iter_mut().enumerate() {
        if i % step != 0 || text.starts_with("#REDIRECT") {
            continue;
        }
        if (i / step) % 2 == 0 {
            text.push_str("\n== Signs and symptoms ==\nSome patients also report [[Fatigue]].\n");
        } else {
            *text = text.replacen(" is ", " is often ", 1);
            let last_link = text
                .rmatch_indices("[[")
                .map(|(at, _)| at)
                .find(|&at| text[at..].find("]]").is_some_and(|end| !text[at..at + end].contains(':')));
            if let Some(at) = last_link {
                let end = at + text[at..].find("]]").unwrap_or(0);
                let inner = text[at + 2..end].to_string();
                let shown = inner.rsplit('|').next().unwrap_or(&inner).to_string();
                text.replace_range(at..end + 2, &shown);
            }
        }
        changed += 1;
    }
    eprintln!("edited {changed} of {n} pages");
    fixtures::Fixture { pages, lexicon: fx.lexicon.clone(), truth: fx.truth.clone(), stats: Default::default() }
}

fn extract(
    pages: &Table,
    lexicon: &Path,
    threads: usize,
    memo: Option<fleming_runtime::context::RecordMemo>,
) -> (HarnessOutput, f64) {
    let mut h = Harness::new(Arc::new(Extract::new()))
        .param("lexicon", lexicon.to_string_lossy().to_string())
        .threads(threads)
        .input("pages", pages.clone());
    if let Some(m) = memo {
        h = h.memo(m);
    }
    let t = Instant::now();
    let out = h.run().expect("extract");
    (out, t.elapsed().as_secs_f64())
}

/// Extract's full run with 1 and 2 workers, `pairs` times, alternating, after an untimed
/// `-w 1` warm-up whose output is returned (the first run of a process is the slowest).
/// Every timed run is checked against the warm-up's digests. This VM's cost of fresh
/// memory swings by up to 10x from one minute to the next (`--only memory`: touching
/// 1 GiB took 0.25 to 2.4 s), so the figure of each worker count is its fastest run, as
/// `timeit` takes, with the median and every run printed beside it; alternating keeps the
/// two worker counts in the same minutes.
fn extract_scaling(
    pages: &Table,
    lexicon: &Path,
    mb: f64,
    pairs: usize,
    note: &mut impl FnMut(&str, String),
) -> HarnessOutput {
    let (warm_up, _) = extract(pages, lexicon, 1, None);
    let digests =
        |out: &HarnessOutput| (out.digest("entities").expect("digest"), out.digest("relations").expect("digest"));
    let expected = digests(&warm_up);
    let mut secs: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut fastest: [Option<(f64, String)>; 2] = [None, None];
    for _ in 0..pairs.max(1) {
        for (i, threads) in [1, 2].into_iter().enumerate() {
            let (out, t) = extract(pages, lexicon, threads, None);
            assert_eq!(digests(&out), expected, "-w {threads} gave other tables");
            secs[i].push(t);
            if fastest[i].as_ref().is_none_or(|(best, _)| t < *best) {
                fastest[i] = Some((t, breakdown(&out, &["lexicon_s", "graph_s", "build_s"])));
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let list = |v: &[f64]| v.iter().map(|t| format!("{t:.2}")).collect::<Vec<_>>().join(", ");
    note("extract -w 1 / -w 2: every run (alternating)", format!("{} s / {} s", list(&secs[0]), list(&secs[1])));
    let (best1, best2) = (fastest[0].clone().expect("a run"), fastest[1].clone().expect("a run"));
    let (med1, med2) = (median(&secs[0]), median(&secs[1]));
    note(
        &format!("extract -w 1: full run (fastest of {pairs})"),
        format!("{:.2} s, {:.1} MB/s (median {med1:.2} s, {:.1} MB/s)", best1.0, mb / best1.0, mb / med1),
    );
    note("extract -w 1: lexicon / parse+dataflow / build", best1.1);
    note(
        &format!("extract -w 2: full run (fastest of {pairs})"),
        format!("{:.2} s, {:.1} MB/s ({:.2}x; medians {:.2}x)", best2.0, mb / best2.0, best1.0 / best2.0, med1 / med2),
    );
    note("extract -w 2: lexicon / parse+dataflow / build", best2.1);
    warm_up
}

/// Extract's incremental rerun from `pages` to `pages2`, `times` times, each from a full
/// `-w 1` run's output (memo warm from that run, as in a store); the reruns' outputs.
fn incremental(
    pages: &Table,
    pages2: &Table,
    lexicon: &Path,
    times: usize,
    note: &mut impl FnMut(&str, String),
) -> Vec<HarnessOutput> {
    let op = Extract::new();
    let memo = Harness::new_memo(&op);
    let (first, full_s) = extract(pages, lexicon, 1, Some(memo.clone()));
    note("extract -w 1: full run (memo warm-up)", format!("{full_s:.2} s"));
    let mut outputs = BTreeMap::new();
    for port in ["entities", "relations", "rejects"] {
        outputs.insert(port.to_string(), first.table(port).expect("output").clone());
    }
    let mut inputs = BTreeMap::new();
    inputs.insert("pages".to_string(), vec![pages.clone()]);
    let mut runs = Vec::new();
    // For `perf record -k CLOCK_MONOTONIC … ; perf report --time A,B`.
    eprintln!("incremental reruns start at monotonic {:.6}", monotonic_s());
    for _ in 0..times.max(1) {
        let h = Harness::new(Arc::new(Extract::new()))
            .param("lexicon", lexicon.to_string_lossy().to_string())
            .memo(memo.clone())
            .input("pages", pages2.clone())
            .previous(json!({}), inputs.clone(), outputs.clone())
            .expect("previous");
        let (t, m0) = (Instant::now(), monotonic_s());
        let inc = h.run().expect("incremental extract");
        let inc_s = t.elapsed().as_secs_f64();
        eprintln!("incremental rerun window (monotonic) {m0:.6} {:.6}", monotonic_s());
        note(
            "extract: incremental rerun, 1% of pages changed",
            format!(
                "{inc_s:.2} s ({:.1}% of the full run; mode {}, parsed {} pages, {} entities touched)",
                100.0 * inc_s / full_s,
                raw(&inc, "mode"),
                raw(&inc, "parsed_pages"),
                raw(&inc, "touched_entities"),
            ),
        );
        note(
            "extract incremental: previous / prep / graph / build",
            format!(
                "{} ({} relation rows replaced, {} entity and {} relation rows built; of the build, tables {:.2} s)",
                breakdown(&inc, &["previous_s", "prep_s", "graph_s", "build_s"]),
                raw(&inc, "replaced_relations"),
                raw(&inc, "built_entities"),
                raw(&inc, "built_relations"),
                metric(&inc, "build_tables_s"),
            ),
        );
        note(
            "extract incremental prep (cumulative): diff / redirects / parse / rset / rels / entities",
            breakdown(
                &inc,
                &["prep_diff_s", "prep_redirects_s", "prep_parse_s", "prep_rset_s", "prep_rels_s", "prep_entities_s"],
            ),
        );
        runs.push(inc);
    }
    eprintln!("incremental reruns end at monotonic {:.6}", monotonic_s());
    runs
}

/// Extract as a pipeline stage, through the real `fleming run` with its store on disk: the
/// full run, then three reruns after 1% of the pages changed (the pages alternate between
/// the two versions, so each rerun updates the one before), each timed end to end (reading
/// its inputs and previous outputs from Parquet, writing and hashing its outputs). `crawl`
/// runs first in each case, untimed.
fn stage_runs(work: &Path, dumps: [&Path; 2], lexicon: &Path, note: &mut impl FnMut(&str, String)) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).expect("stage bench dir");
    let fleming = env!("CARGO_BIN_EXE_fleming");
    let run = |file: &str, args: &[&str]| -> f64 {
        let t = Instant::now();
        let out = std::process::Command::new(fleming)
            .current_dir(work)
            .args(["-q", "run", file])
            .args(args)
            .output()
            .expect("run fleming");
        assert!(out.status.success(), "fleming run {file} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        t.elapsed().as_secs_f64()
    };
    let files = ["before.yaml", "after.yaml"];
    for (file, dump) in files.into_iter().zip(dumps) {
        // Same pipeline and stage names: each run is a rerun of the one before.
        let yaml = format!(
            "name: extract-stage\nstages:\n  pages:\n    op: crawl\n    params: {{ dump: {:?}, max_pages: 0 }}\n  graph:\n    op: extract\n    inputs: {{ pages: pages }}\n    params: {{ lexicon: {:?} }}\n",
            dump.display().to_string(),
            lexicon.display().to_string()
        );
        std::fs::write(work.join(file), yaml).expect("pipeline file");
        run(file, &["--until", "pages"]);
    }
    let full = run(files[0], &["--stage", "graph"]);
    // `--force`: the second and later visits of a version are cached otherwise.
    let mut shown = Vec::new();
    // The first rerun is a fresh edit: its changed pages are parsed. The next two switch
    // back and forth, so the changed pages' facts are in the memo and their text unread.
    for (i, kind) in [(1, "edit"), (0, "back"), (1, "forth")] {
        let secs = run(files[i], &["--stage", "graph", "--force"]);
        // The rerun's own figures, from its manifest: the operator's seconds (the previous
        // output is read while the diff runs) and the runtime's for writing the outputs.
        let m = last_metrics(&work.join(".fleming"), "graph");
        let f = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        assert_eq!(m["mode"], "incremental", "{m:#?}");
        // The labels hold: an edit parses its changed pages, a switch back reads the memo.
        assert_eq!(m["parsed_pages"].as_u64().unwrap_or(0) > 0, kind == "edit", "{kind}: {m:#?}");
        shown.push(format!(
            "{kind}: {secs:.2} s ({:.0}%; {} pages parsed; operator {:.2} s, of which reading the previous output {:.2} s on its own thread, waited for {:.2} s; write {:.2} s)",
            100.0 * secs / full,
            m["parsed_pages"],
            f("total_s"),
            f("previous_outputs_s"),
            f("previous_wait_s"),
            f("write_s")
        ));
    }
    note("extract stage (`fleming run`): full run", format!("{full:.2} s"));
    for s in shown {
        note("extract stage (`fleming run`): rerun after 1% changed", s);
    }
    let _ = std::fs::remove_dir_all(work);
}

/// `--only cluster`: the extract stage as `fleming run` runs it, on one process (`-w 1`,
/// `-w 2`) and spread over 2 and 4 processes of one worker each (`--hosts`, 127.0.0.1),
/// `rounds` times each in turn, the memo of parsed pages emptied before every run. Every
/// run must give the same output digests.
fn cluster_runs(work: &Path, xml: &Path, lexicon: &Path, mb: f64, rounds: usize, note: &mut impl FnMut(&str, String)) {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).expect("cluster bench dir");
    let fleming = env!("CARGO_BIN_EXE_fleming");
    let yaml = format!(
        "name: extract-cluster\nstages:\n  pages:\n    op: crawl\n    params: {{ dump: {:?}, max_pages: 0 }}\n  graph:\n    op: extract\n    inputs: {{ pages: pages }}\n    params: {{ lexicon: {:?} }}\n",
        xml.display().to_string(),
        lexicon.display().to_string()
    );
    std::fs::write(work.join("pipeline.yaml"), yaml).expect("pipeline file");
    let command = |args: &[&str]| {
        let mut c = std::process::Command::new(fleming);
        c.current_dir(work).args(["-q", "run", "pipeline.yaml"]).args(args);
        c
    };
    let out = command(&["--until", "pages"]).output().expect("crawl");
    assert!(out.status.success(), "crawl failed: {}", String::from_utf8_lossy(&out.stderr));
    let store = work.join(".fleming");
    let digests = || -> String {
        let r: Value =
            serde_json::from_slice(&std::fs::read(store.join("refs/extract-cluster/graph.json")).expect("ref"))
                .expect("ref json");
        format!("{} {}", r["outputs"]["entities"]["digest"], r["outputs"]["relations"]["digest"])
    };
    // (label, processes, workers per process)
    let setups = [
        ("1 process, -w 1", 1, 1),
        ("1 process, -w 2", 1, 2),
        ("2 processes, -w 1", 2, 1),
        ("4 processes, -w 1", 4, 1),
    ];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut want: Option<String> = None;
    for _ in 0..rounds {
        for (k, &(_, processes, workers)) in setups.iter().enumerate() {
            // Parsed pages are memoised: every run parses them all again.
            let _ = std::fs::remove_dir_all(store.join("memo/extract"));
            let w = workers.to_string();
            let t = Instant::now();
            if processes == 1 {
                let out = command(&["--stage", "graph", "--force", "-w", &w]).output().expect("run");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            } else {
                let listeners: Vec<_> =
                    (0..processes).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("port")).collect();
                let hosts: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
                drop(listeners);
                std::fs::write(work.join("hosts"), hosts.join("\n")).expect("hosts file");
                let children: Vec<_> = (0..processes)
                    .map(|i| {
                        let i = i.to_string();
                        command(&["--stage", "graph", "--force", "-w", &w, "--hosts", "hosts", "--process", &i])
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::piped())
                            .spawn()
                            .expect("start a process")
                    })
                    .collect();
                for c in children {
                    let out = c.wait_with_output().expect("wait");
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                }
            }
            secs[k].push(t.elapsed().as_secs_f64());
            let d = digests();
            assert_eq!(want.get_or_insert_with(|| d.clone()), &d, "{} gave other outputs", setups[k].0);
        }
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    for (k, (label, processes, _)) in setups.iter().enumerate() {
        let best = secs[k].iter().cloned().fold(f64::INFINITY, f64::min);
        let all: Vec<String> = secs[k].iter().map(|s| format!("{s:.2}")).collect();
        note(
            &format!("extract stage, {label} ({cores} cores)"),
            format!(
                "{best:.2} s fastest of [{}] s: {:.1} MB/s of wikitext, {:.1} MB/s per process; {:.2}x one process -w 1",
                all.join(", "),
                mb / best,
                mb / best / *processes as f64,
                secs[0].iter().cloned().fold(f64::INFINITY, f64::min) / best
            ),
        );
    }
    let _ = std::fs::remove_dir_all(work);
}

/// `--only memory`: what this machine charges for fresh memory, the noise under every
/// figure here. Touches one page in every 4 KiB of 1 GiB just taken from the system
/// allocator (so from the kernel), `rounds` times, on one thread and then split over two.
fn fresh_memory(rounds: usize) {
    use std::alloc::{GlobalAlloc, Layout, System};
    const GIB: usize = 1 << 30;
    let touch = |bytes: usize| {
        let layout = Layout::from_size_align(bytes, 4096).expect("layout");
        // SAFETY: the layout is non-zero; every write is inside the allocation, which is
        // freed with the same layout.
        unsafe {
            let p = System.alloc(layout);
            assert!(!p.is_null(), "out of memory");
            for i in (0..bytes).step_by(4096) {
                p.add(i).write_volatile(1);
            }
            System.dealloc(p, layout);
        }
    };
    for _ in 0..rounds {
        let t = Instant::now();
        touch(GIB);
        let one = t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| touch(GIB / 2));
            touch(GIB / 2);
        });
        let two = t.elapsed().as_secs_f64();
        println!("fresh memory: 1 GiB touched in {one:.3} s on one thread, {two:.3} s on two");
    }
}

/// The metrics of the newest run manifest of a stage in a store.
fn last_metrics(store: &Path, stage: &str) -> serde_json::Map<String, Value> {
    let store = fleming_artifacts::Store::open(store).expect("open the store");
    // Oldest first.
    let (runs, _) = fleming_artifacts::RunManifest::load_all(&store).expect("read the run manifests");
    runs.into_iter().rev().find(|m| m.stage == stage).expect("a manifest of the stage").metrics
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-crawl") {
        child_crawl(Path::new(&args[i + 1]));
        return;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("crawl_extract: run with `cargo bench --bench crawl_extract`");
        return;
    }
    if args.windows(2).any(|w| w[0] == "--only" && w[1] == "memory") {
        fresh_memory(5);
        return;
    }
    let entities: usize = args
        .iter()
        .position(|a| a == "--entities")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let shared = std::env::var_os("FLEMING_SHARED_DATA").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("../shared/data")
    });
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("target")
    });
    let dir = target.join(format!("bench-fixtures/wiki-{entities}"));
    let mut report: Vec<(String, String)> = Vec::new();
    let mut note = |k: &str, v: String| {
        println!("{k:<48} {v}");
        report.push((k.to_string(), v));
    };

    // The fixture.
    let t = Instant::now();
    let fx = fixtures::generate(&shared, entities, 7).expect("generate the fixture (is ../shared/data there?)");
    note("fixture: generate", format!("{:.1} s", t.elapsed().as_secs_f64()));
    let t = Instant::now();
    fx.write(&dir, true).expect("write the fixture");
    note("fixture: write xml + bz2", format!("{:.1} s", t.elapsed().as_secs_f64()));
    let xml_mb = std::fs::metadata(dir.join("wiki.xml")).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    let bz2_mb = std::fs::metadata(dir.join("wiki.xml.bz2")).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    note("fixture: pages / redirects", format!("{} / {}", fx.stats.pages, fx.stats.redirects));
    note("fixture: entities (generator) / facts", format!("{} / {}", fx.stats.entities, fx.truth.len()));
    note(
        "fixture: wikitext / xml / bz2",
        format!("{:.1} MB / {xml_mb:.1} MB / {bz2_mb:.1} MB", fx.stats.bytes as f64 / 1e6),
    );

    let pairs = args.iter().position(|a| a == "--pairs").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(3);
    // `--only extract`: the pages from the plain XML (not timed), then extract -w N only, a
    // quick loop for profiling the parser and the dataflow; without `--workers`, the full
    // bench's -w 1 / -w 2 comparison alone.
    if args.windows(2).any(|w| w[0] == "--only" && w[1] == "extract") {
        let pages = crawl(&dir.join("wiki.xml"), None).table("pages").expect("pages").clone();
        let bytes = fx.stats.bytes as f64 / 1e6;
        let workers = args.iter().position(|a| a == "--workers").and_then(|i| args.get(i + 1)?.parse().ok());
        let Some(w) = workers else {
            extract_scaling(&pages, &dir.join("lexicon.tsv"), bytes, pairs, &mut note);
            return;
        };
        for _ in 0..2 {
            let (one, s1) = extract(&pages, &dir.join("lexicon.tsv"), w, None);
            note(&format!("extract -w {w}: full run"), format!("{s1:.2} s, {:.1} MB/s", bytes / s1));
            note(
                &format!(
                    "extract -w {w}: lexicon / prep / parse+dataflow (of it: parse, dataflow, after the workers) / build"
                ),
                breakdown(
                    &one,
                    &[
                        "lexicon_s",
                        "prep_s",
                        "graph_s",
                        "graph_feed_s",
                        "graph_dataflow_s",
                        "graph_finish_s",
                        "build_s",
                    ],
                ),
            );
        }
        return;
    }

    // `--only incremental`: both page tables from plain XML (not timed), a full extract -w 1
    // warming the memo, then the incremental rerun three times (each from the full run's
    // output); a quick loop for profiling incremental runs.
    if args.windows(2).any(|w| w[0] == "--only" && w[1] == "incremental") {
        let pages = crawl(&dir.join("wiki.xml"), None).table("pages").expect("pages").clone();
        let dir2 = target.join(format!("bench-fixtures/wiki-{entities}-edited"));
        edited(&fx).write(&dir2, false).expect("write edited fixture");
        let pages2 = crawl(&dir2.join("wiki.xml"), Some(&pages)).table("pages").expect("pages").clone();
        let lexicon = dir.join("lexicon.tsv");
        let times = args.iter().position(|a| a == "--times").and_then(|i| args.get(i + 1)?.parse().ok());
        let runs = incremental(&pages, &pages2, &lexicon, times.unwrap_or(3), &mut note);
        let work = target.join("bench-fixtures/extract-stage");
        stage_runs(&work, [&dir.join("wiki.xml"), &dir2.join("wiki.xml")], &lexicon, &mut note);
        let (fresh, _) = extract(&pages2, &lexicon, 1, None);
        for (inc, port) in runs.iter().flat_map(|r| [(r, "entities"), (r, "relations")]) {
            assert_eq!(inc.digest(port).ok(), fresh.digest(port).ok(), "incremental {port} differ from a full run");
        }
        return;
    }

    // `--only cluster`: the extract stage on 1, 2 and 4 `fleming run` processes.
    if args.windows(2).any(|w| w[0] == "--only" && w[1] == "cluster") {
        let work = target.join("bench-fixtures/extract-cluster");
        cluster_runs(
            &work,
            &dir.join("wiki.xml"),
            &dir.join("lexicon.tsv"),
            fx.stats.bytes as f64 / 1e6,
            pairs,
            &mut note,
        );
        return;
    }

    // `--only multistream`: the crawl of a multistream dump on 1 and 2 threads.
    if args.windows(2).any(|w| w[0] == "--only" && w[1] == "multistream") {
        multistream(&dir, &mut note);
        return;
    }

    // Crawl: peak RSS in a child process.
    let bz2 = dir.join("wiki.xml.bz2");
    let exe = std::env::current_exe().expect("current exe");
    let child = std::process::Command::new(&exe).arg("--child-crawl").arg(&bz2).output().expect("child crawl");
    let line = String::from_utf8_lossy(&child.stdout).to_string();
    let parts: Vec<&str> = line.split_whitespace().collect();
    if parts.len() >= 3 {
        note(
            "crawl (bz2 dump): peak RSS (child process)",
            format!("{} MiB", parts[0].split('.').next().unwrap_or("?")),
        );
    }
    // Crawl: full, then rerun after 1% changed.
    let t = Instant::now();
    let full = crawl(&bz2, None);
    let crawl_s = t.elapsed().as_secs_f64();
    note("crawl (bz2 dump): full run", format!("{crawl_s:.2} s ({:.0} MB/s of XML)", xml_mb / crawl_s));
    note("crawl: breakdown (decompress / parse / write)", breakdown(&full, &["decompress_s", "parse_s", "write_s"]));
    let pages = full.table("pages").expect("pages").clone();
    let fx2 = edited(&fx);
    let dir2 = target.join(format!("bench-fixtures/wiki-{entities}-edited"));
    fx2.write(&dir2, true).expect("write edited fixture");
    let t = Instant::now();
    let rerun = crawl(&dir2.join("wiki.xml.bz2"), Some(&pages));
    let rerun_s = t.elapsed().as_secs_f64();
    note(
        "crawl: rerun, 1% of pages changed",
        format!("{rerun_s:.2} s ({:.0}% of the full run)", 100.0 * rerun_s / crawl_s),
    );
    note(
        "crawl rerun: decompress / parse / diff / write",
        format!(
            "{} (reparsed {} pages, reused {})",
            breakdown(&rerun, &["decompress_s", "parse_s", "diff_s", "write_s"]),
            raw(&rerun, "reparsed"),
            raw(&rerun, "reused"),
        ),
    );
    let pages2 = rerun.table("pages").expect("pages").clone();
    multistream(&dir, &mut note);

    // Extract: throughput with 1 and 2 workers.
    let lexicon = dir.join("lexicon.tsv");
    let bytes = fx.stats.bytes as f64 / 1e6;
    let warm_up = extract_scaling(&pages, &lexicon, bytes, pairs, &mut note);
    note(
        "extract: entities / relations",
        format!(
            "{} / {}",
            warm_up.table("entities").map(|t| t.num_rows()).unwrap_or(0),
            warm_up.table("relations").map(|t| t.num_rows()).unwrap_or(0)
        ),
    );
    // Relation precision / recall per predicate, from the warm-up's relations.
    let rels = warm_up.table("relations").expect("relations");
    let extracted: BTreeSet<(String, String, String)> = strings(rels, "subject_name")
        .into_iter()
        .zip(strings(rels, "predicate"))
        .zip(strings(rels, "object_name"))
        .map(|((s, p), o)| (s, p, o))
        .collect();
    drop(warm_up);
    let truth: BTreeSet<(String, String, String)> =
        fx.truth.iter().map(|(s, p, o)| (s.clone(), p.to_string(), o.clone())).collect();
    let precision_recall: Vec<(String, String)> = fixtures::evaluate(&truth, &extracted)
        .into_iter()
        .map(|(p, (tp, ext, tru))| {
            let figures = format!(
                "P {:.3} R {:.3} ({tp} of {ext} extracted, {tru} true)",
                tp as f64 / ext.max(1) as f64,
                tp as f64 / tru.max(1) as f64
            );
            (format!("P/R {p}"), figures)
        })
        .collect();
    drop((extracted, truth));

    // Extract: incremental after 1% changed (memo warm from the full run, as in a store).
    let inc = incremental(&pages, &pages2, &lexicon, 1, &mut note).pop().expect("one rerun");
    let work = target.join("bench-fixtures/extract-stage");
    stage_runs(&work, [&dir.join("wiki.xml.bz2"), &dir2.join("wiki.xml.bz2")], &lexicon, &mut note);
    let (scratch, _) = extract(&pages2, &lexicon, 2, None);
    for port in ["entities", "relations"] {
        assert_eq!(inc.digest(port).ok(), scratch.digest(port).ok(), "incremental {port} differ from a full run");
    }
    note("extract: incremental == full run (digests)", "yes".into());

    for (k, v) in precision_recall {
        note(&k, v);
    }
    let md: String = report.iter().map(|(k, v)| format!("| {k} | {v} |\n")).collect();
    let _ = std::fs::write(target.join(format!("bench-fixtures/report-{entities}.md")), md);
}
