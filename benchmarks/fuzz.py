"""Mutate the shipped models and feed them to analyze and optimize: count outcomes, list any crash.

    python benchmarks/fuzz.py [--rounds 1200] [--seeds 2,3,4,5]

Each round flips or deletes a few bytes of one models/*.onnx file. The only allowed outcomes are a result
(optimize's output verified and written) or a CollapseError; anything else is printed as a crash.
"""

from __future__ import annotations

import argparse
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

from onnx_collapse import CollapseError, analyze, optimize

MODELS = sorted((Path(__file__).resolve().parents[1] / "models").glob("*.onnx"))


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(0, len(out)))
        if rng.random() < 0.8:
            out[at] ^= int(rng.integers(1, 256))
        else:
            del out[at:at + int(rng.integers(1, 8))]
    return bytes(out)


def run(rounds: int, seeds: list[int]) -> Counter:
    counts: Counter = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for seed in seeds:
            rng = np.random.default_rng(seed)
            for i in range(rounds):
                path = folder / "m.onnx"
                path.write_bytes(mutate(MODELS[i % len(MODELS)].read_bytes(), rng))
                for call in (lambda: analyze(path), lambda: optimize(path, output=folder / "o.onnx")):  # noqa: B023
                    try:
                        call()
                        counts["result"] += 1
                    except CollapseError:
                        counts["clean error"] += 1
                    except Exception:  # noqa: BLE001 - what this script is here to find
                        counts["crash"] += 1
                        print(traceback.format_exc(limit=4))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1200)
    parser.add_argument("--seeds", default="2,3,4,5")
    args = parser.parse_args()
    counts = run(args.rounds, [int(s) for s in args.seeds.split(",")])
    print(f"fuzz: {sum(counts.values())} calls, {counts['result']} results, {counts['clean error']} clean errors, "
          f"{counts['crash']} crashes")


if __name__ == "__main__":
    main()
