#!/usr/bin/env python3
"""Generate the peft references for LoRA training and merging (trainer/tests/fixtures/lora_peft).

The base is model/tests/fixtures/tiny_hf (a seeded 2-layer GQA LLaMA) and the adapter
model/tests/fixtures/tiny_lora (peft, r 4, alpha 8, all seven projections, random A and B: see
scripts/gen_gguf_fixtures.py). With `peft.PeftModel.from_pretrained` on the CPU in float32:

  * ids.json: two rows of 16 token ids (`input_ids`) and their targets (`targets`);
  * logits.npy: the adapted model's logits, float32 [2, 16, vocab];
  * grads.safetensors: the gradient of every lora_A / lora_B tensor (peft's saved names) of the
    loss  mean over the 32 positions of cross_entropy(logits, targets);
  * merged.safetensors: `merge_and_unload()`'s weights for every adapted linear layer (the other
    tensors are the base's, unchanged).

Usage:  ~/.cache/torchvenv/bin/pip install torch transformers peft safetensors
        ~/.cache/torchvenv/bin/python scripts/gen_lora_fixtures.py
"""
import json
import os

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = os.path.join(ROOT, "model", "tests", "fixtures", "tiny_hf")
ADAPTER = os.path.join(ROOT, "model", "tests", "fixtures", "tiny_lora")
OUT = os.path.join(ROOT, "trainer", "tests", "fixtures", "lora_peft")


def saved_name(name):
    """peft's parameter name as `save_pretrained` writes it (without the adapter name)."""
    return name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, ADAPTER, is_trainable=True)
    model.eval()  # no dropout (the adapter has lora_dropout 0 anyway)
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (2, 16), generator=g)
    targets = torch.randint(0, vocab, (2, 16), generator=g)
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
    loss.backward()
    grads = {
        saved_name(n): p.grad.detach().contiguous()
        for n, p in model.named_parameters()
        if "lora_" in n
    }
    assert grads, "no LoRA parameters"
    save_file(grads, os.path.join(OUT, "grads.safetensors"))
    np.save(os.path.join(OUT, "logits.npy"), logits.detach().numpy().astype(np.float32))
    with open(os.path.join(OUT, "ids.json"), "w") as f:
        json.dump({"input_ids": ids.tolist(), "targets": targets.tolist(),
                   "loss": loss.item()}, f)
    merged = model.merge_and_unload()
    adapted = {n.split(".lora_")[0].removeprefix("base_model.model.") + ".weight"
               for n in grads}
    sd = {n: t.detach().contiguous() for n, t in merged.state_dict().items() if n in adapted}
    assert len(sd) == len(adapted), (sorted(adapted), sorted(sd))
    save_file(sd, os.path.join(OUT, "merged.safetensors"))
    print(f"wrote {OUT}: {len(grads)} gradients, {len(sd)} merged tensors, loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
