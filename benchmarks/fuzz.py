"""Mutate the shipped models and feed them to analyze and optimize: count outcomes, list any crash.

    python benchmarks/fuzz.py [--rounds 1200] [--seeds 2,3,4,5]

Each round flips or deletes a few bytes of one models/*.onnx file. The only allowed outcomes are a result
(optimize's output verified and written) or a CollapseError; anything else is printed as a crash (the CLI's
exit 3). Staging folders left beside the outputs at the end are counted.
Then each shipped model, saved with external data, gets one external-data field (location, offset, length)
set to a hostile value; the same outcomes are allowed, and the input's files must not change.
Last, the data files a run reads (--inputs, --calibrate): mutated .npz files, zip bombs, headers claiming huge
arrays, .npy and pickled arrays, non-regular files (a FIFO, a folder, /dev/zero), and outputs naming the data
file; the same outcomes are allowed (a hang counts as a crash), and the data file must not change.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import tempfile
import traceback
import zipfile
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


class Hang(Exception):
    """A call that did not return within HANG_AFTER seconds (a FIFO read would block forever)."""


HANG_AFTER = 120


def _on_alarm(signum, frame):
    raise Hang(f"no answer after {HANG_AFTER} s")


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy version-1 header declaring ``shape`` of dtype ``descr`` (the data may say otherwise)."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * ((-(len(text) + 11)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def zip_bomb(path: Path, name: str, shape: tuple[int, ...]) -> Path:
    """An .npz whose member ``name`` declares ``shape`` float32 and holds that many zero bytes, deflated
    (64 MiB are about 64 KB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open(name + ".npy", "w", force_zip64=True) as member:
        member.write(npy_header(shape))
        chunk = bytes(2**22)
        left = int(np.prod(shape)) * 4
        while left > 0:
            member.write(chunk[:min(left, len(chunk))])
            left -= len(chunk)
    return path


def hostile_data_files(folder: Path, counts: Counter, rounds: int, seed: int) -> None:
    """--inputs and --calibrate files: mutated, bombs, odd kinds of file; the data file must not change."""
    model = next(m for m in MODELS if m.name == "mlp_prelu_channel.onnx")
    loaded = onnx.load(str(model), load_external_data=False)
    (x,) = [i for i in loaded.graph.input if i.name not in {t.name for t in loaded.graph.initializer}]
    width = x.type.tensor_type.shape.dim[-1].dim_value
    rng = np.random.default_rng(seed)
    good = folder / "good.npz"
    np.savez(good, **{x.name: rng.standard_normal((40, width)).astype(np.float32)})
    cases: list[tuple[str, bytes | None]] = [("as saved", good.read_bytes())]
    data = folder / "d.npz"
    with zipfile.ZipFile(good) as archive:
        member = archive.read(x.name + ".npy")
    for _ in range(rounds):
        cases.append(("mutated", mutate(good.read_bytes(), rng)))
        with zipfile.ZipFile(data, "w") as archive:  # a mutated .npy in a well-formed archive (its CRC holds)
            archive.writestr(x.name + ".npy", mutate(member[:256], rng) + member[256:])
        cases.append(("mutated member", data.read_bytes()))
    for name in (x.name, "not_an_input"):
        zip_bomb(data, name, (2**24, 1))
        cases.append(("bomb", data.read_bytes()))
    for shape in ((2**40, width), (2**62, 2**62), (-1, width)):
        with zipfile.ZipFile(data, "w") as archive:
            archive.writestr(x.name + ".npy", npy_header(shape) + bytes(64))
        cases.append(("huge header", data.read_bytes()))
    with zipfile.ZipFile(data, "w") as archive:
        archive.writestr(x.name + ".npy", npy_header((2, width), "|O") + bytes(64))
    cases.append(("pickle", data.read_bytes()))
    np.save(folder / "d.npy", np.zeros((4, width), np.float32))
    cases += [("npy", (folder / "d.npy").read_bytes()), ("empty", b""), ("truncated", good.read_bytes()[:200])]
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        for _, content in cases:
            data.write_bytes(content)
            _data_calls(folder, model, data, counts)
        for kind in ("fifo", "folder", "device"):
            path = folder / f"odd-{kind}.npz"
            if kind == "fifo":
                os.mkfifo(path)
            elif kind == "folder":
                path.mkdir()
            else:
                path = Path("/dev/zero")
            for flag in ("inputs", "calibrate"):
                _count(counts, lambda: _limited(lambda: optimize(model, output=folder / "o.onnx",  # noqa: B023
                                                                 **{flag: str(path)})))  # noqa: B023
    finally:
        signal.signal(signal.SIGALRM, previous)


def _limited(call):
    signal.alarm(HANG_AFTER)
    try:
        return call()
    finally:
        signal.alarm(0)


def _data_calls(folder: Path, model: Path, data: Path, counts: Counter) -> None:
    before = data.read_bytes()
    for kw in ({"inputs": str(data)}, {"calibrate": str(data)}, {"calibrate": str(data), "inputs": str(data)}):
        _count(counts, lambda: _limited(lambda: optimize(model, output=folder / "o.onnx",  # noqa: B023
                                                         max_verify_memory=16 * 2**20, **kw)))  # noqa: B023
    _count(counts, lambda: _limited(lambda: optimize(model, output=data, inputs=str(data))))
    counts["input changed"] += data.read_bytes() != before


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
        hostile_data_files(folder, counts, max(1, rounds // 4), seeds[0])
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
