"""Tensor types of the IR.

Shapes are per sample: the batch dimension is implicit, as in `.net` files, and a
`batched` flag says whether a tensor carries one (activations do; parameters, their
gradients and scalar losses do not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    batched: bool = True
    dtype: str = "float32"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        """Elements per sample (or in total, when not batched)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * 4

    def full_shape(self, batch: int) -> tuple[int, ...]:
        return ((batch,) + self.shape) if self.batched else self.shape

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{'N, ' if self.batched and dims else ('N' if self.batched else '')}{dims}" \
            .join("[]")


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
