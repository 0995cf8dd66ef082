"""The user's choices for one optimizer run, with their defaults."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np

from .errors import CollapseError, Param

if TYPE_CHECKING:
    import onnx

ALLOCATORS = ("alds", "output", "uniform", "energy")
METRICS = ("allclose", "top1", "sequence", "ctc")
LOW_RANK_TARGETS = ("collapsed", "all")
BUDGET_METRICS = ("params", "macs", "time")
ERROR_METRICS = ("spectral", "frobenius")


@dataclass(frozen=True)
class Options:
    """Options for :func:`onnx_collapse.optimize`.

    slope_tol: an activation counts as the identity when every slope satisfies |1 - slope| <= slope_tol.
    verify: compare the optimized model with the original in onnxruntime and revert folds that fail.
    atol, rtol: verification tolerance, |a - b| <= atol + rtol * |b|; None picks a default per dtype.
    seed, check_n: random input generation (used when ``inputs`` is None).
    inputs: an .npz file (or a dict) with one array per graph input, used instead of random inputs.
    input_shapes: concrete shapes for inputs with dynamic dims, e.g. {"x": (1, 128, 768)}.
    rank_budget: truncate to factor pairs keeping at most this fraction of the targeted layers' dense
        weights, with ranks that minimise the largest relative layer error (ALDS). None: exact folds only.
        "auto": the smallest budget whose model passes verification (``metric``, ``min_agreement`` or the
        tolerances, on the verification rows), found by bisection.
    max_error: instead of a budget, the smallest model whose every targeted layer stays within this error.
    low_rank: "collapsed" (only folded chains) or "all" (every linear layer) as truncation targets.
    budget_metric: "params", "macs" (per sample, at the shapes the model has for the given data or
        ``input_shapes``: a convolution counts its output pixels, a 3-D input its tokens), or "time" (each
        layer's forms timed in onnxruntime on this machine at those shapes, see ``timing``).
    error_metric: "spectral" (sigma_{r+1} / sigma_1, as ALDS) or "frobenius".
    max_groups: allow ALDS's grouped factors with up to this many input-feature groups (1: none).
    allocator: how ``rank_budget`` is shared: "alds" (minimise the largest layer error, data-free or
        whitened), "output" (with ``calibrate``: minimise the summed output change, each layer's measured
        truncated alone on calibration rows), or the baselines "uniform" (same rank ratio everywhere) and
        "energy" (same kept spectral energy everywhere).
    sequential: with ``calibrate`` and a budget, refit each truncation in graph order to the original layer's
        outputs on the inputs the truncated model gives it (ridge, cross-validated; kept only where it
        predicts the outputs better than the one-pass truncation on held-out calibration rows).
    metric: "allclose" (every element within atol + rtol |b|), "top1" (argmax over the last axis agrees
        on at least ``min_agreement`` of the rows, for classifiers with real ``inputs``) or "sequence" (the
        same per sample: every position's argmax agrees, e.g. a tagger's labels) or "ctc" (per sample
        [positions, classes]: the CTC decoding agrees, repeats merged and blank class 0 dropped: a text or
        speech recogniser's output).
    confidence: with an agreement metric, judge ``min_agreement`` by the one-sided Wilson lower bound of the
        measured agreement at this confidence in [0.5, 1) instead of the measured fraction, so that a search
        over budgets or shares does not keep a model only because it was lucky on the held-out rows (None: the
        measured fraction). The bound counts every unit (a row for "top1", a sample for "sequence" and "ctc")
        as independent: for "top1" over a sequence's positions, which are not, it is too tight.
    labels: with an agreement metric and ``inputs``, the true labels of the verification rows (an .npz path or a
        dict: one integer array per labelled output, rows in the order of ``inputs``; see ``accuracy``): both
        models' accuracies against them are reported beside the agreement.
    max_drop: with ``labels``, judge each labelled output by accuracy instead of agreement: it passes when the
        candidate's accuracy is at most this fraction below the reference's on the same rows (0.01: one point;
        with ``confidence``, the drop's upper bound at that confidence must be, counting units as independent
        as the agreement's bound does).
    ctc_strip: with metric "ctc", classes dropped from both ends of each decoding before comparing (a
        recogniser's space classes: margins read as spaces now and then do not count).
    reference: a model (path or ModelProto) whose outputs verification compares with instead of the
        input's: the same network before an earlier step (e.g. ``prune``), so that a criterion holds against
        it; it must take the same inputs and give the same outputs.
    max_verify_memory: refuse to verify (CollapseError) when the inputs and the tensors computed from them
        would need more than this many bytes, as estimated from the shapes; None: half the available memory.
    prune_share: with ``calibrate``, first prune this share of the channels of every convolution pair
        (``prune.py``), then fold and truncate the pruned model, every verification against the original (or
        ``reference``). "auto" (with verification): the largest share that passes alone, and with
        ``rank_budget="auto"`` fractions of it too, each with its own budget search, keeping the passing model
        that is smallest in ``budget_metric`` (``joint.py``). None: no pruning.
    calibrate: an .npz file (or a dict) with one array per graph input, rows along axis 0: chains with
        slopes near 1 are fitted to their real outputs on it, and low-rank spectra are those of the weights
        whitened by their inputs (activation-aware ALDS). Verification then uses ``inputs``, or rows held
        out of this data (never the rows that calibrated).
    """

    slope_tol: float = 0.05
    verify: bool = True
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    check_n: int = 3
    inputs: str | Mapping[str, np.ndarray] | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    rank_budget: float | str | None = None
    max_error: float | None = None
    low_rank: str = "collapsed"
    budget_metric: str = "params"
    error_metric: str = "spectral"
    max_groups: int = 1
    allocator: str = "alds"
    sequential: bool = False
    metric: str = "allclose"
    min_agreement: float = 0.99
    confidence: float | None = None
    ctc_strip: tuple[int, ...] = ()
    labels: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    max_drop: float | None = None
    reference: str | os.PathLike | onnx.ModelProto | None = None
    max_verify_memory: int | None = None
    calibrate: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    prune_share: float | str | None = None

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the keyword (CollapseError)."""
        for name in ("slope_tol", "atol", "rtol", "max_error"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and math.isfinite(value) and value >= 0):
                raise CollapseError(Param(name), f" must be a finite number >= 0, not {value!r}")
        if self.rank_budget is not None and self.rank_budget != "auto" and \
                not (_is_number(self.rank_budget) and 0 < self.rank_budget < 1):
            raise CollapseError(Param("rank_budget"), f" must be a fraction in (0, 1) or 'auto', not {self.rank_budget!r}")
        if self.rank_budget == "auto" and not self.verify:
            raise CollapseError(Param("rank_budget"), " 'auto' searches for the smallest model that passes "
                                "verification: it needs verification on")
        refuse_both_goals(self.rank_budget, self.max_error)
        if self.prune_share is not None and self.prune_share != "auto" and \
                not (_is_number(self.prune_share) and 0 < self.prune_share < 1):
            raise CollapseError(Param("prune_share"), f" must be a fraction in (0, 1) or 'auto', not {self.prune_share!r}")
        if not (_is_number(self.min_agreement) and 0 <= self.min_agreement <= 1):
            raise CollapseError(Param("min_agreement"), f" must be a fraction in [0, 1], not {self.min_agreement!r}")
        if self.confidence is not None and not (_is_number(self.confidence) and 0.5 <= self.confidence < 1):
            raise CollapseError(Param("confidence"), f" must be a probability in [0.5, 1), not {self.confidence!r}")
        if self.confidence is not None and self.confidence > 0.5 and self.min_agreement >= 1:
            raise CollapseError(Param("confidence"), " with ", Param("min_agreement"), " 1 can never pass: the "
                                "lower bound of an agreement measured on finitely many rows is below 1")
        self._check_labels()
        if not isinstance(self.ctc_strip, (tuple, list)) or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c >= 1 for c in self.ctc_strip):
            raise CollapseError(Param("ctc_strip"), " must be class indices >= 1 (0 is the blank), not "
                                f"{self.ctc_strip!r}")
        if self.reference is not None and not isinstance(self.reference, (str, os.PathLike)) and \
                type(self.reference).__name__ != "ModelProto":
            raise CollapseError(Param("reference"), f" must be a path or an onnx.ModelProto, not {self.reference!r}")
        for name, low in (("check_n", 1), ("max_groups", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise CollapseError(Param(name), f" must be a whole number >= {low}, not {value!r}")
            object.__setattr__(self, name, int(value))  # a numpy integer would overflow in later arithmetic
        memory = self.max_verify_memory
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, np.integer)) or memory <= 0):
            raise CollapseError(Param("max_verify_memory"), f" must be a number of bytes > 0, not {memory!r}")
        for name in ("verify", "sequential"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise CollapseError(Param(name), f" must be True or False, not {getattr(self, name)!r}")
        self._check_input_shapes()
        for name, allowed in (("allocator", ALLOCATORS), ("metric", METRICS), ("low_rank", LOW_RANK_TARGETS),
                              ("budget_metric", BUDGET_METRICS), ("error_metric", ERROR_METRICS)):
            if getattr(self, name) not in allowed:
                raise CollapseError(Param(name), f" must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")

        if self.allocator == "output" and self.rank_budget is not None and self.calibrate is None:
            raise CollapseError(Param("allocator"), " 'output' measures each layer's effect on calibration rows: give ",
                                Param("calibrate"))
        if self.sequential and self.calibrate is None:
            raise CollapseError(Param("sequential"), " refits truncations to calibration rows: give ", Param("calibrate"))
        for name in ("calibrate", "inputs"):  # not a number: a file descriptor would be read and closed
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike, Mapping)):
                raise CollapseError(Param(name), f" must be an .npz path or a dict of arrays, not {type(value).__name__}")

    def _check_input_shapes(self) -> None:
        """Refuse ``input_shapes`` that are not input names with whole dims >= 0 (0: checked where it is read)."""
        shapes = self.input_shapes
        if not isinstance(shapes, Mapping):
            raise CollapseError(Param("input_shapes"), " must be a dict of input name to shape, e.g. "
                                f"{{'x': (1, 3, 224, 224)}}, not {type(shapes).__name__}")
        for name, dims in shapes.items():
            if isinstance(dims, (str, bytes)) or not isinstance(dims, (tuple, list)) or not all(
                    isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
                raise CollapseError(Param("input_shapes"), f" {name!r}: a shape is a tuple of whole numbers >= 0, "
                                    f"not {dims!r}")
        object.__setattr__(self, "input_shapes", {str(k): tuple(int(d) for d in v) for k, v in shapes.items()})

    def _check_labels(self) -> None:
        """Refuse ``labels`` and ``max_drop`` where they cannot be read (CollapseError naming the keyword)."""
        if self.max_drop is not None and not (_is_number(self.max_drop) and 0 <= self.max_drop <= 1):
            raise CollapseError(Param("max_drop"), f" must be a fraction in [0, 1] (0.01: one point), not {self.max_drop!r}")
        if self.max_drop is not None and self.labels is None:
            raise CollapseError(Param("max_drop"), " judges accuracy against the true labels: give ", Param("labels"))
        if self.max_drop == 0 and self.confidence is not None and self.confidence > 0.5:
            raise CollapseError(Param("confidence"), " with ", Param("max_drop"), " 0 can never pass: the upper "
                                "bound of a drop measured on finitely many rows is above 0, even for the same model")
        if self.labels is None:
            return
        if not isinstance(self.labels, (str, os.PathLike, Mapping)):
            raise CollapseError(Param("labels"), " must be an .npz path or a dict of arrays, not "
                                f"{type(self.labels).__name__}")
        from .accuracy import require_argmax_metric  # on use: it loads onnx, which the command line defers

        require_argmax_metric(self.metric)
        if self.inputs is None:
            raise CollapseError(Param("labels"), " label the rows of ", Param("inputs"), ": give that file too")

    @property
    def truncates(self) -> bool:
        """Whether a truncation goal is given (``rank_budget`` or ``max_error``)."""
        return self.rank_budget is not None or self.max_error is not None

    def with_overrides(self, **overrides) -> Options:
        """A copy with some fields replaced (validated again); CollapseError for an unknown keyword."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise CollapseError(f"unknown option {unknown[0]!r} (options: {', '.join(f.name for f in fields(self))})")
        return replace(self, **overrides)


def given_options(options: Options | None) -> Options:
    """``options``, or the defaults for None; CollapseError for anything else (a dict, a path given where
    the options go)."""
    if options is None:
        return Options()
    if not isinstance(options, Options):
        raise CollapseError(f"options must be an onnx_collapse.Options (or give its fields as keywords), not "
                            f"{type(options).__name__} {options!r:.60}")
    return options


def refuse_both_goals(rank_budget: float | str | None, max_error: float | None) -> None:
    """CollapseError when both truncation goals are given (the one check of it, for the API and the CLI)."""
    if rank_budget is not None and max_error is not None:
        raise CollapseError(Param("rank_budget"), " and ", Param("max_error"), " exclude each other; give one")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


DEFAULTS = Options()  # the one source of defaults for the API and the CLI
