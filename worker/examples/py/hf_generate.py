"""Python side of `target-release/release/examples/eval_bench --part eval` (worker/examples/eval_bench.rs).

hf_generate.py MODEL_DIR PROMPTS_JSON THREADS BATCH MAX_NEW

PROMPTS_JSON: {"prompts": [[token ids], ...], "eos": [ids], "pad": id} — the very ids the
Rust side generates from. Runs transformers' `generate` (greedy, KV cache, left padding)
in batches of BATCH in input order, and prints one JSON line: generated tokens (up to and
including the first end-of-turn token), seconds, tokens/s.
"""
import json
import sys
import time

import torch
from transformers import Qwen2ForCausalLM

model_dir, prompts_path = sys.argv[1], sys.argv[2]
threads, batch, max_new = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
spec = json.load(open(prompts_path))
prompts, eos, pad = spec["prompts"], spec["eos"], spec["pad"]
model = Qwen2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
model.generation_config.pad_token_id = pad
model.generation_config.eos_token_id = eos


def run(items):
    longest = max(len(p) for p in items)
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in items])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in items])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, use_cache=True)
    tokens = 0
    for row in out[:, longest:].tolist():
        n = len(row)
        for i, t in enumerate(row):
            if t in eos:
                n = i + 1
                break
        tokens += n
    return tokens


run(prompts[: min(batch, len(prompts))])  # warm-up
start = time.perf_counter()
tokens = sum(run(prompts[i : i + batch]) for i in range(0, len(prompts), batch))
secs = time.perf_counter() - start
print(json.dumps({"tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs}))
