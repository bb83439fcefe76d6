//! `fleming ui` and `fleming report` in a real browser: headless Chromium (Debian's
//! package; `scripts/ensure-chromium`, which `make test` runs, installs it) against the
//! quickstart's store. Screenshots go to `<target>/tmp/fleming-ui/`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fleming_testkit::browser::{chromium_path, headless};

use crate::pipeline::fleming;

/// Where the screenshots go.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleming-ui")
}

/// Headless Chromium; fails with the way to install it when it is missing.
fn browser(profile: &Path) -> Command {
    let p = chromium_path();
    assert!(p.exists(), "no Chromium at {}: run scripts/ensure-chromium (make test does)", p.display());
    headless(profile)
}

/// The DOM after the page's scripts ran for `ms` of virtual time.
fn dom(profile: &Path, url: &str, ms: u32) -> String {
    let o = browser(profile).arg(format!("--virtual-time-budget={ms}")).args(["--dump-dom", url]).output().unwrap();
    assert!(o.status.success(), "chromium {url}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn screenshot(profile: &Path, url: &str, name: &str, height: u32) {
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::create_dir_all(screenshot_dir()).unwrap();
    let o = browser(profile)
        .arg(format!("--window-size=1400,{height}"))
        .arg("--virtual-time-budget=2000")
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(o.status.success(), "screenshot of {url}: {}", String::from_utf8_lossy(&o.stderr));
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "{} is {size} bytes", path.display());
}

/// A running `fleming ui`, stopped when dropped.
pub struct Ui {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Ui {
    pub fn start(pipeline: &Path, store: &Path, out: &Path) -> Ui {
        let mut child = Command::new(fleming())
            .args(["ui", pipeline.to_str().unwrap(), "--port", "0", "--store", store.to_str().unwrap()])
            .env("QUICKSTART_OUT", out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.split_whitespace().last().unwrap_or_default().trim_end_matches('/').to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{line:?}");
        Ui { child, url }
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(page: &str, needle: &str) -> usize {
    page.matches(needle).count()
}

/// The quickstart's store, every stage cached, seen in the browser: one box per stage in
/// the cached colour (after the live updates ran), a stage page with its rows, a curve with
/// a point per metrics row, the evaluation; and the static report, opened from disk offline.
pub fn ui_shows_the_store(ui: &Ui, report: &Path, stages: usize, heldout_rows: usize, base_steps: i64) {
    let profile = tempfile::tempdir().unwrap();
    let profile = profile.path();
    let page = dom(profile, &ui.url, 3000);
    assert_eq!(count(&page, "<g class=\"stage\""), stages, "one box per stage");
    assert_eq!(count(&page, "<g class=\"stage\" data-stage=\""), count(&page, "data-status=\"cached\"><title>"));
    assert_eq!(count(&page, "fill=\"#cfeccf\" stroke=\"#555\""), stages, "every box in the cached colour");
    let polls =
        page.split("data-polls=\"").nth(1).and_then(|r| r.split('"').next()).and_then(|n| n.parse::<u32>().ok());
    assert!(polls.is_some_and(|n| n >= 1), "the live updates ran in the browser");
    screenshot(profile, &ui.url, "dag", 1100);

    let held = dom(profile, &format!("{}/stage/heldout", ui.url), 500);
    assert_eq!(count(&held, "<tr data-row="), heldout_rows.min(50), "a page of heldout's rows");
    screenshot(profile, &format!("{}/stage/heldout", ui.url), "stage-heldout", 1600);
    // A synthetic held-out item's lineage goes back to the wiki pages it was made from.
    let id = held
        .split("id=syn-")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(|h| format!("syn-{h}"))
        .expect("a synthetic item");
    let chain = dom(profile, &format!("{}/lineage?id={id}", ui.url), 500);
    assert!(chain.contains(&format!("<li data-record=\"{id}\"><a href=\"/stage/heldout\"")), "{chain}");
    assert!(chain.contains("<a href=\"/stage/wiki\"><code>wiki</code></a>.pages"), "back to the source pages: {chain}");
    screenshot(profile, &format!("{}/lineage?id={id}", ui.url), "lineage", 1000);

    let base = dom(profile, &format!("{}/stage/base", ui.url), 500);
    let points = base.split("data-metric=\"loss\" data-points=\"").nth(1).and_then(|r| r.split('"').next());
    assert_eq!(points, Some(base_steps.to_string().as_str()), "a point per row of base's metrics table");
    screenshot(profile, &format!("{}/stage/base", ui.url), "stage-base", 1600);

    let eval = dom(profile, &format!("{}/evaluation", ui.url), 1000);
    assert!(eval.contains("<iframe title=\"evaluation eval\""), "the evaluation's report");
    screenshot(profile, &format!("{}/evaluation", ui.url), "evaluation", 1600);
    screenshot(profile, &format!("{}/curves", ui.url), "curves", 1400);

    let url = format!("file://{}", report.display());
    let offline = dom(profile, &url, 500);
    assert_eq!(count(&offline, "<g class=\"stage\""), stages, "the report opens from disk, offline");
    screenshot(profile, &url, "report", 1600);
}

/// After a parameter of `stage` changed and it ran again: its page says what changed, lists
/// both runs and overlays both runs' curves.
pub fn ui_shows_the_change(ui: &Ui, stage: &str, param: &str) {
    let profile = tempfile::tempdir().unwrap();
    let page = dom(profile.path(), &format!("{}/stage/{stage}", ui.url), 500);
    assert!(page.contains("<span data-changed=\"1\">"), "one parameter changed");
    let changed = page.split("<tr class=\"bad\"><td><code>").nth(1).and_then(|r| r.split('<').next());
    assert_eq!(changed, Some(param));
    assert_eq!(count(&page, "<tr data-run="), 2, "both runs in the history");
    assert!(page.contains("data-metric=\"loss\" data-lines=\"2\""), "both runs' curves overlaid");
    screenshot(profile.path(), &format!("{}/stage/{stage}", ui.url), &format!("stage-{stage}-changed"), 1600);
}

/// `(stage, data-status, fill)` of each box of the graph.
fn boxes(page: &str) -> Vec<(String, String, String)> {
    page.split("<g class=\"stage\" data-stage=\"")
        .skip(1)
        .filter_map(|rest| {
            let (stage, rest) = rest.split_once('"')?;
            let status = rest.split("data-status=\"").nth(1)?.split('"').next()?;
            let fill = rest.split("fill=\"").nth(1)?.split('"').next()?;
            Some((stage.to_string(), status.to_string(), fill.to_string()))
        })
        .collect()
}

/// After an edit of the pipeline file, with the UI still running: the stages it makes stale
/// in the stale colour, every other one still cached.
pub fn ui_shows_stale(ui: &Ui, stale: &[&str]) {
    let profile = tempfile::tempdir().unwrap();
    let page = dom(profile.path(), &ui.url, 1500);
    let got = boxes(&page);
    assert!(!got.is_empty());
    for (stage, status, fill) in &got {
        let want = if stale.contains(&stage.as_str()) { ("stale", "#ffe1a8") } else { ("cached", "#cfeccf") };
        assert_eq!((status.as_str(), fill.as_str()), want, "{stage}");
    }
    screenshot(profile.path(), &ui.url, "dag-stale", 1100);
}
