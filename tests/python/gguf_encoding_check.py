"""Checks the tensor encodings of a GGUF file against llama.cpp's own Python package (gguf-py).

    python gguf_encoding_check.py REFERENCE_F32.gguf OTHER.gguf

Every tensor of OTHER must have the same name and shape as in REFERENCE (an f32 export, whose
tokens tests/export_gguf.rs checks against transformers), and its bytes must equal
`gguf.quants.quantize(reference values, OTHER's type)`: gguf-py's f16, bf16 (round to nearest
even) and q8_0 (ggml's reference rounding). Prints a JSON summary; exits 1 on a mismatch.
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import quantize


def main():
    ref = {t.name: t for t in GGUFReader(sys.argv[1]).tensors}
    other = GGUFReader(sys.argv[2])
    counts, bad = {}, []
    for t in other.tensors:
        r = ref[t.name]
        if r.tensor_type != GGMLQuantizationType.F32 or list(r.shape) != list(t.shape):
            bad.append(f"{t.name}: reference {r.tensor_type.name} {list(r.shape)}, "
                       f"got {t.tensor_type.name} {list(t.shape)}")
            continue
        values = np.asarray(r.data, dtype=np.float32).reshape(-1, int(r.shape[0]))
        want = quantize(values, t.tensor_type).reshape(-1).view(np.uint8)
        got = np.asarray(t.data).reshape(-1).view(np.uint8)
        if want.shape != got.shape or not np.array_equal(want, got):
            bad.append(f"{t.name}: {t.tensor_type.name} bytes differ from gguf-py's")
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    json.dump({"tensors": counts, "mismatches": bad}, sys.stdout)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
