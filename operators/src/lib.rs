//! The operators of fleming.
//!
//! Each operator lives in `src/ops/<name>.rs` (or a folder): its [`OpSpec`] (parameters with
//! docs and defaults, ports, version), its implementation when it runs on the CPU, and its
//! tests. GPU operators are declared here too, so that pipelines validate and keys compute
//! without libtorch; the torch worker implements them.
//!
//! [`OpSpec`]: fleming_runtime::OpSpec

pub mod dataflow;
pub mod llm;
pub mod ops;
pub mod questions;
pub mod served;

use std::sync::Arc;

use fleming_runtime::op::OpRegistry;

include!(concat!(env!("OUT_DIR"), "/fingerprints.rs"));

/// Environment variable that adds the test-only operators (`test-slow`, `test-worker`) to
/// the registry; integration tests set it, users never need it.
pub const TEST_OPS_ENV: &str = "FLEMING_TEST_OPS";

/// Every operator fleming ships.
pub fn registry() -> OpRegistry {
    let mut r = OpRegistry::new();
    r.register(Arc::new(ops::load::Load::new()));
    r.register(Arc::new(ops::sql::Sql::new()));
    r.register(Arc::new(ops::export::Export::new()));
    r.register(Arc::new(ops::sft::Sft::new()));
    r.register(Arc::new(ops::crawl::Crawl::new()));
    r.register(Arc::new(ops::extract::Extract::new()));
    r.register(Arc::new(ops::curated::Curated::new()));
    r.register(Arc::new(ops::sample::Sample::new()));
    r.register(Arc::new(ops::validate::Validate::new()));
    r.register(Arc::new(ops::difficulty_label::DifficultyLabel::new()));
    r.register(Arc::new(ops::evaluate::Evaluate::new()));
    r.register(Arc::new(ops::model::Model::new()));
    r.register(Arc::new(ops::distill::Distill::new()));
    r.register(Arc::new(ops::grpo_stage1::GrpoStage1));
    r.register(Arc::new(ops::grpo_stage2::GrpoStage2));
    r.register(Arc::new(ops::mine_hard::MineHard));
    if std::env::var_os(TEST_OPS_ENV).is_some_and(|v| v == "1") {
        for op in ops::testing::all() {
            r.register(op);
        }
    }
    r
}
