//! Helpers shared by the integration tests.

use std::path::PathBuf;
use std::process::Command;

/// The Python of the cache venv, or a panic that says how to install it.
pub fn python() -> PathBuf {
    let p = std::env::var_os("FLEMING_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/fleming/py/bin/python")
    });
    assert!(p.exists(), "the Python reference is not installed at {}: run scripts/ensure-torch first", p.display());
    p
}

/// Runs a Python script from tests/py with arguments, panicking with its output on failure;
/// returns its stdout.
pub fn run_py(script: &str, args: &[&str]) -> String {
    let path =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()))
            .join("tests/py")
            .join(script);
    let out = Command::new(python()).arg(&path).args(args).output().expect("start python");
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Largest absolute difference of two tensors.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// CPU, f32: the placement every test uses.
pub fn cpu_f32() -> fleming_model::Placement {
    fleming_model::Placement { device: Some(tch::Device::Cpu), kind: Some(tch::Kind::Float) }
}

/// Waits until the training child writing checkpoints under `dir` has saved `step-NNNNNNNN`
/// (`checkpoint`), then kills it with SIGKILL.
pub fn kill_after_checkpoint(mut child: std::process::Child, dir: &std::path::Path, checkpoint: &str) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ck = fleming_model::sft::latest_checkpoint(dir).unwrap();
        if ck.as_ref().is_some_and(|c| c.ends_with(checkpoint)) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the child finished before it could be killed");
        assert!(Instant::now() < deadline, "the child wrote no checkpoint {checkpoint}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}
