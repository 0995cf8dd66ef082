"""Where a linear map's features lie in its tensors: the typed layouts layer kinds own.

A layer computes ``y = X W + b`` on the rows ``X`` it cuts from its input tensor. Its kind says how, once,
in a ``Layout`` the layer carries (``Layer.layout``) and the maps written for it keep (``Emission.layout``):

- ``rows``: how the rows are read from the input tensor (and the output's from the output), for the
  calibration statistics: ``LastAxis`` (features on the last axis, one row per position) or ``Windows``
  (the windows a convolution reads, with its kernel, strides, pads, dilations and groups);
- ``group_unit``: matrix rows per input feature (grouped factors split the rows in whole units);
- ``macs``: multiply-accumulates per sample of a map of that shape run at the layout's output positions;
- ``sample_shape``: a small input a probe or chain check can run the map on.

The passes, calibration and verification read these and never ask which kind a layer is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import convalg

RowPairs = Iterable[tuple[np.ndarray, "np.ndarray | None"]]  # (x rows (k, n_in), y rows (k, n_out) or None)


class Rows(ABC):
    """How a map's input rows (and its output's matching rows) are read from captured tensors. Subclasses
    are frozen dataclasses: calibration requests are keyed by them, compared by value."""

    noun: ClassVar[str] = "rows"  # what a row is, in the report's words
    mismatch: ClassVar[str] = "its tensors do not line up"  # why tensors that do not fit get no statistics

    @abstractmethod
    def pairs(self, x: np.ndarray, y: np.ndarray | None, n_in: int, n_out: int | None, max_bytes: int
              ) -> RowPairs | None:
        """(x rows, y rows) chunks of one batch, each within about ``max_bytes`` where the reader unfolds
        its input; None if ``x`` (of ``n_in`` features a row) and ``y`` are not laid out this way."""


def last_axis_rows(value: np.ndarray, width: int) -> np.ndarray | None:
    """The tensor as (rows, width) with features on the last axis, or None if it is not laid out so."""
    value = np.asarray(value)
    if value.ndim == 0 or value.shape[-1] != width:
        return None
    return value.reshape(-1, width)


@dataclass(frozen=True)
class LastAxis(Rows):
    """Features on the last axis: every position (all leading axes) is one row."""

    noun: ClassVar[str] = "rows"
    mismatch: ClassVar[str] = "its tensors do not have the features on the last axis, row for row"

    def pairs(self, x, y, n_in, n_out, max_bytes):
        x_rows = last_axis_rows(x, n_in)
        y_rows = None if y is None else last_axis_rows(y, n_out or 0)
        if x_rows is None or (y is not None and (y_rows is None or y_rows.shape[0] != x_rows.shape[0])):
            return None
        return [(x_rows, y_rows)]


LAST_AXIS = LastAxis()


@dataclass(frozen=True)
class Windows(Rows):
    """The windows a convolution reads (``convalg.patches``): a row is one window, channels x kernel
    positions (channel-major); the output's channels (axis 1) at the same output position are its row."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # begin pads then end pads, as ONNX
    dilations: tuple[int, ...]
    groups: int = 1

    noun: ClassVar[str] = "windows"
    mismatch: ClassVar[str] = "its tensors are not the convolution's input and output"

    @property
    def size(self) -> int:
        """Kernel positions per channel."""
        return int(np.prod(self.kernel, dtype=np.int64))

    def pairs(self, x, y, n_in, n_out, max_bytes):
        spatial = len(self.kernel)
        if x.ndim != 2 + spatial or x.shape[1] * self.size != n_in:
            return None
        out = convalg.output_size(x.shape[2:], self.kernel, self.strides, self.pads, self.dilations)
        if min(out, default=1) < 1:
            return None
        if y is not None and (y.shape[:2] != (x.shape[0], n_out) or tuple(y.shape[2:]) != out):
            return None

        def blocks():
            for images, rows, windows in convalg.window_blocks(x, self.kernel, self.strides, self.pads,
                                                               self.dilations, max_bytes):
                outs = None if y is None else np.moveaxis(y[images, :, rows], 1, -1).reshape(-1, n_out)
                yield windows, outs
        return blocks()


@dataclass(frozen=True)
class Layout(ABC):
    """How a map lays out its features: ``input_rank`` of its input where known, ``positions`` (output
    positions per sample it runs at: a convolution's output pixels, a 3-D input's tokens, where known; else
    1) and, per subclass, the feature ``axis`` and the rows it reads."""

    input_rank: int | None = None
    positions: int = 1

    axis: ClassVar[int]  # where the features are: -1 the last axis, 1 the channels

    @property
    @abstractmethod
    def rows(self) -> Rows:
        """How calibration reads the map's rows."""

    @property
    def group_unit(self) -> int:
        """Matrix rows per input feature: grouped factors split the rows in whole units."""
        return 1

    def macs(self, n_in: int, n_out: int) -> int:
        """Multiply-accumulates per sample of a map from ``n_in`` input features to ``n_out``, at
        ``positions`` output positions."""
        return n_in * self.group_unit * n_out * self.positions

    @abstractmethod
    def sample_shape(self, rows: int) -> list[int]:
        """A small input shape a map with ``rows`` matrix rows accepts in this layout."""


@dataclass(frozen=True)
class Features(Layout):
    """Fully connected: features on the last axis, one matrix row per feature."""

    axis: ClassVar[int] = -1

    @property
    def rows(self) -> Rows:
        return LAST_AXIS

    def sample_shape(self, rows: int) -> list[int]:
        return [4] * ((self.input_rank or 2) - 1) + [rows]


@dataclass(frozen=True, kw_only=True)
class ConvLayout(Layout):
    """A convolution: channels on axis 1, read as ``window`` (``Windows``, keyword only); its matrix has a
    row per input channel and kernel position, and each group's outputs read only its own channels."""

    window: Windows

    axis: ClassVar[int] = 1

    @property
    def rows(self) -> Rows:
        return self.window

    @property
    def group_unit(self) -> int:
        return self.window.size

    def macs(self, n_in: int, n_out: int) -> int:
        return n_in * self.group_unit * n_out * self.positions // self.window.groups

    def sample_shape(self, rows: int) -> list[int]:
        channels = rows // self.group_unit
        extent = [d * (k - 1) + 1 for k, d in zip(self.window.kernel, self.window.dilations)]
        return [2, channels, *(max(8, 2 * e) for e in extent)]
