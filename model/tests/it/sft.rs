//! SFT: exact resume after `kill -9`, and the loss mask.

use crate::common::placement;
use fleming_model::sft::{Example, MetricsRow, SftConfig, SftTrainer, latest_checkpoint};
use fleming_model::toy::ToyTask;
use fleming_model::{Qwen2, Qwen2Config};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const CHILD_ENV: &str = "FLEMING_SFT_CHILD_DIR";
const STEPS: u64 = 30;

/// Byte-level ids keep this test independent of tokenizer training.
fn examples() -> Vec<Example> {
    ToyTask::new(12, 5, 3)
        .questions(64, 4, 4)
        .iter()
        .map(|q| Example {
            prompt: q.prompt().bytes().map(|b| b as i64).collect(),
            completion: q.completion().bytes().map(|b| b as i64).collect(),
        })
        .collect()
}

fn setup() -> (Qwen2, SftConfig) {
    let model = Qwen2::new_random(Qwen2Config::small(256, 32, 2, 4, 2), placement(), 7).unwrap();
    let cfg = SftConfig {
        lr: 3e-3,
        warmup_steps: 5,
        total_steps: STEPS,
        batch_size: 4,
        grad_accum: 2,
        checkpoint_every: 5,
        seed: 9,
        weight_decay: 0.01,
        ..Default::default()
    };
    (model, cfg)
}

fn run(dir: &Path, delay: Duration) -> Vec<MetricsRow> {
    // Bit-identical curves need the same reduction order: one intra-op thread in every
    // process and test (the thread pool is global, and other tests set it too).
    fleming_model::set_threads(1);
    let (mut model, cfg) = setup();
    let ex = examples();
    let mut t = SftTrainer::new(&mut model, &ex, cfg, dir, 0).unwrap();
    let mut rows = vec![];
    t.train(
        || false,
        |r| {
            rows.push(r.clone());
            std::thread::sleep(delay);
            Ok(())
        },
    )
    .unwrap();
    rows
}

/// Not a test: the child process that `resume_after_kill_9_gives_the_same_curve` kills.
#[test]
#[ignore = "helper process for the kill -9 test"]
fn helper_sft_child_process() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        run(Path::new(&dir), Duration::from_millis(150));
    }
}

#[test]
fn resume_after_kill_9_gives_the_same_curve() {
    let reference = run(tempfile::tempdir().unwrap().path(), Duration::ZERO);
    assert_eq!(reference.len() as u64, STEPS);

    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sft::helper_sft_child_process", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::common::kill_after_checkpoint(child, dir.path(), "step-00000010");

    let ck = latest_checkpoint(dir.path()).unwrap().unwrap();
    let resumed = run(dir.path(), Duration::ZERO);
    let first = resumed.first().unwrap().step;
    assert!((11..=16).contains(&first), "resumed at step {first} from {}", ck.display());
    for r in &resumed {
        let want = &reference[(r.step - 1) as usize];
        assert_eq!((r.step, r.loss, r.lr, r.grad_norm), (want.step, want.loss, want.lr, want.grad_norm));
    }
    assert_eq!(resumed.last().unwrap().step, STEPS);
}

#[test]
fn schedule_warms_up_then_decays_to_the_floor() {
    let cfg = SftConfig { lr: 1.0, min_lr_ratio: 0.1, warmup_steps: 10, total_steps: 110, ..Default::default() };
    assert!((cfg.lr_at(0) - 0.1).abs() < 1e-12);
    assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
    assert!((cfg.lr_at(60) - 0.55).abs() < 1e-9);
    assert!((cfg.lr_at(110) - 0.1).abs() < 1e-12);
}

#[test]
fn prompt_tokens_carry_no_loss() {
    // The step loss equals the mean loss over completion tokens computed
    // independently, so prompt tokens carry none.
    let (mut model, cfg) = setup();
    let ex = examples()[..4].to_vec();
    let want = fleming_model::sft::eval_loss(&model, &ex, 0).unwrap();
    let cfg = SftConfig { batch_size: 4, grad_accum: 1, total_steps: 1, checkpoint_every: 0, ..cfg };
    let dir = tempfile::tempdir().unwrap();
    let mut t = SftTrainer::new(&mut model, &ex, cfg, dir.path(), 0).unwrap();
    let row = t.train_step().unwrap();
    assert!((row.loss - want).abs() < 1e-4, "step loss {} vs completion-only loss {want}", row.loss);
}

#[test]
fn a_stop_request_checkpoints_and_the_next_trainer_continues_the_same_curve() {
    let whole = run(tempfile::tempdir().unwrap().path(), Duration::ZERO);
    fleming_model::set_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let ex = examples();
    let mut rows = vec![];
    {
        let (mut model, cfg) = setup();
        let mut t = SftTrainer::new(&mut model, &ex, cfg, dir.path(), 0).unwrap();
        let done = std::cell::Cell::new(0u64);
        let end = t
            .train(
                || done.get() >= 7,
                |r| {
                    rows.push(r.clone());
                    done.set(r.step);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(end, fleming_model::TrainEnd::Stopped { step: 7 });
    }
    let (mut model, cfg) = setup();
    let mut t = SftTrainer::new(&mut model, &ex, cfg, dir.path(), 0).unwrap();
    assert_eq!(t.state.step, 7, "the stop wrote a checkpoint at the step in progress");
    let end = t
        .train(
            || false,
            |r| {
                rows.push(r.clone());
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(end, fleming_model::TrainEnd::Finished);
    let key = |r: &MetricsRow| (r.step, r.loss.to_bits(), r.lr.to_bits(), r.grad_norm.to_bits());
    assert_eq!(rows.iter().map(key).collect::<Vec<_>>(), whole.iter().map(key).collect::<Vec<_>>());
}

#[test]
fn bf16_weights_train_with_f32_moments() {
    // The CUDA configuration (bf16 weights), exercised on CPU.
    let placement = fleming_model::Placement { device: Some(crate::common::device()), kind: Some(tch::Kind::BFloat16) };
    let mut model = Qwen2::new_random(Qwen2Config::small(256, 32, 2, 4, 2), placement, 7).unwrap();
    let ex = examples()[..8].to_vec();
    let cfg = SftConfig { batch_size: 4, total_steps: 3, warmup_steps: 1, checkpoint_every: 3, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let mut t = SftTrainer::new(&mut model, &ex, cfg, dir.path(), 0).unwrap();
    let mut losses = vec![];
    t.train(
        || false,
        |r| {
            losses.push(r.loss);
            Ok(())
        },
    )
    .unwrap();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let ck = latest_checkpoint(dir.path()).unwrap().unwrap();
    let f = fleming_model::io::SafetensorsFile::open(ck.join("optimizer.safetensors")).unwrap();
    assert!(f.tensors.values().all(|i| i.kind == tch::Kind::Float));
    let w = fleming_model::io::SafetensorsFile::open(ck.join("model.safetensors")).unwrap();
    assert!(w.tensors.values().all(|i| i.kind == tch::Kind::BFloat16));
}
