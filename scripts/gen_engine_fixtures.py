#!/usr/bin/env python3
"""Generate the inference-engine parity fixture (model/tests/fixtures/tiny_hf).

An independent reference for `koala-model`'s engine: Hugging Face `tokenizers` trains a small
byte-level BPE tokenizer on the bundled Alpaca sample, `transformers` builds a tiny LLaMA (GQA,
untied embeddings) with a fixed seed, and we record

  * the checkpoint as `transformers` saves it (config.json + model.safetensors, f32), the
    tokenizer (tokenizer.json) and a tokenizer_config.json with a ChatML-style `chat_template`;
  * for several prompts: the prompt ids, the last position's logits, and the greedy tokens of
    `model.generate(do_sample=False)` (with and without an EOS that stops generation).

Usage:  python3 -m venv ~/.cache/torchvenv && ~/.cache/torchvenv/bin/pip install torch transformers tokenizers safetensors
        ~/.cache/torchvenv/bin/python scripts/gen_engine_fixtures.py [OUT_DIR]
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "model", "tests", "fixtures", "tiny_hf")
os.makedirs(OUT, exist_ok=True)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer():
    with open(os.path.join(ROOT, "examples", "data", "alpaca", "alpaca_data.json")) as f:
        rows = json.load(f)
    texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["output"] for r in rows]
    texts += ["BEGINNING OF CONVERSATION: USER: Hello! GPT: Hi! How can I help you?"] * 20
    tk = Tokenizer(models.BPE(unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    return tk


def main():
    tk = train_tokenizer()
    tk.save(os.path.join(OUT, "tokenizer.json"))
    bos, eos = tk.token_to_id("<s>"), tk.token_to_id("</s>")
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}, f, indent=1)

    torch.manual_seed(1234)
    cfg = LlamaConfig(
        vocab_size=tk.get_vocab_size(),
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=eos,
        initializer_range=0.2,  # decisive logits: no near-ties for greedy decoding
    )
    model = LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(OUT, safe_serialization=True)

    prompts = [
        "BEGINNING OF CONVERSATION: USER: Hello! GPT:",
        "Give three tips for staying healthy.",
        "Translate the following sentence into French.",
        "x",
    ]
    cases = []
    for i, text in enumerate(prompts):
        ids = [bos] + tk.encode(text, add_special_tokens=False).ids
        inp = torch.tensor([ids])
        with torch.no_grad():
            logits = model(inp).logits[0, -1].tolist()
            # No EOS: exactly max_new_tokens tokens.
            free = model.generate(inp, do_sample=False, max_new_tokens=40, eos_token_id=None,
                                  pad_token_id=eos, attention_mask=torch.ones_like(inp))
            free = free[0, len(ids):].tolist()
        case = {"prompt": text, "ids": ids, "last_logits": logits, "greedy": free}
        # With a stop token taken from the free run's middle, so that generation stops early.
        stop = free[len(free) // 2]
        with torch.no_grad():
            stopped = model.generate(inp, do_sample=False, max_new_tokens=40, eos_token_id=stop,
                                     pad_token_id=eos, attention_mask=torch.ones_like(inp))
            stopped = stopped[0, len(ids):].tolist()
        case["stop_token"] = stop
        case["greedy_until_stop"] = stopped
        cases.append(case)
    with open(os.path.join(OUT, "greedy.json"), "w") as f:
        json.dump({"transformers": __import__("transformers").__version__,
                   "torch": torch.__version__, "cases": cases}, f)
    print(f"wrote {OUT}: vocab {cfg.vocab_size}, {sum(p.numel() for p in model.parameters())} params")


if __name__ == "__main__":
    main()
