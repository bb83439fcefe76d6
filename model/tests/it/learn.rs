//! Learning test: a model trained from scratch on CPU learns a templated
//! multiple-choice task (≥ 95% on fresh option orders within 1,500 steps).

use crate::common::placement;
use crate::tokenizer::toy_tokenizer;
use fleming_model::sft::{Example, SftConfig, SftTrainer};
use fleming_model::toy::ToyTask;
use fleming_model::{Qwen2, Qwen2Config, SamplingParams, TextTokenizer, generate};
use std::time::Instant;

fn accuracy(model: &Qwen2, tk: &TextTokenizer, task: &ToyTask) -> f64 {
    let qs = task.questions(96, 4, 777);
    let prompts: Vec<Vec<i64>> = qs.iter().map(|q| tk.encode(&q.prompt()).unwrap()).collect();
    let p =
        SamplingParams { temperature: 0.0, max_new_tokens: 80, stop_token_ids: tk.stop_ids(), ..Default::default() };
    let mut right = 0;
    for (chunk, qchunk) in prompts.chunks(32).zip(qs.chunks(32)) {
        let out = generate(model, chunk, &p, tk.pad_id()).unwrap();
        for (g, q) in out.iter().zip(qchunk) {
            let text = tk.decode(&g.tokens, true).unwrap();
            if fleming_questions::score(&q.item, &text, g.truncated).correct {
                right += 1;
            }
        }
    }
    right as f64 / qs.len() as f64
}

#[test]
fn learns_a_templated_multiple_choice_task_from_scratch() {
    // One intra-op thread: tests run in parallel on a 2-core machine, and
    // oversubscribed OpenMP threads spin instead of working.
    fleming_model::set_threads(1);
    let start = Instant::now();
    let task = ToyTask::new(16, 6, 1);
    let tk = toy_tokenizer();
    let examples: Vec<Example> = task
        .questions(512, 4, 2)
        .iter()
        .map(|q| Example { prompt: tk.encode(&q.prompt()).unwrap(), completion: tk.encode(&q.completion()).unwrap() })
        .collect();
    let mut cfg = Qwen2Config::small(tk.vocab_size(), 64, 2, 4, 2);
    cfg.intermediate_size = 192;
    let mut model = Qwen2::new_random(cfg, placement(), 1).unwrap();
    let sft = SftConfig {
        lr: 3e-3,
        warmup_steps: 30,
        total_steps: 1500,
        batch_size: 16,
        checkpoint_every: 0,
        weight_decay: 0.01,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut acc = 0.0;
    let mut steps = 0;
    {
        let mut t = SftTrainer::new(&mut model, &examples, sft, dir.path(), tk.pad_id()).unwrap();
        while t.state.step < 1500 {
            let row = t.train_step().unwrap();
            steps = row.step;
            if row.step.is_multiple_of(100) {
                acc = tch::no_grad(|| accuracy(t.model(), &tk, &task));
                eprintln!(
                    "step {} loss {:.4} lr {:.2e} accuracy {acc:.3} ({:.0} tok/s)",
                    row.step, row.loss, row.lr, row.tokens_per_s
                );
                if acc >= 0.95 {
                    break;
                }
            }
        }
    }
    eprintln!("learning test: accuracy {acc:.3} after {steps} steps in {:.1} s", start.elapsed().as_secs_f64());
    assert!(acc >= 0.95, "accuracy {acc} after {steps} steps");
}
