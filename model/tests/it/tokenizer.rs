//! Tokenizer training, round trips and the chat template against transformers.

use crate::common::run_py;
use fleming_model::TextTokenizer;
use fleming_model::chat::{Message, render};
use fleming_model::tokenizer::{FORMAT_TOKENS, SPECIAL_TOKENS};
use fleming_model::toy::ToyTask;

pub fn toy_tokenizer() -> TextTokenizer {
    let task = ToyTask::new(16, 6, 1);
    let corpus: Vec<String> =
        task.questions(200, 4, 2).iter().map(|q| format!("{}{}", q.prompt(), q.completion())).collect();
    TextTokenizer::train_bpe(corpus.iter(), 400).unwrap()
}

#[test]
fn trained_bpe_round_trips_and_keeps_special_tokens_whole() {
    let tk = toy_tokenizer();
    for t in SPECIAL_TOKENS.iter().chain(FORMAT_TOKENS.iter()) {
        let ids = tk.encode(t).unwrap();
        assert_eq!(ids.len(), 1, "{t} should be one token, got {ids:?}");
    }
    let text =
        "<|im_start|>user\nWhich drug treats zokitis? ünïcödé 🙂<|im_end|>\n<think>\nx\n</think>\n<answer>B</answer>";
    let ids = tk.encode(text).unwrap();
    assert_eq!(tk.decode(&ids, false).unwrap(), text);
    let dir = tempfile::tempdir().unwrap();
    tk.save(dir.path()).unwrap();
    let back = TextTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(back.encode(text).unwrap(), ids);
    assert_eq!(back.stop_ids().len(), 2);
    assert!(TextTokenizer::from_dir(dir.path().join("nope")).is_err());
}

#[test]
fn chat_template_matches_transformers() {
    let tk = toy_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    tk.save(dir.path()).unwrap();
    let msgs = [Message::new("system", "Be brief."), Message::new("user", "Which drug treats <x>? A. foo")];
    let ours = tk.encode(&render(&msgs, true)).unwrap();
    let theirs: Vec<i64> = run_py("parity.py", &["tok", dir.path().to_str().unwrap()])
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(ours, theirs);
}
