#!/usr/bin/env python3
"""Generates pipeline/tests/fixtures/bleu_sacrebleu.jsonl: varied (hyp, refs) cases scored by the
real sacrebleu, so that our Rust BLEU (pipeline/src/bleu) is tested against it without Python in CI.

Usage:  python3 -m venv /tmp/v && /tmp/v/bin/pip install 'sacrebleu>=2,<3'
        /tmp/v/bin/python scripts/gen_bleu_fixtures.py [OUT]

Each output line is one of
  {"kind":"sentence","hyp":..,"refs":[..],"lowercase":b,"tokenized":..,"expect":{score,counts,..}}
  {"kind":"corpus","hyps":[..],"refs":[[..],..],"lowercase":b,"expect":{...}}
where corpus `refs[i]` are the references of `hyps[i]` (sacrebleu gets them as streams padded with
None). The generator is seeded, so the output is reproducible for a given sacrebleu version.
"""
import json
import random
import sys
from pathlib import Path

import sacrebleu
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

SEED = 20260424
rng = random.Random(SEED)

WORDS = (
    "the a of to and in is it that for you was on are with as I his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play small "
    "end put home read hand port large spell add even land here must big high such follow act why "
    "ask men change went light kind off need house picture try us again animal point mother world"
).split()
UNICODE_WORDS = [
    "café", "naïve", "Straße", "ΣΟΦΟΣ", "σοφός", "ΟΔΟΣ", "İstanbul", "ÉCOLE", "Øre", "Ǆemal",
    "façade", "Ångström", "ﬁnance", "ΑΣ", "Ωμέγα", "Привет", "МИР", "שלום", "مرحبا", "नमस्ते",
    "🙂", "🚀rocket", "ÀÉÎÕÜ", "ǅ", "ẞ", "Σ.", "x²", "½", "Ⅻ", "①", "K", "Å",
]
CJK = [
    "我们", "今天", "天气", "很好", "。", "，", "東京", "日本語", "テスト", "です", "한국어", "안녕하세요",
    "中文句子没有空格", "「引用」", "（括号）", "！", "？", "：",
]
PUNCT = list(".,;:!?\"'()[]{}<>/\\|@#$%^&*-_+=~`") + ["...", "--", "—", "–", "«", "»", "“", "”", "‘", "’", "…"]
NUMBERS = ["3.14", "1,000", "2-3", "10-", "-5", "0.5.", "1.", ",2", "42", "3,5,7", "1e-9", "99%", "$20", "20$", "1/2", "08:30", "2026-04-24", "v1.2.3", "a1.b2", "x.5", "5.x", "7,a", "a,7"]
ENTITIES = ["&quot;", "&amp;", "&lt;", "&gt;", "&amp;quot;", "&amp;lt;", "&apos;", "&nbsp;", "&#39;", "&", "&amp;amp;", "&lt;b&gt;bold&lt;/b&gt;", "&QUOT;", "&quot"]
WHITESPACE = [" ", "  ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0",
              "\u1680", "\u2000", "\u2005", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
              "\u180e", "\u200b", "\ufeff", "-\n", "<skipped>"]


def token(style):
    r = rng.random()
    if style == "cjk" and r < 0.7:
        return rng.choice(CJK)
    if style == "unicode" and r < 0.5:
        return rng.choice(UNICODE_WORDS)
    if style == "html" and r < 0.3:
        return rng.choice(ENTITIES)
    if style == "numbers" and r < 0.4:
        return rng.choice(NUMBERS)
    if style == "punct" and r < 0.4:
        return rng.choice(PUNCT)
    if r < 0.06:
        return rng.choice(PUNCT)
    if r < 0.09:
        return rng.choice(NUMBERS)
    w = rng.choice(WORDS)
    if rng.random() < 0.15:
        w = w.capitalize()
    if rng.random() < 0.03:
        w = w.upper()
    return w


def join(tokens, style):
    out = []
    for i, t in enumerate(tokens):
        if i:
            if style == "whitespace" and rng.random() < 0.4:
                out.append(rng.choice(WHITESPACE))
            elif style == "cjk" and rng.random() < 0.6:
                pass  # no space between CJK pieces
            elif rng.random() < 0.12:
                pass  # glue tokens: "word," "(x" "a.b"
            else:
                out.append(" ")
        out.append(t)
    s = "".join(out)
    if rng.random() < 0.1:
        s = rng.choice(WHITESPACE) + s
    if rng.random() < 0.15:
        s = s + rng.choice(WHITESPACE)
    if rng.random() < 0.2:
        s = s + rng.choice([".", "!", "?", " .", "...", ":"])
    return s


def sentence(style, n=None):
    if n is None:
        n = rng.choice([0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45])
    return [token(style) for _ in range(n)]


def perturb(tokens, style):
    t = list(tokens)
    for _ in range(rng.randint(0, max(1, len(t) // 3))):
        op = rng.random()
        if op < 0.3 and t:
            t[rng.randrange(len(t))] = token(style)
        elif op < 0.55 and t:
            del t[rng.randrange(len(t))]
        elif op < 0.8:
            t.insert(rng.randint(0, len(t)), token(style))
        elif len(t) > 1:
            i = rng.randrange(len(t) - 1)
            t[i], t[i + 1] = t[i + 1], t[i]
    return t


STYLES = ["plain", "punct", "numbers", "unicode", "cjk", "html", "whitespace"]


def make_case(i):
    style = STYLES[i % len(STYLES)]
    base = sentence(style)
    nrefs = rng.choice([1, 1, 1, 2, 3, 4])
    refs = [join(perturb(base, style), style) for _ in range(nrefs)]
    if rng.random() < 0.08:
        refs[rng.randrange(nrefs)] = ""
    kind = rng.random()
    if kind < 0.07:
        hyp = ""
    elif kind < 0.15:
        hyp = join(sentence(style), style)  # unrelated
    elif kind < 0.22:
        hyp = refs[0]  # identical
    else:
        hyp = join(perturb(base, style), style)
    lowercase = rng.random() < 0.3
    if lowercase and rng.random() < 0.5:
        hyp = hyp.upper() if rng.random() < 0.5 else hyp.swapcase()
    return style, hyp, refs, lowercase


def score_dict(s):
    return {
        "score": s.score,
        "counts": list(s.counts),
        "totals": list(s.totals),
        "precisions": list(s.precisions),
        "bp": s.bp,
        "sys_len": s.sys_len,
        "ref_len": s.ref_len,
    }


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else (
        Path(__file__).resolve().parent.parent / "pipeline/tests/fixtures/bleu_sacrebleu.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer13a()
    cases = []
    handpicked = [
        ("The cat sat on the mat.", ["The cat is on the mat."], False),
        ("", [""], False),
        ("", ["a"], False),
        ("a", [""], False),
        ("a b c", ["a b c d", "a b"], False),       # tie 4 vs 2 around 3 -> shorter
        ("a b c d e", ["a b c", "a b c d e f g"], False),
        ("x\x1cy\x1dz\x1ew\x1fv", ["x y z w v"], False),
        ("HELLO World", ["hello world"], True),
        ("ΟΔΟΣ ΣΟΦΟΣ", ["οδος σοφος"], True),
        ("ΟΔΟΣ ΣΟΦΟΣ", ["οδοσ σοφοσ"], True),
        ("İstanbul", ["i̇stanbul"], True),
        ("&quot;quoted&quot; &amp; &lt;tag&gt;", ["\"quoted\" & <tag>"], False),
        ("&amp;quot;", ["&quot;"], False),
        ("3.14, 1,000 and 2-3-4.", ["3.14 , 1,000 and 2 - 3 - 4 ."], False),
        ("a..b,,c", ["a . . b , , c"], False),
        ("end-\nof-\nline", ["endofline"], False),
        ("<skipped> word", ["word"], False),
        ("我们今天很好。", ["我们 今天 很好 。"], False),
        ("a a a a", ["a a"], False),
        ("the the the the the the the", ["the cat"], False),
    ]
    for hyp, refs, lc in handpicked:
        cases.append(("hand", hyp, refs, lc))
    for i in range(600):
        cases.append(make_case(i))
    lines = []
    for style, hyp, refs, lc in cases:
        s = sacrebleu.sentence_bleu(hyp, refs, lowercase=lc)
        lines.append({
            "kind": "sentence", "style": style, "hyp": hyp, "refs": refs, "lowercase": lc,
            "tokenized": tok((hyp.lower() if lc else hyp).rstrip()),
            "expect": score_dict(s),
        })
    # Corpus cases: consecutive chunks of the sentence cases, variable numbers of references.
    pos = 0
    while pos < len(cases):
        size = rng.choice([1, 2, 5, 10, 40])
        chunk = cases[pos:pos + size]
        pos += size
        for lc in (False, True):
            hyps = [c[1] for c in chunk]
            refs = [c[2] for c in chunk]
            width = max(len(r) for r in refs)
            streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
            s = sacrebleu.corpus_bleu(hyps, streams, lowercase=lc)
            lines.append({"kind": "corpus", "hyps": hyps, "refs": refs, "lowercase": lc,
                          "expect": score_dict(s)})
    with out.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    n_sent = sum(1 for l in lines if l["kind"] == "sentence")
    print(f"wrote {out}: {n_sent} sentence cases, {len(lines) - n_sent} corpus cases "
          f"(sacrebleu {sacrebleu.__version__})")


if __name__ == "__main__":
    main()
