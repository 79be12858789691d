#!/usr/bin/env python3
"""PyTorch + peft baseline of one LoRA training step on the CPU (forward, backward, grad-norm
clip, AdamW over the adapter), the peer of trainer/benches/lora_step.rs. Prints one JSON line.

The model is transformers' LlamaForCausalLM (SDPA attention) with the bench's shapes, randomly
initialised in fp32; peft adds r 8 / alpha 16 / dropout 0.05 adapters on q_proj and v_proj, so
the base is frozen exactly as in our LoRA step. Exits 0 with {"skipped": ...} when torch,
transformers or peft is missing."""
import argparse
import json
import time

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--seq", type=int, default=256)
a = p.parse_args()

try:
    import peft
    import torch
    import transformers
except ImportError as e:
    print(json.dumps({"skipped": f"needs torch, transformers and peft: {e}"}))
    raise SystemExit(0)

torch.set_num_threads(a.threads)
torch.manual_seed(0)
cfg = transformers.LlamaConfig(vocab_size=32000, hidden_size=288, intermediate_size=768,
                               num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                               rms_norm_eps=1e-5, max_position_embeddings=a.seq,
                               attn_implementation="sdpa")
model = transformers.LlamaForCausalLM(cfg)
model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                   target_modules=["q_proj", "v_proj"],
                                                   task_type="CAUSAL_LM"))
model.train()
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
ids = torch.tensor([[(j * 7919 + r * 104729) % 32000 for j in range(a.seq + 1)]
                    for r in range(a.batch)])
x, y = ids[:, :-1], ids[:, 1:]
times = []
for i in range(a.steps + 1):
    t0 = time.perf_counter()
    logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32000), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i > 0:
        times.append(time.perf_counter() - t0)
times.sort()
print(json.dumps({"torch": torch.__version__, "peft": peft.__version__,
                  "median_step_s": times[len(times) // 2], "loss": float(loss)}))
