"""Greedy decoding in llama.cpp (llama-cpp-python), the independent runtime that
tests/export_gguf.rs and benches/decode.rs check our GGUF files and decode speed against.

    python llama_cpp_greedy.py MODEL.gguf < request.json > result.json

request: {"prompts": [{"text": "..."} or {"ids": [1, 2, 3]}], "new_tokens": 40, "threads": 2,
          "n_ctx": 256, "kv": "f32" or "f16"}
result:  {"llama_cpp": version, "load_s": seconds,
          "results": [{"prompt_ids": [...], "tokens": [...], "decode_tokens": n,
                       "decode_s": s, "decode_tps": n / s}]}

A text prompt is tokenised by the GGUF file's own tokenizer, with BOS as the file asks.
Decoding is greedy (temperature 0) and never stops early: EOS is just another token. The KV cache
is f32 unless the request asks for llama.cpp's default f16 (which rounds keys and values, enough to
flip a close greedy step against transformers' f32). The decode
rate is timed from the first generated token to the last, so the prompt's prefill is left out, as
`koala generate` times its `decode:` line.
"""
import json
import sys
import time

import llama_cpp
from llama_cpp import Llama


def main():
    path = sys.argv[1]
    req = json.load(sys.stdin)
    threads = int(req.get("threads", 2))
    t0 = time.perf_counter()
    kv = {"f32": 0, "f16": 1}[req.get("kv", "f32")]  # ggml_type numbers
    llm = Llama(model_path=path, n_ctx=int(req.get("n_ctx", 512)), n_threads=threads,
                n_threads_batch=threads, n_batch=512, seed=0, type_k=kv, type_v=kv,
                verbose=False)
    load_s = time.perf_counter() - t0
    n = int(req["new_tokens"])
    results = []
    for p in req["prompts"]:
        if "text" in p:
            ids = llm.tokenize(p["text"].encode("utf-8"), add_bos=llm.metadata.get(
                "tokenizer.ggml.add_bos_token", "true") == "true", special=False)
        else:
            ids = list(p["ids"])
        out, first, last = [], None, None
        for tok in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                repeat_penalty=1.0, reset=True):
            now = time.perf_counter()
            first = first or now
            last = now
            out.append(int(tok))
            if len(out) == n:
                break
        span = (last - first) if first is not None else 0.0
        results.append({"prompt_ids": [int(i) for i in ids], "tokens": out,
                        "decode_tokens": max(len(out) - 1, 0), "decode_s": span,
                        "decode_tps": (len(out) - 1) / span if span > 0 else 0.0})
    json.dump({"llama_cpp": llama_cpp.__version__, "load_s": load_s, "results": results},
              sys.stdout)


if __name__ == "__main__":
    main()
