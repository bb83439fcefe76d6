"""Python side of `target-release/release/examples/eval_bench --part serve` (worker/examples/eval_bench.rs).

serve_clients.py BASE_URL MODEL CLIENTS MAX_TOKENS

Sends CLIENTS chat requests with the official `openai` client, first one at a time, then
all at once from CLIENTS threads, and prints one JSON line with the completion tokens and
seconds of each way and their tokens/s.
"""
import json
import sys
import threading
import time

from openai import OpenAI

url, model = sys.argv[1], sys.argv[2]
clients, max_tokens = int(sys.argv[3]), int(sys.argv[4])
client = OpenAI(base_url=url, api_key="unused", timeout=3600, max_retries=0)


def ask(i):
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": "You are a medical expert."},
                  {"role": "user", "content": f"Question {i}: which organ produces insulin, and why does it matter?"}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return r.usage.completion_tokens


ask(0)  # warm-up
start = time.perf_counter()
one_by_one = sum(ask(i) for i in range(clients))
sequential = time.perf_counter() - start

results = [0] * clients


def worker(i):
    results[i] = ask(i)


threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
start = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
concurrent = time.perf_counter() - start
together = sum(results)
print(json.dumps({
    "sequential": {"tokens": one_by_one, "seconds": sequential, "tokens_per_s": one_by_one / sequential},
    "concurrent": {"tokens": together, "seconds": concurrent, "tokens_per_s": together / concurrent},
}))
