"""What a model expects as input: layout, channels, size and dtype."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class InputSpec:
    """The image input of a model.

    ``height``/``width`` are None when the model accepts any size (dynamic dims);
    ``batch`` is None when the batch dimension is dynamic.
    """

    name: str
    layout: str  # "NCHW" or "NHWC"
    channels: int
    height: Optional[int]
    width: Optional[int]
    dtype: np.dtype
    batch: Optional[int] = None

    @property
    def channel_axis(self) -> int:
        return 1 if self.layout == "NCHW" else 3

    @property
    def spatial_axes(self) -> tuple[int, int]:
        return (2, 3) if self.layout == "NCHW" else (1, 2)

    @property
    def size(self) -> Optional[tuple[int, int]]:
        """(height, width) when both are fixed, else None."""
        if self.height is None or self.width is None:
            return None
        return (self.height, self.width)

    def shape(self, n: int = 1, height: Optional[int] = None, width: Optional[int] = None) -> tuple[int, ...]:
        h = height or self.height
        w = width or self.width
        if h is None or w is None:
            raise ValueError(f"input {self.name!r} has a dynamic size: give height and width")
        return (n, self.channels, h, w) if self.layout == "NCHW" else (n, h, w, self.channels)

    def to_nchw(self, x: np.ndarray) -> np.ndarray:
        return x if self.layout == "NCHW" else np.transpose(x, (0, 3, 1, 2))

    def from_nchw(self, x: np.ndarray) -> np.ndarray:
        return x if self.layout == "NCHW" else np.transpose(x, (0, 2, 3, 1))

    def hw(self, x: np.ndarray) -> tuple[int, int]:
        """Height and width of a batch in this layout."""
        a, b = self.spatial_axes
        return int(x.shape[a]), int(x.shape[b])

    def replace(self, **changes) -> "InputSpec":
        return replace(self, **changes)
