//! GRPO: advantages and each loss variant against hand-computed values, chunked
//! log-probabilities against the full projection, learning toward a rewarded token,
//! dynamic sampling, the plateau stop and exact resume.

use crate::common::{device, max_abs_diff, placement};
use fleming_model::grpo::loss::{self, LossInputs, LossParams, LossType, ScaleRewards, StepTotals};
use fleming_model::grpo::{GrpoConfig, GrpoMetrics, GrpoTrainer, Prompt};
use fleming_model::{Qwen2, Qwen2Config, TrainEnd};
use tch::{Kind, Tensor};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn advantages_are_group_relative_and_scaled_as_asked() {
    let r = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0];
    let none = loss::advantages(&r, 4, ScaleRewards::None).unwrap();
    assert_eq!(none, vec![0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0, 0.0]);
    // Sample std of [1, 0, 0, 1] is sqrt(1/3); a flat group stays 0 (divided by 1e-4).
    let group = loss::advantages(&r, 4, ScaleRewards::Group).unwrap();
    let s = (1.0f64 / 3.0).sqrt() + 1e-4;
    assert!(close(group[0], 0.5 / s) && close(group[1], -0.5 / s) && group[4] == 0.0, "{group:?}");
    // Over the batch: mean 0.75 is not subtracted (the group mean is), std of all 8.
    let batch = loss::advantages(&r, 4, ScaleRewards::Batch).unwrap();
    let sb = (6.0f64 * 0.0625 + 2.0 * 0.5625).sqrt() / 7.0f64.sqrt() + 1e-4;
    assert!(close(batch[0], 0.5 / sb), "{batch:?}");
    assert!(loss::advantages(&r, 3, ScaleRewards::None).is_err(), "8 rewards do not make groups of 3");
}

/// Two sequences of three target tokens: ratios [1, 1.5, 0.5] with advantage +1, ratios 1
/// with advantage −1 on two counted tokens.
fn tiny_batch() -> (Tensor, Tensor, Tensor, Tensor) {
    let logp = Tensor::from_slice(&[-1.0f32, -2.0, -3.0, -0.5, -1.0, -1.5]).view([2, 3]).set_requires_grad(true);
    let shift = Tensor::from_slice(&[0.0f32, 1.5f32.ln(), 0.5f32.ln(), 0.0, 0.0, 0.0]).view([2, 3]);
    let old = (&logp - shift).detach();
    let adv = Tensor::from_slice(&[1.0f32, -1.0]);
    let mask = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0]).view([2, 3]);
    (logp, old, adv, mask)
}

#[test]
fn each_loss_type_matches_the_hand_computed_value_and_gradient() {
    let params = |loss_type| LossParams { epsilon: 0.2, epsilon_high: 0.28, beta: 0.0, loss_type };
    let totals = StepTotals { sequences: 2, tokens: 5.0, max_completion_length: 4 };
    // Per-token losses: row 0 −1, −min(1.5, 1.28) = −1.28, −min(0.5, 0.8) = −0.5 (sum
    // −2.78); row 1: +1, +1 (sum 2).
    for (lt, want) in [
        (LossType::Grpo, (-2.78 / 3.0 + 2.0 / 2.0) / 2.0),
        (LossType::DrGrpo, (-2.78 + 2.0) / 8.0),
        (LossType::Dapo, (-2.78 + 2.0) / 5.0),
    ] {
        let (logp, old, adv, mask) = tiny_batch();
        let x =
            LossInputs { logp: &logp, old_logp: &old, ref_logp: None, advantages: &adv, mask: &mask, seq_tokens: None };
        let (l, sums) = loss::policy_loss(&x, &params(lt), &totals).unwrap();
        assert!(close(l.double_value(&[]), want), "{lt:?}: {} != {want}", l.double_value(&[]));
        assert_eq!((sums.clipped_high, sums.clipped_low, sums.tokens), (1.0, 0.0, 5.0), "{lt:?}");
        if lt == LossType::Dapo {
            // d/dlogp of −ratio·A is −ratio·A where the ratio is not clipped, 0 where it is.
            l.backward();
            let g: Vec<f32> = Vec::try_from(logp.grad().view([-1])).unwrap();
            let want = [-0.2f32, 0.0, -0.1, 0.2, 0.2, 0.0];
            assert!(g.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{g:?}");
        }
    }
}

#[test]
fn the_kl_term_is_the_k3_estimator_weighted_by_beta() {
    let (logp, old, adv, mask) = tiny_batch();
    // The reference is ln 2 below the policy on the first token only.
    let refp = (&logp - Tensor::from_slice(&[2f32.ln(), 0.0, 0.0, 0.0, 0.0, 0.0]).view([2, 3])).detach();
    let x = LossInputs {
        logp: &logp,
        old_logp: &old,
        ref_logp: Some(&refp),
        advantages: &adv,
        mask: &mask,
        seq_tokens: None,
    };
    let totals = StepTotals { sequences: 2, tokens: 5.0, max_completion_length: 4 };
    let p = LossParams { epsilon: 0.2, epsilon_high: 0.28, beta: 0.1, loss_type: LossType::Dapo };
    let (l, sums) = loss::policy_loss(&x, &p, &totals).unwrap();
    let k3 = 0.5 + 2f64.ln() - 1.0;
    assert!(close(sums.kl, k3), "{}", sums.kl);
    assert!(close(l.double_value(&[]), (-2.78 + 2.0 + 0.1 * k3) / 5.0));
    let none = LossInputs { ref_logp: None, ..x };
    assert!(loss::policy_loss(&none, &p, &totals).is_err(), "beta > 0 without a reference is refused");
}

#[test]
fn chunked_log_probabilities_equal_the_full_projection() {
    let model = Qwen2::new_random(Qwen2Config::small(64, 32, 2, 4, 2), placement(), 3).unwrap();
    let ids = Tensor::from_slice(&(0..2 * 11).map(|i| (i * 7 % 64) as i64).collect::<Vec<_>>())
        .view([2, 11])
        .to_device(device());
    let full = model.forward(&ids, None, None, false).unwrap().log_softmax(-1, Kind::Float);
    let want = full.narrow(1, 0, 10).gather(-1, &ids.narrow(1, 1, 10).unsqueeze(-1), false).squeeze_dim(-1);
    for chunk in [1, 3, 10, 100] {
        let (got, ent) = loss::token_logprobs(&model, &ids, chunk, true).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5, "chunk {chunk}");
        let e = ent.unwrap();
        assert_eq!(e.size(), vec![2, 10]);
        assert!(e.min().double_value(&[]) >= 0.0 && e.max().double_value(&[]) <= (64f64).ln() + 1e-4);
    }
}

const TARGET: i64 = 5;

/// Reward 1 when the completion's first token is `TARGET` (one component).
fn first_is_target(_: usize, tokens: &[i64], _: bool) -> Vec<f64> {
    vec![(tokens.first() == Some(&TARGET)) as u8 as f64]
}

fn toy_config(steps: u64) -> GrpoConfig {
    GrpoConfig {
        learning_rate: 2e-2,
        max_steps: steps,
        prompts_per_step: 4,
        num_generations: 8,
        per_device_train_batch_size: 16,
        max_completion_length: 3,
        reward_weights: vec![1.0],
        checkpoint_every: 2,
        seed: 4,
        ..Default::default()
    }
}

fn toy_prompts() -> Vec<Prompt> {
    (0..6).map(|i| Prompt { tokens: vec![1 + i, 2, 3] }).collect()
}

fn toy_policy() -> Qwen2 {
    Qwen2::new_random(Qwen2Config::small(12, 16, 1, 2, 1), placement(), 11).unwrap()
}

fn train(dir: &std::path::Path, cfg: GrpoConfig, stop_after: Option<u64>) -> (Vec<GrpoMetrics>, TrainEnd) {
    train_slowly(dir, cfg, stop_after, std::time::Duration::ZERO)
}

fn train_slowly(
    dir: &std::path::Path,
    cfg: GrpoConfig,
    stop_after: Option<u64>,
    delay: std::time::Duration,
) -> (Vec<GrpoMetrics>, TrainEnd) {
    let prompts = toy_prompts();
    let mut policy = toy_policy();
    let mut t = GrpoTrainer::new(&mut policy, None, &prompts, cfg, dir, 0, vec![]).unwrap();
    let mut rows = vec![];
    let done = std::cell::Cell::new(0u64);
    let end = t
        .train(
            &mut first_is_target,
            || stop_after.is_some_and(|s| done.get() >= s),
            |m| {
                rows.push(m.clone());
                done.set(m.step);
                std::thread::sleep(delay);
                Ok(true)
            },
        )
        .unwrap();
    (rows, end)
}

#[test]
fn a_rewarded_token_becomes_the_policys_choice() {
    fleming_model::set_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let (rows, end) = train(dir.path(), toy_config(30), None);
    assert_eq!(end, TrainEnd::Finished);
    assert_eq!(rows.len(), 30);
    let early: f64 = rows[..3].iter().map(|r| r.reward).sum::<f64>() / 3.0;
    let late: f64 = rows[27..].iter().map(|r| r.reward).sum::<f64>() / 3.0;
    assert!(early < 0.3, "a random policy starts near 1/12: {early}");
    assert!(late > 0.8, "the policy moved toward the rewarded token: {early} -> {late}");
    let last = rows.last().unwrap();
    assert!(last.completion_length == 3.0 && last.truncated == 1.0, "no stop token: every completion runs out");
    assert!(rows.iter().all(|r| r.lr > 0.0 && r.grad_norm.is_finite() && r.entropy > 0.0));
}

#[test]
fn a_stopped_run_resumes_on_the_same_curve() {
    fleming_model::set_threads(1);
    let whole = tempfile::tempdir().unwrap();
    let (want, _) = train(whole.path(), toy_config(6), None);
    let split = tempfile::tempdir().unwrap();
    let (first, end) = train(split.path(), toy_config(6), Some(3));
    assert_eq!(end, TrainEnd::Stopped { step: 3 });
    let (rest, end) = train(split.path(), toy_config(6), None);
    assert_eq!(end, TrainEnd::Finished);
    let got: Vec<(u64, f64, f64)> = first.iter().chain(&rest).map(|r| (r.step, r.loss, r.reward)).collect();
    let want: Vec<(u64, f64, f64)> = want.iter().map(|r| (r.step, r.loss, r.reward)).collect();
    assert_eq!(got, want, "sampling seeds, prompt order and optimizer state all resume");
}

#[test]
fn dynamic_sampling_drops_flat_groups_and_on_step_can_stop_the_run() {
    fleming_model::set_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let prompts = toy_prompts();
    let mut policy = toy_policy();
    let cfg = GrpoConfig { dynamic_sampling: true, max_resample_rounds: 3, ..toy_config(50) };
    let mut t = GrpoTrainer::new(&mut policy, None, &prompts, cfg, dir.path(), 0, vec![]).unwrap();
    // Every completion gets the same reward: every group is flat.
    let mut flat = |_: usize, _: &[i64], _: bool| vec![1.0];
    let rows = t.train_batch(&mut flat).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    // Three rounds drop their groups; the last round keeps what it draws.
    assert_eq!(r.groups_dropped, 4 * 3, "{r:?}");
    assert_eq!(r.frac_reward_zero_std, 1.0);
    assert_eq!(r.all_correct, 1.0);
    assert_eq!(r.groups, 4);
    // A plateau: on_step says stop after the first step; the run ends there, saved.
    let end = t.train(&mut first_is_target, || false, |_| Ok(false)).unwrap();
    assert_eq!(end, TrainEnd::Finished);
    let step = t.state.step;
    assert!(step < 50);
    assert!(fleming_model::sft::latest_checkpoint(dir.path()).unwrap().unwrap().ends_with(format!("step-{step:08}")));
}

/// Sets the active prompts with `set`, trains one batch, checkpoints, and returns the
/// prompts drawn and the state a resumed trainer starts from.
fn draw_one_batch_then_resume(
    set: impl FnOnce(&mut GrpoTrainer) -> fleming_model::Result<()>,
) -> (Vec<usize>, fleming_model::grpo::GrpoState) {
    fleming_model::set_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let prompts = toy_prompts();
    let mut policy = toy_policy();
    let mut t = GrpoTrainer::new(&mut policy, None, &prompts, toy_config(4), dir.path(), 0, vec![]).unwrap();
    set(&mut t).unwrap();
    let mut drawn = std::collections::BTreeSet::new();
    let mut record = |p: usize, tokens: &[i64], truncated: bool| {
        drawn.insert(p);
        first_is_target(p, tokens, truncated)
    };
    t.train_batch(&mut record).unwrap();
    t.checkpoint().unwrap();
    drop(t);
    let mut policy = toy_policy();
    let t = GrpoTrainer::new(&mut policy, None, &prompts, toy_config(4), dir.path(), 0, vec![]).unwrap();
    (drawn.into_iter().collect(), t.state)
}

#[test]
fn an_active_set_is_all_the_trainer_draws_from_and_it_survives_a_resume() {
    let (drawn, state) = draw_one_batch_then_resume(|t| {
        assert!(t.set_active(vec![]).is_err() && t.set_active(vec![9]).is_err(), "empty or out-of-range sets");
        t.set_active(vec![2, 2, 5])
    });
    assert_eq!(drawn, vec![2, 5]);
    assert_eq!(state.active, Some(vec![2, 2, 5]));
    assert_eq!((state.step, state.active_since), (1, 0));
}

#[test]
fn replayed_draws_are_drawn_but_not_part_of_the_set_after_a_resume() {
    let (drawn, state) = draw_one_batch_then_resume(|t| t.set_active_with_replay(vec![2, 5], vec![3, 3]));
    assert_eq!(drawn, vec![2, 3, 5]);
    assert_eq!(state.active_set(), Some(&[2usize, 5][..]));
    assert_eq!(state.active, Some(vec![2, 5, 3, 3]));
}

const CHILD_ENV: &str = "FLEMING_GRPO_CHILD_DIR";

/// Not a test: the child process that `resume_after_kill_9_gives_the_same_curve` kills.
#[test]
#[ignore = "helper process for the kill -9 test"]
fn helper_grpo_child_process() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        fleming_model::set_threads(1);
        train_slowly(std::path::Path::new(&dir), toy_config(12), None, std::time::Duration::from_millis(150));
    }
}

#[test]
fn resume_after_kill_9_gives_the_same_curve() {
    fleming_model::set_threads(1);
    let (reference, _) = train(tempfile::tempdir().unwrap().path(), toy_config(12), None);
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "grpo::helper_grpo_child_process", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::common::kill_after_checkpoint(child, dir.path(), "step-00000004");
    let (resumed, _) = train(dir.path(), toy_config(12), None);
    let first = resumed.first().unwrap().step;
    assert!((5..=7).contains(&first), "resumed at step {first}");
    for r in &resumed {
        let want = &reference[(r.step - 1) as usize];
        assert_eq!((r.step, r.loss, r.reward, r.grad_norm), (want.step, want.loss, want.reward, want.grad_norm));
    }
    assert_eq!(resumed.last().unwrap().step, 12);
}

#[test]
fn the_chunked_backward_gives_the_gradient_of_the_whole_loss() {
    let ids = Tensor::from_slice(&(0..3 * 9).map(|i| (i * 5 % 64) as i64).collect::<Vec<_>>())
        .view([3, 9])
        .to_device(device());
    let mask = Tensor::from_slice(
        &(0..3 * 8).map(|i| if i % 8 >= 3 && !(i / 8 == 2 && i % 8 == 7) { 1.0f32 } else { 0.0 }).collect::<Vec<_>>(),
    )
    .view([3, 8])
    .to_device(device());
    let adv = Tensor::from_slice(&[1.0f32, -0.5, 0.25]).to_device(device());
    for lt in [LossType::Grpo, LossType::DrGrpo, LossType::Dapo] {
        let p = LossParams { epsilon: 0.2, epsilon_high: 0.28, beta: 0.0, loss_type: lt };
        let totals =
            StepTotals { sequences: 3, tokens: mask.sum(Kind::Float).double_value(&[]), max_completion_length: 6 };
        let grads = |chunk: Option<i64>| -> (f64, Vec<Tensor>) {
            let mut model = Qwen2::new_random(Qwen2Config::small(64, 32, 2, 4, 2), placement(), 5).unwrap();
            model.set_requires_grad(true).unwrap();
            let l = match chunk {
                Some(c) => loss::backward_in_chunks(&model, &ids, &mask, &adv, None, None, &p, &totals, c).unwrap().0,
                None => {
                    let (lp, _) = loss::token_logprobs(&model, &ids, 100, false).unwrap();
                    let old = lp.detach();
                    let x = LossInputs {
                        logp: &lp,
                        old_logp: &old,
                        ref_logp: None,
                        advantages: &adv,
                        mask: &mask,
                        seq_tokens: None,
                    };
                    let (l, _) = loss::policy_loss(&x, &p, &totals).unwrap();
                    l.backward();
                    l.double_value(&[])
                }
            };
            (l, model.named_parameters().iter().map(|(_, t)| t.grad().copy()).collect())
        };
        let (want_loss, want) = grads(None);
        for c in [1, 3, 8] {
            let (l, got) = grads(Some(c));
            assert!((l - want_loss).abs() < 1e-6, "{lt:?} chunk {c}: loss {l} vs {want_loss}");
            for (a, b) in got.iter().zip(&want) {
                assert!(max_abs_diff(a, b) < 1e-6, "{lt:?} chunk {c}: gradients differ by {}", max_abs_diff(a, b));
            }
        }
    }
}
