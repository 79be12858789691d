#!/usr/bin/env python3
"""Generate the GGUF export fixtures: independent references for `koala export gguf`.

  * model/tests/fixtures/tiny_sp: a tiny LLaMA with a SentencePiece tokenizer, as LLaMA ships
    one. `sentencepiece` trains a BPE model with byte fallback on the bundled Alpaca sample
    (tokenizer.model); `transformers` converts it (tokenizer.json, for our engine) and builds a
    seeded LLaMA with tied embeddings and plain multi-head attention (the other fixture, tiny_hf,
    has GQA and an untied head). greedy.json holds, per prompt, the ids that both SentencePiece
    and transformers give (with BOS) and the greedy tokens of `generate(do_sample=False)`.
  * model/tests/fixtures/tiny_lora: a PEFT LoRA adapter on tiny_hf (r 4, alpha 8, all seven
    projections, random A and B), and greedy.json with the greedy tokens of the adapted model
    for tiny_hf's prompts.

Usage:  ~/.cache/torchvenv/bin/pip install torch transformers tokenizers safetensors sentencepiece protobuf peft
        ~/.cache/torchvenv/bin/python scripts/gen_gguf_fixtures.py
"""
import json
import os
import shutil
import tempfile

import sentencepiece as spm
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "model", "tests", "fixtures")
PROMPTS = [
    "Give three tips for staying healthy.",
    "BEGINNING OF CONVERSATION: USER: What is the capital of France? GPT:",
    "Translate the following sentence into French.",
]
NEW_TOKENS = 40


# Each greedy step's best logit must beat the runner-up by this much, so that another runtime's
# f32 rounding (llama.cpp sums in another order) cannot flip a token: seeds are drawn until it holds.
MIN_MARGIN = 0.005


def greedy(model, ids):
    """The greedy tokens, and the smallest top-1 / top-2 logit gap along the way."""
    inp = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(inp, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None,
                             pad_token_id=0, attention_mask=torch.ones_like(inp),
                             return_dict_in_generate=True, output_scores=True)
    margin = min(float(s[0].topk(2).values[0] - s[0].topk(2).values[1]) for s in out.scores)
    return out.sequences[0, len(ids):].tolist(), margin


def tiny_sp():
    out = os.path.join(FIX, "tiny_sp")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(ROOT, "examples", "data", "alpaca", "alpaca_data.json")) as f:
        rows = json.load(f)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w") as f:
            for r in rows:
                for field in ("instruction", "input", "output"):
                    if r[field].strip():
                        f.write(r[field].replace("\n", " ") + "\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(tmp, "sp"), model_type="bpe", vocab_size=400,
            byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            num_threads=1, minloglevel=2)
        shutil.copy(os.path.join(tmp, "sp.model"), os.path.join(out, "tokenizer.model"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out, "tokenizer.model"))
    for stale in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(out, stale)):
            os.remove(os.path.join(out, stale))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "legacy": False}, f)
    # transformers converts the SentencePiece model into a tokenizer.json (for our engine).
    tok = LlamaTokenizer.from_pretrained(out)
    assert tok.vocab_size == sp.get_piece_size(), (tok.vocab_size, sp.get_piece_size())
    model_bytes = open(os.path.join(out, "tokenizer.model"), "rb").read()
    tok.save_pretrained(out)
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:
        f.write(model_bytes)

    cfg = LlamaConfig(vocab_size=sp.get_piece_size(), hidden_size=64, intermediate_size=160,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                      initializer_range=0.2)
    for seed in range(4321, 4421):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).float().eval()
        cases = []
        for text in PROMPTS:
            ids = [sp.bos_id()] + sp.encode(text)
            hf_ids = tok(text).input_ids
            assert hf_ids == ids, (text, hf_ids, ids)
            tokens, margin = greedy(model, ids)
            cases.append({"prompt": text, "ids": ids, "greedy": tokens, "min_margin": margin})
        if min(c["min_margin"] for c in cases) >= MIN_MARGIN:
            break
    else:
        raise SystemExit("no seed gave decisive greedy steps")
    model.save_pretrained(out, safe_serialization=True)
    write(out, cases, seed)


def tiny_lora():
    from peft import LoraConfig, get_peft_model

    base_dir = os.path.join(FIX, "tiny_hf")
    out = os.path.join(FIX, "tiny_lora")
    with open(os.path.join(base_dir, "greedy.json")) as f:
        base_cases = json.load(f)["cases"]
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"])
    for seed in range(99, 199):
        base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        torch.manual_seed(seed)
        model = get_peft_model(base, lcfg).eval()
        cases = []
        for c in base_cases:
            tokens, margin = greedy(model, c["ids"])
            cases.append({"prompt": c["prompt"], "ids": c["ids"], "greedy": tokens,
                          "base_greedy": c["greedy"], "min_margin": margin})
        # The adapter must change the output, or merging it would go untested.
        changed = any(c["greedy"] != c["base_greedy"] for c in cases)
        if changed and min(c["min_margin"] for c in cases) >= MIN_MARGIN:
            break
    else:
        raise SystemExit("no seed gave decisive greedy steps")
    model.save_pretrained(out, safe_serialization=True)
    os.remove(os.path.join(out, "README.md"))  # PEFT's model-card template
    with open(os.path.join(out, "adapter_config.json")) as f:
        acfg = json.load(f)
    acfg["base_model_name_or_path"] = "../tiny_hf"  # not this machine's absolute path
    with open(os.path.join(out, "adapter_config.json"), "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
    write(out, cases, seed)


def write(out, cases, seed):
    import peft
    with open(os.path.join(out, "greedy.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
                   "peft": peft.__version__, "sentencepiece": spm.__version__, "seed": seed,
                   "min_margin": MIN_MARGIN, "new_tokens": NEW_TOKENS, "cases": cases}, f,
                  indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    tiny_sp()
    tiny_lora()
