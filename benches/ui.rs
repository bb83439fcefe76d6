//! `fleming ui` on a 500-stage pipeline: how long its graph page takes, in the server and
//! in a browser. Run in release, or against the debug build:
//!
//! ```sh
//! cargo bench --bench ui                 # release
//! cargo test --bench ui -- --bench       # the debug build
//! ```
//!
//! It writes a 500-stage pipeline (one `load`, 499 `sql` stages, each reading one or two of
//! the 40 stages before it), runs it so every stage is cached, starts `fleming ui`, and
//! measures: the first `GET /` (the snapshot of the store: a dry run of the executor, the
//! layout, the page), the median of ten later ones (snapshot reused), and — with Chromium
//! (`scripts/ensure-chromium`) — in headless Chromium, navigation start to the load event
//! with the page laid out (`performance.now()` in the page's load handler), and the wall
//! time of a painted screenshot of it beside that of an empty page; medians of five fresh
//! browsers. A screenshot of the page goes to `<target>/tmp/fleming-ui/dag-500.png`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STAGES: usize = 500;

fn fleming() -> &'static str {
    env!("CARGO_BIN_EXE_fleming")
}

fn pipeline() -> String {
    let mut y = String::from("name: wide\nstages:\n  s0: { op: load, params: { path: rows.jsonl } }\n");
    let mut seed: u64 = 0x5eed;
    let mut next = |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n
    };
    for i in 1..STAGES {
        let a = i - 1 - next(i.min(40));
        let b = i - 1 - next(i.min(40));
        if a == b || next(3) == 0 {
            y.push_str(&format!(
                "  s{i}: {{ op: sql, inputs: {{ a: s{a} }}, params: {{ query: \"select id, x from a limit 20\" }} }}\n"
            ));
        } else {
            y.push_str(&format!(
                "  s{i}: {{ op: sql, inputs: {{ a: s{a}, b: s{b} }}, params: {{ query: \"(select id, x from a limit 10) union all (select id, x from b limit 10)\" }} }}\n"
            ));
        }
    }
    y
}

fn get(addr: &str, path: &str) -> (Duration, usize) {
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut body = Vec::new();
    s.read_to_end(&mut body).expect("read");
    assert!(body.starts_with(b"HTTP/1.0 200") || body.starts_with(b"HTTP/1.1 200"), "GET {path} failed");
    (start.elapsed(), body.len())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn chromium(profile: &Path, url: &str, extra: &[String]) -> std::process::Output {
    fleming_testkit::browser::headless(profile).args(extra).arg(url).output().expect("run chromium")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("ui benchmark: run with `cargo bench --bench ui`");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rows: String = (0..100).map(|i| format!("{{\"id\": \"r{i}\", \"x\": {i}}}\n")).collect();
    std::fs::write(dir.path().join("rows.jsonl"), rows).expect("write");
    std::fs::write(dir.path().join("p.yaml"), pipeline()).expect("write");
    let start = Instant::now();
    let out = Command::new(fleming()).current_dir(dir.path()).args(["run", "-q", "p.yaml"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Stages with the same query over the same input digest share a key, so few compute.
    println!(
        "{STAGES}-stage pipeline run, to cache every stage (twins share a key): {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let mut ui = Command::new(fleming())
        .current_dir(dir.path())
        .args(["ui", "p.yaml", "--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fleming ui");
    let mut line = String::new();
    BufReader::new(ui.stdout.take().expect("stdout")).read_line(&mut line).expect("first line");
    let url = line.split_whitespace().last().unwrap_or_default().trim_end_matches('/').to_string();
    let addr = url.trim_start_matches("http://").to_string();

    // `fleming ui` computed its first snapshot before printing its address; this one waits
    // out the snapshot's shortest life, so the first GET computes a new one.
    std::thread::sleep(Duration::from_secs(6));
    let (cold, bytes) = get(&addr, "/");
    let warm: Vec<Duration> = (0..10)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            get(&addr, "/").0
        })
        .collect();
    println!(
        "GET / with a new snapshot (dry run + layout + page): {:.0} ms, {} kB",
        cold.as_secs_f64() * 1e3,
        bytes / 1024
    );
    println!("GET / with the snapshot reused, median of 10: {:.1} ms", median(warm).as_secs_f64() * 1e3);
    let (status, _) = get(&addr, "/api/status");
    println!("GET /api/status (what each open page polls every second): {:.1} ms", status.as_secs_f64() * 1e3);

    let browser = fleming_testkit::browser::chromium_path();
    if browser.exists() {
        let mut loads = Vec::new();
        let mut walls = Vec::new();
        let mut blanks = Vec::new();
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(600)); // a new snapshot for each
            let profile = tempfile::tempdir().expect("profile");
            let o = chromium(profile.path(), &url, &["--dump-dom".into()]);
            let dom = String::from_utf8_lossy(&o.stdout);
            let ms: f64 = dom
                .split("data-load-ms=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|n| n.parse().ok())
                .expect("the page reports its load time");
            assert_eq!(dom.matches("<g class=\"stage\"").count(), STAGES);
            loads.push(Duration::from_secs_f64(ms / 1e3));
            // Wall time of a screenshot (painted) of the page, and of an empty page.
            let shot = |target: &str| {
                let profile = tempfile::tempdir().expect("profile");
                let png = profile.path().join("p.png");
                let t = Instant::now();
                chromium(
                    profile.path(),
                    target,
                    &["--window-size=1400,1000".into(), format!("--screenshot={}", png.display())],
                );
                t.elapsed()
            };
            walls.push(shot(&url));
            blanks.push(shot("data:text/html,<p>empty</p>"));
        }
        let ms = |v: &[Duration]| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        println!(
            "headless Chromium, navigation start to the load event (laid out), median of 5: {:.0} ms (all: {:?})",
            median(loads.clone()).as_secs_f64() * 1e3,
            ms(&loads)
        );
        println!(
            "headless Chromium, wall time to a painted screenshot, median of 5: {:.0} ms; of an empty page: {:.0} ms (all: {:?} and {:?})",
            median(walls.clone()).as_secs_f64() * 1e3,
            median(blanks.clone()).as_secs_f64() * 1e3,
            ms(&walls),
            ms(&blanks)
        );
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleming-ui");
        std::fs::create_dir_all(&shots).expect("mkdir");
        let profile = tempfile::tempdir().expect("profile");
        let png = shots.join("dag-500.png");
        chromium(profile.path(), &url, &["--window-size=1400,1000".into(), format!("--screenshot={}", png.display())]);
        println!("screenshot: {}", png.display());
    } else {
        println!("no Chromium at {}: browser timing skipped (scripts/ensure-chromium installs it)", browser.display());
    }
    let _ = ui.kill();
    let _ = ui.wait();
}
