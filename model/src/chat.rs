//! The Qwen chat format, and the shared question format rendered in it.

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

/// The token that ends a turn in the Qwen format; a training completion ends with it.
pub const END_OF_TURN: &str = "<|im_end|>";

/// The full prompt for a multiple-choice item: the shared messages of
/// [`fleming_questions::prompt`] (system instruction, context, stem, options) rendered
/// with the chat template, ending with an open assistant turn.
pub fn question_prompt(q: &fleming_questions::Question) -> String {
    let messages: Vec<Message> =
        fleming_questions::messages(q).into_iter().map(|m| Message::new(m.role, m.content)).collect();
    render(&messages, true)
}

/// A training target in the shared completion format (`<think>…</think><answer>…</answer>`),
/// ending the assistant turn.
pub fn training_completion(reasoning: &str, answer: &str) -> String {
    format!("{}{END_OF_TURN}", fleming_questions::completion(reasoning, answer))
}
