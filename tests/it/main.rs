//! End-to-end tests: they drive the `fleming` binary on pipelines in temporary
//! directories. One test binary for all of them (each extra binary re-links everything).

mod support;

mod benchmarks;
mod caching;
mod checks;
mod cluster;
mod concurrency;
mod crash;
mod crawl_extract;
mod dispatch;
mod distill;
mod evaluate;
mod inspect;
mod paper_scale;
mod question_data;
mod quickstart;
mod remote_store;
mod report;
mod ui;
mod validation;
