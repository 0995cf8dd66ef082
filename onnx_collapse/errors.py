"""The one exception type for problems a user can cause (bad file, bad option), and how errors become one line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

_UNSET = object()


@dataclass(frozen=True)
class Param:
    """A mention of one of the API's parameters in an error message: ``Param("input_shapes")`` reads
    ``input_shapes``, ``Param("verify", False)`` reads ``verify=False``. The command line shows it as its
    flag instead (``--input-shape``, ``--no-verify``; the table is ``cli.FLAGS``)."""

    name: str
    value: object = _UNSET

    def __str__(self) -> str:
        return self.name if self.value is _UNSET else f"{self.name}={self.value!r}"

    @property
    def has_value(self) -> bool:
        return self.value is not _UNSET


Text = str | Param | tuple  # message text: a string, a parameter mention, or a tuple of such parts


def flatten(parts) -> list[str | Param]:
    """The strings and parameter mentions of ``parts`` (tuples opened), in order."""
    flat: list[str | Param] = []
    for part in parts:
        if isinstance(part, tuple):
            flat += flatten(part)
        else:
            flat.append(part if isinstance(part, Param) else str(part))
    return flat


def text(*parts: Text) -> str:
    """``parts`` as the API says them (parameters by name)."""
    return "".join(map(str, flatten(parts)))


class CollapseError(Exception):
    """A user-facing error: the message is one line that names the bad input.

    The message is given in parts (tuples of parts are opened): text, and ``Param`` mentions of the parameters it is about, so that the
    API's message names parameters (``input_shapes``) and the command line's names flags (``--input-shape``):
    ``CollapseError(Param("input_shapes"), " names 'y', which is not a model input")``. The CLI prints it as
    ``onnx-collapse: error: <message>`` and exits with code 2.
    """

    def __init__(self, *parts: Text) -> None:
        self.parts = tuple(flatten(parts))
        super().__init__("".join(map(str, self.parts)))

    @property
    def params(self) -> tuple[Param, ...]:
        """The parameters the message is about, in the order it names them."""
        return tuple(p for p in self.parts if isinstance(p, Param))

    def render(self, name: Callable[[Param], str]) -> str:
        """The message with each parameter mention written by ``name`` (the CLI: its flag)."""
        return "".join(name(p) if isinstance(p, Param) else p for p in self.parts)

    def prefixed(self, *parts: Text) -> CollapseError:
        """This error with ``parts`` put before its message (parameter mentions kept)."""
        return CollapseError(*parts, *self.parts)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters (then "..."); its type's name when
    it has no message. What a library's error (onnxruntime's, onnx's) becomes inside a CollapseError."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    return text[:limit] + ("..." if len(text) > limit else "")


def printable(text: str) -> str:
    """``text`` safe to show on a terminal: control characters other than newlines (escape sequences, carriage
    returns, that a node name in a model can carry) written as escapes (``\\x1b``), not acted on."""
    return "".join(c if c == "\n" or c.isprintable() else
                   c.encode("unicode_escape").decode("ascii") for c in text)
