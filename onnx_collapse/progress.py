"""Progress of long work: a silent default, a terminal display on stderr, and the hooks the pipeline calls.

The pipeline marks its stages with :func:`stage` and counts steps (layers, folds) with :func:`advance`;
both go to the :class:`Progress` installed for the current call by the public functions' ``progress=``
keyword (see :func:`reported`), and do nothing when none is. No parameter is threaded through the passes.
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO, TypeVar

from .errors import printable


class Progress:
    """The interface the pipeline reports to; this base class ignores everything (silent)."""

    def start(self) -> None:
        """Called once before the work of a call."""

    def stop(self) -> None:
        """Called once after it, also when it fails."""

    def begin(self, label: str, total: int | None, unit: str | None = None) -> None:
        """A stage starts (stages nest); ``total`` steps if known, each a ``unit`` ("layer") if named."""

    def end(self) -> None:
        """The innermost stage ends."""

    def step(self, count: int) -> None:
        """``count`` more steps of the innermost stage are done."""


class TerminalProgress(Progress):
    """Open stages as transient lines on a terminal (stderr by default): spinner, label, the step being
    worked on with its total ("layer 6 of 24"), elapsed time.

    Uses rich, imported only here; the lines are erased when the work ends. Starting it twice (the CLI
    starts it before the slow imports, the API call again) shows one display.
    """

    def __init__(self, file: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import Progress as Lines
        from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

        console = Console(file=file or sys.stderr)
        self._lines = Lines(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[done]}"),
                            TimeElapsedColumn(), console=console, transient=True, redirect_stdout=False,
                            redirect_stderr=False)
        self._open: list[list] = []  # [task id, steps done, total, unit] per open stage, innermost last
        self._starts = 0

    def start(self) -> None:
        self._starts += 1
        if self._starts == 1:
            self._lines.start()

    def stop(self) -> None:
        self._starts -= 1
        if self._starts == 0:
            self._lines.stop()

    def begin(self, label: str, total: int | None, unit: str | None = None) -> None:
        from rich.markup import escape

        task = [None, 0, total, unit]  # a label names layers: their names are shown as written, not as markup
        task[0] = self._lines.add_task(escape(printable(label)), total=total, done=_count(task))
        self._open.append(task)

    def end(self) -> None:
        self._lines.remove_task(self._open.pop()[0])

    def step(self, count: int) -> None:
        if not self._open:
            return
        task = self._open[-1]
        task[1] += count
        self._lines.update(task[0], done=_count(task))


def _count(task: list) -> str:
    """The step being worked on, in words: "layer 6 of 24" (the sixth, once five are done), "6 of 24", or
    "5 done" without a total; nothing before the first step of a stage without a total."""
    _, done, total, unit = task
    words = f"{unit} " if unit else ""
    if total:
        return f"{words}{min(done + 1, total)} of {total}"
    return f"{done} {unit + 's ' if unit else ''}done" if done else ""


SILENT = Progress()
_active: ContextVar[Progress] = ContextVar("onnx_collapse_progress", default=SILENT)


@contextmanager
def reporting(progress: Progress | None) -> Iterator[None]:
    """Send the enclosed work's stages to ``progress``; None keeps the one already active (default silent)."""
    if progress is None:
        yield
        return
    token = _active.set(progress)
    progress.start()
    try:
        yield
    finally:
        progress.stop()
        _active.reset(token)


@contextmanager
def stage(label: str, total: int | None = None, unit: str | None = None) -> Iterator[None]:
    """Mark the enclosed work as a stage of the active progress (``total`` steps of ``unit``, if known)."""
    progress = _active.get()
    if unit is None:
        progress.begin(label, total)  # Progress subclasses written before units keep working
    else:
        progress.begin(label, total, unit)
    try:
        yield
    finally:
        progress.end()


def advance(count: int = 1) -> None:
    """Count ``count`` steps of the innermost open stage."""
    _active.get().step(count)


F = TypeVar("F", bound=Callable)


def reported(func: F) -> F:
    """Give ``func`` a keyword ``progress``: a :class:`Progress` its stages go to during the call (default:
    silent, or the caller's when called from inside reported work)."""

    @functools.wraps(func)
    def wrapper(*args, progress: Progress | None = None, **kwargs):
        with reporting(progress):
            return func(*args, **kwargs)

    signature = inspect.signature(func)
    keyword = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation="Progress | None")
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    wrapper.__signature__ = signature.replace(parameters=[*params[:at], keyword, *params[at:]])
    return wrapper  # type: ignore[return-value]
