"""Signals held back while a step must happen whole: the renames that commit a run's outputs, the imports of
compiled modules (an interrupt inside a C extension's initialisation surfaces as an ImportError)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Within: Ctrl-C, SIGTERM and SIGHUP are noted, not acted on, and raised again on leaving, where their
    handlers then do what they would have done (so the step is whole, and the run stops as it would have).
    Python runs signal handlers in the main thread whichever thread the signal reaches, so the handlers
    are swapped rather than the signals blocked; elsewhere than the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def note(signum, frame) -> None:
        pending.append(signum)

    held = {s: signal.getsignal(s) for s in DEFERRED_SIGNALS}
    held = {s: h for s, h in held.items() if h is not None}  # a handler not set from Python cannot be put back
    for s in held:
        signal.signal(s, note)
    try:
        yield
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)
