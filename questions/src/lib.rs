//! fleming-questions: the one multiple-choice format every fleming operator uses.
//!
//! A "correct" must mean the same in every stage — a validator's pass rate, a teacher
//! chain's verification, a GRPO reward and an evaluation score — so the pieces that
//! decide it live here, once, with no torch and no SQL, for both `fleming` and the torch
//! worker:
//!
//! - [`Question`] and the Arrow form of the `questions` table ([`table`]);
//! - the prompt an item is asked as and the completion format ([`prompt`]);
//! - the strict answer extractor, its reasons and statuses ([`extract`]);
//! - which items adaptive hard mining keeps ([`mining`]).

#![deny(missing_docs)]

pub mod extract;
pub mod item;
pub mod mining;
pub mod prompt;
pub mod table;

pub use extract::{NoAnswer, Status, Verdict, extract, format_ok, score};
pub use item::{Choice, Question, content_id, item_digest, label};
pub use prompt::{ChatMessage, SYSTEM_PROMPT, completion, messages, user_message};
