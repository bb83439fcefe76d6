//! One module per operator.

pub mod crawl;
pub mod curated;
pub mod difficulty_label;
pub mod distill;
pub mod evaluate;
pub mod export;
pub mod extract;
pub mod grpo_stage1;
pub mod grpo_stage2;
pub mod load;
pub mod mine_hard;
pub mod model;
pub mod sample;
pub mod sft;
pub mod sql;
pub mod testing;
pub mod validate;
