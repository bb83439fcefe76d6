"""Reference side of the parity tests: Hugging Face transformers on CPU, f32.

make DIR TIED SHARD  builds a small random Qwen2, saves it to DIR (sharded when
                     SHARD is 1) and writes DIR/ref.safetensors with ids, logits.
tok DIR              prints the ids of a rendered chat with DIR's tokenizer.
logits DIR           loads DIR (written by Rust) and writes DIR/py_logits.safetensors
                     with the logits of DIR/ids.safetensors.
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM


def make(out, tied, shard):
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_theta=50000.0, rms_norm_eps=1e-6, tie_word_embeddings=tied,
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(cfg).eval()
    # Random non-trivial norms and biases so a swapped name cannot pass unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, max_shard_size="60KB" if shard else "5GB")
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    save_file({"ids": ids, "logits": logits.contiguous()}, f"{out}/ref.safetensors")


def logits(d):
    model = Qwen2ForCausalLM.from_pretrained(d, torch_dtype=torch.float32).eval()
    ids = load_file(f"{d}/ids.safetensors")["ids"]
    with torch.no_grad():
        out = model(ids).logits
    save_file({"logits": out.contiguous()}, f"{d}/py_logits.safetensors")


def tok(d):
    """Prints the ids transformers' tokenizer gives a rendered chat (space separated)."""
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(d)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which drug treats <x>? A. foo"}]
    ids = t.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    print(" ".join(str(i) for i in ids))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1")
    elif sys.argv[1] == "tok":
        tok(sys.argv[2])
    else:
        logits(sys.argv[2])
