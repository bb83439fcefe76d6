//! A run spread over several `fleming run` processes on 127.0.0.1 (`--hosts`, `--process`):
//! extract's dataflow spans them and gives the same bytes as one process; a process that
//! dies fails the stage on the others, which commit nothing and do not hang.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Project, wiki_fixture};

const PIPELINE: &str = r#"
stages:
  pages:
    op: crawl
    params: { dump: fx/wiki.xml.bz2 }
  kg:
    op: extract
    inputs: { pages: pages }
    params: { lexicon: fx/lexicon.tsv }
"#;

/// A project with a generated wiki fixture (copied from `fixture`, generated once).
fn project_with(fixture: &Path) -> Project {
    let p = Project::new();
    let fx = p.path().join("fx");
    std::fs::create_dir_all(&fx).expect("mkdir");
    for f in ["wiki.xml.bz2", "lexicon.tsv"] {
        std::fs::copy(fixture.join(f), fx.join(f)).expect("copy fixture");
    }
    p.pipeline(PIPELINE);
    p
}

/// A generated fixture, and the one-process run that every cluster run is compared with.
struct Reference {
    /// Holds the fixture.
    _scratch: Project,
    fixture: std::path::PathBuf,
    single: Project,
    /// Its output digests.
    want: (String, String, String),
}

fn reference() -> Reference {
    let scratch = Project::new();
    let fixture = wiki_fixture(&scratch, "fixture", 3000);
    let single = project_with(&fixture);
    single.run_ok(&["-w", "2"]);
    let want = digests(&single);
    Reference { _scratch: scratch, fixture, single, want }
}

/// A hosts file of `n` free ports on 127.0.0.1.
fn hosts_file(p: &Project, n: usize) -> String {
    let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let lines: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
    p.write("hosts", &(lines.join("\n") + "\n"));
    "hosts".into()
}

fn start(p: &Project, hosts: &str, process: usize, extra: &[&str]) -> Child {
    start_with(p, hosts, process, extra, &[])
}

fn start_with(p: &Project, hosts: &str, process: usize, extra: &[&str], env: &[(&str, String)]) -> Child {
    let i = process.to_string();
    let mut args = vec!["run", "pipeline.yaml", "-w", "2", "--hosts", hosts, "--process", &i];
    args.extend_from_slice(extra);
    let mut c = p.command(&args);
    c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start fleming")
}

struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Waits for a process, failing the test after `limit` (a hang).
fn finish(mut child: Child, limit: Duration) -> Finished {
    let t = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "a cluster process hung for {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    Finished {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn digests(p: &Project) -> (String, String, String) {
    (
        p.output_digest("pipeline", "kg", "entities"),
        p.output_digest("pipeline", "kg", "relations"),
        p.output_digest("pipeline", "kg", "rejects"),
    )
}

fn run_cluster(p: &Project, n: usize) -> Vec<Finished> {
    let hosts = hosts_file(p, n);
    let children: Vec<Child> = (0..n).map(|i| start(p, &hosts, i, &[])).collect();
    children.into_iter().map(|c| finish(c, Duration::from_secs(300))).collect()
}

#[test]
fn extract_on_2_and_4_processes_equals_one_process() {
    let Reference { fixture, single, want, .. } = &reference();

    for n in [2, 4] {
        let p = project_with(fixture);
        let done = run_cluster(&p, n);
        for (i, f) in done.iter().enumerate() {
            assert_eq!(f.code, Some(0), "process {i} of {n}:\n{}\n{}", f.stdout, f.stderr);
        }
        assert_eq!(&digests(&p), want, "{n} processes");
        // One manifest, by process 0; the others say they took part.
        let kg = p.manifests_of("kg");
        assert_eq!(kg.len(), 1, "{kg:#?}");
        assert_eq!(kg[0]["metrics"]["processes"], n);
        // Process 0 read and parsed its share of the pages only.
        let share = kg[0]["metrics"]["parsed_pages_process_0"].as_u64().expect("parsed pages");
        let all = single.manifests_of("kg")[0]["metrics"]["parsed_pages"].as_u64().expect("parsed pages");
        assert!(share > 0 && share <= all / n as u64 + 1, "{share} of {all} pages on process 0 of {n}");
        assert!(done[1].stderr.contains("took part"), "{}", done[1].stderr);
        // The crawl ran once, on whichever process took its key.
        assert_eq!(p.manifests_of("pages").len(), 1);
        // Cached afterwards, also on one process.
        let again = p.run_ok(&[]);
        assert!(again.stdout.contains("0 ran"), "{}", again.stdout);
    }
}

/// Two "machines": two project directories, each with its own local store, sharing only a
/// bucket (moto's S3 server) and the hosts file. The stages that are not dataflows are
/// shared out by lease, the extract spans both, and a third clone finds everything cached
/// with the one-process digests.
#[test]
fn processes_with_separate_local_stores_share_a_bucket() {
    let Reference { fixture, want, .. } = &reference();

    let server = fleming_testkit::s3::S3Server::start().expect("moto's S3 server (scripts/ensure-moto)");
    server.create_bucket("fleming").expect("bucket");
    let mut env = server.env();
    env.push(("FLEMING_STORE", "s3://fleming/cluster".into()));
    let machines = [project_with(fixture), project_with(fixture)];
    let listeners: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    let hosts: Vec<String> = listeners.iter().map(|l| l.local_addr().expect("addr").to_string()).collect();
    drop(listeners);
    for m in &machines {
        m.write("hosts", &hosts.join("\n"));
    }
    let children: Vec<Child> = machines.iter().enumerate().map(|(i, m)| start_with(m, "hosts", i, &[], &env)).collect();
    for (i, c) in children.into_iter().enumerate() {
        let f = finish(c, Duration::from_secs(300));
        assert_eq!(f.code, Some(0), "machine {i}:\n{}\n{}", f.stdout, f.stderr);
    }
    let third = project_with(fixture);
    let mut c = third.command(&["run", "pipeline.yaml"]);
    c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let r = crate::support::Ran::from(c.output().expect("run"));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("0 ran, 2 cached"), "{}", r.stdout);
    assert_eq!(&digests(&third), want);
}

/// Whether a TCP connection to or from `port` on 127.0.0.1 is established.
fn connected(port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let port = format!(":{port:04X}");
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == "01" && (f[1].ends_with(&port) || f[2].ends_with(&port))
    })
}

/// Kills one process of two in the middle of the extract's dataflow: frozen (SIGSTOP) the
/// moment the two are connected, so that neither can have finished, then killed. The
/// other must fail the stage without hanging and commit nothing, and a run afterwards must
/// still give the one-process result. A process that never joins fails the stage after
/// `--connect-timeout`.
#[test]
fn a_process_that_dies_fails_the_stage_on_the_others() {
    let Reference { fixture, want, .. } = &reference();
    for victim in [1usize, 0] {
        let p = project_with(fixture);
        // The crawl first, so that both processes reach the extract at once.
        p.run_ok(&["--until", "pages"]);
        let hosts = hosts_file(&p, 2);
        let listen: u16 = std::fs::read_to_string(p.path().join(&hosts))
            .expect("hosts")
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .expect("port of process 0");
        let mut children: Vec<Option<Child>> = (0..2).map(|i| Some(start(&p, &hosts, i, &[]))).collect();
        let t = Instant::now();
        while !connected(listen) {
            assert!(t.elapsed() < Duration::from_secs(60), "the processes never connected");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Past the greeting, into the dataflow (which takes far longer than this).
        std::thread::sleep(Duration::from_millis(30));
        let mut killed = children[victim].take().expect("child");
        let pid = killed.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(200));
        killed.kill().expect("kill");
        killed.wait().expect("wait");
        let survivor = 1 - victim;
        let f = finish(children[survivor].take().expect("child"), Duration::from_secs(120));
        assert_eq!(f.code, Some(1), "process {survivor} after {victim} died:\n{}\n{}", f.stdout, f.stderr);
        assert!(f.stdout.contains("kg") && f.stdout.contains("FAILED"), "{}", f.stdout);
        println!("process {survivor} after process {victim} died: {}", f.stderr.lines().last().unwrap_or(""));
        let failed = ["the dataflow failed", "a timely worker failed", "connecting to the other processes"];
        assert!(failed.iter().any(|why| f.stderr.contains(&format!("process {survivor} of 2: {why}"))), "{}", f.stderr);
        assert!(!f.stderr.contains("panicked at"), "timely's panics are printed:\n{}", f.stderr);
        assert!(!p.store().join("refs/pipeline/kg.json").exists(), "a failed stage left a ref");
        let verify = p.fleming(&["verify", "pipeline.yaml"]);
        assert_eq!(verify.code, 0, "{}\n{}", verify.stdout, verify.stderr);
        // Nothing half-done stands in the way of the next run.
        let done = run_cluster(&p, 2);
        for (i, f) in done.iter().enumerate() {
            assert_eq!(f.code, Some(0), "rerun, process {i}:\n{}\n{}", f.stdout, f.stderr);
        }
        assert_eq!(&digests(&p), want);
    }

    // A process that never comes.
    let p = project_with(fixture);
    let hosts = hosts_file(&p, 2);
    let t = Instant::now();
    let f = finish(start(&p, &hosts, 1, &["--connect-timeout", "2"]), Duration::from_secs(120));
    assert_eq!(f.code, Some(1), "{}\n{}", f.stdout, f.stderr);
    assert!(f.stderr.contains("processes [0] of the cluster did not join within 2s"), "{}", f.stderr);
    assert!(t.elapsed() < Duration::from_secs(60));
    assert!(!p.store().join("refs/pipeline/kg.json").exists());
}
