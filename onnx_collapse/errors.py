"""The one exception type for problems a user can cause (bad file, bad option)."""


class CollapseError(Exception):
    """A user-facing error: the message is one line that names the bad input.

    The CLI prints it as ``onnx-collapse: error: <message>`` and exits with code 2.
    """
