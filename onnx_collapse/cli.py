"""The ``onnx-collapse`` command: parses options, calls the API, prints; owns exit codes and messages.

Exit codes: 0 success, 1 verification failed, 2 usage or bad input, 3 internal error (a bug: please report),
130 interrupted (SIGINT), 143 terminated (SIGTERM); on both signals temporary files are removed first.
141 (128 + SIGPIPE, what shell tools give) when stdout is closed by its reader, e.g. ``| head -0``: quietly,
after the output file is complete.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
from click.core import ParameterSource

from .errors import CollapseError, Param, one_line, printable
from .options import (
    ALLOCATORS,
    BUDGET_METRICS,
    DEFAULTS,
    ERROR_METRICS,
    LOW_RANK_TARGETS,
    METRICS,
    Options,
    refuse_both_goals,
)
from .progress import Progress, TerminalProgress, reporting, stage
from .signals import signals_deferred

# onnx, onnxruntime and the pipeline are imported inside the commands, once the progress display shows
# "starting": they take a few seconds to load on a busy machine, and a blank terminal looks hung.
STARTING = "starting: loading onnx and onnxruntime"
DEFAULT_LOW_RANK = DEFAULTS.low_rank
BROKEN_PIPE = 128 + signal.SIGPIPE  # 141: the status of a tool killed by SIGPIPE (Python's own is 120)


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(printable(f"onnx-collapse: error: {self.message}"), err=True)


class InternalError(click.ClickException):
    exit_code = 3

    def show(self, file=None) -> None:
        click.echo(printable(f"onnx-collapse: internal error (please report): {self.message}"), err=True)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn every failure into one line on stderr and a non-zero exit, never a traceback."""
    try:
        yield
    except CollapseError as exc:
        raise UserError(with_flags(exc)) from None
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except BrokenPipeError:
        raise ClosedStdout from None  # past click, which would exit 1
    except MemoryError:
        raise InternalError("out of memory") from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        name = type(exc).__name__
        raise InternalError(f"{name}: {one_line(exc)}" if str(exc).strip() else name) from None


# The one table from the API's parameter names (those CollapseError messages mention, see errors.Param) to
# the flags that set them; and the flags that set a parameter to one value.
FLAGS = {
    "slope_tol": "--slope-tol", "atol": "--atol", "rtol": "--rtol", "seed": "--seed",
    "check_n": "--check-n", "inputs": "--inputs", "input_shapes": "--input-shape", "rank_budget": "--rank-budget",
    "max_error": "--max-error", "low_rank": "--low-rank", "budget_metric": "--budget-metric",
    "error_metric": "--error-metric", "max_groups": "--max-groups", "allocator": "--allocator",
    "metric": "--metric", "min_agreement": "--min-agreement", "confidence": "--confidence", "ctc_strip": "--ctc-strip",
    "labels": "--labels", "max_drop": "--max-drop",
    "max_verify_memory": "--max-verify-memory",
    "calibrate": "--calibrate", "external_data": "--external-data", "sequential": "--sequential",
    "share": "--share", "keep_layers": "--keep-layer", "prune_share": "--prune-share",
    "reference": "--reference", "overwrite": "--overwrite",
}
VALUE_FLAGS = {("verify", False): "--no-verify", ("external_data", False): "--no-external-data"}


def flag(param: Param) -> str:
    """How the command line names a parameter mention: ``input_shapes`` -> ``--input-shape``,
    ``verify=False`` -> ``--no-verify``, ``metric='top1'`` -> ``--metric top1`` (an unknown name as the API says it)."""
    if param.has_value and isinstance(param.value, bool) and (param.name, param.value) in VALUE_FLAGS:
        return VALUE_FLAGS[param.name, param.value]
    if param.name not in FLAGS:
        return str(param)
    if not param.has_value or param.value is True:
        return FLAGS[param.name]
    return f"{FLAGS[param.name]} {param.value}"


def with_flags(exc: CollapseError) -> str:
    """A library error's message as the command line says it: parameters named by their flags."""
    return exc.render(flag)


MAX_DIM = 2**63 - 1  # ONNX dims are int64
_SHAPE_TEXT = re.compile(r"^(?P<name>.+):(?P<dims>\d+(x\d+)*)$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"x:1x128x768"`` -> ``("x", (1, 128, 768))``; CollapseError on bad text."""
    match = _SHAPE_TEXT.match(text.strip())
    if not match:
        raise CollapseError(f"bad --input-shape {text!r}: expected NAME:DxDx... such as x:1x128x768")
    dims = tuple(int(d) for d in match["dims"].split("x"))
    if any(d > MAX_DIM for d in dims):
        raise CollapseError(f"bad --input-shape {text!r}: a dim is over {MAX_DIM} (the largest int64)")
    return match["name"], dims


_SIZE_TEXT = re.compile(r"^(?P<number>\d+(\.\d+)?)\s*(?P<unit>[KMGT]?)i?B?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"512M"`` -> 536870912: bytes, with an optional K, M, G or T (powers of 1024); CollapseError on bad text."""
    match = _SIZE_TEXT.match(text.strip())
    if not match:
        raise CollapseError(f"bad size {text!r}: expected a number of bytes with an optional K, M, G or T, "
                            "such as 8G")
    return int(float(match["number"]) * 1024 ** " KMGT".index(match["unit"].upper() or " "))


def _shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """The --input-shape values by input name; an input named twice is refused (which shape was meant?)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        name, dims = parse_input_shape(value)
        if name in shapes and shapes[name] != dims:
            raise CollapseError(f"--input-shape gives input {name!r} twice ({'x'.join(map(str, shapes[name]))} and "
                                f"{'x'.join(map(str, dims))}); give one shape per input")
        shapes[name] = dims
    return shapes


@contextlib.contextmanager
def running(quiet: bool, as_json: bool = False) -> Iterator[dict]:
    """The work of one command: one-line errors, the progress display started at once (on a terminal,
    without --quiet), and the elapsed time in the yielded dict (``"seconds"``) once the work is done."""
    done: dict = {}
    start = time.monotonic()
    with one_line_errors(), reporting(_progress(quiet)):
        with stage(STARTING), signals_deferred():  # an interrupt inside a compiled module's import would be
            importlib.import_module(".pipeline", __package__)  # an ImportError: taken once the imports are done
        yield done
    done["seconds"] = time.monotonic() - start


def elapsed(seconds: float) -> str:
    """The closing line of a text report: how long the run took."""
    return f"done in {seconds:.1f} s" if seconds < 60 else f"done in {int(seconds // 60)} min {seconds % 60:.0f} s"


class BudgetType(click.ParamType):
    """A fraction in (0, 1), or 'auto'."""

    name = "budget"

    def convert(self, value, param, ctx):
        if isinstance(value, float) or value == "auto":
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a fraction in (0, 1) nor 'auto'", param, ctx)
        if not 0 < number < 1:
            self.fail(f"{value!r} is not a fraction in (0, 1)", param, ctx)
        return number


class FileName(click.Path):
    """A file's path (never a folder): refused in one line when it ends in a separator (it names a folder)
    or is not valid UTF-8 (onnx and onnxruntime take paths as UTF-8 text)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False)

    def convert(self, value, param, ctx):
        text = os.fsdecode(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            self.fail(f"{text.encode('utf-8', 'backslashreplace').decode()!r} is not a valid UTF-8 file name; "
                      "rename the file", param, ctx)
        if text.endswith((os.sep, "/")):
            self.fail(f"{text!r} ends in {text[-1]!r}, so it names a folder, not a file", param, ctx)
        return super().convert(text, param, ctx)


ctc_strip_option = click.option(
    "--ctc-strip", "ctc_strip", type=click.IntRange(1), multiple=True, metavar="CLASS",
    help="With --metric ctc: a class dropped from both ends of each decoding before comparing (a recogniser's "
         "space class, read at a crop's margins now and then; repeatable).")


confidence_option = click.option(
    "--confidence", type=click.FloatRange(0.5, 1, max_open=True), default=None, metavar="P",
    help="With --metric top1, sequence or ctc: judge --min-agreement by the agreement's one-sided Wilson lower "
         "bound at this confidence (e.g. 0.9), which counts each row (sample) as independent, so that a budget or "
         "share search does not keep a model only because it was lucky on the verification rows.")


def label_options(f):
    """``--labels`` and ``--max-drop``: accuracy against the true labels of the --inputs rows."""
    f = click.option("--max-drop", type=click.FloatRange(0, 1), default=None, metavar="D",
                     help="With --labels: judge each labelled output by accuracy instead of agreement: it passes "
                          "when its accuracy is at most D below the original's on the same rows (0.01: one "
                          "point; with --confidence, the drop's upper bound must be).")(f)
    return click.option("--labels", type=FileName(), default=None, metavar="LABELS.npz",
                        help="With --inputs and --metric top1, sequence or ctc: the true labels of the --inputs "
                             "rows, one integer array per output by name (ctc: [samples, length], padded with -1); "
                             "both models' accuracies are reported.")(f)


reference_option = click.option(
    "--reference", metavar="REF.onnx", type=FileName(), default=None,
    help="Verify against this model's outputs instead of IN.onnx's: the network before an earlier lossy step, "
         "so that --metric/--min-agreement hold for both steps together. Same inputs and outputs.")


def check_options(f):
    """Options shared by commands that run onnxruntime."""
    decorators = [
        click.option("--atol", type=click.FloatRange(0), default=None, help="Absolute tolerance (default by dtype: 1e-4 float32)."),
        click.option("--rtol", type=click.FloatRange(0), default=None, help="Relative tolerance (default by dtype: 1e-3 float32)."),
        click.option("--seed", type=click.IntRange(0), default=DEFAULTS.seed, show_default=True, help="Seed of the random inputs."),
        click.option("--check-n", type=click.IntRange(1), default=DEFAULTS.check_n, show_default=True,
                     help="Number of random input sets."),
        click.option("--inputs", type=FileName(), default=None,
                     help=".npz file with one array per model input, used instead of random inputs."),
        click.option("--input-shape", "input_shape", multiple=True, metavar="NAME:DxD...",
                     help="Shape for an input with dynamic dims, e.g. x:1x128x768 (repeatable)."),
        click.option("--metric", type=click.Choice(METRICS), default=DEFAULTS.metric, show_default=True,
                     help="allclose: every element within tolerance; top1: argmax over the last axis agrees "
                          "(classifiers, with --inputs); sequence: it agrees at every position of a sample "
                          "(a tagger's labels); ctc: a sample's CTC decoding agrees (blank class 0; text and speech "
                          "recognisers)."),
        click.option("--min-agreement", type=click.FloatRange(0, 1), default=DEFAULTS.min_agreement, show_default=True,
                     help="With --metric top1, sequence or ctc: the fraction of rows (samples) that must agree."),
        confidence_option,
        ctc_strip_option,
        label_options,
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def output_options(f):
    """Options of the commands that write a model: external data, overwriting, the report, quiet."""
    decorators = [
        click.option("--external-data/--no-external-data", default=None,
                     help="Store weights in OUT.onnx.data (default: when the input did, or the model exceeds 1.8 GB)."),
        click.option("--overwrite", is_flag=True, help="Allow OUT to be the same file as IN (replaced atomically)."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON."),
        click.option("--report", "report_file", type=FileName(),
                     help="Also write the JSON report here."),
        quiet_option,
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def quiet_option(f):
    """``--quiet``: nothing on stderr but errors."""
    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress display and no notes on stderr (errors are still shown).")(f)


def _progress(quiet: bool) -> Progress | None:
    """A progress display on stderr when it is a terminal and ``--quiet`` is off; else none."""
    return TerminalProgress() if sys.stderr.isatty() and not quiet else None


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _width() -> int | None:
    """The width tables fit when stdout is a terminal (COLUMNS, else the terminal's); None (no limit) when
    it is not: piped output is never cut (COLUMNS alone does not say a person reads it; readline exports it)."""
    return shutil.get_terminal_size().columns if stdout_is_terminal() else None


def _given(ctx: click.Context, name: str) -> bool:
    """Whether the user set the option ``name`` (on the command line or through the environment)."""
    return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)


def _flag(ctx: click.Context, name: str) -> str:
    return max(next(p for p in ctx.command.params if p.name == name).opts, key=len)


def note_idle_options(quiet: bool, rules: list[tuple[bool, tuple[str, ...], str]]) -> None:
    """One note on stderr per rule whose options the user set but that have no effect: each rule is
    (whether its options are idle, the option names, why). An option is named once."""
    ctx = click.get_current_context()
    named: set[str] = set()
    for idle, names, why in rules:
        given = [n for n in names if idle and n not in named and _given(ctx, n)]
        named.update(given)
        if given and not quiet:
            flags = ", ".join(_flag(ctx, n) for n in given)
            click.echo(f"onnx-collapse: note: {flags} {'has' if len(given) == 1 else 'have'} no effect {why}",
                       err=True)


def check_notes(metric: str, inputs: str | None) -> list[tuple[bool, tuple[str, ...], str]]:
    """Rules for the options of :func:`check_options` (see :func:`note_idle_options`)."""
    return [(metric == "allclose", ("min_agreement", "confidence"), "without --metric top1, sequence or ctc"),
            (metric != "ctc", ("ctc_strip",), "without --metric ctc"),
            (inputs is not None, ("seed", "check_n", "input_shape"), "with --inputs (no random inputs are made)")]


class ClosedStdout(BaseException):
    """stdout's reader went away (a BrokenPipeError while printing); main() exits quietly."""


class Terminated(BaseException):
    """Raised by the SIGTERM handler, so that every with-block cleans up on the way out (exit 143)."""


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated


def _check_paths(src: Path, dst: Path, report: Path | None, overwrite: bool, data: dict[Path, str]) -> None:
    """Before any work: refuse an output or report that is (or leads to) the input or one of its data
    files, a file of ``data`` (--inputs, --calibrate), the other one, or a file the current output uses, or
    that cannot be written."""
    from . import io

    inputs = io.model_files(src, "input") | data
    io.check_overwrite(dst, src, overwrite)
    io.check_destination(dst, {p: d for p, d in inputs.items() if not (overwrite and p == src)}, "output")
    io.check_report_file(report, None, inputs, dst, "--report")


def dumps(payload: dict) -> str:
    """The payload as strict JSON (``report.dumps``; imported on use, as it loads numpy)."""
    from .report import dumps as strict_dumps

    return strict_dumps(payload)


def _emit(report_dict: dict, text: str, as_json: bool) -> None:
    """Print the report (its --report file was written with the output, in one commit)."""
    click.echo(dumps(report_dict) if as_json else printable(text))


class Commands(click.Group):
    """The command group; a model path where a command belongs (onnxsim's ``onnxsim IN OUT`` habit) gets
    the command it was meant for, spelled out."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and (args[0].endswith(".onnx") or Path(args[0]).is_file()):
            meant = "optimize" if len(args) > 1 else "analyze"
            shown = " ".join(args[:2] if meant == "optimize" else args[:1])
            raise click.UsageError(f"no command {args[0]!r}; did you mean: onnx-collapse {meant} {shown}")
        return super().resolve_command(ctx, args)


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]}, invoke_without_command=True,
             no_args_is_help=False)
@click.version_option(package_name="onnx-collapse")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Collapse near-linear Gemm/MatMul/Conv chains of ONNX models and prove the result in onnxruntime.

    Start with `onnx-collapse analyze MY.onnx`: it says what would fold and what else could help.
    `onnx-collapse demo` runs both commands on a small example model shipped with the package.
    """
    if ctx.invoked_subcommand is None:  # bare ``onnx-collapse``: the help on stderr, exit 2 like any usage error
        click.echo(ctx.get_help(), err=True)
        ctx.exit(2)


@cli.command()
@click.argument("input_path", metavar="IN.onnx", type=FileName())
@click.argument("output_path", metavar="OUT.onnx", type=FileName())
@click.option("--slope-tol", type=click.FloatRange(0), default=DEFAULTS.slope_tol, show_default=True,
              help="Fold activations whose slopes are all within this distance of 1.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime check (equivalence is then NOT checked).")
@check_options
@click.option("--rank-budget", type=BudgetType(), default=None, metavar="FRACTION|auto",
              help="Truncate targeted layers to factor pairs keeping at most this fraction of their weights "
                   "(or MACs, --budget-metric); 'auto': the smallest fraction whose model passes verification "
                   "(e.g. with --calibrate and --metric top1 --min-agreement 0.99).")
@click.option("--max-error", type=click.FloatRange(0), default=None,
              help="Instead of a budget: the smallest model whose every targeted layer error is below this.")
@click.option("--low-rank", type=click.Choice(LOW_RANK_TARGETS), default=DEFAULT_LOW_RANK, show_default=True,
              help="Truncation targets: collapsed products only, or every linear layer.")
@click.option("--budget-metric", type=click.Choice(BUDGET_METRICS), default=DEFAULTS.budget_metric, show_default=True,
              help="What --rank-budget counts: stored weights, multiply-accumulates per sample (measured at "
                   "the data's or --input-shape's shapes), or time (each layer's forms timed in onnxruntime on this "
                   "machine at those shapes).")
@click.option("--error-metric", type=click.Choice(ERROR_METRICS), default=DEFAULTS.error_metric, show_default=True,
              help="Layer error: sigma_(r+1)/sigma_1 (ALDS) or the relative Frobenius norm of what is cut.")
@click.option("--max-groups", type=click.IntRange(1), default=DEFAULTS.max_groups, show_default=True,
              help="Allow ALDS grouped factors with up to this many input-feature groups.")
@click.option("--allocator", type=click.Choice(ALLOCATORS), default=DEFAULTS.allocator, show_default=True,
              help="How --rank-budget is shared: alds minimises the largest layer error; output (needs "
                   "--calibrate) the predicted change of the model's output, each layer measured truncated alone; "
                   "uniform and energy are baselines.")
@click.option("--sequential", is_flag=True,
              help="With --calibrate: refit each truncation in graph order to the original layer's outputs on the "
                   "inputs the truncated model gives it (kept where it predicts them better on held-out rows).")
@click.option("--max-verify-memory", metavar="SIZE", default=None,
              help="Refuse to verify when inputs and computed tensors would need more (e.g. 8G; default: half "
                   "the available memory).")
@click.option("--calibrate", "calibrate", type=FileName(), default=None,
              help=".npz with one array per model input (rows along axis 0): fit chains with slopes near 1 to "
                   "their real outputs and make low-rank truncation activation-aware. Verification uses "
                   "--inputs, or a held-out fifth of these rows.")
@click.option("--prune-share", type=BudgetType(), default=None, metavar="FRACTION|auto",
              help="With --calibrate: first prune this share of the channels of every convolution pair (as the "
                   "prune command does), then fold and truncate the pruned model, verified against the original; "
                   "auto: the largest share that passes alone, and with --rank-budget auto also fractions of it, "
                   "each with its own budget search, keeping the smallest passing model.")
@reference_option
@output_options
def optimize(input_path, output_path, slope_tol, no_verify, atol, rtol, seed, check_n, inputs, input_shape,
             metric, min_agreement, confidence, ctc_strip, labels, max_drop, rank_budget, max_error, low_rank, budget_metric,
             error_metric, max_groups,
             allocator, sequential, max_verify_memory, calibrate, prune_share, reference, external_data, overwrite,
             as_json, report_file, quiet) -> None:
    """Fold chains of IN.onnx and write the verified result to OUT.onnx."""
    with running(quiet) as done:
        from . import io
        from .pipeline import optimize as optimize_model

        src, dst = Path(input_path), Path(output_path)
        _check_paths(src, dst, None if report_file is None else Path(report_file), overwrite,
                     io.data_files(inputs, calibrate, reference, labels))
        refuse_both_goals(rank_budget, max_error)
        no_budget = rank_budget is None and max_error is None
        note_idle_options(quiet, [
            (no_verify, ("atol", "rtol", "seed", "check_n", "inputs", "metric", "min_agreement", "confidence",
                         "ctc_strip", "labels", "max_drop", "reference", "max_verify_memory"),
             "with --no-verify"),
            *check_notes(metric, inputs),
            (no_budget, ("low_rank", "max_groups", "budget_metric", "error_metric", "sequential"),
             "without --rank-budget or --max-error"),
            (rank_budget is None, ("allocator",), "without --rank-budget"),
        ])
        options = Options(slope_tol=slope_tol, verify=not no_verify, atol=atol, rtol=rtol, seed=seed,
                          check_n=check_n, inputs=inputs, input_shapes=_shapes(input_shape), metric=metric,
                          min_agreement=min_agreement, confidence=confidence, ctc_strip=tuple(ctc_strip),
                          labels=labels, max_drop=max_drop, rank_budget=rank_budget,
                          max_error=max_error,
                          low_rank=low_rank, budget_metric=budget_metric, error_metric=error_metric,
                          max_groups=max_groups, allocator=allocator, sequential=sequential, calibrate=calibrate,
                          prune_share=prune_share, reference=reference,
                          max_verify_memory=None if max_verify_memory is None else parse_size(max_verify_memory))
        _, report = optimize_model(src, options, output=dst, external_data=external_data, report_file=report_file,
                                   overwrite=overwrite)
    with one_line_errors():
        from .report import render

        _emit(report.to_dict(), render(report, _width()) + "\n\n" + elapsed(done["seconds"]), as_json)
    if report.verification is not None and not report.verification.passed:
        click.echo("onnx-collapse: verification failed; no output written" + (
            " (nor --report: an older output and report stay as they were)" if report_file else ""), err=True)
        sys.exit(1)


@cli.command()
@click.argument("input_path", metavar="IN.onnx", type=FileName())
@click.argument("output_path", metavar="OUT.onnx", type=FileName())
@click.option("--calibrate", "calibrate", type=FileName(), required=True,
              help=".npz of typical inputs (rows on axis 0); the pruned layers are refitted on them, a fifth "
                   "is held out for verification unless --inputs is given.")
@click.option("--share", type=BudgetType(), default=0.25, show_default=True, metavar="FRACTION|auto",
              help="Share of each pair's channels removed; auto: the largest that passes verification "
                   "(as fine as the held-out rows resolve: a few hundred for a point).")
@click.option("--keep-layer", "keep_layers", multiple=True, metavar="NAME",
              help="Leave the pair this convolution belongs to whole (repeatable).")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime check (what the pruning costs is NOT checked).")
@click.option("--atol", type=click.FloatRange(0), default=None, help="Absolute tolerance of the check.")
@click.option("--rtol", type=click.FloatRange(0), default=None, help="Relative tolerance of the check.")
@click.option("--seed", type=click.IntRange(0), default=DEFAULTS.seed, show_default=True,
              help="Seed of the held-out rows.")
@click.option("--inputs", type=FileName(), default=None,
              help=".npz to verify on instead of held-out calibration rows.")
@click.option("--metric", type=click.Choice(METRICS), default=DEFAULTS.metric, show_default=True,
              help="What must hold (see optimize --help); pruning needs top1, sequence or ctc, or --atol/--rtol.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=DEFAULTS.min_agreement, show_default=True,
              help="With --metric top1, sequence or ctc: the fraction of rows (samples) that must agree.")
@confidence_option
@ctc_strip_option
@label_options
@click.option("--max-verify-memory", metavar="SIZE", default=None,
              help="Memory the data may take (e.g. 4G); default: half the available memory.")
@reference_option
@output_options
def prune(input_path, output_path, calibrate, share, keep_layers, no_verify, atol, rtol, seed, inputs, metric,
          min_agreement, confidence, ctc_strip, labels, max_drop, max_verify_memory, reference, external_data,
          overwrite, as_json, report_file, quiet) -> None:
    """Prune channels of convolution pairs (pointwise -> depthwise -> pointwise) of IN.onnx, refitted on
    --calibrate, and write the verified result to OUT.onnx."""
    with running(quiet) as done:
        from . import io
        from .prune import prune as prune_model

        src, dst = Path(input_path), Path(output_path)
        _check_paths(src, dst, None if report_file is None else Path(report_file), overwrite,
                     io.data_files(inputs, calibrate, reference, labels))
        note_idle_options(quiet, [*check_notes(metric, inputs)[:2],
                                  (inputs is not None, ("seed",), "with --inputs (no rows are held out)"),
                                  (no_verify, ("atol", "rtol", "seed", "inputs", "metric", "min_agreement",
                                               "confidence", "ctc_strip", "labels", "max_drop", "reference"),
                                   "with --no-verify")])
        options = Options(verify=not no_verify, atol=atol, rtol=rtol, seed=seed, inputs=inputs, metric=metric,
                          min_agreement=min_agreement, confidence=confidence, ctc_strip=tuple(ctc_strip),
                          labels=labels, max_drop=max_drop, calibrate=calibrate, reference=reference,
                          max_verify_memory=None if max_verify_memory is None else parse_size(max_verify_memory))
        _, report = prune_model(src, options, share=share, keep_layers=tuple(keep_layers), output=dst,
                                external_data=external_data, report_file=report_file, overwrite=overwrite)
    with one_line_errors():
        from .prune import render_prune

        _emit(report.to_dict(), render_prune(report, _width()) + "\n\n" + elapsed(done["seconds"]), as_json)
    if report.verification is not None and not report.verification.passed:
        click.echo("onnx-collapse: verification failed; no output written" + (
            " (nor --report: an older output and report stay as they were)" if report_file else ""), err=True)
        sys.exit(1)


@cli.command()
@click.argument("input_path", metavar="IN.onnx", type=FileName())
@click.option("--slope-tol", type=click.FloatRange(0), default=DEFAULTS.slope_tol, show_default=True,
              help="Count activations whose slopes are all within this distance of 1 as foldable.")
@click.option("--spectrum", is_flag=True, help="Also show low-rank targets' spectra and the error/budget trade-off.")
@click.option("--low-rank", type=click.Choice(LOW_RANK_TARGETS), default=DEFAULT_LOW_RANK, show_default=True,
              help="With --spectrum or --plot: collapsed products only, or every linear layer.")
@click.option("--plot", "plot_file", type=FileName(), metavar="FILE.png",
              help="Draw the ALDS trade-off (largest layer error against weights kept) and the per-layer ranks "
                   "at --rank-budget (default 50%) into this picture (needs matplotlib: the plot extra).")
@click.option("--rank-budget", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="With --plot: the weight budget to mark and show the ranks at.")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME:DxD...",
              help="Count MACs at this shape for an input with dynamic dims, e.g. x:1x3x48x320 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@quiet_option
def analyze(input_path, slope_tol, spectrum, low_rank, plot_file, rank_budget, input_shape, as_json, quiet) -> None:
    """List every chain of IN.onnx: shapes, slopes, predicted savings, why each would or would not fold,
    and a verdict: what onnx-collapse can do for this model."""
    with one_line_errors():
        note_idle_options(quiet, [(not spectrum and plot_file is None, ("low_rank",), "without --spectrum or --plot"),
                                  (plot_file is None, ("rank_budget",), "without --plot")])
    with running(quiet) as done:
        from .pipeline import analyze as analyze_model

        if plot_file is not None:
            _check_plot_path(Path(input_path), Path(plot_file))
        found = analyze_model(input_path, Options(slope_tol=slope_tol, verify=False, low_rank=low_rank,
                                                  input_shapes=_shapes(input_shape)),
                              spectrum=spectrum or plot_file is not None)
        if plot_file is not None:
            from .plot import plot_tradeoff

            plot_tradeoff(found.spectra, found.tradeoff, plot_file, rank_budget)
    with one_line_errors():
        text = analysis_text(found, spectrum, as_json)
        if not as_json:
            wrote = "" if plot_file is None else f"wrote the trade-off plot to {plot_file}\n"
            text += f"\n\n{wrote}{elapsed(done['seconds'])}"
        click.echo(text if as_json else printable(text))


def analysis_text(found, spectrum: bool, as_json: bool) -> str:
    """What ``analyze`` prints: the JSON payload (``Analysis.to_json``), or the tables and the verdict."""
    from .report import render_analysis, render_spectra

    if as_json:
        return found.to_json(spectra=spectrum)
    text = render_analysis(found.report, _width(), found.verdict)
    if spectrum:
        text += "\n\n" + render_spectra(found.spectra, found.tradeoff, _width())
    return text


def _check_plot_path(src: Path, picture: Path) -> None:
    """Before any work: refuse a picture path that is the input model (or one of its files) or cannot be
    written, and a format matplotlib cannot write (or a missing matplotlib)."""
    from . import io

    io.check_destination(picture, io.model_files(src, "input"), "--plot")
    from .plot import picture_format

    picture_format(picture)


@cli.command()
@click.argument("reference", metavar="A.onnx", type=FileName())
@click.argument("candidate", metavar="B.onnx", type=FileName())
@check_options
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@quiet_option
def verify(reference, candidate, atol, rtol, seed, check_n, inputs, input_shape, metric, min_agreement,
           confidence, ctc_strip, labels, max_drop, as_json, quiet) -> None:
    """Compare B.onnx with A.onnx in onnxruntime; exit 1 if any output differs beyond tolerance."""
    with one_line_errors():
        note_idle_options(quiet, check_notes(metric, inputs))
    with running(quiet) as done:
        from .verify import verify as verify_models

        result = verify_models(reference, candidate, inputs=inputs, input_shapes=_shapes(input_shape), seed=seed,
                               check_n=check_n, atol=atol, rtol=rtol, metric=metric, min_agreement=min_agreement,
                               ctc_strip=tuple(ctc_strip), confidence=confidence, labels=labels,
                               max_drop=max_drop)
    with one_line_errors():
        from .report import render_verification

        click.echo(result.to_json() if as_json else
                   printable(render_verification(result, _width()) + "\n\n" + elapsed(done["seconds"])))
    if not result.passed:
        sys.exit(1)


@cli.command()
@click.argument("output_path", metavar="[OUT.onnx]", type=FileName(), required=False)
@quiet_option
def demo(output_path, quiet) -> None:
    """Try onnx-collapse on an example model shipped with the package: analyze it, then optimize it
    (into OUT.onnx if given, else into a temporary folder that is removed)."""
    import tempfile
    from importlib import resources

    with one_line_errors(), resources.as_file(resources.files("onnx_collapse") / "examples" / EXAMPLE) as model:
        click.echo(f"The example: {model}\n{EXAMPLE_ABOUT}\n")
        with tempfile.TemporaryDirectory(prefix="onnx-collapse-demo-") as folder:
            out = Path(output_path) if output_path else Path(folder) / EXAMPLE.replace(".onnx", ".collapsed.onnx")
            for args in (["analyze", str(model)], ["optimize", str(model), str(out)]):
                click.echo(f"$ onnx-collapse {' '.join(args)}")
                ctx = click.get_current_context()
                command = cli.commands[args[0]]
                with command.make_context(args[0], args[1:] + (["--quiet"] if quiet else []), parent=ctx) as sub:
                    command.invoke(sub)
                click.echo()
            click.echo(f"The folded model: {out}" if output_path else
                       "The folded model was written to a temporary folder and removed (give OUT.onnx to keep "
                       "it). Next: onnx-collapse analyze YOUR.onnx")


EXAMPLE = "three_layer.onnx"
EXAMPLE_ABOUT = ("A 64-128-128-32 MLP (Linear-PReLU-Linear-PReLU-Linear) whose PReLU slopes are 1, as "
                 "LayerCollapse training leaves them: its three layers fold into one.")


def main() -> None:
    """Entry point: click's own usage errors become one line too (exit 2); SIGTERM cleans up like SIGINT."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = cli.main(prog_name="onnx-collapse", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see 'onnx-collapse {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        click.echo(f"onnx-collapse: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo("onnx-collapse: aborted", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("onnx-collapse: terminated", err=True)
        sys.exit(143)
    except (BrokenPipeError, ClosedStdout):
        _quiet_broken_pipe()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
    sys.exit(code if isinstance(code, int) else 0)


def _quiet_broken_pipe() -> None:
    """stdout was closed by its reader (``| head``): no message, exit 141 like a tool killed by SIGPIPE.
    Any output file is complete by then (reports are printed after it is committed)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
    sys.exit(BROKEN_PIPE)

