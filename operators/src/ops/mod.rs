//! One module per operator.

pub mod curated;
pub mod difficulty_label;
pub mod export;
pub mod load;
pub mod sample;
pub mod sql;
pub mod testing;
pub mod validate;
