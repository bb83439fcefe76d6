"""Python side of `cargo run --release -p fleming-model --example grpo_bench`.

grpo_bench.py DIR THREADS STEPS  trains the model saved in DIR (by the Rust side) with TRL's
GRPOTrainer on the prompts in DIR/grpo_inputs.safetensors, with the settings the Rust side
uses (k, prompts per step, lengths, loss, f32, no KL), and prints one JSON line: the median
seconds of a step after the first, and the median seconds of its `generate` call.
"""
import json
import statistics
import sys
import time

import torch
from datasets import Dataset
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

d, threads, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
inp = load_file(f"{d}/grpo_inputs.safetensors")
prompts = inp["prompts"]
k, completion = int(inp["num_generations"].item()), int(inp["completion_tokens"].item())
model = Qwen2ForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
vocab = model.config.vocab_size

# Token i >= 2 is the word "w{i}", so the prompt texts tokenize to exactly the Rust side's
# ids; 0 pads and 1 ends a sequence (named so that no word starts with them).
words = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, vocab)}}
tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<pad>")
texts = [" ".join(f"w{t}" for t in row.tolist()) for row in prompts]
assert tokenizer(texts[0], add_special_tokens=False)["input_ids"] == prompts[0].tolist()


def reward(completions, completion_ids, **_):
    # The same cheap reward as the Rust side: the share of completion ids below vocab / 2.
    return [sum(t < vocab // 2 for t in ids) / max(len(ids), 1) for ids in completion_ids]


gen_times, step_times = [], []
generate = model.generate


def timed_generate(*a, **kw):
    t = time.perf_counter()
    out = generate(*a, **kw)
    gen_times.append(time.perf_counter() - t)
    return out


model.generate = timed_generate


class StepTimer(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        step_times.append(time.perf_counter() - self.t)


args = GRPOConfig(
    output_dir=f"{d}/trl",
    use_cpu=True,
    bf16=False,
    fp16=False,
    max_steps=steps,
    learning_rate=1e-5,
    lr_scheduler_type="constant",
    warmup_steps=0,
    weight_decay=0.0,
    max_grad_norm=1.0,
    per_device_train_batch_size=len(texts) * k,
    gradient_accumulation_steps=1,
    num_generations=k,
    max_completion_length=completion,
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    beta=0.0,
    num_iterations=1,
    loss_type="dapo",
    scale_rewards="group",
    # Completions run to max_completion_length on both sides.
    generation_kwargs={"min_new_tokens": completion},
    report_to="none",
    logging_steps=1,
    save_strategy="no",
    disable_tqdm=True,
    dataloader_num_workers=0,
    seed=0,
)
trainer = GRPOTrainer(
    model=model,
    reward_funcs=reward,
    args=args,
    train_dataset=Dataset.from_dict({"prompt": texts}),
    processing_class=tokenizer,
    callbacks=[StepTimer()],
)
trainer.train()
assert len(step_times) == steps and len(gen_times) == steps, (step_times, gen_times)
print(json.dumps({
    "step_s": statistics.median(step_times[1:]),
    "generate_s": statistics.median(gen_times[1:]),
    "steps": step_times,
}))
