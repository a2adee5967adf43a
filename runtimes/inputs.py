"""One small pull protocol for model inputs, shared by calibration and benchmarking.

Modelled on onnxruntime.quantization's ``CalibrationDataReader``: ``get_next()`` returns ``{input_name: array}``
or ``None`` when exhausted; ``rewind()`` starts over. Any quantiser that accepts a CalibrationDataReader accepts it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class ArrayFeed:
    """Feed ``x`` ``(N, ...)`` in batches of ``batch`` under the input name ``name``."""

    def __init__(self, x: np.ndarray, name: str = "input", batch: int = 1,
                 on_next: Callable[[], None] | None = None) -> None:
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.name = name
        self.batch = batch
        self.on_next = on_next  # e.g. advance a progress bar
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.x):
            return None
        out = {self.name: self.x[self._pos:self._pos + self.batch]}
        self._pos += self.batch
        if self.on_next is not None:
            self.on_next()
        return out

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch)
