//! Scoring throughput: stored completions through the strict extractor on one core.
//!
//! `cargo run --release -p fleming-questions --example score_bench [-- N]` (default 1M
//! completions). Prints completions per second for a mix of the statuses evaluation sees
//! (most answers ok, some wrong, truncated, unparsed).

use std::hint::black_box;
use std::time::Instant;

use fleming_questions::{Choice, Question, Status, score};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let items: Vec<Question> = (0..100)
        .map(|i| Question {
            id: format!("q{i}"),
            question: format!("A {i}-year-old presents with fever and a rash. Which drug is most appropriate?"),
            options: ["Amoxicillin", "Doxycycline", "Ceftriaxone", "Azithromycin", "None of the above"]
                .iter()
                .enumerate()
                .map(|(j, t)| Choice::new(fleming_questions::label(j), *t))
                .collect(),
            answer: fleming_questions::label(i % 5),
            ..Default::default()
        })
        .collect();
    let reasoning = "The patient has fever and a rash after a tick bite; the clinical picture fits early Lyme disease or a rickettsial infection. Doxycycline covers both and is the treatment of choice; amoxicillin misses rickettsiae and ceftriaxone is reserved for neurological disease.";
    let templates: Vec<(String, bool)> = vec![
        (format!("<think>\n{reasoning}\n</think>\n<answer>B</answer>"), false),
        (format!("<think>\n{reasoning}\n</think>\n<answer>(C)</answer>"), false),
        (format!("<think>\n{reasoning}\n</think>\n<answer>Doxycycline</answer>"), false),
        (format!("<think>\n{reasoning}\n</think>\n<answer>B. Doxycycline</answer>"), false),
        (format!("<think>\n{reasoning} and so"), true),
        (format!("<think>\n{reasoning}\n</think>\nThe answer is B."), false),
        (format!("<think>\n{reasoning}\n</think>\n<answer>F</answer>"), false),
        (format!("<think>\n{reasoning}\n</think>\n<answer>A</answer><answer>B</answer>"), false),
    ];
    let completions: Vec<(usize, &str, bool)> = (0..n)
        .map(|i| (i % items.len(), templates[i % templates.len()].0.as_str(), templates[i % templates.len()].1))
        .collect();
    let bytes: usize = completions.iter().map(|c| c.1.len()).sum();
    // Warm-up, then the timed pass.
    for (i, c, t) in completions.iter().take(10_000) {
        black_box(score(&items[*i], c, *t));
    }
    let start = Instant::now();
    let mut counts = [0usize; 5];
    let mut correct = 0usize;
    for (i, c, t) in &completions {
        let v = score(&items[*i], black_box(c), *t);
        counts[Status::ALL.iter().position(|s| *s == v.status).unwrap_or(0)] += 1;
        correct += v.correct as usize;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "scored {n} completions ({:.0} MB) in {secs:.3} s on one core: {:.2} M completions/s",
        bytes as f64 / 1e6,
        n as f64 / secs / 1e6
    );
    let names: Vec<String> = Status::ALL.iter().zip(counts).map(|(s, c)| format!("{s} {c}")).collect();
    println!("statuses: {}; correct {correct}", names.join(", "));
}
