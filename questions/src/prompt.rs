//! The prompt every operator shows a model, and the completion format it must answer in.
//!
//! A question becomes two chat messages: the [`SYSTEM_PROMPT`] (think inside
//! `<think></think>`, answer inside `<answer></answer>`; paper, appendix C) and a user
//! message with the context (when the item has one), the stem and the lettered options.
//! Multi-answer items say so in the user message. A model's chat template turns the
//! messages into text (the model crate for local models, the server for endpoints).
//!
//! The completion a model is trained on and scored against is
//! `<think>\n{reasoning}\n</think>\n<answer>{labels}</answer>`; [`crate::extract`] reads it.

use crate::item::Question;

/// The system instruction of the answer convention, the same for every item.
pub const SYSTEM_PROMPT: &str = "You are a medical expert answering a multiple-choice question. Think step by step inside <think></think>, then give only the letter of the chosen option inside <answer></answer>.";

/// The line a multi-answer item adds to its user message.
pub const MULTI_ANSWER_NOTE: &str = "More than one option may be correct: give the letters of every correct option, separated by commas, inside <answer></answer> (e.g. <answer>A,C</answer>).";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system` or `user`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// The user message for an item: context, stem, then one `X. text` line per option.
pub fn user_message(q: &Question) -> String {
    let mut s =
        String::with_capacity(q.question.len() + q.context.as_deref().map_or(0, str::len) + 64 * q.options.len() + 16);
    if let Some(c) = q.context.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        s.push_str("Context: ");
        s.push_str(c);
        s.push_str("\n\n");
    }
    s.push_str(q.question.trim());
    for c in &q.options {
        s.push('\n');
        s.push_str(c.label.trim());
        s.push_str(". ");
        s.push_str(c.text.trim());
    }
    if q.multi_answer {
        s.push_str("\n\n");
        s.push_str(MULTI_ANSWER_NOTE);
    }
    s
}

/// The chat an item is asked as: the system prompt and the item's user message.
pub fn messages(q: &Question) -> [ChatMessage; 2] {
    [
        ChatMessage { role: "system", content: SYSTEM_PROMPT.to_string() },
        ChatMessage { role: "user", content: user_message(q) },
    ]
}

/// A completion in the convention: the reasoning inside `<think>`, then the answer's labels
/// inside `<answer>`. A model's end-of-turn token is the model's business, not part of it.
pub fn completion(reasoning: &str, answer: &str) -> String {
    format!("<think>\n{}\n</think>\n<answer>{}</answer>", reasoning.trim(), answer.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Choice;

    fn item() -> Question {
        Question {
            question: " Which drug? ".into(),
            context: Some("An abstract.".into()),
            options: vec![Choice::new("A", "Aspirin"), Choice::new("B", " Heparin ")],
            answer: "B".into(),
            ..Default::default()
        }
    }

    #[test]
    fn renders_context_stem_and_options() {
        assert_eq!(user_message(&item()), "Context: An abstract.\n\nWhich drug?\nA. Aspirin\nB. Heparin");
        let no_context = Question { context: Some("  ".into()), ..item() };
        assert_eq!(user_message(&no_context), "Which drug?\nA. Aspirin\nB. Heparin");
        let multi = Question { multi_answer: true, context: None, ..item() };
        assert!(user_message(&multi).ends_with(MULTI_ANSWER_NOTE));
        let [sys, user] = messages(&item());
        assert_eq!((sys.role, user.role), ("system", "user"));
        assert_eq!(sys.content, SYSTEM_PROMPT);
    }

    #[test]
    fn the_completion_format_is_read_back_by_the_extractor() {
        let c = completion(" because ", "B");
        assert_eq!(c, "<think>\nbecause\n</think>\n<answer>B</answer>");
        let v = crate::extract::score(&item(), &c, false);
        assert!(v.correct && v.format_ok);
    }
}
