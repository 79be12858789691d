#!/usr/bin/env python3
"""Generates pipeline/tests/fixtures/rouge_l.json: (target, prediction) pairs scored by Google's
`rouge_score` 0.1.2 itself, so that our ROUGE-L (pipeline/src/rouge) is tested against it without
Python at test time.

Usage:  python3 -m venv /tmp/rsvenv && /tmp/rsvenv/bin/pip install rouge-score==0.1.2
        /tmp/rsvenv/bin/python scripts/gen_rouge_fixtures.py [OUT]

The output is {"rouge_score_version": .., "cases": [{"target", "prediction", "target_tokens",
"prediction_tokens", "precision", "recall", "fmeasure"}, ..]}. The three floats are strings,
Python's repr, which round-trips exactly through Rust's `str::parse::<f64>`. The generator is seeded: reproducible.
"""
import json
import random
import sys
from importlib.metadata import version
from pathlib import Path

from rouge_score import rouge_scorer, tokenize

SEED = 20261205
rng = random.Random(SEED)

WORDS = (
    "the a of to and in is it that for you was on are with as his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people my "
    "give list explain describe generate story poem email summary sentence 42 2023 3rd x86"
).split()
DECOR = ["", "", "", ",", ".", "!", "?", "'s", "-", ":", "\"", "(", ")", "...", "\u2014"]
UNICODE = [
    "caf\u00e9", "na\u00efve", "\u00dcber", "STRASSE", "stra\u00dfe", "\u0130stanbul", "\u212aelvin",
    "\u00c5ngstr\u00f6m", "\u65e5\u672c\u8a9e", "\u0645\u0631\u062d\u0628\u0627", "\u0661\u0662\u0663",
    "\uff21\uff22\uff23", "\u03a3\u03af\u03c3\u03c5\u03c6\u03bf\u03c2", "emoji\U0001F600ok", "\u00bd",
    "\u2160\u2161", "\u1e9e", "\ufb01le", "x\u0301y", "\u0131i", "I\u0307",
]


def sentence(n, uni=0.0):
    out = []
    for _ in range(n):
        w = rng.choice(UNICODE) if rng.random() < uni else rng.choice(WORDS)
        if rng.random() < 0.2:
            w = w.capitalize() if rng.random() < 0.5 else w.upper()
        out.append(w + rng.choice(DECOR))
    sep = rng.choice([" ", " ", " ", "  ", "\n", "\t"])
    return sep.join(out)


def mutate(s):
    toks = s.split()
    for _ in range(rng.randint(0, max(1, len(toks) // 3))):
        op = rng.random()
        if op < 0.3 and toks:
            toks.pop(rng.randrange(len(toks)))
        elif op < 0.6:
            toks.insert(rng.randint(0, len(toks)), rng.choice(WORDS))
        elif toks:
            toks[rng.randrange(len(toks))] = rng.choice(WORDS)
    return " ".join(toks)


pairs = [
    ("", ""),
    ("", "hello"),
    ("hello", ""),
    ("!!!", "..."),
    ("!!! ???", "hello world"),
    ("--- *** ###", "--- *** ###"),
    ("Hello, World!", "hello world"),
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("The cat sat on the mat.", "the mat sat on the cat"),
    ("a b c d e", "e d c b a"),
    ("Give three tips for staying healthy.", "Give 3 tips for staying healthy!"),
    ("caf\u00e9 na\u00efve r\u00e9sum\u00e9", "cafe naive resume"),
    ("\u0130stanbul \u212aelvin", "i stanbul kelvin"),
    ("\u65e5\u672c\u8a9e \u0645\u0631\u062d\u0628\u0627", "\u65e5\u672c\u8a9e"),
    ("\uff21\uff22\uff23 \u0661\u0662\u0663", "abc 123"),
    ("it's don't won't", "it s don t won t"),
    ("x" * 500, "x" * 500),
    (" ".join(["a"] * 70), " ".join(["a"] * 64)),
    (" ".join(["a", "b"] * 100), " ".join(["b", "a"] * 90)),
    ("Write a program", "write a PROGRAM"),
]
for _ in range(400):
    n = rng.choice([0, 1, 2, 3, 5, 8, 12, 20, 30, 60, 64, 65, 130, 300])
    s = sentence(n, uni=rng.choice([0.0, 0.0, 0.1, 0.5]))
    r = rng.random()
    if r < 0.5:
        t = mutate(s)
    elif r < 0.7:
        t = sentence(rng.choice([1, 5, 10, 20, 70]), uni=0.1)
    else:
        t = s.lower() if rng.random() < 0.5 else s.upper()
    pairs.append((s, t) if rng.random() < 0.5 else (t, s))

scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
cases = []
for target, prediction in pairs:
    sc = scorer.score(target, prediction)["rougeL"]
    cases.append({
        "target": target,
        "prediction": prediction,
        "target_tokens": tokenize.tokenize(target, None),
        "prediction_tokens": tokenize.tokenize(prediction, None),
        # as repr strings: serde_json's default float parsing is not always correctly rounded
        "precision": repr(float(sc.precision)),
        "recall": repr(float(sc.recall)),
        "fmeasure": repr(float(sc.fmeasure)),
    })

out = Path(sys.argv[1] if len(sys.argv) > 1 else
           Path(__file__).resolve().parent.parent / "pipeline/tests/fixtures/rouge_l.json")
out.write_text(json.dumps({"rouge_score_version": version("rouge-score"), "seed": SEED,
                           "cases": cases}, ensure_ascii=False, indent=0) + "\n")
print(f"wrote {len(cases)} cases to {out}")
