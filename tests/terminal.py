"""Running the console script with one of its streams on a pseudo-terminal, as a person would see it."""

import os
import pty
import subprocess

from tests.common import EXE


def run_on_terminal(*args, stream: str = "stderr", columns: int = 100) -> tuple[int, str, str]:
    """Run ``onnx-collapse args`` with ``stream`` ("stdout" or "stderr") on a pseudo-terminal and the other
    piped; returns the exit code, what the terminal received, and the piped stream."""
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm", COLUMNS=str(columns))
    ends = {"stdout": slave, "stderr": subprocess.PIPE} if stream == "stdout" else {"stdout": subprocess.PIPE,
                                                                                   "stderr": slave}
    proc = subprocess.Popen([EXE, *map(str, args)], text=True, env=env, **ends)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the terminal closed: the command has ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    piped = (proc.stderr if stream == "stdout" else proc.stdout).read()
    code = proc.wait(timeout=120)
    return code, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n"), piped
