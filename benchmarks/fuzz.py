"""Mutate the shipped models and feed them to analyze and optimize: count outcomes, list any crash.

    python benchmarks/fuzz.py [--rounds 1200] [--seeds 2,3,4,5]

Each round flips or deletes a few bytes of one models/*.onnx file. The only allowed outcomes are a result
(optimize's output verified and written) or a CollapseError; anything else is printed as a crash (the CLI's
exit 3). Staging folders left beside the outputs at the end are counted.
Then each shipped model, saved with external data, gets one external-data field (location, offset, length)
set to a hostile value; the same outcomes are allowed, and the input's files must not change.
"""

from __future__ import annotations

import argparse
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

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


HOSTILE_FIELDS = {"location": ["", "a\0b", "x" * 5000, "../m.onnx", "/etc/passwd", "m.onnx", "."],
                  "offset": ["-1", "abc", "1e3", "9" * 40, "\0"], "length": ["-8", "", "0x10", "9" * 40]}


def _count(counts: Counter, call) -> None:
    try:
        call()
        counts["result"] += 1
    except CollapseError:
        counts["clean error"] += 1
    except Exception:  # noqa: BLE001 - what this script is here to find
        counts["crash"] += 1
        print(traceback.format_exc(limit=4))


def hostile_external_fields(folder: Path, counts: Counter) -> None:
    """Every shipped model with external data and one bad field; the input's files must stay as they were."""
    for source in MODELS:
        for key, values in HOSTILE_FIELDS.items():
            for value in values:
                path = folder / "m.onnx"
                model = onnx.load(str(source))
                onnx.save_model(model, str(path), save_as_external_data=True, location="m.onnx.data",
                                size_threshold=0)
                model = onnx.load(str(path), load_external_data=False)
                tensor = next(t for t in model.graph.initializer if t.external_data)
                entry = next((e for e in tensor.external_data if e.key == key), None)
                (entry or tensor.external_data.add(key=key)).value = value
                path.write_bytes(model.SerializeToString())
                before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("m.onnx")}
                _count(counts, lambda: optimize(path, output=folder / "o.onnx"))  # noqa: B023
                after = {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("m.onnx")}
                counts["input changed"] += after != before


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
                    _count(counts, call)
        hostile_external_fields(folder, counts)
        counts["leftover"] = len([p for p in folder.iterdir() if p.name.startswith(".onnx-collapse")])
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1200)
    parser.add_argument("--seeds", default="2,3,4,5")
    args = parser.parse_args()
    counts = run(args.rounds, [int(s) for s in args.seeds.split(",")])
    calls = counts["result"] + counts["clean error"] + counts["crash"]
    print(f"fuzz: {calls} calls, {counts['result']} results, {counts['clean error']} clean errors, "
          f"{counts['crash']} crashes (what the CLI reports as exit 3), {counts['input changed']} inputs changed, "
          f"{counts['leftover']} staging folders left behind")


if __name__ == "__main__":
    main()
