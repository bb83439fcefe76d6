# The two commands of the README, and a few helpers. Builds go to a target directory
# shared by clones and CI runs on this machine, so rebuilds are incremental.
CARGO_TARGET_DIR ?= $(HOME)/.cache/fleming/target
export CARGO_TARGET_DIR
FLEMING := $(CARGO_TARGET_DIR)/debug/fleming
# libtorch (the PyPI torch wheel) lives in a per-user cache; scripts/ensure-torch installs it.
TORCH_ENV = eval "$$(scripts/ensure-torch --env)"

.PHONY: quickstart test test-core test-ops test-model build worker torch lint

## Build fleming and the torch worker, then run the quickstart pipeline.
quickstart: build worker
	$(FLEMING) run pipelines/quickstart.yaml

## Every test (what CI runs).
test: test-core test-ops test-model

## fleming itself: unit and end-to-end tests (no libtorch needed).
test-core:
	cargo test --all-targets

## The operator test cases in tests/ops (worker operators included: the torch worker is
## built first, and a case that cannot reach it fails rather than being skipped).
test-ops: build worker
	$(FLEMING) test tests/ops --require-worker

## The model crate and the torch worker (installs libtorch when missing).
test-model: torch
	$(TORCH_ENV) && cargo test -p fleming-model -p fleming-worker

build:
	cargo build --bins

## The torch worker, next to fleming so that fleming finds it. Its own cargo
## invocation: building it with fleming would unify features and link libtorch into
## fleming.
worker: torch
	$(TORCH_ENV) && cargo build -p fleming-worker

torch:
	scripts/ensure-torch

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	$(TORCH_ENV) && cargo clippy -p fleming-model -p fleming-worker --all-targets -- -D warnings
