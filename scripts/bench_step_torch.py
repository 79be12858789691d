#!/usr/bin/env python3
"""PyTorch baseline of one LLaMA training step (forward + backward + grad-norm clip + AdamW), the
peer of the trainer's step benches. Prints one JSON line.

* trainer/benches/step.rs (CPU): the defaults, a stories15M-like model in fp32, seq 256, with
  the given thread count.
* trainer/benches/gpu_step.rs (GPU): `--device cuda --dtype bf16` and the bench's model shape:
  bf16 autocast over fp32 weights (PyTorch's usual mixed precision; the trainer keeps bf16
  weights with fp32 masters), fused AdamW, SDPA attention.

The model is transformers' LlamaForCausalLM when transformers is importable (`--impl hf`), else a
compact LLaMA in plain torch with the same shapes (`--impl torch`: RMSNorm, RoPE, GQA attention
through scaled_dot_product_attention, SwiGLU, untied head). Exits 0 with {"skipped": ...} when
torch is missing, or CUDA is asked for and not available."""
import argparse
import json
import math
import resource
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--attn", default="sdpa", help="eager or sdpa (torch's fused attention; hf only)")
p.add_argument("--device", default="cpu", help="cpu or cuda")
p.add_argument("--dtype", default="fp32", help="fp32, or bf16 (autocast)")
p.add_argument("--impl", default="auto", help="auto (hf when transformers imports), hf or torch")
p.add_argument("--vocab", type=int, default=32000)
p.add_argument("--hidden", type=int, default=288)
p.add_argument("--ffn", type=int, default=768)
p.add_argument("--layers", type=int, default=6)
p.add_argument("--heads", type=int, default=6)
p.add_argument("--kv-heads", type=int, default=None)
p.add_argument("--seq", type=int, default=256)
a = p.parse_args()
kv_heads = a.kv_heads or a.heads


def skip(why):
    print(json.dumps({"skipped": f"skipped: {why}"}))
    sys.exit(0)


try:
    import torch
    import torch.nn.functional as F
except ImportError as e:
    skip(e)

impl = a.impl
if impl in ("auto", "hf"):
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
        impl = "hf"
    except ImportError as e:
        if a.impl == "hf":
            skip(e)
        impl = "torch"

if a.device == "cuda" and not torch.cuda.is_available():
    skip("torch.cuda.is_available() is False")
dev = torch.device(a.device)
torch.set_num_threads(a.threads)
torch.manual_seed(0)
T, V = a.seq, a.vocab


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        d, hd = a.hidden, a.hidden // a.heads
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v = lin(d, a.heads * hd), lin(d, kv_heads * hd), lin(d, kv_heads * hd)
        self.o = lin(a.heads * hd, d)
        self.gate, self.up, self.down = lin(d, a.ffn), lin(d, a.ffn), lin(a.ffn, d)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        hd = d // a.heads
        h = self.attn_norm(x)
        q = self.q(h).view(b, t, a.heads, hd).transpose(1, 2)
        k = self.k(h).view(b, t, kv_heads, hd).transpose(1, 2)
        v = self.v(h).view(b, t, kv_heads, hd).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv_heads != a.heads:
            k = k.repeat_interleave(a.heads // kv_heads, dim=1)
            v = v.repeat_interleave(a.heads // kv_heads, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        h = self.mlp_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, a.hidden)
        self.blocks = torch.nn.ModuleList(Block() for _ in range(a.layers))
        self.norm = RMSNorm(a.hidden)
        self.lm_head = torch.nn.Linear(a.hidden, V, bias=False)
        hd = a.hidden // a.heads
        inv = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(T).float(), inv)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, ids):
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin)
        return self.lm_head(self.norm(x))


if impl == "hf":
    cfg = LlamaConfig(vocab_size=V, hidden_size=a.hidden, intermediate_size=a.ffn,
                      num_hidden_layers=a.layers, num_attention_heads=a.heads,
                      num_key_value_heads=kv_heads, rms_norm_eps=1e-5,
                      max_position_embeddings=T, tie_word_embeddings=False)
    cfg._attn_implementation = a.attn
    model = LlamaForCausalLM(cfg).float().to(dev).train()
    forward = lambda x: model(input_ids=x).logits  # noqa: E731
else:
    model = Llama().float().to(dev).train()
    forward = model
n_params = sum(p.numel() for p in model.parameters())
fused = {"fused": True} if a.device == "cuda" else {}
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1,
                        **fused)
ids = (torch.arange(a.batch * (T + 1)).reshape(a.batch, T + 1) * 7919) % V
x, y = ids[:, :-1].contiguous().to(dev), ids[:, 1:].contiguous().to(dev)
amp = a.dtype == "bf16"


def sync():
    if a.device == "cuda":
        torch.cuda.synchronize()


times = []
loss = None
for i in range(a.steps + a.warmup):
    sync()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=a.device, dtype=torch.bfloat16, enabled=amp):
        logits = forward(x)
    loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sync()
    dt = time.perf_counter() - t0
    if i >= a.warmup:
        times.append(dt)
times.sort()
med = times[len(times) // 2]
out = {"torch": torch.__version__, "impl": impl, "device": a.device, "dtype": a.dtype,
       "threads": a.threads, "batch": a.batch, "seq": T, "attn": a.attn, "params": n_params,
       "median_step_s": med, "tokens_per_s": a.batch * T / med, "last_loss": loss.item(),
       "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
if a.device == "cuda":
    out["gpu"] = torch.cuda.get_device_name(0)
    out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
if not math.isfinite(out["last_loss"]):
    out["error"] = "non-finite loss"
print(json.dumps(out))
