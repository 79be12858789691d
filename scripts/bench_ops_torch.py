#!/usr/bin/env python3
"""Time PyTorch CPU on the same ops and shapes as `cargo bench -p koala-kernels --bench ops`, and
print the ratio to our CPU backend's criterion medians.

    cargo bench -p koala-kernels --bench ops -- --warm-up-time 0.5 --measurement-time 2
    python scripts/bench_ops_torch.py --criterion-dir "${CARGO_TARGET_DIR:-target}/criterion"

Shapes follow kernels/benches/ops.rs (a stories15M-like step: 4 x 256 tokens, dim 288, hidden 768,
6 heads of 48, vocab 32000). Backward times are autograd backward passes (forward excluded) unless
torch has a direct op. `ratio` = torch time / koala time: above 1 means koala is faster.
Run both on an idle machine with the same thread count (--threads; rayon uses one per core).
"""
import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

B, T, DIM, HIDDEN, HEADS, HD, VOCAB = 4, 256, 288, 768, 6, 48, 32000
N = B * T
LM_ROWS = 256
PARAMS = 15_000_000


def timeit(fn, min_time=1.0, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e9  # ns


def rnd(*shape, scale=1.0, grad=False):
    return ((torch.rand(*shape) * 2 - 1) * scale).requires_grad_(grad)


def backward_of(out, dout):
    return lambda: out.backward(dout, retain_graph=True)


def ops():
    res = {}
    table = rnd(VOCAB, DIM)
    ids = (torch.arange(N) * 7919) % VOCAB
    dact = rnd(N, DIM)
    res["embedding_fwd"] = timeit(lambda: F.embedding(ids, table))
    dtable = torch.zeros(VOCAB, DIM)
    res["embedding_bwd"] = timeit(lambda: dtable.index_add_(0, ids, dact))

    x, w = rnd(N, DIM, grad=True), rnd(DIM, grad=True)

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))

    res["rmsnorm_fwd"] = timeit(lambda: rms(x.detach(), w.detach()))
    res["rmsnorm_bwd"] = timeit(backward_of(rms(x, w), dact))

    for name, n, ic, oc in [("ffn", N, DIM, HIDDEN), ("lm_head", LM_ROWS, DIM, VOCAB)]:
        inp, wt, dout = rnd(n, ic), rnd(oc, ic, scale=0.1), rnd(n, oc)
        dw = torch.zeros(oc, ic)
        res[f"matmul_fwd_{name}"] = timeit(lambda: F.linear(inp, wt))
        res[f"matmul_bwd_{name}"] = timeit(lambda: (dout @ wt, dw.addmm_(dout.t(), inp)))

    pos = torch.arange(N) % T
    inv = 1.0 / (10000.0 ** (torch.arange(0, HD, 2).float() / HD))
    ang = torch.cat([pos[:, None] * inv[None]] * 2, dim=-1)  # [N, HD]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rope(q):
        q1, q2 = q[..., : HD // 2], q[..., HD // 2 :]
        return q * cos + torch.cat([-q2, q1], dim=-1) * sin

    q = rnd(N, HEADS, HD, grad=True)
    res["rope_fwd"] = timeit(lambda: rope(q.detach()))
    res["rope_bwd"] = timeit(backward_of(rope(q), rnd(N, HEADS, HD)))

    qh, kh, vh = (rnd(B, HEADS, T, HD, grad=True) for _ in range(3))
    res["attention_fwd"] = timeit(
        lambda: F.scaled_dot_product_attention(qh.detach(), kh.detach(), vh.detach(), is_causal=True)
    )
    out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
    res["attention_bwd"] = timeit(backward_of(out, rnd(B, HEADS, T, HD)))

    g, u = rnd(N, HIDDEN, scale=3.0, grad=True), rnd(N, HIDDEN, grad=True)
    res["swiglu_fwd"] = timeit(lambda: F.silu(g.detach()) * u.detach())
    res["swiglu_bwd"] = timeit(backward_of(F.silu(g) * u, rnd(N, HIDDEN)))
    a, b2, o = rnd(N, DIM), rnd(N, DIM), torch.empty(N, DIM)
    res["add_fwd"] = timeit(lambda: torch.add(a, b2, out=o))
    res["add_inplace"] = timeit(lambda: o.add_(a))

    logits = rnd(LM_ROWS, VOCAB, scale=5.0, grad=True)
    targets = (torch.arange(LM_ROWS) * 104729) % VOCAB

    def ce():
        loss = F.cross_entropy(logits, targets)
        loss.backward()

    res["cross_entropy_fwd_bwd"] = timeit(ce)

    p = torch.nn.Parameter(rnd(PARAMS))
    p.grad = rnd(PARAMS)
    opt = torch.optim.AdamW([p], lr=2e-5, weight_decay=0.0)
    res["adamw_step"] = timeit(opt.step)
    gr = rnd(PARAMS)
    res["sum_squares"] = timeit(lambda: torch.linalg.vector_norm(gr))
    res["scale"] = timeit(lambda: gr.mul_(1.0))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--criterion-dir", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--backend", default="cpu", help="criterion bench id of our backend")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res = ops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'op':<24}{'torch ms':>12}{'koala ms':>12}{'ratio':>8}")
    for op, t_ns in res.items():
        est = Path(args.criterion_dir) / op / args.backend / "new" / "estimates.json"
        ours = json.loads(est.read_text())["median"]["point_estimate"] if est.exists() else None
        ratio = f"{t_ns / ours:8.2f}" if ours else f"{'-':>8}"
        ours_s = f"{ours / 1e6:12.3f}" if ours else f"{'-':>12}"
        print(f"{op:<24}{t_ns / 1e6:12.3f}{ours_s}{ratio}")


if __name__ == "__main__":
    main()
