#!/usr/bin/env python3
"""Logits of a base model with a LoRA adapter loaded by peft, for tests/lora_cli.rs.

  python scripts/peft_logits.py BASE_DIR ADAPTER_DIR IDS_JSON OUT_NPY

IDS_JSON is a list of equal-length lists of token ids; OUT_NPY gets float32 [b, t, vocab] from
`PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(BASE_DIR), ADAPTER_DIR)` in eval
mode on the CPU. peft refuses an adapter whose keys or shapes do not fit the model, so this is
also the check that peft loads the adapter at all.
"""
import json
import sys

import numpy as np
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM


def main(base, adapter, ids_path, out):
    model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with open(ids_path) as f:
        ids = torch.tensor(json.load(f))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    np.save(out, logits.numpy().astype(np.float32))
    print(f"peft {model.peft_config['default'].r=} logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
