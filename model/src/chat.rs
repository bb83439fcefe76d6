//! The Qwen chat format and the `<think>`/`<answer>` convention.

use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// Renders messages as Qwen does (`<|im_start|>role\ncontent<|im_end|>\n`),
/// ending with an open assistant turn when `add_generation_prompt`.
pub fn render(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str("<|im_start|>");
        out.push_str(&m.role);
        out.push('\n');
        out.push_str(&m.content);
        out.push_str("<|im_end|>\n");
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// The system instruction for the answer convention (paper, appendix C).
pub const ANSWER_INSTRUCTION: &str = "Think step by step inside <think></think>, then give only the letter of the chosen option inside <answer></answer>.";

/// A multiple-choice question as a user message: question, then `A. text` lines.
pub fn mcq_user_message(question: &str, options: &[(String, String)]) -> String {
    let mut s = question.trim().to_string();
    for (label, text) in options {
        s.push('\n');
        s.push_str(label);
        s.push_str(". ");
        s.push_str(text.trim());
    }
    s
}

/// The full prompt for a multiple-choice question (system + user + open assistant turn).
pub fn mcq_prompt(question: &str, options: &[(String, String)]) -> String {
    render(
        &[Message::new("system", ANSWER_INSTRUCTION), Message::new("user", mcq_user_message(question, options))],
        true,
    )
}

/// An assistant completion in the convention: reasoning, then the answer, then `<|im_end|>`.
pub fn completion(reasoning: &str, answer: &str) -> String {
    format!("<think>\n{}\n</think>\n<answer>{}</answer><|im_end|>", reasoning.trim(), answer.trim())
}
