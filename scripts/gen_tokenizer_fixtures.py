#!/usr/bin/env python3
"""Make the tokenizer fixtures that pipeline/tests/tokenizer_fixtures.rs checks against.

Python `tokenizers` (the reference implementation of HF tokenizers) encodes the same texts with
  (a) the byte-level BPE that *our* Rust trainer makes from tests/fixtures/tok_corpus.txt
      (built here by `cargo run --example train_tokenizer`), and
  (b) a Llama-style SentencePiece-BPE tokenizer.json (Prepend/Replace "▁" normalizer, byte
      fallback, Llama decoder) that this script builds itself with Python `tokenizers` from the
      same corpus: no hub downloads.
The ids are written to tests/fixtures/tok_ids.json; CI compares them without Python.

Usage: python3 scripts/gen_tokenizer_fixtures.py   (needs `pip install tokenizers`; run from the
repository root; CARGO_TARGET_DIR is honoured).
"""
import json
import os
import random
import subprocess
import sys

from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "pipeline", "tests", "fixtures")
TRAINED_VOCAB = 1200
LLAMA_VOCAB = 900

WORDS = (
    "the koala eats eucalyptus leaves and sleeps most of the day while the model learns from "
    "curated dialogue data about animals science history cooking travel code math poems stories "
    "please explain why how what when where who could would should answer question helpful "
    "assistant user instruction input response conversation beginning largest whale earth ocean"
).split()


def corpus():
    rng = random.Random(1234)
    lines = []
    for i in range(1500):
        n = rng.randint(4, 30)
        words = [rng.choice(WORDS) for _ in range(n)]
        if i % 7 == 0:
            words.append(str(rng.randint(0, 100000)))
        if i % 11 == 0:
            words.append(rng.choice(["café", "naïve", "Übermaß", "日本語のテキスト", "🐨", "—"]))
        line = " ".join(words)
        if i % 5 == 0:
            line = "BEGINNING OF CONVERSATION: USER: " + line + " GPT:"
        if i % 13 == 0:
            line = "### Instruction: " + line.capitalize() + ". ### Response:"
        lines.append(line)
    return lines


TEXTS = [
    "BEGINNING OF CONVERSATION: USER: Hello! GPT:",
    "Hi! How can I help you?",
    "USER: What is the largest animal on earth? GPT:",
    "USER: How do I boil an egg? An Unhelpful Answer:",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\nGive three tips for staying healthy.\n\n### Response:",
    "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Sleep well.",
    "  leading spaces, trailing spaces  ",
    "tabs\tand\nnewlines\r\n and    runs of spaces",
    "Unicode: café naïve Übermaß 日本語のテキスト — emoji 🐨🌿 and unseen ж ф ѣ",
    "numbers 3.14159 1,000,000 2023-04-03 0xDEADBEEF",
    "code: fn main() { println!(\"{}\", x + 1); } // done",
    "special strings in text: <s> </s> <pad> <unk>",
    "",
    " ",
    "a",
]


def build_llama(lines, path):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=LLAMA_VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        show_progress=False,
        limit_alphabet=120,
    )
    tok.train_from_iterator(lines, trainer)
    # Re-number as LLaMA does: <unk> <s> </s>, then the 256 byte-fallback tokens <0x00>…<0xFF>,
    # then the learned pieces.
    spec = json.loads(tok.to_str())
    old = spec["model"]["vocab"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    for t, _ in sorted(old.items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    spec["model"]["vocab"] = vocab
    for a in spec["added_tokens"]:
        a["id"] = vocab[a["content"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.save(path)
    return tok


def main():
    import tokenizers

    os.makedirs(FIX, exist_ok=True)
    lines = corpus()
    corpus_path = os.path.join(FIX, "tok_corpus.txt")
    with open(corpus_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    trained_path = os.path.join(FIX, "tok_trained.json")
    subprocess.run(
        ["cargo", "run", "-q", "-p", "koala-pipeline", "--example", "train_tokenizer", "--",
         corpus_path, str(TRAINED_VOCAB), trained_path],
        cwd=ROOT, check=True,
    )
    llama_path = os.path.join(FIX, "tok_llama.json")
    build_llama(lines, llama_path)

    out = {"tokenizers_version": tokenizers.__version__, "texts": TEXTS,
           "trained_vocab_size": TRAINED_VOCAB}
    for name, path in [("trained", trained_path), ("llama", llama_path)]:
        tok = Tokenizer.from_file(path)
        encs = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
        out[name] = {
            "file": os.path.basename(path),
            "vocab_size": tok.get_vocab_size(with_added_tokens=True),
            "ids": [e.ids for e in encs],
            "decoded": [tok.decode(e.ids, skip_special_tokens=False) for e in encs],
            "eos_id": tok.token_to_id("</s>"),
            "bos_id": tok.token_to_id("<s>"),
        }
    with open(os.path.join(FIX, "tok_ids.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", FIX, file=sys.stderr)


if __name__ == "__main__":
    main()
