#!/usr/bin/env python3
"""Record PyTorch / Hugging Face `transformers` references for every op of the kernels crate.

Writes kernels/tests/fixtures/torch_ops.json: small random inputs, the forward outputs and the
autograd gradients that the Rust tests (kernels/tests/ops/torch_fixtures.rs) compare against.
The references are independent of our code: RMSNorm and RoPE are transformers' own LLaMA modules
(`LlamaRMSNorm`, `LlamaRotaryEmbedding`, `apply_rotary_pos_emb`), attention is
`torch.nn.functional.scaled_dot_product_attention` with an explicit causal+segment mask and
`enable_gqa`, the loss is `F.cross_entropy`, the optimizer `torch.optim.AdamW` after
`clip_grad_norm_`, and gradients come from autograd.

Usage: python scripts/kernels_fixtures.py [OUT]   (needs torch and transformers)
"""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

torch.manual_seed(1234)
torch.set_default_dtype(torch.float32)


def flat(t):
    return t.detach().contiguous().reshape(-1).tolist()


def leaf(*shape, scale=1.0):
    return ((torch.rand(*shape) * 2 - 1) * scale).requires_grad_(True)


def rmsnorm():
    n, c, eps = 6, 20, 1e-5
    m = LlamaRMSNorm(c, eps=eps)
    with torch.no_grad():
        m.weight.copy_(torch.rand(c) * 2 - 1)
    x = leaf(n, c, scale=2.0)
    out = m(x)
    dout = torch.rand(n, c) * 2 - 1
    out.backward(dout)
    return dict(n=n, c=c, eps=eps, x=flat(x), w=flat(m.weight), dout=flat(dout), out=flat(out),
                dx=flat(x.grad), dw=flat(m.weight.grad))


def rope():
    n, heads, hd, theta = 7, 2, 16, 500000.0
    cfg = LlamaConfig(hidden_size=heads * hd, num_attention_heads=heads, num_key_value_heads=heads,
                      rope_theta=theta, max_position_embeddings=8192)
    rot = LlamaRotaryEmbedding(config=cfg)
    positions = torch.tensor([0, 1, 2, 3, 0, 1, 4000])  # a packed row: positions reset
    x = leaf(n, heads, hd)
    cos, sin = rot(x, positions[None, :])
    # transformers wants [b, heads, t, hd]; ours is [n, heads, hd].
    xq = x.transpose(0, 1)[None]
    out, _ = apply_rotary_pos_emb(xq, xq, cos, sin)
    out = out[0].transpose(0, 1)
    dout = torch.rand(n, heads, hd) * 2 - 1
    out.backward(dout)
    return dict(n=n, heads=heads, head_dim=hd, theta=theta, positions=positions.tolist(), x=flat(x),
                out=flat(out), dout=flat(dout), dx=flat(x.grad))


def attention():
    b, t, nh, nkv, hd = 2, 6, 4, 2, 8
    seg = torch.tensor([[0, 0, 0, 1, 1, 1], [3, 3, 3, 3, 3, 3]])
    q = leaf(b, t, nh, hd, scale=1.5)
    k = leaf(b, t, nkv, hd, scale=1.5)
    v = leaf(b, t, nkv, hd)
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    mask = causal[None] & (seg[:, :, None] == seg[:, None, :])  # [b, t(query), t(key)]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))  # [b, heads, t, hd]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[:, None], enable_gqa=True)
    out = out.transpose(1, 2)
    with torch.no_grad():
        kr = kh.repeat_interleave(nh // nkv, dim=1)
        scores = (qh @ kr.transpose(-1, -2)) / hd**0.5
        lse = torch.logsumexp(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)  # [b, nh, t]
    dout = torch.rand(b, t, nh, hd) * 2 - 1
    out.backward(dout)
    return dict(b=b, t=t, n_heads=nh, n_kv_heads=nkv, head_dim=hd, segment_ids=flat(seg), q=flat(q),
                k=flat(k), v=flat(v), dout=flat(dout), out=flat(out), lse=flat(lse), dq=flat(q.grad),
                dk=flat(k.grad), dv=flat(v.grad))


def cross_entropy():
    n, vocab = 5, 50
    logits = leaf(n, vocab, scale=6.0)
    targets = torch.randint(0, vocab, (n,))
    weights = torch.tensor([0.5, 0.0, 0.25, 1.0, 0.125])
    losses = F.cross_entropy(logits, targets, reduction="none")
    (losses * weights).sum().backward()
    return dict(n=n, v=vocab, logits=flat(logits), targets=targets.tolist(), weights=flat(weights),
                losses=flat(losses), dlogits=flat(logits.grad))


def swiglu():
    n = 64
    gate, up = leaf(n, scale=6.0), leaf(n, scale=2.0)
    out = F.silu(gate) * up
    dout = torch.rand(n) * 2 - 1
    out.backward(dout)
    return dict(len=n, gate=flat(gate), up=flat(up), dout=flat(dout), out=flat(out), dgate=flat(gate.grad),
                dup=flat(up.grad))


def matmul():
    n, ic, oc = 9, 13, 7
    x, w = leaf(n, ic), leaf(oc, ic)
    out = F.linear(x, w)
    dout = torch.rand(n, oc) * 2 - 1
    out.backward(dout)
    return dict(n=n, ic=ic, oc=oc, inp=flat(x), w=flat(w), dout=flat(dout), out=flat(out), dinp=flat(x.grad),
                dw=flat(w.grad))


def embedding():
    n, c, vocab = 10, 6, 5
    table = leaf(vocab, c)
    ids = torch.tensor([4, 0, 4, 2, 2, 2, 1, 4, 0, 3])
    out = F.embedding(ids, table)
    dout = torch.rand(n, c) * 2 - 1
    out.backward(dout)
    return dict(n=n, c=c, table=flat(table), ids=ids.tolist(), dout=flat(dout), out=flat(out),
                dtable=flat(table.grad))


def adamw():
    """Three steps of clip_grad_norm_ + AdamW over two tensors (the global norm spans both)."""
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    max_norm = 1.0
    p = [torch.nn.Parameter(torch.rand(11) * 2 - 1), torch.nn.Parameter(torch.rand(5) * 2 - 1)]
    p0 = [flat(x) for x in p]
    opt = torch.optim.AdamW(p, lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                            weight_decay=hp["weight_decay"], foreach=False)
    steps = []
    for _ in range(3):
        grads = [torch.rand_like(x) * 4 - 2 for x in p]  # global norm ≈ 4.6 > max_norm: clipping engages
        for x, g in zip(p, grads):
            x.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(p, max_norm)
        opt.step()
        steps.append([flat(g) for g in grads])
    state = [opt.state[x] for x in p]
    return dict(**hp, max_norm=max_norm, params0=p0, grads=steps, params=[flat(x) for x in p],
                exp_avg=[flat(s["exp_avg"]) for s in state], exp_avg_sq=[flat(s["exp_avg_sq"]) for s in state])


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "kernels/tests/fixtures/torch_ops.json"
    fixtures = dict(
        generator=f"scripts/kernels_fixtures.py, torch {torch.__version__}",
        rmsnorm=rmsnorm(), rope=rope(), attention=attention(), cross_entropy=cross_entropy(),
        swiglu=swiglu(), matmul=matmul(), embedding=embedding(), adamw=adamw(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixtures, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
