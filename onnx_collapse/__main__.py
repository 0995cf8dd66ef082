"""``python -m onnx_collapse``: the same command as the ``onnx-collapse`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
