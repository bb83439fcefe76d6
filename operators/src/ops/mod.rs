//! One module per operator.

pub mod export;
pub mod load;
pub mod sql;
pub mod testing;
