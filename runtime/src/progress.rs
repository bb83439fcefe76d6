//! Progress reporting: a bar per running stage (indicatif) on a terminal, plain log lines
//! otherwise, nothing in tests.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Writes a line to stderr, ignoring a closed stderr (`fleming run … 2>&1 | head`): the
/// run goes on without its log rather than failing (`eprintln!` would panic).
pub fn log_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Where progress goes.
pub trait ProgressSink: Send + Sync {
    /// A stage starts; returns its reporter.
    fn stage(&self, stage: &str, op: &str) -> Progress;
    /// Prints a line (above the bars, if any).
    fn println(&self, line: &str);
    /// Sets the overall count of finished stages.
    fn overall(&self, done: usize, total: usize);
    /// Clears the bars.
    fn finish(&self);
}

/// The reporter of one stage.
pub trait StageProgress: Send + Sync {
    /// Sets the total (None: unknown).
    fn set_total(&self, total: Option<u64>);
    /// Sets the position.
    fn set_position(&self, pos: u64);
    /// Advances the position.
    fn inc(&self, n: u64);
    /// Sets the unit shown after counts (rows, pages, steps).
    fn set_unit(&self, unit: &str);
    /// Sets a short message.
    fn set_message(&self, msg: &str);
    /// The stage is over.
    fn finish(&self, summary: &str);
}

/// A stage's progress reporter, cheap to clone and share between threads.
#[derive(Clone)]
pub struct Progress(Arc<dyn StageProgress>);

impl Progress {
    /// A reporter that shows nothing.
    pub fn silent() -> Self {
        Progress(Arc::new(Silent))
    }

    /// Wraps a reporter.
    pub fn new(p: Arc<dyn StageProgress>) -> Self {
        Progress(p)
    }

    /// Sets the total.
    pub fn set_total(&self, total: u64) {
        self.0.set_total(Some(total))
    }

    /// Marks the total as unknown.
    pub fn set_total_unknown(&self) {
        self.0.set_total(None)
    }

    /// Sets the position.
    pub fn set_position(&self, pos: u64) {
        self.0.set_position(pos)
    }

    /// Advances the position.
    pub fn inc(&self, n: u64) {
        self.0.inc(n)
    }

    /// Sets the unit (rows, pages, steps).
    pub fn set_unit(&self, unit: &str) {
        self.0.set_unit(unit)
    }

    /// Sets a short message.
    pub fn set_message(&self, msg: &str) {
        self.0.set_message(msg)
    }

    /// Ends the bar with a summary.
    pub fn finish(&self, summary: &str) {
        self.0.finish(summary)
    }
}

struct Silent;

impl StageProgress for Silent {
    fn set_total(&self, _: Option<u64>) {}
    fn set_position(&self, _: u64) {}
    fn inc(&self, _: u64) {}
    fn set_unit(&self, _: &str) {}
    fn set_message(&self, _: &str) {}
    fn finish(&self, _: &str) {}
}

/// A sink that shows nothing.
pub struct SilentSink;

impl ProgressSink for SilentSink {
    fn stage(&self, _: &str, _: &str) -> Progress {
        Progress::silent()
    }
    fn println(&self, _: &str) {}
    fn overall(&self, _: usize, _: usize) {}
    fn finish(&self) {}
}

/// Bars on a terminal, plain lines otherwise.
pub fn auto_sink(quiet: bool) -> Arc<dyn ProgressSink> {
    if quiet {
        Arc::new(SilentSink)
    } else if std::io::stderr().is_terminal() {
        Arc::new(Bars::new())
    } else {
        Arc::new(Lines::new(Duration::from_secs(10)))
    }
}

/// indicatif bars: one per running stage, and an overall line.
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Bars {
    /// Bars drawing on stderr.
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:>14.bold} {wide_bar:.cyan/blue} {pos}/{len} stages  {elapsed_precise}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        overall.set_prefix("pipeline");
        Bars { multi, overall }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl ProgressSink for Bars {
    fn stage(&self, stage: &str, op: &str) -> Progress {
        let bar = self.multi.insert_before(&self.overall, ProgressBar::no_length());
        bar.set_prefix(stage.to_string());
        let unit = Arc::new(Mutex::new(String::from("rows")));
        let b = BarStage { bar, unit, op: op.to_string() };
        b.restyle(false);
        Progress::new(Arc::new(b))
    }
    fn println(&self, line: &str) {
        let _ = self.multi.println(line);
    }
    fn overall(&self, done: usize, total: usize) {
        self.overall.set_length(total as u64);
        self.overall.set_position(done as u64);
    }
    fn finish(&self) {
        self.overall.finish_and_clear();
        let _ = self.multi.clear();
    }
}

struct BarStage {
    bar: ProgressBar,
    unit: Arc<Mutex<String>>,
    op: String,
}

impl BarStage {
    fn restyle(&self, known_total: bool) {
        let unit = self.unit.lock().map(|u| u.clone()).unwrap_or_default();
        let template = if known_total {
            format!(
                "{{prefix:>14.bold}} [{}] {{bar:30.green/white}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}} {{msg}}",
                self.op
            )
        } else {
            format!("{{prefix:>14.bold}} [{}] {{spinner}} {{pos}} {unit} {{per_sec}} {{elapsed}} {{msg}}", self.op)
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.enable_steady_tick(Duration::from_millis(250));
    }
}

impl StageProgress for BarStage {
    fn set_total(&self, total: Option<u64>) {
        match total {
            Some(t) => self.bar.set_length(t),
            None => self.bar.unset_length(),
        }
        self.restyle(total.is_some());
    }
    fn set_position(&self, pos: u64) {
        self.bar.set_position(pos)
    }
    fn inc(&self, n: u64) {
        self.bar.inc(n)
    }
    fn set_unit(&self, unit: &str) {
        if let Ok(mut u) = self.unit.lock() {
            *u = unit.to_string();
        }
        self.restyle(self.bar.length().is_some());
    }
    fn set_message(&self, msg: &str) {
        self.bar.set_message(msg.to_string())
    }
    fn finish(&self, _summary: &str) {
        self.bar.finish_and_clear();
    }
}

/// Plain lines on stderr: a line when a stage starts and ends, and its progress at most
/// once per interval.
pub struct Lines {
    interval: Duration,
    start: Instant,
}

impl Lines {
    /// Progress lines at most every `interval` per stage.
    pub fn new(interval: Duration) -> Self {
        Lines { interval, start: Instant::now() }
    }
}

impl ProgressSink for Lines {
    fn stage(&self, stage: &str, op: &str) -> Progress {
        Progress::new(Arc::new(LineStage {
            stage: stage.to_string(),
            op: op.to_string(),
            total: AtomicU64::new(u64::MAX),
            pos: AtomicU64::new(0),
            unit: Mutex::new("rows".into()),
            msg: Mutex::new(String::new()),
            started: Instant::now(),
            last: Mutex::new(Instant::now()),
            interval: self.interval,
        }))
    }
    fn println(&self, line: &str) {
        log_line(format_args!("{line}"));
    }
    fn overall(&self, _: usize, _: usize) {}
    fn finish(&self) {
        let _ = self.start;
    }
}

struct LineStage {
    stage: String,
    op: String,
    total: AtomicU64,
    pos: AtomicU64,
    unit: Mutex<String>,
    msg: Mutex<String>,
    started: Instant,
    last: Mutex<Instant>,
    interval: Duration,
}

impl LineStage {
    fn maybe_print(&self) {
        let Ok(mut last) = self.last.lock() else { return };
        if last.elapsed() < self.interval {
            return;
        }
        *last = Instant::now();
        let pos = self.pos.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let unit = self.unit.lock().map(|u| u.clone()).unwrap_or_default();
        let rate = pos as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let msg = self.msg.lock().map(|m| m.clone()).unwrap_or_default();
        let of = if total == u64::MAX { String::new() } else { format!("/{total}") };
        // Slow units (training steps) read as seconds each rather than "0/s".
        let speed = match rate {
            r if r >= 10.0 => format!("{r:.0}/s"),
            r if r >= 1.0 => format!("{r:.1}/s"),
            r if r > 0.0 => format!("{:.1} s each", 1.0 / r),
            _ => "starting".to_string(),
        };
        log_line(format_args!("  {} [{}]: {pos}{of} {unit} ({speed}) {msg}", self.stage, self.op));
    }
}

impl StageProgress for LineStage {
    fn set_total(&self, total: Option<u64>) {
        self.total.store(total.unwrap_or(u64::MAX), Ordering::Relaxed);
    }
    fn set_position(&self, pos: u64) {
        self.pos.store(pos, Ordering::Relaxed);
        self.maybe_print();
    }
    fn inc(&self, n: u64) {
        self.pos.fetch_add(n, Ordering::Relaxed);
        self.maybe_print();
    }
    fn set_unit(&self, unit: &str) {
        if let Ok(mut u) = self.unit.lock() {
            *u = unit.to_string();
        }
    }
    fn set_message(&self, msg: &str) {
        if let Ok(mut m) = self.msg.lock() {
            *m = msg.to_string();
        }
    }
    fn finish(&self, _summary: &str) {}
}
