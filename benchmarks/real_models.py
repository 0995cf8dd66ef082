"""Compression of real pretrained networks shipped inside a PyPI wheel, judged against ground truth.

    pip install rapidocr-onnxruntime==1.4.4
    python benchmarks/real_models.py                       # the full run (both models, every method)
    python benchmarks/real_models.py --quick               # small counts, two budgets: a smoke run
    python benchmarks/real_models.py --repo-root /work/main --tool-args "seq=--low-rank all --calibrate {calib}"

Models (PaddleOCR PP-OCRv4, as shipped by rapidocr-onnxruntime): the text-line recogniser (1x3x48x320,
CTC over 6,625 classes) and the DB text detector (fixed 1x3x320x320 pages here). Data is rendered offline
with Pillow from seeded generators (benchmarks/realdata.py): lines with their true text, pages with their
true line boxes; calibration, verification and evaluation rows are disjoint seeds.

Every row runs ``python -m onnx_collapse optimize ORIGINAL OUT <method flags> --rank-budget B
--budget-metric M --report r.json`` in a subprocess with ``PYTHONPATH=--repo-root`` (default: this
checkout), measuring its wall time and peak resident memory, then measures the output itself: stored
weights, multiply-accumulates from the shapes onnxruntime really produces, accuracy against the truth,
agreement with the original, and onnxruntime latency beside the original (interleaved, 2 intra-op threads,
sequential). A method is a name and a list of CLI flags (METHODS below, or ``--tool-args NAME=FLAGS``);
placeholders {calib} and {verify} name .npz files of calibration rows and of verification rows (disjoint from
the evaluation rows; {verify8}: the first 8 of those; {labels}: the true labels of the verification rows, for
--labels). A method whose flags the tool does not know gives a "not available" row.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import realdata as rd


def two_step_target(prune_agreement: float, agreement: float, confidence: float | None = None) -> dict:
    """A method: prune --share auto at ``prune_agreement``, then the smallest weight budget whose model agrees
    with the original (--reference) on ``agreement`` of the verification lines, spaces stripped (rec only);
    with ``confidence``, both steps judge the agreement's lower bound at that confidence (--confidence)."""
    ctc = ["--inputs", "{verify}", "--metric", "ctc", "{strip}"]
    if confidence is not None:
        ctc += ["--confidence", str(confidence)]
    return {"prune": ["--calibrate", "{calib}", "--share", "auto", *ctc, "--min-agreement", str(prune_agreement)],
            "flags": ["--low-rank", "all", "--calibrate", "{calib}", "--allocator", "output", "--budget-metric",
                      "params", "--rank-budget", "auto", *ctc, "--min-agreement", str(agreement), "--reference",
                      "{model}"],
            "models": ["rec"], "budget": False,
            "note": f"accuracy target in two steps: the largest prune share whose CTC decodings agree with the "
                    f"original's on {prune_agreement:.1%} of the verification lines (spaces stripped), then the "
                    f"smallest weight budget whose model still agrees with the original (--reference) on "
                    f"{agreement:.1%} of them"
                    + ("" if confidence is None else
                       f", each judged by its {confidence:.0%} lower confidence bound (--confidence {confidence})")}


def joint_target(agreement: float, confidence: float | None = None, metric: str = "params") -> dict:
    """A method: one optimize run with --prune-share auto and --rank-budget auto at one agreement target (the
    tool searches the split between pruning and truncation), spaces stripped (rec only); ``confidence``: as
    in ``two_step_target``."""
    ctc = ["--inputs", "{verify}", "--metric", "ctc", "{strip}"]
    if confidence is not None:
        ctc += ["--confidence", str(confidence)]
    unit = {"params": "weight", "macs": "MAC"}[metric]
    return {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--allocator", "output", "--budget-metric",
                      metric, "--prune-share", "auto", "--rank-budget", "auto", *ctc, "--min-agreement",
                      str(agreement)],
            "models": ["rec"], "budget": False,
            "note": f"accuracy target in one run: the largest prune share that agrees with the original on "
                    f"{agreement:.1%} of the verification lines alone, and fractions of it, each with its own "
                    f"{unit}-budget search at the same target, the passing model with the fewest {unit}s kept"
                    + ("" if confidence is None else f", judged by the {confidence:.0%} lower confidence bound")}


def drop_target(max_drop: float, confidence: float | None = 0.9, metric: str = "params") -> dict:
    """A method: one optimize run with --prune-share auto and --rank-budget auto judged by accuracy against the
    verification lines' true text (--labels, --max-drop: at most ``max_drop`` below the original's accuracy,
    the drop's upper bound at ``confidence``), spaces stripped (rec only)."""
    judged = ["--inputs", "{verify}", "--metric", "ctc", "{strip}", "--labels", "{labels}", "--max-drop",
              str(max_drop)] + ([] if confidence is None else ["--confidence", str(confidence)])
    unit = {"params": "weight", "macs": "MAC"}[metric]
    return {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--allocator", "output", "--budget-metric",
                      metric, "--prune-share", "auto", "--rank-budget", "auto", *judged],
            "models": ["rec"], "budget": False,
            "note": f"accuracy target in one run, against the true text: every model the searches try must read the "
                    f"verification lines at most {100 * max_drop:g} point(s) less accurately than the original"
                    + ("" if confidence is None else f" (the drop's {confidence:.0%} upper bound)")
                    + f"; prune shares and {unit} budgets searched as in joint-*, the passing model with the fewest "
                      f"{unit}s kept"}


# A method: the tool's flags (placeholders {calib}, {verify}, {labels}, {model}: the original; "{strip}" becomes --ctc-strip for each of the
# task's space classes); optional "budgets" / "metrics" restrict the
# rows it gets, "budget": False runs it once without --rank-budget/--budget-metric. "note" goes in the table.
METHODS: dict[str, dict] = {
    "alds": {"flags": ["--low-rank", "all", "--no-verify"],
             "note": "data-free ALDS (minimax spectral layer error), verification off"},
    "whitened": {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--no-verify"],
                 "note": "one-pass calibrated (whitened) ALDS, verification off"},
    "whitened+verify": {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--inputs", "{verify8}"],
                        "budgets": [0.7], "metrics": ["macs"],
                        "note": "the same with the tool's default verification (allclose, default tolerances) on "
                                "8 verification rows (with all 32 recogniser lines the tool refuses: its estimate "
                                "is 11.7 GB)"},
    "output": {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--allocator", "output", "--no-verify"],
               "note": "calibrated, output-aware allocation (each layer's measured effect on the output), "
                       "verification off"},
    "sequential": {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--sequential", "--no-verify"],
                   "note": "one-pass calibrated ALDS ranks, each truncation refitted in graph order to the original "
                           "layer's outputs on the truncated model's inputs, verification off"},
    "output+sequential": {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--allocator", "output",
                                    "--sequential", "--no-verify"],
                          "note": "output-aware allocation, then sequential refitting, verification off"},
    "auto+sequential": {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--inputs", "{verify}",
                                  "--allocator", "output", "--sequential", "--budget-metric", "macs",
                                  "--rank-budget", "auto", "--metric", "ctc", "--min-agreement", "0.96"],
                        "budget": False,
                        "note": "accuracy target: the smallest MAC budget whose CTC-decoded lines agree with the "
                                "original's on at least 96 % of the 32 verification lines (31 of 32), output-aware "
                                "allocation, then sequential refitting"},
    "auto-params": {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--inputs", "{verify}",
                              "--allocator", "output", "--budget-metric", "params", "--rank-budget", "auto",
                              "--metric", "ctc", "--min-agreement", "0.96"],
                    "budget": False,
                    "note": "accuracy target: the smallest weight budget whose CTC-decoded lines agree with the "
                            "original's on at least 96 % of the 32 verification lines (31 of 32), output-aware "
                            "allocation"},
    "auto": {"flags": ["--low-rank", "all", "--calibrate", "{calib}", "--inputs", "{verify8}", "--allocator",
                       "output", "--budget-metric", "macs", "--rank-budget", "auto", "--metric", "top1",
                       "--min-agreement", "0.98"],
             "budget": False,
             "note": "accuracy target: the smallest MAC budget whose top-1 agreement with the original on 8 "
                     "held-out rows is at least 98 % (output-aware allocation)"},
    "prune": {"command": "prune", "flags": ["--calibrate", "{calib}", "--no-verify"], "metrics": ["share"],
              "budgets": [0.2, 0.3, 0.4],
              "note": "channel pruning of pointwise -> depthwise -> pointwise pairs (budget: share of each pair's "
                      "channels removed), each reader refitted in graph order, verification off"},
    "prune+params": {"prune": ["--calibrate", "{calib}", "--no-verify", "--share", "0.3"],
                     "flags": ["--low-rank", "all", "--calibrate", "{calib}", "--allocator", "output", "--no-verify"],
                     "metrics": ["params"], "budgets": [0.8, 0.76, 0.7],
                     "note": "channel pruning at share 0.3, then the output-aware low-rank pass at a weight budget "
                             "(of the pruned model's weights), verification off"},
    "prune0.2+params": {"prune": ["--calibrate", "{calib}", "--no-verify", "--share", "0.2"],
                        "flags": ["--low-rank", "all", "--calibrate", "{calib}", "--allocator", "output",
                                  "--no-verify"],
                        "models": ["rec"], "metrics": ["params"], "budgets": [0.8],
                        "note": "the same with pruning at share 0.2"},
    "prune0.25+params": {"prune": ["--calibrate", "{calib}", "--no-verify", "--share", "0.25"],
                         "flags": ["--low-rank", "all", "--calibrate", "{calib}", "--allocator", "output",
                                   "--no-verify"],
                         "models": ["rec"], "metrics": ["params"], "budgets": [0.8],
                         "note": "the same with pruning at share 0.25"},
    "prune-auto": {"command": "prune", "models": ["rec"], "budget": False,
                   "flags": ["--calibrate", "{calib}", "--inputs", "{verify}", "--share", "auto", "--metric", "ctc",
                             "--min-agreement", "0.96"],
                   "note": "accuracy target: the largest share whose CTC-decoded lines agree with the original's on "
                           "at least 96 % of the 32 verification lines"},
    "prune-auto-strip": {"command": "prune", "models": ["rec"], "budget": False,
                         "flags": ["--calibrate", "{calib}", "--inputs", "{verify}", "--share", "auto", "--metric",
                                   "ctc", "{strip}", "--min-agreement", "0.96"],
                         "note": "the same, spaces stripped from both ends of each decoding before comparing "
                                 "(--ctc-strip with the recogniser's two space classes)"},
    "prune-auto+auto-params": two_step_target(0.97, 0.96),
    "prune-auto+auto-params-0.965-0.955": two_step_target(0.965, 0.955),
    "prune-auto+auto-params-0.965-0.95": two_step_target(0.965, 0.95),
    "prune-auto+auto-params-0.97-0.97": two_step_target(0.97, 0.97),
    "prune-auto+auto-params-0.975-0.97": two_step_target(0.975, 0.97),
    "prune-auto+auto-params-0.97-0.96-c0.9": two_step_target(0.97, 0.96, 0.9),
    "prune-auto+auto-params-0.965-0.955-c0.9": two_step_target(0.965, 0.955, 0.9),
    "joint-params-0.955-c0.9": joint_target(0.955, 0.9),
    "joint-params-0.95-c0.9": joint_target(0.95, 0.9),
    "joint-macs-0.955-c0.9": joint_target(0.955, 0.9, "macs"),
    "drop-params-0.01-c0.9": drop_target(0.01),
    "drop-macs-0.01-c0.9": drop_target(0.01, metric="macs"),
    "drop-params-0.01": drop_target(0.01, None),
}
BUDGETS = [0.8, 0.7, 0.6, 0.5]
METRICS = ["params", "macs"]

DEFAULT_ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "real_models"


# ---------------------------------------------------------------- onnxruntime helpers

def session(model: str | bytes, threads: int = 2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def run_batches(sess, name: str, x: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([sess.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def interleaved_latency(a, b, name: str, x: np.ndarray, rounds: int, warmup: int = 2) -> dict:
    """Seconds per run of sessions a and b on the same input, alternating which goes first each round."""
    feed = {name: x}
    for _ in range(warmup):
        a.run(None, feed)
        b.run(None, feed)
    ta, tb = [], []
    for r in range(rounds):
        for which in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            start = time.perf_counter()
            which[0].run(None, feed)
            which[1].append(time.perf_counter() - start)
    return {"original_median_s": statistics.median(ta), "original_min_s": min(ta),
            "compressed_median_s": statistics.median(tb), "compressed_min_s": min(tb),
            "speedup_median": statistics.median(ta) / statistics.median(tb), "speedup_min": min(ta) / min(tb),
            # each round's two runs are back to back: their ratio cancels the machine's slower and faster spells
            "speedup_paired": statistics.median(x / y for x, y in zip(ta, tb)), "rounds": rounds}


# ---------------------------------------------------------------- the optimizer in a subprocess

LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
with open(sys.argv[1], "wb") as err:
    code = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=err).returncode
wall = time.perf_counter() - start
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, wall)
"""


def run_tool(repo_root: Path, args: list[str], err_file: Path, timeout: float, command: str = "optimize"
             ) -> tuple[int, int, float, str]:
    """(exit code, peak resident bytes, wall seconds, stderr) of ``python -m onnx_collapse COMMAND ARGS``;
    a small launcher measures the child so nothing of this process is counted. ``-P``: the working directory
    is not put before ``repo_root`` (run from another checkout, ``-m`` would import that one's package)."""
    env = dict(os.environ, PYTHONPATH=str(repo_root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", LAUNCHER, str(err_file), sys.executable, "-P", "-m", "onnx_collapse", command,
           *args]
    # its own process group, so that a timeout stops the tool too, not only the launcher (an orphaned run
    # would go on competing for the machine with every row measured after it)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return 124, 0, timeout, f"timed out after {timeout:.0f} s"
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    out = stdout.split()
    return int(out[0]), int(out[1]), float(out[2]), err_file.read_text(errors="replace")


def unknown_option(stderr: str) -> str | None:
    """What the tool's command line refused (an unknown option, or a value it does not accept), if that is
    why the run failed: e.g. "No such option '--allocation'" gives '--allocation'."""
    for line in stderr.splitlines():
        m = re.search(r"[Nn]o such option:? '?(-[\w-]+)", line)
        if m:
            return m[1]
        m = re.search(r"Invalid value for '?(-[\w-]+)'?: (.*?)(?: \(see .*)?$", line)
        if m:
            return f"{m[1]}: {m[2]}"
    return None


# ---------------------------------------------------------------- the two models

@dataclass
class Task:
    """One model: its file, data splits and how outputs are judged."""
    key: str
    title: str
    file: str
    eval_batch: int
    time_batch: int
    input_name: str = "x"
    calib: np.ndarray | None = None
    verify: np.ndarray | None = None
    x: np.ndarray | None = None
    truth: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    strip: list = field(default_factory=list)  # classes a decoding's ends may drop (a recogniser's spaces)
    verify_labels: dict = field(default_factory=dict)  # the verification rows' true labels by output ({labels})

    def scores(self, outputs: np.ndarray, reference_outputs: np.ndarray | None) -> dict:
        raise NotImplementedError

    def primary(self) -> list[tuple[str, str, str]]:
        """(key, column title, format) of the accuracy columns."""
        raise NotImplementedError


class RecTask(Task):
    def __init__(self, n_calib: int, n_verify: int, n_eval: int, eval_seed: int = 303):
        super().__init__("rec", "PP-OCRv4 text recogniser (ch_PP-OCRv4_rec_infer.onnx), input 1x3x48x320",
                         rd.model_path(rd.REC_FILE), eval_batch=8, time_batch=8)
        import onnx
        self.labels = rd.ctc_labels(onnx.load(self.file, load_external_data=False))
        self.calib, _ = rd.rec_dataset(self.labels, n_calib, seed=101)
        self.verify, verify_text = rd.rec_dataset(self.labels, n_verify, seed=202)
        output = onnx.load(self.file, load_external_data=False).graph.output[0].name
        self.verify_labels = {output: rd.ctc_targets(verify_text, self.labels)}
        self.x, self.truth = rd.rec_dataset(self.labels, n_eval, seed=eval_seed)
        self.counts = {"calibration lines": n_calib, "verification lines": n_verify, "evaluation lines": n_eval}
        self.strip = [i for i, c in enumerate(self.labels) if i and not c.strip()]  # what str.strip() drops
        self._ref_text = None

    def scores(self, outputs, reference_outputs):
        text = rd.ctc_greedy(outputs, self.labels)
        ref = None if reference_outputs is None else rd.ctc_greedy(reference_outputs, self.labels)
        return rd.rec_scores(text, self.truth, ref)

    def primary(self):
        return PRIMARY["rec"]


class DetTask(Task):
    SIZE = 320

    def __init__(self, labels: list[str], n_calib: int, n_verify: int, n_eval: int):
        s = self.SIZE
        super().__init__("det", f"PP-OCRv4 text detector (ch_PP-OCRv4_det_infer.onnx, DB), input 1x3x{s}x{s}",
                         rd.model_path(rd.DET_FILE), eval_batch=1, time_batch=1)
        self.calib, _ = rd.det_dataset(labels, n_calib, seed=404, size=s)
        self.verify, _ = rd.det_dataset(labels, n_verify, seed=505, size=s)
        self.x, self.truth = rd.det_dataset(labels, n_eval, seed=606, size=s)
        self.counts = {"calibration pages": n_calib, "verification pages": n_verify, "evaluation pages": n_eval,
                       "true boxes": int(sum(len(b) for b in self.truth))}

    def scores(self, outputs, reference_outputs):
        return rd.det_scores(outputs, self.truth, reference_outputs)

    def primary(self):
        return PRIMARY["det"]


# ---------------------------------------------------------------- one model, every row

def tool_summary(report: dict, layer_macs: dict[str, int]) -> dict:
    """The tool's own figures and where its truncations went (measured MACs of those layers, original)."""
    trunc = [f for f in report.get("folds", []) if f.get("form") == "truncated" and f.get("status") == "folded"]
    layers = []
    for f in trunc:
        name = f["layers"][0] if f.get("layers") else "?"
        layers.append({"layer": name, "dims": f.get("dims"), "rank": f.get("rank"),
                       "params": [f.get("params_before"), f.get("params_after")],
                       "report_macs": [f.get("macs_before"), f.get("macs_after")],
                       "measured_macs_before": layer_macs.get(name)})
    b, a = report.get("before", {}), report.get("after", {})
    ver = report.get("verification") or {}
    return {"params": [b.get("params"), a.get("params")], "linear_macs": [b.get("linear_macs"), a.get("linear_macs")],
            "file_bytes": [b.get("file_bytes"), a.get("file_bytes")], "truncated": layers,
            "verification": ver.get("passed") if isinstance(ver, dict) else None,
            "notes": report.get("notes", []), "share": report.get("share"),
            "pruning": report.get("pruning"), "budget": (report.get("truncation") or {}).get("budget")}


def measure_model(task: Task, path: str, reference: np.ndarray | None) -> dict:
    import onnx
    model = onnx.load(path)
    macs = rd.measured_macs(model, {task.input_name: task.x[:1]})
    sess = session(path)
    outputs = run_batches(sess, task.input_name, task.x, task.eval_batch)
    return {"weights": rd.count_weights(model), "macs": macs, "outputs": outputs,
            "scores": task.scores(outputs, reference)}


def rows_for(methods: dict, budgets: list[float], metrics: list[str]) -> list[tuple[str, float | None, str | None]]:
    out = []
    for name, m in methods.items():
        if m.get("budget", True) is False:
            out.append((name, None, None))
            continue
        for metric in m.get("metrics", metrics):
            for b in m.get("budgets", budgets):
                out.append((name, b, metric))
    return out


def bench_task(task: Task, methods: dict, budgets, metrics, repo_root: Path, work: Path, rounds: int,
               timeout: float, log) -> dict:
    calib = work / f"{task.key}_calib.npz"
    verify = work / f"{task.key}_verify.npz"
    labels = work / f"{task.key}_labels.npz"
    verify8 = work / f"{task.key}_verify8.npz"
    np.savez(calib, **{task.input_name: task.calib})
    np.savez(verify, **{task.input_name: task.verify})
    np.savez(verify8, **{task.input_name: task.verify[:8]})
    if task.verify_labels:
        np.savez(labels, **task.verify_labels)
    log(f"[{task.key}] original: measuring")
    orig = measure_model(task, task.file, None)
    orig_sess = session(task.file)
    time_x = task.x[:task.time_batch]
    layer_macs = {lay["name"]: lay["macs"] for lay in orig["macs"]["layers"]}
    result = {"title": task.title, "file": task.file, "counts": task.counts,
              "original": {"weights": orig["weights"], "macs": orig["macs"]["total"], "scores": orig["scores"],
                           "layers": orig["macs"]["layers"]},
              "rows": []}
    log(f"[{task.key}] original: {orig['weights']:,} weights, {orig['macs']['total']:,} MACs, {orig['scores']}")
    seen: dict[str, dict] = {}
    pruned: dict[tuple, tuple] = {}  # prune flags -> (pruned model, its report, the prune run's result)
    for name, budget, metric in rows_for(methods, budgets, metrics):
        m = methods[name]
        if task.key not in m.get("models", [task.key]):
            continue

        def filled(flags):
            spaces = [w for c in task.strip for w in ("--ctc-strip", str(c))]
            return [w for f in flags
                    for w in (spaces if f == "{strip}" else
                              [f.format(calib=calib, verify=verify, verify8=verify8, model=task.file, labels=labels)])]

        flags = filled(m["flags"])
        if metric == "share":
            flags += ["--share", str(budget)]
        elif budget is not None:
            flags += ["--rank-budget", str(budget), "--budget-metric", metric]
        out = work / f"{task.key}_{name}_{budget}_{metric}.onnx".replace("+", "_")
        report = out.with_suffix(".json")
        row = {"method": name, "budget": budget, "metric": metric, "flags": flags, "note": m.get("note", "")}
        source, first = task.file, (0, 0, 0.0, "")
        if "prune" in m:  # a prune run first (once per set of prune flags); the command below reads its output
            row["prune_flags"] = filled(m["prune"])
            key = tuple(row["prune_flags"])
            if key not in pruned:
                path, prune_report = out.with_suffix(".pruned.onnx"), out.with_suffix(".prune.json")
                pruned[key] = (str(path), prune_report, run_tool(
                    repo_root, [task.file, str(path), *row["prune_flags"], "--quiet", "--overwrite", "--report",
                                str(prune_report)], out.with_suffix(".prune.err"), timeout, "prune"))
            source, prune_report, first = pruned[key]  # its time counts in every recipe that uses it
            try:
                row["prune_share"] = json.loads(prune_report.read_text())["share"]
            except (OSError, ValueError, KeyError):
                pass
        if first[0] == 0:
            code, peak, wall, err = run_tool(repo_root, [source, str(out), *flags, "--quiet", "--report",
                                                         str(report), "--overwrite"], out.with_suffix(".err"),
                                             timeout, m.get("command", "optimize"))
            peak, wall = max(peak, first[1]), wall + first[2]
        else:
            code, peak, wall, err = first
        row.update(exit_code=code, optimizer_s=wall, optimizer_peak_bytes=peak)
        if code != 0:
            bad = unknown_option(err) if code == 2 else None
            last = [ln for ln in err.strip().splitlines() if ln.strip()]
            row["status"] = f"not available ({bad})" if bad else f"failed (exit {code}: {last[-1] if last else ''})"
            log(f"[{task.key}] {name} {budget} {metric}: {row['status']}")
            result["rows"].append(row)
            continue
        try:
            rep = json.loads(report.read_text())
            row["tool"] = tool_summary(rep, layer_macs)
        except (OSError, ValueError) as e:
            row["tool"] = {"error": str(e)}
        digest = hashlib.sha256(out.read_bytes()).hexdigest()
        row["sha256"] = digest
        if digest in seen:
            prev = seen[digest]
            row.update({k: prev[k] for k in ("weights", "macs", "scores", "latency", "macs_by_kind")})
            row["status"] = f"same model as {prev['method']} {prev['budget']} {prev['metric']}"
        else:
            meas = measure_model(task, str(out), orig["outputs"])
            lat = interleaved_latency(orig_sess, session(str(out)), task.input_name, time_x, rounds)
            row.update(weights=meas["weights"], macs=meas["macs"]["total"], scores=meas["scores"], latency=lat,
                       macs_by_kind=macs_by_kind(meas["macs"]["layers"]))
            row["status"] = "ok" if meas["weights"] != orig["weights"] else "ok: nothing kept (weights unchanged)"
            seen[digest] = row
        log(f"[{task.key}] {name} {budget} {metric}: weights {row['weights']:,} MACs {row['macs']:,} "
            f"{fmt_scores(row['scores'])} speed-up {row['latency']['speedup_median']:.2f}x "
            f"opt {wall:.1f}s {peak / 2**20:.0f} MiB ({row['status']})")
        result["rows"].append(row)
        for p in (out, Path(str(out) + ".data")):
            if p.exists():
                p.unlink()
    for path, _, _ in pruned.values():
        Path(path).unlink(missing_ok=True)
    result["original"]["macs_by_kind"] = macs_by_kind(orig["macs"]["layers"])
    return result


def layer_kind(lay: dict) -> str:
    w = lay["weight"]
    if lay["op"] == "Conv":
        if lay["group"] > 1:
            return "depthwise/grouped conv"
        return "1x1 conv" if w is not None and all(k == 1 for k in w[2:]) else "kxk conv (k>1)"
    if lay["op"] == "ConvTranspose":
        return "ConvTranspose"
    return f"{lay['op']} (constant weight)" if lay["const_weight"] else f"{lay['op']} (two activations)"


def macs_by_kind(layers: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for lay in layers:
        out[layer_kind(lay)] = out.get(layer_kind(lay), 0) + lay["macs"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def fmt_scores(s: dict) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in s.items())


# ---------------------------------------------------------------- tables

def pct(v):
    return "" if v is None else f"{100 * v:.1f} %"


def change(after, before):
    if after is None or before in (None, 0):
        return ""
    return f"{after:,} ({100 * (after - before) / before:+.1f} %)"


def found(row: dict) -> str:
    """What a row's searches chose: the prune share and the rank budget ('' when none searched)."""
    tool = row.get("tool", {})
    budget = next((n.split()[2] for n in tool.get("notes", []) if n.startswith("rank budget ")), None)
    joint = (tool.get("pruning") or {}).get("share")
    chosen = [f"prune share {v:.3g}" for v in (row.get("prune_share"), tool.get("share"), joint) if v is not None]
    chosen += [f"rank budget {float(budget):.3g}"] if budget and row.get("budget") is None else []
    return "; " + ", ".join(chosen) if chosen else ""


def model_table(task_key: str, res: dict, accuracy_cols: list[tuple[str, str, str]]) -> str:
    o = res["original"]
    head = ["method", "metric", "budget", "weights (measured)", "MACs (measured)", "tool's MACs claim",
            *[c[1] for c in accuracy_cols], "speed-up (median, min)", "optimizer s", "peak MiB", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    orig_acc = [pct(o["scores"].get(k)) if k in o["scores"] else "-" for k, _, _ in accuracy_cols]
    lines.append("| " + " | ".join(["original", "", "", f"{o['weights']:,}", f"{o['macs']:,}", "", *orig_acc,
                                   "1.00x", "", "", ""]) + " |")
    for r in res["rows"]:
        if "weights" not in r:
            cells = [r["method"], r["metric"] or "", str(r["budget"] or ""), *[""] * (3 + len(accuracy_cols)), "",
                     f"{r['optimizer_s']:.1f}", "", r["status"]]
        else:
            t = r.get("tool", {})
            claim = ""
            lm = t.get("linear_macs") or [None, None]
            if lm[0]:
                claim = f"{lm[0]:,} > {lm[1]:,} ({100 * (lm[1] - lm[0]) / lm[0]:+.1f} %)"
            lat = r["latency"]
            cells = [r["method"], r["metric"] or "", str(r["budget"] or ""), change(r["weights"], o["weights"]),
                     change(r["macs"], o["macs"]), claim, *[pct(r["scores"].get(k)) for k, _, _ in accuracy_cols],
                     f"{lat['speedup_median']:.2f}x, {lat['speedup_min']:.2f}x", f"{r['optimizer_s']:.1f}",
                     f"{r['optimizer_peak_bytes'] / 2**20:.0f}", r["status"] + found(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def kind_table(res: dict) -> str:
    o = res["original"]
    total = o["macs"]
    lines = ["| layer kind (original) | MACs | share |", "|---|---|---|"]
    for k, v in o["macs_by_kind"].items():
        lines.append(f"| {k} | {v:,} | {100 * v / total:.1f} % |")
    return "\n".join(lines) + "\n"


def budget_lines(res: dict, max_rows: int = 6) -> list[str]:
    """Where one representative row's truncations went: biggest weight cuts, with measured MACs."""
    out = []
    for r in res["rows"]:
        if not r.get("status", "").startswith("ok") or not r.get("tool", {}).get("truncated"):
            continue
        if (r["method"], r["budget"], r["metric"]) not in {("whitened", 0.6, "params"), ("alds", 0.6, "params")}:
            continue
        tr = sorted(r["tool"]["truncated"], key=lambda t: -(t["params"][0] - t["params"][1]))
        cut_w = sum(t["params"][0] - t["params"][1] for t in tr)
        macs_in = sum(t["measured_macs_before"] or 0 for t in tr)
        out.append(f"- {r['method']} {r['budget']} {r['metric']}: {len(tr)} layers truncated, "
                   f"{cut_w:,} weights cut; those layers carry {macs_in:,} of the original's measured MACs "
                   f"({100 * macs_in / res['original']['macs']:.1f} %). Largest cuts: "
                   + "; ".join(f"{t['layer']} {'x'.join(map(str, t['dims'] or []))} rank {t['rank']} "
                               f"({t['params'][0]:,} > {t['params'][1]:,} weights, "
                               f"{(t['measured_macs_before'] or 0):,} MACs measured)" for t in tr[:max_rows]))
    return out


PRIMARY = {"rec": [("exact", "lines read exactly", "pct"), ("cer", "CER", "pct"), ("same_decode", "same decode", "pct")],
           "det": [("box_f1", "box F1 @IoU.5", "pct"), ("pixel_f1", "pixel F1", "pct"),
                   ("map_iou", "map IoU vs original", "pct")]}


def markdown(meta: dict, results: dict, methods: dict) -> str:
    parts = ["# Real pretrained networks: compression measured against ground truth", "",
             f"- package: {meta['package']} (models found through importlib in the installed wheel)",
             f"- machine: {meta['machine']}, nproc {meta['nproc']}; onnxruntime {meta['onnxruntime']}, "
             f"onnx-collapse from {meta['repo_root']} (commit {meta['commit']})",
             f"- date (UTC): {meta['date']}; full run {meta['total_s']:.0f} s; command: `{meta['command']}`",
             f"- font: {meta['font']}", "",
             "Methods (`optimize` unless said; flags appended: `--rank-budget B --budget-metric M --quiet --report R`, "
             "for `prune` `--share B`):", ""]
    for name, m in methods.items():
        steps = f"prune `{' '.join(m['prune'])}`, then " if "prune" in m else ""
        parts.append(f"- `{name}`: {steps}{m.get('command', 'optimize')} `{' '.join(m['flags'])}` — {m.get('note', '')}")
    parts += ["", "Speed-up: original / compressed seconds per run, median and best of interleaved rounds, "
              "onnxruntime CPU, intra_op_num_threads 2, inter_op 1, sequential; "
              "batch 8 lines for the recogniser, 1 page for the detector. Weights: float parameters stored "
              "in the file. MACs (measured): Conv/ConvTranspose/Gemm/MatMul counted from the shapes "
              "onnxruntime produced for one real input; \"tool's MACs claim\" is the report's "
              "`linear_macs` before > after. A row marked \"same model as\" produced a byte-identical file.", ""]
    for key, res in results.items():
        parts += [f"## {res['title']}", "", "Data: " + ", ".join(f"{v} {k}" for k, v in res["counts"].items()) + ".", ""]
        parts.append(model_table(key, res, PRIMARY[key]))
        claims = [r["tool"]["linear_macs"][0] for r in res["rows"] if (r.get("tool") or {}).get("linear_macs")]
        if claims and claims[0]:
            o = res["original"]["macs"]
            why = ("the same count" if claims[0] == o else
                   "dynamic spatial dims counted as one position" if claims[0] < o else "the tool counts more")
            parts += [f"The tool's report counts {claims[0]:,} MACs for the original; onnxruntime's real "
                      f"shapes give {o:,} ({o / claims[0]:,.2f}x): {why}.", ""]
        parts += ["Where the original's measured MACs are:", "", kind_table(res)]
        bl = budget_lines(res)
        if bl:
            parts += ["Where the budget went (tool's report, with measured MACs of those layers):", "", *bl, ""]
        joint = joint_lines(res)
        if joint:
            parts += ["What the joint searches tried (tool's report, `pruning`; weights and MACs as the tool "
                      "counts them):", "", *joint, ""]
    return "\n".join(parts)


def joint_lines(res: dict) -> list[str]:
    """Per --prune-share auto row: the share search, then each share optimized with its own budget search."""
    out = []
    for r in res["rows"]:
        pruning = (r.get("tool") or {}).get("pruning") or {}
        if not pruning.get("search") and not pruning.get("tried"):
            continue
        search = ", ".join(f"{s['share']:.3g} " + (s["verdict"] if "verdict" in s else  # since schema 1.5
                                                      f"{'passed' if s['passed'] else 'failed'}"
                                                      + (f" ({min(s['agreement_bound']):.1%})" if s["agreement_bound"]
                                                         and None not in s["agreement_bound"] else ""))
                           for s in pruning["search"])
        tried = "; ".join(f"{t['share']:.3g}: " + (f"budget {t['budget']:.3g}, " if t["budget"] is not None else "")
                          + (f"{t['params']:,} weights, {t['linear_macs']:,} MACs, " if t["params"] is not None
                             else "") + t["verdict"] for t in pruning["tried"])
        out.append(f"- {r['method']}: share search {search}; then {tried}; kept share {pruning['share']:.3g}")
    return out


# ---------------------------------------------------------------- main

def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo-root", type=Path, default=DEFAULT_ROOT, help="onnx-collapse checkout to run")
    p.add_argument("--models", default="rec,det", help="comma list of rec, det")
    p.add_argument("--methods", default=None, help="comma list of method names (default: all)")
    p.add_argument("--tool-args", action="append", default=[], metavar="NAME=FLAGS",
                   help="add a method: its optimize flags as one string ({calib}, {verify} allowed)")
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    p.add_argument("--metrics", default=",".join(METRICS))
    p.add_argument("--rec-lines", default="96,32,160", help="calibration,verification,evaluation lines")
    p.add_argument("--det-pages", default="24,8,48", help="calibration,verification,evaluation pages")
    p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds per row")
    p.add_argument("--timeout", type=float, default=900, help="seconds one optimizer run may take")
    p.add_argument("--quick", action="store_true", help="small counts, budgets 0.7,0.5, params only, 3 rounds")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where real_models.md and .json go")
    p.add_argument("--work-dir", type=Path, default=None, help="keep the calibration files and reports here")
    p.add_argument("--from-json", type=Path, default=None,
                   help="measure nothing: write real_models.md again from this real_models.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "real_models.md").write_text(markdown(data["meta"], data["results"], data["methods"]))
        print(f"wrote {args.out_dir / 'real_models.md'} from {args.from_json}")
        return 0
    if not (args.repo_root / "onnx_collapse" / "__init__.py").is_file():
        raise SystemExit(f"--repo-root {args.repo_root} has no onnx_collapse/ package")
    methods = {k: dict(v) for k, v in METHODS.items()}
    for spec in args.tool_args:
        if "=" not in spec:
            raise SystemExit(f"--tool-args wants NAME=FLAGS, got {spec!r}")
        name, flags = spec.split("=", 1)
        methods[name.strip()] = {"flags": shlex.split(flags), "note": "from --tool-args"}
    if args.methods:
        wanted = [m.strip() for m in args.methods.split(",")]
        missing = [m for m in wanted if m not in methods]
        if missing:
            raise SystemExit(f"unknown method(s) {', '.join(missing)}; known: {', '.join(methods)}")
        methods = {m: methods[m] for m in wanted}
    budgets = [float(b) for b in args.budgets.split(",")]
    metrics = [m.strip() for m in args.metrics.split(",")]
    rec_n = [int(v) for v in args.rec_lines.split(",")]
    det_n = [int(v) for v in args.det_pages.split(",")]
    rounds = args.rounds
    if args.quick:
        budgets, metrics, rec_n, det_n, rounds = [0.7, 0.5], ["params"], [48, 16, 48], [8, 4, 12], 3
    keys = [k.strip() for k in args.models.split(",")]

    def log(msg):
        print(f"{time.perf_counter() - start:7.1f}s {msg}", flush=True)

    rd.model_path(rd.REC_FILE)  # one-line message if the wheel is missing
    log("rendering data")
    tasks = {}
    rec = RecTask(*rec_n)
    if "rec" in keys:
        tasks["rec"] = rec
    if "det" in keys:
        tasks["det"] = DetTask(rec.labels, *det_n)
    import onnxruntime
    meta = {"package": f"{rd.PACKAGE.replace('_', '-')} {rd.package_version()}",
            "machine": f"{platform.machine()} {platform.processor() or platform.system()}", "nproc": os.cpu_count(),
            "onnxruntime": onnxruntime.__version__, "repo_root": str(args.repo_root), "commit": git_commit(args.repo_root),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"), "font": rd.font_name(),
            "command": "python benchmarks/real_models.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "budgets": budgets, "metrics": metrics, "rounds": rounds}
    results = {}
    with tempfile.TemporaryDirectory(prefix="real_models_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for key, task in tasks.items():
            results[key] = bench_task(task, methods, budgets, metrics, args.repo_root, work, rounds, args.timeout, log)
            print()
            print(model_table(key, results[key], task.primary()))
            print(kind_table(results[key]))
    meta["total_s"] = time.perf_counter() - start
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "real_models.md").write_text(markdown(meta, results, methods))
    (args.out_dir / "real_models.json").write_text(json.dumps({"meta": meta, "methods": methods,
                                                               "results": results}, indent=1) + "\n")
    log(f"wrote {args.out_dir / 'real_models.md'} and real_models.json")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except rd.SetupError as e:
        print(e.code if isinstance(e.code, str) else e, file=sys.stderr)
        sys.exit(2)
