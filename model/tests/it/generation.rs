//! Batched generation: cache and padding correctness, seeding, stop tokens.

use crate::common::{device, placement};
use fleming_model::{Flow, Qwen2, Qwen2Config, SamplingParams, generate, generate_with};
use tch::Tensor;

fn model() -> Qwen2 {
    let mut cfg = Qwen2Config::small(50, 32, 2, 4, 2);
    // Larger weights give peaked logits, so argmax is not decided by float noise.
    cfg.initializer_range = 0.3;
    Qwen2::new_random(cfg, placement(), 11).unwrap()
}

fn prompts() -> Vec<Vec<i64>> {
    vec![vec![1, 2, 3, 4, 5, 6], vec![7, 8], vec![9, 10, 11, 12]]
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_new_tokens: n, ..Default::default() }
}

#[test]
fn cached_batched_greedy_matches_recomputing_each_prompt() {
    let m = model();
    let got = generate(&m, &prompts(), &greedy(10), 0).unwrap();
    for (p, g) in prompts().iter().zip(&got) {
        let mut seq = p.clone();
        for _ in 0..10 {
            let ids = Tensor::from_slice(&seq).view([1, -1]).to_device(device());
            let logits = tch::no_grad(|| m.forward(&ids, None, None, true)).unwrap();
            seq.push(logits.argmax(-1, false).int64_value(&[0, 0]));
        }
        assert_eq!(&seq[p.len()..], g.tokens.as_slice(), "prompt {p:?}");
        assert!(g.truncated);
        assert_eq!(g.logprobs.len(), 10);
        assert!(g.logprobs.iter().all(|&l| l.is_finite() && l <= 0.0));
    }
}

#[test]
fn sampling_is_reproducible_and_seed_dependent() {
    let m = model();
    let p =
        SamplingParams { temperature: 1.0, top_p: 0.9, top_k: 20, max_new_tokens: 12, seed: 42, ..Default::default() };
    let a = generate(&m, &prompts(), &p, 0).unwrap();
    let b = generate(&m, &prompts(), &p, 0).unwrap();
    assert_eq!(a, b);
    let c = generate(&m, &prompts(), &SamplingParams { seed: 43, ..p.clone() }, 0).unwrap();
    assert_ne!(a, c);
    // A sequence's draws do not depend on its batch neighbours (same prompt twice, alone).
    // Logprobs may differ in the last bits with the batch shape, tokens may not.
    let alone = generate(&m, &prompts()[..1], &p, 0).unwrap();
    assert_eq!(alone[0].tokens, a[0].tokens);
    for (x, y) in alone[0].logprobs.iter().zip(&a[0].logprobs) {
        assert!((x - y).abs() < 1e-4);
    }
}

#[test]
fn stop_tokens_and_callbacks_end_sequences() {
    let m = model();
    let free = generate(&m, &prompts(), &greedy(6), 0).unwrap();
    let stop = free[0].tokens[2];
    let p = SamplingParams { stop_token_ids: vec![stop], ..greedy(6) };
    let got = generate(&m, &prompts(), &p, 0).unwrap();
    let first = free[0].tokens.iter().position(|&t| t == stop).unwrap();
    assert_eq!(got[0].tokens, free[0].tokens[..=first].to_vec());
    assert_eq!(got[0].stop_token, Some(stop));
    assert!(!got[0].truncated);
    let got =
        generate_with(&m, &prompts(), &greedy(6), 0, |seq, _, _| if seq == 1 { Flow::Stop } else { Flow::Continue })
            .unwrap();
    assert_eq!(got[1].tokens.len(), 1);
    assert!(!got[1].truncated);
    assert!(got[2].truncated);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let m = model();
    assert!(generate(&m, &[vec![1, 999]], &greedy(2), 0).is_err());
    assert!(generate(&m, &[vec![]], &greedy(2), 0).is_err());
    assert!(generate(&m, &[vec![1]], &SamplingParams { top_p: 0.0, ..greedy(2) }, 0).is_err());
    assert!(generate(&m, &[vec![1]], &SamplingParams { temperature: -1.0, ..greedy(2) }, 0).is_err());
}

mod engine {
    //! Continuous batching: sequences that join a running batch at different steps get
    //! what they would get alone.
    use super::*;
    use fleming_model::Engine;
    use fleming_model::engine::Event;
    use std::collections::BTreeMap;

    /// Runs the engine, adding `(step, id, prompt, params, index)` at their steps; returns
    /// each sequence's tokens and whether it was truncated.
    fn run(
        m: &Qwen2,
        max_batch: usize,
        arrivals: Vec<(usize, u64, Vec<i64>, SamplingParams, u64)>,
        stop_at: Option<(u64, usize)>,
    ) -> BTreeMap<u64, (Vec<i64>, bool)> {
        let mut e = Engine::new(m, 0, max_batch);
        let mut out: BTreeMap<u64, (Vec<i64>, bool)> = BTreeMap::new();
        let mut step = 0;
        let mut pending = arrivals;
        loop {
            let (now, later): (Vec<_>, Vec<_>) = pending.into_iter().partition(|a| a.0 <= step);
            pending = later;
            for (_, id, p, params, index) in now {
                e.add(id, p, params, index).unwrap();
            }
            if !e.has_work() && pending.is_empty() {
                break;
            }
            e.step(|ev| match ev {
                Event::Token { id, token, .. } => {
                    let toks = &mut out.entry(*id).or_default().0;
                    toks.push(*token);
                    match stop_at {
                        Some((sid, n)) if sid == *id && toks.len() == n => Flow::Stop,
                        _ => Flow::Continue,
                    }
                }
                Event::Finished { id, truncated, tokens } => {
                    let entry = out.entry(*id).or_default();
                    assert_eq!(entry.0.len(), *tokens);
                    entry.1 = *truncated;
                    Flow::Continue
                }
            })
            .unwrap();
            step += 1;
            assert!(step < 1000, "the engine never finished");
        }
        out
    }

    #[test]
    fn joining_sequences_get_what_they_would_get_alone() {
        let m = model();
        let ps = prompts();
        let alone: Vec<Vec<i64>> = ps
            .iter()
            .map(|p| generate(&m, std::slice::from_ref(p), &greedy(8), 0).unwrap()[0].tokens.clone())
            .collect();
        // Arrivals at steps 0, 3 and 5; the batch holds at most two, so the third waits.
        let arrivals = ps.iter().enumerate().map(|(i, p)| ([0, 3, 5][i], i as u64, p.clone(), greedy(8), 0)).collect();
        let got = run(&m, 2, arrivals, None);
        for (i, a) in alone.iter().enumerate() {
            assert_eq!(&got[&(i as u64)].0, a, "sequence {i}");
            assert!(got[&(i as u64)].1, "ran to its limit");
        }
    }

    #[test]
    fn sampling_streams_match_batched_generation() {
        let m = model();
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            top_k: 20,
            max_new_tokens: 10,
            seed: 42,
            ..Default::default()
        };
        let batched = generate(&m, &prompts(), &p, 0).unwrap();
        // The same request's sequences (index i), arriving one step apart.
        let arrivals = prompts().into_iter().enumerate().map(|(i, q)| (i, i as u64, q, p.clone(), i as u64)).collect();
        let got = run(&m, 8, arrivals, None);
        for (i, b) in batched.iter().enumerate() {
            assert_eq!(got[&(i as u64)].0, b.tokens, "sequence {i}");
        }
    }

    #[test]
    fn stop_tokens_stop_requests_and_limits_end_sequences() {
        let m = model();
        let free = generate(&m, &prompts(), &greedy(6), 0).unwrap();
        let stop = free[0].tokens[2];
        let first = free[0].tokens.iter().position(|&t| t == stop).unwrap();
        let with_stop = SamplingParams { stop_token_ids: vec![stop], ..greedy(6) };
        let arrivals = vec![
            (0, 0, prompts()[0].clone(), with_stop, 0),
            (0, 1, prompts()[1].clone(), greedy(6), 0),
            (0, 2, prompts()[2].clone(), greedy(3), 0),
        ];
        let got = run(&m, 4, arrivals, Some((1, 2)));
        assert_eq!(got[&0], (free[0].tokens[..=first].to_vec(), false));
        assert_eq!(got[&1], (free[1].tokens[..2].to_vec(), false), "a stop request ends it, not truncated");
        assert_eq!(got[&2], (free[2].tokens[..3].to_vec(), true));
    }

    #[test]
    fn bad_sequences_are_refused_at_the_door() {
        let m = model();
        let mut e = Engine::new(&m, 0, 4);
        assert!(e.add(0, vec![], greedy(2), 0).is_err());
        assert!(e.add(0, vec![1, 999], greedy(2), 0).is_err());
        assert!(e.add(0, vec![1], SamplingParams { top_p: 0.0, ..greedy(2) }, 0).is_err());
        assert!(e.add(0, vec![1], greedy(0), 0).is_err());
        assert!(!e.has_work());
    }
}
