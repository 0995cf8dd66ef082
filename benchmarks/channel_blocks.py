"""Pruned channels in whole vector blocks against the same share without: onnxruntime speed, side by side.

    pip install rapidocr-onnxruntime==1.4.4
    python benchmarks/channel_blocks.py [--shares 0.123,0.2] [--rounds 41] [--lines 960]

PP-OCRv4's text recogniser (as rapidocr-onnxruntime ships it) pruned with ``onnx-collapse prune --share S``
(96 calibration lines, seed 101, no verification) twice per share: as the tool prunes (each pair keeps a whole
number of ``prune.CHANNEL_BLOCKS`` channels where it has them: onnxruntime's blocked convolutions take 16
channels at a time on AVX-512, 8 on AVX2) and with the rounding turned off (``CHANNEL_BLOCKS = ()``: the
nearest channel count, as before). Both are then timed beside the original by ``rec_speed.py`` (2 intra-op
threads, batch 8, interleaved rounds) and read against the true text of its evaluation lines.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import onnx
import realdata as rd
import rec_speed

from onnx_collapse import prune


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shares", default="0.123,0.2", help="prune shares, comma-separated")
    p.add_argument("--rounds", type=int, default=41)
    p.add_argument("--lines", type=int, default=960)
    args = p.parse_args(argv)
    pruning = importlib.import_module("onnx_collapse.prune")  # the module (the package exports its function)
    blocks = pruning.CHANNEL_BLOCKS
    labels = rd.ctc_labels(onnx.load(rd.model_path(rd.REC_FILE), load_external_data=False))
    calib = {"x": rd.rec_dataset(labels, 96, seed=101)[0]}
    with tempfile.TemporaryDirectory(prefix="channel-blocks-") as tmp:
        paths = []
        for share in (float(s) for s in args.shares.split(",")):
            for name, setting in (("blocks", blocks), ("no-blocks", ())):
                pruning.CHANNEL_BLOCKS = setting
                try:
                    path = Path(tmp) / f"share{share:g}-{name}.onnx"
                    _, report = prune(rd.model_path(rd.REC_FILE), share=share, calibrate=calib, verify=False,
                                      output=path)
                finally:
                    pruning.CHANNEL_BLOCKS = blocks
                kept = sorted({(p.channels, p.kept) for p in report.pairs}, reverse=True)
                print(f"share {share:g}, {name}: channels kept " + ", ".join(f"{c} -> {k}" for c, k in kept),
                      file=sys.stderr)
                paths.append(str(path))
        return rec_speed.main([*paths, "--rounds", str(args.rounds), "--lines", str(args.lines)])


if __name__ == "__main__":
    sys.exit(main())
