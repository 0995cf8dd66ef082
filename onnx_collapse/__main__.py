"""``python -m onnx_collapse`` and the ``onnx-collapse`` console script: the command line, loaded so that an
interrupt while its modules load ends in one line too."""

import sys


def main() -> None:
    """Load the command line and run it; Ctrl-C while it loads: one line and exit 130, as later."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("onnx-collapse: aborted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
