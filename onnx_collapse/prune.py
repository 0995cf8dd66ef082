"""Channel pruning of convolution pairs, fitted by least squares on calibration data and verified.

A **pair** is a dense convolution (the *producer*) whose output channels reach exactly one dense 1x1
convolution (the *reader*) through per-channel operations only: elementwise ops whose constants are scalars
or per-channel, BatchNormalization, depthwise convolutions, and squeeze-and-excitation branches (a global
pool, a 1x1 *squeeze* conv, ops with scalar constants, a 1x1 *excite* conv back to the channels, a gate).
That is the pointwise -> depthwise -> pointwise pattern of mobile networks (MobileNet, PP-LCNet), where 1x1
convolutions carry most of the MACs. Removing channel c removes the producer's output row c, channel c of
everything on the way, the squeeze's input column c (its calibration mean moved into the squeeze's bias),
the excite's output row c, and the reader's input column c; nothing else in the graph changes.

Pairs are pruned in graph order (sequentially: each sees the pairs before it already pruned). For each, the
reader's input in the model being pruned and its output in the original are summed over the calibration
rows (streamed, never all activations in memory); channels are chosen by backward elimination
(``channels.removal_order``), and the reader's kept columns and bias are refitted by ridge least squares to
the original's output, the ridge cross-validated over folds of the calibration batches
(``calibrate.fit_chain``). Pruning always changes the outputs, so verification needs a criterion that says
what must hold (``--metric`` with ``--min-agreement``, or ``--atol``/``--rtol``); ``share="auto"`` searches
for the largest share that meets it.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from . import calibrate as calibration
from . import macs
from .accuracy import check_labels_file
from .calibrate import Moments, empty_moments, fit_chain, sse, total
from .channels import centred, columns, removal_order
from .compare import judge, verdict_text
from .errors import CollapseError, Param, one_line
from .graph import fixed_batch, proto_subgraphs
from .inputs import make_feeds
from .io import (
    ModelSource,
    StagedOutput,
    TensorStore,
    check_overwrite,
    check_report_file,
    data_files,
    embed_external_data,
    file_size,
    open_model,
    uses_external,
)
from .options import Options, given_options
from .progress import stage
from .report import (
    SCHEMA_VERSION,
    ModelStats,
    Verification,
    dumps,
    render_stats,
    render_verification,
    write_with_report,
)
from .runner import (
    BatchCache,
    fingerprint,
    iter_outputs,
    model_key,
    outputs_scratch,
    probe_model,
    run_scratch,
    session,
    shared,
    stored,
)
from .verify import check_reference, reference_outputs, reference_text

ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Clip", "Relu", "LeakyRelu", "PRelu", "HardSigmoid", "HardSwish",
               "Sigmoid", "Tanh", "Identity", "Elu", "Selu", "Softplus", "Softsign", "Gelu", "Erf", "Mish",
               "Neg", "Abs", "Exp", "Sqrt", "Pow", "Max", "Min"}
POOLS = {"GlobalAveragePool", "GlobalMaxPool"}  # per channel, to one position: where an excitation branch starts
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
FOLDS = 4  # cross-validation parts (calibration batches dealt round-robin) for the reader's ridge
BATCH = 8  # calibration rows per onnxruntime run
AUTO_STEPS = 5  # bisection steps of share="auto" after trying the largest share
MAX_SHARE = 0.75  # share="auto" searches (0, MAX_SHARE]
# Pairs with no depthwise convolution on the way (a squeeze conv and its excite conv, dense necks) are found but not
# pruned unless this is False: on PP-OCRv4 rec, its two neck pairs cost 7.5 points of exact lines at share 0.3
# for 0.5 % of the MACs (benchmarks/rec_prune.py --all-pairs, docs/results.md).
DEPTHWISE_ONLY = True


@dataclass(frozen=True)
class Pair:
    """A producer convolution, the nodes on the way (positions in the main graph), and its reader; the
    constants sliced with the channels (name -> axis), besides the producer's and depthwise weights."""

    producer: int
    reader: int
    region: tuple[int, ...]
    depthwise: tuple[int, ...]
    sliced: tuple[tuple[str, int], ...]
    channels: int
    squeezes: tuple[int, ...] = ()  # each squeeze-and-excitation branch's first conv: its columns are cut
    excites: tuple[int, ...] = ()  # and its last conv, back to the pair's channels: its rows are cut


@dataclass
class PrunedPair:
    """One pair in the report: its nodes, channels before and after, and the reader's relative
    least-squares error (squared error over its output's variance) on the calibration rows."""

    producer: str
    reader: str
    channels: int
    kept: int
    error: float | None = None


@dataclass
class PruneReport:
    share: float  # the share applied to each pair (given, or found by share="auto")
    pairs: list[PrunedPair]
    before: ModelStats
    after: ModelStats
    verification: Verification | None
    search: list[dict] = field(default_factory=list)  # share="auto": every share tried and whether it passed
    notes: list[str] = field(default_factory=list)
    removed: float = 0.0  # of all the pairs' channels together, the share removed (whole blocks, see kept_channels)

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION} | asdict(self)

    def to_json(self) -> str:
        return dumps(self.to_dict())


# --- finding pairs ---------------------------------------------------------------------------------------------

def constant_tensors(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node tensors of ``graph``, by name."""
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = a.t
    return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


def _dense_conv(node: onnx.NodeProto, consts: Mapping[str, onnx.TensorProto]) -> bool:
    return (node.op_type == "Conv" and _standard(node) and _attrs(node).get("group", 1) == 1 and len(node.input) > 1
            and node.input[1] in consts and consts[node.input[1]].data_type in FLOAT_TYPES
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in consts))


def _pointwise(node: onnx.NodeProto, consts: Mapping[str, onnx.TensorProto]) -> bool:
    """A dense convolution that reads one input position per output position (1x1 kernel, no padding)."""
    attrs = _attrs(node)
    return (_dense_conv(node, consts) and all(d == 1 for d in consts[node.input[1]].dims[2:])
            and not any(attrs.get("pads", [])) and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"))


def _channel_axis(dims, rank: int, channels: int) -> int | None:
    """How a constant of ``dims`` broadcasts against a rank-``rank`` NCHW tensor: -1 for a scalar, the
    constant's own axis that runs along the channels, or None (it varies along some other axis)."""
    if int(np.prod(dims, dtype=np.int64)) == 1:
        return -1
    axis = 1 - (rank - len(dims))
    if 0 <= axis < len(dims) and dims[axis] == channels and all(d == 1 for k, d in enumerate(dims) if k != axis):
        return axis
    return None


def find_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Every pair of the main graph (see the module docstring) whose tensors no other node reads. A weight
    that is also a graph input (a caller may override it) is not a constant; nodes of other domains
    (onnxruntime's blocked ``com.microsoft.nchwc`` Conv, say) are not recognised."""
    graph = model.graph
    overridable = {i.name for i in graph.input}
    consts = {k: v for k, v in constant_tensors(graph).items() if k not in overridable}
    consumers: dict[str, list[int]] = {}
    uses: Counter = Counter()
    outputs = {o.name for o in graph.output}  # and what subgraphs read: a region reaching them is not ours
    for k, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(k)
            uses[name] += 1
        for sub in proto_subgraphs(node):
            read = _subgraph_reads(sub)
            uses.update({i: 2 for i in read})
            outputs |= read
    pairs = []
    for k, node in enumerate(graph.node):
        if _dense_conv(node, consts):
            pair = _pair_from(k, graph, consts, consumers, uses, outputs)
            if pair is not None:
                pairs.append(pair)
    owned = {k for p in pairs for k in (*p.squeezes, *p.excites)}  # a branch's convs belong to its pair alone
    return [p for p in pairs if p.producer not in owned and p.reader not in owned]


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name the nodes of ``graph`` and of its own subgraphs read."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for sub in proto_subgraphs(node):
            names |= _subgraph_reads(sub)
    return names


def _pair_from(start: int, graph, consts, consumers, uses, outputs) -> Pair | None:
    producer = graph.node[start]
    weight = consts[producer.input[1]]
    channels, rank = int(weight.dims[0]), len(weight.dims)
    values, region, readers, depthwise, sliced = {producer.output[0]}, [], [], [], {}
    pooled, squeezes, excites, side = set(), [], [], set()
    front = [producer.output[0]]
    while front:
        tensor = front.pop()
        if tensor in outputs:
            return None
        for k in consumers.get(tensor, []):
            node = graph.node[k]
            if k in region or k in readers or k in side:
                continue
            if not _standard(node):
                return None
            if _dense_conv(node, consts) and node.input[0] == tensor:
                branch = _excitation(k, graph, consts, consumers, outputs, channels) if tensor in pooled else None
                if branch is not None:  # pooled -> squeeze conv -> ... -> excite conv: channels again
                    squeezes.append(k)
                    excites.append(branch[-1])
                    side.update(branch)
                    excite = graph.node[branch[-1]]
                    sliced.update({name: 0 for name in excite.input[1:3] if name})
                    values.add(excite.output[0])
                    front.append(excite.output[0])
                    continue
                if not _pointwise(node, consts) or consts[node.input[1]].dims[1] != channels:
                    return None
                readers.append(k)
                continue
            if node.op_type == "Conv":
                w = consts.get(node.input[1]) if len(node.input) > 1 else None
                if (node.input[0] != tensor or w is None or _attrs(node).get("group", 1) != channels
                        or w.dims[0] != channels or w.dims[1] != 1):
                    return None
                depthwise.append(k)
            elif node.op_type == "BatchNormalization":
                if node.input[0] != tensor or len(node.output) > 1 and any(node.output[1:]):
                    return None
                sliced.update({name: 0 for name in node.input[1:5]})
            elif node.op_type in POOLS:
                pooled.add(node.output[0])
            elif node.op_type not in ELEMENTWISE:
                return None
            region.append(k)
            values.update(node.output)
            front.extend(node.output)
    if len(readers) != 1:
        return None
    for k in region:  # every other input: inside the region, or a constant that broadcasts per channel
        node = graph.node[k]
        if node.op_type in ("Conv", "BatchNormalization"):
            continue
        for name in node.input:
            if not name or name in values:
                continue
            if name not in consts:
                return None
            axis = _channel_axis(consts[name].dims, rank, channels)
            if axis is None:
                return None
            if axis >= 0:
                sliced[name] = axis
    for k in depthwise:
        sliced.update({name: 0 for name in graph.node[k].input[1:3] if name})
    weights = [n for k in (start, readers[0], *squeezes) for n in graph.node[k].input[1:3] if n]
    if any(uses[name] != 1 or name not in consts for name in [*weights, *sliced]):
        return None  # a tensor another node reads (or a subgraph): slicing it would change that node too
    return Pair(start, readers[0], tuple(region), tuple(depthwise),
                tuple((n, a) for n, a in sliced.items() if n not in weights), channels, tuple(squeezes),
                tuple(excites))


def _excitation(start: int, graph, consts, consumers, outputs, channels: int) -> list[int] | None:
    """The nodes of a squeeze-and-excitation branch from squeeze conv ``start`` (reading a pooled region
    tensor) through ops with scalar constants only to a 1x1 conv back to ``channels``, or None."""
    if not _pointwise(graph.node[start], consts):
        return None
    chain, tensor = [start], graph.node[start].output[0]
    while True:
        if tensor in outputs or len(consumers.get(tensor, [])) != 1:
            return None
        k = consumers[tensor][0]
        node = graph.node[k]
        if not _standard(node):
            return None
        if _dense_conv(node, consts) and node.input[0] == tensor:
            return [*chain, k] if _pointwise(node, consts) and consts[node.input[1]].dims[0] == channels else None
        scalar = [n in consts and int(np.prod(consts[n].dims, dtype=np.int64)) == 1
                  for n in node.input if n and n != tensor]
        if node.op_type not in ELEMENTWISE or not all(scalar):
            return None
        chain.append(k)
        tensor = node.output[0]


# --- fitting --------------------------------------------------------------------------------------------------

def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _names(model: onnx.ModelProto, pair: Pair) -> set[str]:
    """The names of every node of ``pair``, its squeeze-and-excitation convolutions included (a node's first
    output where it has no name)."""
    nodes = model.graph.node
    return {_label(nodes[k]) for k in (pair.producer, pair.reader, *pair.region, *pair.squeezes, *pair.excites)}


def _rows(value: np.ndarray, strides=None) -> np.ndarray:
    """(positions, channels) of an NC... tensor, at every ``strides``-th position when given."""
    if strides:
        value = value[(slice(None), slice(None), *(slice(None, None, s) for s in strides))]
    return np.moveaxis(value, 1, -1).reshape(-1, value.shape[1])


def original_outputs(original: ModelSource, rows: Mapping[str, np.ndarray]) -> BatchCache | None:
    """Within ``runner.run_scratch``: where the original model's tensors on the calibration batches are kept
    on disk the first time a pair asks for them (``pair_moments``), so that every share tried (a share search,
    a joint search's shares) fits to them without running the original again; None outside it."""
    key = ("pruning targets", model_key(original.path or original.model), fingerprint([rows]))
    return shared(key, BatchCache)


def pair_moments(original: ModelSource, current: ModelSource, pair: Pair, rows: Mapping[str, np.ndarray],
                 means: tuple[str, ...] = (), targets: BatchCache | None = None
                 ) -> tuple[list[Moments], dict[str, np.ndarray]]:
    """Per fold, the sums of the reader's input in ``current`` against its output in ``original`` (read from
    ``targets`` when an earlier call kept it there, ``original_outputs``); and the per-channel means over the
    rows (and positions) of the ``means`` tensors of ``current``."""
    reader = current.model.graph.node[pair.reader]
    x_name, y_name = reader.input[0], reader.output[0]
    strides = _attrs(reader).get("strides")
    xs = session(ModelSource(probe_model(current.model, [x_name, *means], {}), current.base_dir),
                 "model being pruned", optimized=True)
    n = calibration.row_count(rows)
    fixed = fixed_batch(original.model.graph)  # a model that fixes axis 0 is fed that many rows at a time
    batch = fixed or max(1, min(BATCH, n // FOLDS))  # else at least FOLDS batches, for the cross-validation
    target = f"{y_name}|{batch}"
    cached = targets is not None and target in targets
    ys = None if cached else session(ModelSource(probe_model(original.model, [y_name], {}), original.base_dir),
                                     "original model", optimized=True)
    parts: list[Moments] = []
    sums: dict[str, np.ndarray] = {}
    counts: Counter = Counter()
    for b, start in enumerate(range(0, n - n % batch if fixed else n, batch)):
        feed = {k: v[start:start + batch] for k, v in rows.items()}
        try:
            x, *extra = xs.run([x_name, *means], feed)
            if cached:
                y = targets.get(target, b)
            else:
                y, = ys.run([y_name], feed)
                if targets is not None:
                    targets.put(target, b, y)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise CollapseError(f"onnxruntime cannot run the calibration rows: {one_line(exc)}") from None
        if not all(np.all(np.isfinite(v)) for v in (x, y, *extra)):
            raise CollapseError(f"the calibration rows give non-finite values at {x_name!r} or {y_name!r}; "
                                "give rows on which the model is finite (", Param("calibrate"), ")")
        for name, value in zip(means, extra):
            flat = _rows(value).astype(np.float64)
            sums[name] = sums.get(name, 0.0) + flat.sum(axis=0)
            counts[name] += len(flat)
        x, y = _rows(x, strides), _rows(y)
        if b < FOLDS:
            parts.append(empty_moments(x.shape[1], y.shape[1]))
        parts[b % FOLDS].add(x, y)
    return parts, {name: sums[name] / counts[name] for name in sums}


def _set(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    """Replace constant ``tensor`` (an initializer or a Constant node's tensor, edited in place) by ``value``,
    in its dtype and under its name."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    tensor.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(dtype), tensor.name))


def _set_bias(graph: onnx.GraphProto, consts, conv: onnx.NodeProto, bias: np.ndarray) -> None:
    """Set the bias of ``conv`` to ``bias``, adding an initializer (a fresh name, the weight's dtype) if it has none."""
    if len(conv.input) > 2 and conv.input[2]:
        _set(consts[conv.input[2]], bias)
        return
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    name = next(f"{conv.input[1]}_bias{k or ''}" for k in range(len(taken) + 1)
                if f"{conv.input[1]}_bias{k or ''}" not in taken)
    graph.initializer.append(numpy_helper.from_array(
        bias.astype(onnx.helper.tensor_dtype_to_np_dtype(consts[conv.input[1]].data_type)), name))
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[2] = name


def prune_pair(original: ModelSource, current: ModelSource, pair: Pair, keep: int,
               rows: Mapping[str, np.ndarray], targets: BatchCache | None = None) -> float:
    """Prune ``pair`` of ``current`` (edited in place) to ``keep`` channels; the reader's relative error.

    A squeeze conv loses the columns of the removed channels, their calibration mean moved into its bias.
    Its gates then change for the kept channels too, so a pair with squeezes refits its reader on a second
    pass over the pruned model's own inputs; other pairs refit from the first pass's kept columns."""
    graph = current.model.graph
    consts = constant_tensors(graph)
    store = TensorStore(current.base_dir)
    producer, reader = graph.node[pair.producer], graph.node[pair.reader]
    squeezes = [graph.node[k] for k in pair.squeezes]

    def read(name):
        return store.read(consts[name]).astype(np.float64)

    parts, means = pair_moments(original, current, pair, rows, tuple(node.input[0] for node in squeezes), targets)
    cov, cross, var = centred(total(parts))
    kept, _ = removal_order(cov, cross, keep)
    removed = np.setdiff1d(np.arange(pair.channels), kept)
    w_reader = read(reader.input[1])
    prior = w_reader.reshape(w_reader.shape[0], w_reader.shape[1]).T[kept]
    has_bias = len(reader.input) > 2 and bool(reader.input[2])
    prior_bias = read(reader.input[2]) if has_bias else np.zeros(w_reader.shape[0])
    for node in squeezes:
        w = read(node.input[1])
        bias = read(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0])
        _set_bias(graph, consts, node, bias + w[:, removed, 0, 0] @ means[node.input[0]][removed])
        _set(consts[node.input[1]], w[:, kept])
    sliced = [(name, 0) for name in producer.input[1:3] if name] + list(pair.sliced)
    for k in pair.depthwise:
        sliced += [(name, 0) for name in graph.node[k].input[1:3] if name]
        for a in graph.node[k].attribute:
            if a.name == "group":
                a.i = len(kept)
    for name, axis in dict(sliced).items():
        _set(consts[name], np.take(read(name), kept, axis=axis))
    like = consts[reader.input[1]]
    _set(like, prior.T.reshape(len(prior.T), len(kept), *w_reader.shape[2:]))
    shrunk = {o for k in (pair.producer, *pair.excites, *pair.region) for o in graph.node[k].output}
    stale = [v for v in graph.value_info if v.name in shrunk]  # stored shapes of what now has fewer channels
    for v in stale:
        graph.value_info.remove(v)
    fit_parts = (pair_moments(original, current, pair, rows, targets=targets)[0] if squeezes
                 else [columns(p, kept) for p in parts])
    fit = fit_chain(fit_parts, prior, prior_bias)
    weight = prior if fit.weight is None else fit.weight
    bias = prior_bias if fit.bias is None else fit.bias
    whole = total(fit_parts)
    error = sse(whole, weight, bias) / max(whole.count * var, np.finfo(np.float64).tiny)
    _set(like, weight.T.reshape(len(weight.T), len(kept), *w_reader.shape[2:]))
    if has_bias or fit.bias is not None:
        _set_bias(graph, consts, reader, bias)
    return float(error)


def prunable_pairs(model: onnx.ModelProto, keep_layers: tuple[str, ...] = ()) -> list[Pair]:
    """The pairs that pruning prunes: those with a depthwise convolution on the way (``DEPTHWISE_ONLY``)
    and no node named in ``keep_layers``."""
    return [p for p in find_pairs(model)
            if (p.depthwise or not DEPTHWISE_ONLY) and not _names(model, p) & set(keep_layers)]


# onnxruntime's CPU convolutions run channels in blocks of 16 (AVX-512) or 8 (AVX2) (its NCHWc layout); a
# convolution whose channels are not a whole number of blocks leaves that layout, and runs slower than with
# more channels: PP-OCRv4 rec pruned at share 0.123 (480 -> 421 channels, 240 -> 210) ran 0.95x the original,
# with 416 and 208 kept (the same MACs) 1.15-1.24x (python benchmarks/channel_blocks.py --shares 0.123).
CHANNEL_BLOCKS = (16, 8)


def kept_channels(channels: int, share: float) -> int:
    """Channels a pair of ``channels`` keeps at ``share``: the nearest whole number of the largest of
    ``CHANNEL_BLOCKS`` that divides ``channels`` (half-way: the smaller), at least one block; else of
    single channels."""
    block = next((b for b in CHANNEL_BLOCKS if channels % b == 0), 1)
    return max(block, min(channels, math.ceil(channels * (1 - share) / block - 0.5) * block))


def kept_at(pairs: list[Pair], share: float) -> tuple[int, ...]:
    """What pruning ``pairs`` at ``share`` keeps of each: two shares with the same make the same model."""
    return tuple(kept_channels(p.channels, share) for p in pairs)


def removed_share(pairs: list[Pair], share: float) -> float:
    """The share of the ``pairs``' channels (all together) that pruning at ``share`` removes (whole blocks)."""
    total = sum(p.channels for p in pairs)
    return 1 - sum(kept_at(pairs, share)) / total if total else 0.0


def prune_model(source: ModelSource, pairs: list[Pair], share: float, rows: Mapping[str, np.ndarray]
                ) -> tuple[ModelSource, list[PrunedPair]]:
    """A copy of ``source`` with every pair pruned by ``share`` of its channels, in graph order."""
    copy = open_model(source)
    current = ModelSource(copy.model, copy.base_dir)  # no path: sessions must run the edited model
    targets = original_outputs(source, rows)
    records = []
    for pair in pairs:
        node = source.model.graph.node
        record = PrunedPair(_label(node[pair.producer]), _label(node[pair.reader]), pair.channels, pair.channels)
        keep = kept_channels(pair.channels, share)
        if keep < pair.channels:
            with stage(f"pruning {record.producer} -> {record.reader}"):
                record.error = prune_pair(source, current, pair, keep, rows, targets)
            record.kept = keep
        records.append(record)
    return current, records


# --- the command -----------------------------------------------------------------------------------------------

def check_criterion(options: Options, share, name: str = "share") -> None:
    """Pruning always changes the outputs: refuse a run whose verification could only fail (``name``: the
    keyword the share was given by)."""
    if share != "auto" and not (isinstance(share, (int, float)) and 0 < share < 1):
        raise CollapseError(Param(name), f" must be a fraction in (0, 1) or 'auto', got {share!r}")
    if options.calibrate is None:
        raise CollapseError("pruning fits the layers it prunes to calibration data: give ", Param("calibrate"))
    if options.verify and options.metric == "allclose" and options.atol is None and options.rtol is None:
        raise CollapseError("pruning changes the outputs, so the default allclose check would always fail; "
                            "say what must hold: ", Param("metric"), " top1, sequence or ctc with ",
                            Param("min_agreement"), ", or ", Param("atol"), "/", Param("rtol"))
    if share == "auto" and not options.verify:
        raise CollapseError(Param(name, "auto"), " searches for what passes verification; it needs it on")


def calibration_rows(model: onnx.ModelProto, options: Options, held_out: bool = False) -> Mapping[str, np.ndarray]:
    """The calibration rows pruning fits on; CollapseError when they are too few to cross-validate (``held_out``:
    verification rows were split off them)."""
    rows = calibration.load_arrays(model, options.calibrate, max_memory=options.max_verify_memory)
    if calibration.row_count(rows) < FOLDS:
        raise CollapseError("pruning needs at least ", str(FOLDS), " calibration rows to fit and cross-validate, ",
                            Param("calibrate"), f" gave {calibration.row_count(rows)}"
                            + (" after holding out rows for verification" if held_out else ""))
    return rows


@run_scratch()
def prune(model_or_path: onnx.ModelProto | str | os.PathLike, options: Options | None = None, *,
          share: float | str = 0.25, keep_layers: tuple[str, ...] = (), output: str | os.PathLike | None = None,
          external_data: bool | None = None, report_file: str | os.PathLike | None = None,
          overwrite: bool = False, **overrides) -> tuple[onnx.ModelProto, PruneReport]:
    """Prune channels of every convolution pair of ``model_or_path`` (see the module docstring) by ``share``
    (or, with "auto", the largest share in steps of a bisection whose model passes verification), fitted on
    ``options.calibrate`` and verified on held-out rows (or ``options.inputs``) by ``options.metric``. With
    ``output``, the result is written there atomically, only if it passed, in one commit with the JSON
    report at ``report_file`` (alone when no output is asked for). The input is never modified (an ``output``
    that is the input file is refused unless ``overwrite``). Raises CollapseError for bad input."""
    from .pipeline import calibration_split, model_stats

    options = given_options(options).with_overrides(**overrides)
    check_criterion(options, share)
    with stage("loading the model"):
        source = open_model(model_or_path)
    if external_data is None and uses_external(source.model):
        external_data = True
    named = data_files(options.inputs, options.calibrate, options.reference, options.labels)
    check_overwrite(output, source.path, overwrite)
    check_report_file(report_file, source, named, output)
    check_labels_file(source.model, options.labels, options.inputs)
    options, held_out = calibration_split(source.model, options)
    with outputs_scratch() as tmp:
        scratch = Path(tmp)
        # the original's (or the reference's) outputs on the verification rows, on disk; each pruned model's are
        # compared with them set by set, never all in memory
        check_reference(source, options)
        rows = calibration_rows(source.model, options, held_out is not None)
        probe = macs.probe_for(source.model, options.calibrate, options.inputs, options.input_shapes, options.seed,
                               options.max_verify_memory)
        known = {_label(n) for n in source.model.graph.node if n.output}
        for name in keep_layers:
            if name not in known:
                raise CollapseError(Param("keep_layers"), f" {name!r} names no node of the model")
        pairs = prunable_pairs(source.model, keep_layers)
        notes = [] if pairs else ["no convolution pair to prune: nothing changed"]
        every = prunable_pairs(source.model)
        idle = [name for name in keep_layers if not any(name in _names(source.model, p) for p in every)]
        if idle:
            notes.append(f"--keep-layer: {', '.join(map(repr, idle))} in no convolution pair that pruning prunes; "
                         "kept as every such layer is")
        expected, where = None, ""
        if options.verify and pairs:
            feeds, where = make_feeds(source.model, options.inputs, options.input_shapes, options.seed, options.check_n,
                                      options.max_verify_memory)
            with stage("running the original model"):
                reference = reference_outputs(options, source.model, feeds)  # shared with the check above
                expected = stored(iter_outputs(source, feeds, "original model") if reference is None else reference,
                                  scratch / "expected")
            where = (held_out or where) + reference_text(options)

        made: dict[tuple[int, ...], tuple] = {}  # the channels kept -> (the first share, its attempt): one model

        def attempt(value: float) -> tuple[ModelSource, list[PrunedPair], Verification | None]:
            kept = kept_at(pairs, value)
            if kept in made:
                return made[kept][1]
            pruned, records = prune_model(source, pairs, value, rows)
            verdict = None
            if expected is not None:
                with stage("verifying in onnxruntime"):
                    verdict = judge(expected, iter_outputs(pruned, feeds, "pruned model"), where, options,
                                    ("the original model", "the pruned model"))
            failed = verdict is not None and not verdict.passed  # its model is not kept (a passing one is the best)
            made[kept] = (value, (None if failed else pruned, records, verdict))
            return pruned, records, verdict

        search: list[dict] = []
        if not pairs:
            best = (source, [], Verification(True, 0, "the model is unchanged") if options.verify else None)
            chosen = 0.0
        elif share == "auto":
            best, chosen, lo, hi = None, 0.0, 0.0, MAX_SHARE
            for step in range(AUTO_STEPS + 1):
                value = hi if step == 0 else (lo + hi) / 2
                tried = attempt(value)
                passed = tried[2].passed
                same = made[kept_at(pairs, value)][0]
                search.append({"share": value, "passed": passed,
                               "agreement": [s.agreement for s in tried[2].outputs],
                               "agreement_bound": [s.agreement_bound for s in tried[2].outputs],
                               "max_abs": [s.max_abs for s in tried[2].outputs],
                               "verdict": verdict_text(tried[2]) + (
                                   f" (the channels of share {same:.4g}: the same model)" if same != value else "")})
                if passed:
                    best, chosen, lo = tried, value, value
                    if step == 0:
                        break
                else:
                    hi = value
            if best is None or all(r.kept == r.channels for r in best[1]):
                best, chosen = (source, [], Verification(True, 0, "the model is unchanged")), 0.0
                notes.append(f"share auto: no share in (0, {MAX_SHARE}] that removes a channel passed verification; "
                             "nothing pruned" + "".join(f"; {p}" for p in tried[2].problems))
        else:
            best, chosen = attempt(float(share)), float(share)
    pruned, records, verification = best
    with stage("counting parameters and MACs"):
        before = model_stats(source, probe)
        after = model_stats(pruned, probe) if pruned is not source else replace(before)
    report = PruneReport(chosen, records, before, after, verification, search, notes, removed_share(pairs, chosen))
    report.before.file_bytes = file_size(source.path) if source.path is not None else None
    result = pruned.model
    if output is not None and (verification is None or verification.passed):
        with StagedOutput(output, external_data, source.base_dir, source, named) as staged:
            with stage("writing the output"):
                staged.write(pruned.model)
            report.after.file_bytes = file_size(staged.staged)
            write_with_report(staged, report_file, report, True)
        result = onnx.load(str(output), load_external_data=False)  # its data, if any, beside the output
    else:
        if output is None:  # an output that failed leaves the older output and report as they were
            write_with_report(None, report_file, report, False)
        if uses_external(result):
            embed_external_data(result, source.base_dir)  # self-contained, as optimize returns it
    return result, report


def render_prune(report: PruneReport, width: int | None = None) -> str:
    """The before/after table, one line per pair, the search (share auto), notes, verification last."""
    lines = [render_stats(report.before, report.after, width), ""]
    if report.pairs:
        lines.append(f"channel pairs (share {report.share:g} applied to each pair, in whole blocks: "
                     f"{report.removed:.1%} of their channels removed):")
        for p in report.pairs:
            err = "" if p.error is None else f"  reader's LS error {p.error:.3g} of its variance"
            lines.append(f"  {p.producer} -> {p.reader}: {p.channels} -> {p.kept} channels{err}")
    if report.search:
        lines += ["", "share auto, tried:"]
        lines += [f"  {s['share']:.4g}: {s['verdict']}" for s in report.search]
    if report.notes:
        lines += ["", *(f"note: {n}" for n in report.notes)]
    return "\n".join([*lines, "", render_verification(report.verification, width)])
