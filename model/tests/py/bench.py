"""Python side of `cargo run --release -p fleming-model --example bench`.

bench.py DIR  reads DIR (a model saved by the Rust side) and DIR/bench_inputs.safetensors,
and prints one JSON line of timings (seconds) for transformers' generate (greedy and
sampled, KV cache) and for one SFT step (forward, backward, clip, AdamW).
"""
import json
import statistics
import sys
import time

import torch
from safetensors.torch import load_file
from transformers import Qwen2ForCausalLM

d = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
part = sys.argv[4] if len(sys.argv) > 4 else "all"
torch.set_num_threads(threads)
inp = load_file(f"{d}/bench_inputs.safetensors")
prompts, sft_ids = inp["prompts"], inp["sft_ids"]
new_tokens = int(inp["new_tokens"].item())
model = Qwen2ForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
model.generation_config.pad_token_id = 0
model.generation_config.eos_token_id = None


def gen(sample):
    kw = dict(do_sample=True, temperature=1.0, top_p=0.9, top_k=0) if sample else dict(do_sample=False)
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, use_cache=True, **kw)
    dt = time.perf_counter() - t
    assert out.shape[1] == prompts.shape[1] + new_tokens, out.shape
    return dt


res = {}
if part in ("all", "gen"):
    gen(False)  # warm-up
    res["greedy_s"] = statistics.median(gen(False) for _ in range(reps))
    res["sampled_s"] = statistics.median(gen(True) for _ in range(reps))

model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)


def step():
    t = time.perf_counter()
    loss = model(input_ids=sft_ids, labels=sft_ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


if part in ("all", "sft"):
    step()  # warm-up
    res["sft_step_s"] = statistics.median(step() for _ in range(reps))
print(json.dumps(res))
