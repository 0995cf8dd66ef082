"""Wall time and peak resident memory of a command, measured so that nothing of the caller is counted.

Linux keeps a process's peak RSS across fork and exec, so a command started straight from a large
Python process would report that process's peak too. A small launcher starts the command and reads
its children's peak with getrusage; the launcher itself is never counted.
"""

from __future__ import annotations

import subprocess
import sys

LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - start
sys.stdout.write(f"{code} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024} {wall}")
"""


def run_measured(*command, timeout: float = 1800) -> tuple[int, int, float]:
    """(exit code, peak resident bytes, wall seconds) of ``command``."""
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, command)], capture_output=True, text=True,
                         check=True, timeout=timeout).stdout.split()
    return int(out[0]), int(out[1]), float(out[2])


def python_measured(code: str, *args, timeout: float = 1800) -> tuple[int, int, float]:
    """The same for a Python snippet (``sys.argv[1:]`` are ``args``)."""
    return run_measured(sys.executable, "-c", code, *args, timeout=timeout)
