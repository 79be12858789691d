#!/usr/bin/env python3
"""Stanford Alpaca's ROUGE-L filter loop (generate_instruction.py), timed: the Python baseline of
benches/selfinstruct_dedup.rs.

Usage:  python3 scripts/bench_rouge_alpaca.py INSTRUCTIONS.jsonl LIMIT [PROCESSES]

Reads the first LIMIT lines ({"instruction": ...}) and runs Alpaca's loop in input order: tokenize
each new instruction with rouge_score's tokenizer, score it with `rouge_scorer._score_lcs` against
the tokens of every instruction kept so far, keep it unless the best F is above 0.7. With
PROCESSES > 1 the scoring goes through a multiprocessing Pool as Alpaca's does (`pool.map` over
the kept list); with 1 (the default) it is a plain loop. Prints one JSON line: items, pairs
(scored pairs), seconds, and `kept` (0/1 per item) so that the caller can compare decisions.
"""
import json
import sys
import time
from functools import partial
from multiprocessing import Pool

from rouge_score import rouge_scorer


def main():
    path, limit = sys.argv[1], int(sys.argv[2])
    procs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    with open(path, encoding="utf-8") as f:
        insts = [json.loads(line)["instruction"] for _, line in zip(range(limit), f)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = Pool(procs) if procs > 1 else None
    all_tokens, kept, pairs = [], [], 0
    t0 = time.perf_counter()
    for inst in insts:
        new_tokens = scorer._tokenizer.tokenize(inst)
        score = partial(rouge_scorer._score_lcs, new_tokens)
        if pool is not None:
            scores = pool.map(score, all_tokens)
        else:
            scores = [score(t) for t in all_tokens]
        pairs += len(all_tokens)
        if scores and max(s.fmeasure for s in scores) > 0.7:
            kept.append(0)
            continue
        kept.append(1)
        all_tokens.append(new_tokens)
    secs = time.perf_counter() - t0
    print(json.dumps({"items": len(insts), "pairs": pairs, "seconds": secs, "kept": kept,
                      "processes": procs}))


if __name__ == "__main__":
    main()
