# The two commands of the README, and a few helpers. Builds go to a target directory
# shared by clones and CI runs on this machine, so rebuilds are incremental.
CARGO_TARGET_DIR ?= $(HOME)/.cache/fleming/target
export CARGO_TARGET_DIR
FLEMING := $(CARGO_TARGET_DIR)/debug/fleming

.PHONY: quickstart test build lint bench

## Build fleming and run the quickstart pipeline.
quickstart: build
	$(FLEMING) run pipelines/quickstart.yaml

## Run every test (what CI runs).
test:
	cargo test --all-targets

build:
	cargo build --bins

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
