# The two commands of the README, and a few helpers. Builds go to a target directory
# shared by clones and CI runs on this machine, so rebuilds are incremental.
CARGO_TARGET_DIR ?= $(HOME)/.cache/fleming/target
export CARGO_TARGET_DIR
FLEMING := $(CARGO_TARGET_DIR)/debug/fleming
# libtorch (the PyPI torch wheel) lives in a per-user cache; scripts/ensure-torch installs it.
TORCH_ENV = eval "$$(scripts/ensure-torch --env)"

.PHONY: quickstart ablation distill-bench rl-bench grpo-bench gpu-check test test-core test-ops test-model build worker torch chromium moto lint

## Build fleming and the torch worker, then run the quickstart pipeline.
quickstart: build
	$(FLEMING) run pipelines/quickstart.yaml
	$(FLEMING) show pipelines/quickstart.yaml eval.report

## The paper's ablation in miniature (README, BENCHMARKS.md): base, + CoT cold start,
## + RL stage 1, + RL stage 2 on the same held-out items; under 30 minutes on 2 cores.
ablation: build
	$(FLEMING) run pipelines/ablation.yaml
	$(FLEMING) show pipelines/ablation.yaml eval.report

## The CoT cold-start benchmark (BENCHMARKS.md): a student distilled from the kg
## teacher's chains against the same student trained on answers alone, and the base.
distill-bench: build
	$(FLEMING) run pipelines/distill-bench.yaml --until eval
	$(FLEMING) show pipelines/distill-bench.yaml eval.report

## GRPO stage 1, hard mining and stage 2 on the distilled student (BENCHMARKS.md).
rl-bench: build
	$(FLEMING) run pipelines/distill-bench.yaml --until eval_rl
	$(FLEMING) show pipelines/distill-bench.yaml eval_rl.report

## One GRPO step against Hugging Face TRL's GRPOTrainer, side by side (BENCHMARKS.md);
## installs `trl` into the torch venv first.
grpo-bench: torch
	$(TORCH_ENV) && python -m pip install --quiet --disable-pip-version-check trl
	$(TORCH_ENV) && cargo run --release -p fleming-model --example grpo_bench

## On a GPU machine: the model tests on CUDA, the quickstart's GPU stages on the device,
## generation tokens/s and a GRPO step's time (scripts/gpu-check; `--cpu` for the CPU path).
gpu-check:
	scripts/gpu-check

## Every test (what CI runs): every crate's tests, then the operator cases (worker
## operators included: a case that cannot reach the worker fails rather than being skipped),
## then the GPU check's CPU path. The browser tests of `fleming ui` need Chromium: Debian's
## package is installed when missing, and the remote-store tests' S3 server (moto, from PyPI).
test: build chromium moto
	$(TORCH_ENV) && cargo test --workspace --all-targets
	$(FLEMING) test tests/ops --require-worker
	scripts/gpu-check --cpu

## fleming itself, without libtorch: unit and end-to-end tests.
test-core: moto
	cargo test --all-targets

## The operator test cases in tests/ops.
test-ops: build
	$(FLEMING) test tests/ops --require-worker

## The model crate and the torch worker.
test-model: build
	$(TORCH_ENV) && cargo test -p fleming-model -p fleming-worker

## fleming and the torch worker (beside it, where fleming finds it), in one cargo
## invocation: the dependencies they share are compiled once, with the features the whole
## workspace needs. `fleming` itself does not link libtorch (it does not depend on tch);
## the worker builds neither the runtime nor DataFusion.
build: torch
	$(TORCH_ENV) && cargo build --workspace --bins

worker: build

torch:
	scripts/ensure-torch

chromium:
	scripts/ensure-chromium

moto:
	scripts/ensure-moto

lint:
	cargo fmt --all -- --check
	$(TORCH_ENV) && cargo clippy --workspace --all-targets -- -D warnings
