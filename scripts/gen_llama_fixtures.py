#!/usr/bin/env python3
"""Generate the tiny-LLaMA parity fixtures for the Rust trainer (trainer/tests/fixtures/tiny_llama).

An independent reference: PyTorch + Hugging Face `transformers` build a tiny LLaMA (GQA, untied
embeddings) with a fixed seed, and we record
  * its weights as `transformers` saves them: model.safetensors + config.json (f32), a sharded copy
    (model.safetensors.index.json), and bf16 / f16 copies;
  * input ids and the loss mask (labels = -100 where the mask is 0);
  * the logits, each layer's input hidden state, the masked-mean loss and every parameter's
    gradient;
  * the EasyLM per-row-mean loss of the same logits;
  * the losses and pre-clip gradient norms of 10 AdamW steps (torch.optim.AdamW, HF Trainer's
    param groups: no weight decay on 1-D weights; clip_grad_norm_; a per-step lr list).

Usage:  python3 -m venv /work/venv-trainer && /work/venv-trainer/bin/pip install torch transformers safetensors
        /work/venv-trainer/bin/python scripts/gen_llama_fixtures.py [OUT_DIR]
"""
import json
import os
import shutil
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "trainer", "tests", "fixtures", "tiny_llama")

B, T = 2, 16
ADAMW = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, clip=1.0,
             lrs=[3e-3 * (i + 1) / 10 + 1e-3 for i in range(10)])


def build():
    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=64,
                      initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():  # non-trivial norm weights so their gradients are tested
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model.train()
    return cfg, model


def loss_fn(logits, ids, mask):
    lg = logits[:, :-1].reshape(-1, logits.shape[-1])
    labels = ids.clone()
    labels[mask == 0] = -100
    return F.cross_entropy(lg, labels[:, 1:].reshape(-1), ignore_index=-100)


def row_mean_loss(logits, ids, mask):
    lp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    tok = -lp.gather(-1, ids[:, 1:, None])[..., 0]
    m = mask[:, 1:].double()
    return ((tok * m).sum(1) / m.sum(1)).mean()


def main():
    cfg, model = build()
    os.makedirs(OUT, exist_ok=True)
    for sub in ["sharded", "bf16", "f16"]:
        shutil.rmtree(os.path.join(OUT, sub), ignore_errors=True)
    model.save_pretrained(OUT, safe_serialization=True)
    model.save_pretrained(os.path.join(OUT, "sharded"), safe_serialization=True, max_shard_size="100KB")
    for dt, sub in [(torch.bfloat16, "bf16"), (torch.float16, "f16")]:
        d = os.path.join(OUT, sub)
        os.makedirs(d)
        sd = {k: v.detach().to(dt).contiguous() for k, v in model.state_dict().items()}
        save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        shutil.copy(os.path.join(OUT, "config.json"), d)
    for f in os.listdir(OUT):  # save_pretrained may add a generation config we do not need
        if f == "generation_config.json":
            os.remove(os.path.join(OUT, f))
    for f in os.listdir(os.path.join(OUT, "sharded")):
        if f == "generation_config.json":
            os.remove(os.path.join(OUT, "sharded", f))

    g = torch.Generator().manual_seed(99)
    ids = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :5] = 0    # a prompt
    mask[1, 11:] = 0   # padding-like tail

    model.zero_grad()
    fwd = model(input_ids=ids, output_hidden_states=True)
    logits = fwd.logits
    loss = loss_fn(logits, ids, mask)
    loss.backward()
    expected = {"logits": logits.detach().contiguous()}
    # hidden_states[l] is the input of layer l for l < L (the last entry is after the final norm).
    for l in range(cfg.num_hidden_layers):
        expected[f"hidden.{l}"] = fwd.hidden_states[l].detach().contiguous()
    for name, p in model.named_parameters():
        expected["grad." + name] = p.grad.detach().contiguous()
    save_file(expected, os.path.join(OUT, "expected.safetensors"))
    rm = row_mean_loss(logits.detach(), ids, mask).item()

    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": ADAMW["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=ADAMW["lrs"][0], betas=ADAMW["betas"], eps=ADAMW["eps"])
    losses, norms = [], []
    for step in range(10):
        for grp in opt.param_groups:
            grp["lr"] = ADAMW["lrs"][step]
        opt.zero_grad()
        l = loss_fn(model(input_ids=ids).logits, ids, mask)
        l.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), ADAMW["clip"]).item())
        opt.step()
        losses.append(l.item())

    meta = {
        "generator": "scripts/gen_llama_fixtures.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "b": B, "t": T,
        "input_ids": ids.tolist(),
        "loss_mask": mask.tolist(),
        "loss": loss.item(),
        "row_mean_loss": rm,
        "adamw": {"betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
                  "weight_decay": ADAMW["weight_decay"], "no_decay": "1-D weights",
                  "clip": ADAMW["clip"], "lrs": ADAMW["lrs"], "losses": losses, "grad_norms": norms},
    }
    with open(os.path.join(OUT, "fixture.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print("wrote", OUT, "loss", loss.item(), "losses", losses)


if __name__ == "__main__":
    main()
