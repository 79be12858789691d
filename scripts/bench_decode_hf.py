#!/usr/bin/env python3
"""Hugging Face `transformers` baseline for benches/serving.rs: single-stream greedy decoding on
the CPU with a ~58M-parameter LLaMA (the model of issue 14's reference measurement).

    python scripts/bench_decode_hf.py --dir target/bench-model [--new-tokens 128] [--threads 2]

1. When DIR has no model.safetensors yet, builds a seeded random LLaMA with `transformers`
   (vocab 32000, hidden 512, 8 layers, 8 heads, intermediate 1376, f32, untied embeddings,
   initializer_range 0.15 so that greedy logits are decisive, with no near-ties that rounding
   could flip) and saves config.json + model.safetensors, plus a word-level tokenizer.json with
   one token per id (`w123`) so the HTTP server can load the directory. The config has no BOS or
   EOS id: every run decodes exactly --new-tokens tokens.
2. With `torch.set_num_threads(THREADS)`, times
   `model.generate(ids, do_sample=False, max_new_tokens=N, eos_token_id=None)` on a fixed
   25-token prompt: one warm-up run, then the median of --runs runs.

Decode tokens/s is defined as new tokens / whole `generate` wall time (the 25-token prefill
included); benches/serving.rs times our engine the same way (submit to the last token).

Prints one JSON line: {tokens_per_s, new_tokens, tokens, prompt, params, threads, median_s, ...}.
Exits 0 with {"skipped": "..."} when torch or transformers is missing.
"""
import argparse
import json
import os
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--dir", required=True, help="model directory (created when absent)")
p.add_argument("--new-tokens", type=int, default=128)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--runs", type=int, default=3)
a = p.parse_args()

try:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers
except ImportError as e:
    print(json.dumps({"skipped": f"skipped: {e}"}))
    sys.exit(0)

VOCAB = 32000
# A fixed 25-token prompt (ids spread over the vocabulary).
PROMPT = [(17 + 1231 * i) % VOCAB for i in range(25)]


def make_model(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(20240514)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        initializer_range=0.15,
    )
    model = LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(out, safe_serialization=True)
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers

        vocab = {f"w{i}": i for i in range(VOCAB)}
        tk = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
        tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tk.save(os.path.join(out, "tokenizer.json"))
    except ImportError:
        pass  # the HTTP part of the bench needs it; it says so


def main():
    torch.set_num_threads(a.threads)
    if not os.path.exists(os.path.join(a.dir, "model.safetensors")):
        make_model(a.dir)
    model = LlamaForCausalLM.from_pretrained(a.dir, dtype=torch.float32).eval()
    params = sum(p.numel() for p in model.parameters())
    inp = torch.tensor([PROMPT])
    mask = torch.ones_like(inp)

    def run():
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model.generate(inp, attention_mask=mask, do_sample=False,
                                 max_new_tokens=a.new_tokens, eos_token_id=None, pad_token_id=0)
            dt = time.perf_counter() - t0
        return dt, out[0, len(PROMPT):].tolist()

    run()  # warm-up
    times, tokens = [], None
    for _ in range(a.runs):
        dt, toks = run()
        times.append(dt)
        if tokens is not None and toks != tokens:
            print("warning: HF greedy tokens differ between runs", file=sys.stderr)
        tokens = toks
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({
        "tokens_per_s": len(tokens) / med,
        "new_tokens": len(tokens),
        "median_s": med,
        "times_s": times,
        "threads": a.threads,
        "params": params,
        "prompt": PROMPT,
        "tokens": tokens,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "definition": "new tokens / whole generate() wall time (25-token prefill included)",
    }))


if __name__ == "__main__":
    main()
