#!/usr/bin/env python3
"""PyTorch CPU baseline for trainer/benches/step.rs: the same stories15M-like LLaMA step
(forward + backward + AdamW, fp32, seq 256) with the same thread count. Prints one JSON line.
Exits 0 with {"skipped": ...} when torch or transformers is missing."""
import argparse
import json
import resource
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--attn", default="sdpa", help="eager or sdpa (torch's fused attention)")
a = p.parse_args()
try:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as e:
    print(json.dumps({"skipped": f"skipped: {e}"}))
    sys.exit(0)

torch.set_num_threads(a.threads)
torch.manual_seed(0)
T = 256
cfg = LlamaConfig(vocab_size=32000, hidden_size=288, intermediate_size=768, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=6, rms_norm_eps=1e-5,
                  max_position_embeddings=T, tie_word_embeddings=False)
cfg._attn_implementation = a.attn
model = LlamaForCausalLM(cfg).float().train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
ids = (torch.arange(a.batch * (T + 1)).reshape(a.batch, T + 1) * 7919) % 32000
x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
times = []
for i in range(a.steps + 1):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32000), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    dt = time.perf_counter() - t0
    if i > 0:
        times.append(dt)
times.sort()
med = times[len(times) // 2]
print(json.dumps({"torch": torch.__version__, "threads": a.threads, "batch": a.batch, "attn": a.attn,
                  "median_step_s": med, "tokens_per_s": a.batch * T / med,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))
