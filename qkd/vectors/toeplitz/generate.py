#!/usr/bin/env python3
"""Toeplitz privacy-amplification test vectors from the reference implementation.

Writes toeplitz_vectors.json next to this script. Every vector is

    y = randextract.ToeplitzHashing(input_length=n, output_length=m).extract(x, seed)

(default seed_mode: T[i][j] = seed[(i - j) mod (n + m - 1)], y = T x over GF(2)), with x, seed
and y given as hex strings in qpon's packing: bit i of a string is bit (i % 8), least
significant first, of byte i // 8, and the padding bits of the last byte are zero
(numpy.packbits(bits, bitorder="little")).

Inputs and seeds are drawn from a fixed numpy seed, so re-running the script reproduces the
file byte for byte (for the same randextract version). The script also checks randextract's
(floating-point FFT) output against the definition: every output bit for n <= 10000, a
random sample of rows above.

Usage (needs `pip install randextract`, which pulls numpy, scipy and galois):

    python3 qkd/vectors/toeplitz/generate.py

The Rust test qkd/tests/pa_vectors.rs reads the JSON at build time (no Python at test time).
"""

import json
import os
from importlib.metadata import version

import numpy as np
from galois import GF2
from randextract import ToeplitzHashing

# (name, n, m); the first is the worked example of REFERENCE.md §2, with fixed bits.
CASES = [
    ("worked_example", 8, 4),
    ("n1_m1", 1, 1),
    ("n2_m1", 2, 1),
    ("n3_m3", 3, 3),
    ("n64_m64", 64, 64),
    ("n65_m33", 65, 33),
    ("n100_m37", 100, 37),
    ("n129_m1", 129, 1),
    ("n1000_m999", 1000, 999),
    ("n1000_m1000", 1000, 1000),
    ("n1000_m1", 1000, 1),
    ("n4097_m1500", 4097, 1500),
    ("n10000_m2500", 10000, 2500),
    ("n10007_m5003", 10007, 5003),
    ("n100003_m25001", 100003, 25001),
]

WORKED_X = [1, 0, 1, 1, 0, 0, 1, 0]
WORKED_SEED = [1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1]
WORKED_Y = [0, 0, 1, 0]


def pack(bits):
    """LSB-first bytes of a 0/1 array, as hex."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), bitorder="little").tobytes().hex()


def row(x, seed, i):
    """Output bit i straight from the definition."""
    n, big_n = len(x), len(seed)
    idx = (i - np.arange(n)) % big_n
    return int(np.bitwise_and(seed[idx], x).sum() % 2)


def main():
    rng = np.random.default_rng(20261127)
    vectors = []
    for name, n, m in CASES:
        ext = ToeplitzHashing(input_length=n, output_length=m)
        assert ext.seed_length == n + m - 1
        if name == "worked_example":
            x = np.array(WORKED_X, dtype=np.uint8)
            seed = np.array(WORKED_SEED, dtype=np.uint8)
        else:
            x = rng.integers(0, 2, size=n, dtype=np.uint8)
            seed = rng.integers(0, 2, size=ext.seed_length, dtype=np.uint8)
        y = np.asarray(ext.extract(GF2(x), GF2(seed)), dtype=np.uint8)
        assert y.shape == (m,)
        if name == "worked_example":
            assert list(y) == WORKED_Y, y
        rows = range(m) if n <= 10000 else sorted(rng.choice(m, size=min(m, 300), replace=False))
        for i in rows:
            assert row(x, seed, i) == y[i], (name, i)
        vectors.append({"name": name, "n": n, "m": m, "input": pack(x), "seed": pack(seed), "output": pack(y)})
        print(f"{name}: n={n} m={m} ok")

    doc = {
        "description": "Toeplitz hashing test vectors: y = T x over GF(2), T[i][j] = seed[(i - j) mod (n + m - 1)]",
        "generator": f"randextract {version('randextract')}: "
        "ToeplitzHashing(input_length=n, output_length=m).extract(x, seed) (default seed_mode); "
        "qkd/vectors/toeplitz/generate.py",
        "packing": "hex of bytes; bit i is bit (i % 8), least significant first, of byte i // 8; "
        "padding bits of the last byte are zero",
        "vectors": vectors,
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toeplitz_vectors.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
