"""The ``onnx-collapse`` command: parses options, calls the API, prints; owns exit codes and messages.

Exit codes: 0 success, 1 verification failed, 2 usage or bad input, 3 internal error (a bug: please report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from .errors import CollapseError
from .options import Options
from .pipeline import analyze as analyze_model
from .pipeline import optimize as optimize_model
from .report import SCHEMA_VERSION, render, render_folds, render_spectra, render_verification
from .verify import parse_input_shape
from .verify import verify as verify_models


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"onnx-collapse: error: {self.message}", err=True)


class InternalError(click.ClickException):
    exit_code = 3

    def show(self, file=None) -> None:
        click.echo(f"onnx-collapse: internal error (please report): {self.message}", err=True)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn every failure into one line on stderr and a non-zero exit, never a traceback."""
    try:
        yield
    except CollapseError as exc:
        raise UserError(str(exc)) from None
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except MemoryError:
        raise InternalError("out of memory") from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        text = " ".join(str(exc).split())[:300]
        raise InternalError(f"{type(exc).__name__}: {text}") from None


def _shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    return dict(parse_input_shape(v) for v in values)


def check_options(f):
    """Options shared by commands that run onnxruntime."""
    decorators = [
        click.option("--atol", type=click.FloatRange(0), default=None, help="Absolute tolerance (default by dtype: 1e-4 float32)."),
        click.option("--rtol", type=click.FloatRange(0), default=None, help="Relative tolerance (default by dtype: 1e-3 float32)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs."),
        click.option("--check-n", type=click.IntRange(1), default=3, show_default=True,
                     help="Number of random input sets."),
        click.option("--inputs", type=click.Path(dir_okay=False), default=None,
                     help=".npz file with one array per model input, used instead of random inputs."),
        click.option("--input-shape", "input_shape", multiple=True, metavar="NAME:DxD...",
                     help="Shape for an input with dynamic dims, e.g. x:1x128x768 (repeatable)."),
        click.option("--metric", type=click.Choice(["allclose", "top1"]), default="allclose", show_default=True,
                     help="allclose: every element within tolerance; top1: argmax over the last axis agrees "
                          "(classifiers, with --inputs)."),
        click.option("--min-agreement", type=click.FloatRange(0, 1), default=0.99, show_default=True,
                     help="With --metric top1: the fraction of rows whose argmax must agree."),
    ]
    for decorator in reversed(decorators):
        f = decorator(f)
    return f


def _emit(report_dict: dict, text: str, as_json: bool, report_file: str | None) -> None:
    if report_file:
        Path(report_file).write_text(json.dumps(report_dict, indent=2) + "\n")
    click.echo(json.dumps(report_dict, indent=2) if as_json else text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnx-collapse")
def cli() -> None:
    """Collapse near-linear Gemm/MatMul chains of ONNX models and prove the result in onnxruntime."""


@cli.command()
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=False))
@click.argument("output_path", metavar="OUT.onnx", type=click.Path(dir_okay=False))
@click.option("--slope-tol", type=click.FloatRange(0), default=0.05, show_default=True,
              help="Fold activations whose slopes are all within this distance of 1.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime check (equivalence is then NOT checked).")
@check_options
@click.option("--rank-budget", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Truncate targeted layers to factor pairs keeping at most this fraction of their weights; "
                   "ranks minimise the largest layer error (ALDS).")
@click.option("--max-error", type=click.FloatRange(0), default=None,
              help="Instead of a budget: the smallest model whose every targeted layer error is below this.")
@click.option("--low-rank", type=click.Choice(["collapsed", "all"]), default="collapsed", show_default=True,
              help="Truncation targets: collapsed products only, or every linear layer.")
@click.option("--budget-metric", type=click.Choice(["params", "macs"]), default="params", show_default=True)
@click.option("--error-metric", type=click.Choice(["spectral", "frobenius"]), default="spectral", show_default=True)
@click.option("--max-groups", type=click.IntRange(1), default=1, show_default=True,
              help="Allow ALDS grouped factors with up to this many input-feature groups.")
@click.option("--allocator", type=click.Choice(["alds", "uniform", "energy"]), default="alds", show_default=True,
              help="How --rank-budget is shared among layers (uniform and energy are baselines).")
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in OUT.onnx.data (default: when the input did, or the model exceeds 1.8 GB).")
@click.option("--overwrite", is_flag=True, help="Allow OUT to be the same file as IN (replaced atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False), help="Also write the JSON report here.")
def optimize(input_path, output_path, slope_tol, no_verify, atol, rtol, seed, check_n, inputs, input_shape,
             metric, min_agreement, rank_budget, max_error, low_rank, budget_metric, error_metric, max_groups,
             allocator, external_data, overwrite, as_json, report_file) -> None:
    """Fold chains of IN.onnx and write the verified result to OUT.onnx."""
    with one_line_errors():
        src, dst = Path(input_path), Path(output_path)
        if dst.exists() and src.exists() and dst.resolve() == src.resolve() and not overwrite:
            raise CollapseError(f"{output_path!r} is the input file; pass --overwrite to replace it")
        if rank_budget is not None and max_error is not None:
            raise CollapseError("--rank-budget and --max-error exclude each other; give one")
        options = Options(slope_tol=slope_tol, verify=not no_verify, atol=atol, rtol=rtol, seed=seed,
                          check_n=check_n, inputs=inputs, input_shapes=_shapes(input_shape), metric=metric,
                          min_agreement=min_agreement, rank_budget=rank_budget, max_error=max_error,
                          low_rank=low_rank, budget_metric=budget_metric, error_metric=error_metric,
                          max_groups=max_groups, allocator=allocator)
        _, report = optimize_model(src, options, output=dst, external_data=external_data)
        _emit(report.to_dict(), render(report), as_json, report_file)
        if report.verification is not None and not report.verification.passed:
            click.echo("onnx-collapse: verification failed; no output written", err=True)
            sys.exit(1)


@cli.command()
@click.argument("input_path", metavar="IN.onnx", type=click.Path(dir_okay=False))
@click.option("--slope-tol", type=click.FloatRange(0), default=0.05, show_default=True)
@click.option("--spectrum", is_flag=True, help="Also show low-rank targets' spectra and the error/budget trade-off.")
@click.option("--low-rank", type=click.Choice(["collapsed", "all"]), default="collapsed", show_default=True,
              help="With --spectrum: collapsed products only, or every linear layer.")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
def analyze(input_path, slope_tol, spectrum, low_rank, as_json) -> None:
    """List every chain of IN.onnx: shapes, slopes, predicted savings, and why it would or would not fold."""
    with one_line_errors():
        found = analyze_model(input_path, Options(slope_tol=slope_tol, verify=False, low_rank=low_rank))
        report, remarks = found.report, found.remarks
        payload = report.to_dict() | {"remarks": [{"node": n, "remark": r} for n, r in remarks]}
        if spectrum:
            payload["spectra"] = [{"layer": s.name, "dims": [s.n_in, s.n_out],
                                   "singular_values": s.singular_values.tolist()} for s in found.spectra]
        lines = [render_folds(report.folds)]
        if remarks:
            lines += ["", "other layers:"] + [f"  {n}: {r}" for n, r in remarks]
        foldable = [f for f in report.folds if f.status == "foldable"]
        saved_params = sum(f.params_before - f.params_after for f in foldable)
        saved_macs = sum(f.macs_before - f.macs_after for f in foldable)
        lines += ["", f"{len(foldable)} foldable chain(s): parameters {report.before.params:,} -> "
                      f"{report.before.params - saved_params:,}; linear MACs/row {report.before.linear_macs:,} -> "
                      f"{report.before.linear_macs - saved_macs:,} (predicted; run optimize to verify)"]
        if spectrum:
            lines += ["", render_spectra(found.spectra)]
        click.echo(json.dumps(payload, indent=2) if as_json else "\n".join(lines))


@cli.command()
@click.argument("reference", metavar="A.onnx", type=click.Path(dir_okay=False))
@click.argument("candidate", metavar="B.onnx", type=click.Path(dir_okay=False))
@check_options
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def verify(reference, candidate, atol, rtol, seed, check_n, inputs, input_shape, metric, min_agreement,
           as_json) -> None:
    """Compare B.onnx with A.onnx in onnxruntime; exit 1 if any output differs beyond tolerance."""
    with one_line_errors():
        result = verify_models(reference, candidate, inputs=inputs, input_shapes=_shapes(input_shape), seed=seed,
                               check_n=check_n, atol=atol, rtol=rtol, metric=metric, min_agreement=min_agreement)
        payload = {"schema_version": SCHEMA_VERSION} | dataclasses.asdict(result)
        click.echo(json.dumps(payload, indent=2) if as_json else render_verification(result))
    if not result.passed:
        sys.exit(1)


def main() -> None:
    """Entry point: click's own usage errors become one line too (exit 2)."""
    try:
        code = cli.main(prog_name="onnx-collapse", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see 'onnx-collapse {exc.ctx.info_name} --help')" if exc.ctx and exc.ctx.parent else ""
        click.echo(f"onnx-collapse: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("onnx-collapse: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

