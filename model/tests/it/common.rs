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

/// Largest absolute difference of two tensors, wherever they are (compared on the CPU in f32).
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    let cpu = |t: &tch::Tensor| t.to_device(tch::Device::Cpu).to_kind(tch::Kind::Float);
    (cpu(a) - cpu(b)).abs().max().double_value(&[])
}

/// Where the model tests run: `FLEMING_TEST_DEVICE` (`cpu`, the default, `cuda` or
/// `cuda:N`) and `FLEMING_TEST_DTYPE` (`f32`, the default, or `bf16`). `scripts/gpu-check`
/// sets them; a CUDA device that libtorch cannot see fails the test, never skips it.
pub fn placement() -> fleming_model::Placement {
    let name = std::env::var("FLEMING_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = fleming_model::Placement::parse_device(&name)
        .unwrap_or_else(|e| panic!("FLEMING_TEST_DEVICE={name}: {e}"))
        .unwrap_or(tch::Device::Cpu);
    if matches!(device, tch::Device::Cuda(_)) {
        assert!(tch::Cuda::is_available(), "FLEMING_TEST_DEVICE={name} but libtorch sees no CUDA device");
    }
    fleming_model::Placement { device: Some(device), kind: Some(test_kind()) }
}

/// The device of [`placement`].
pub fn device() -> tch::Device {
    placement().device.unwrap_or(tch::Device::Cpu)
}

/// The dtype of [`placement`].
pub fn test_kind() -> tch::Kind {
    match std::env::var("FLEMING_TEST_DTYPE").as_deref() {
        Err(_) | Ok("f32") => tch::Kind::Float,
        Ok("bf16") => tch::Kind::BFloat16,
        Ok(other) => panic!("FLEMING_TEST_DTYPE={other}: expected f32 or bf16"),
    }
}

/// The tolerance of a logits comparison that holds to `f32_tol` in f32: in bf16 (8 bits
/// of mantissa) the stated bound for these small models' logits is 0.05.
pub fn logits_tol(f32_tol: f64) -> f64 {
    if test_kind() == tch::Kind::BFloat16 { f32_tol.max(0.05) } else { f32_tol }
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
