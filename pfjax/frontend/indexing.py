"""Affine index maps from a group's iteration space to the index space of one value.

Lowering evaluates every value *at* a map: a value of shape (1, 8) read by an op over
(4, 8) is evaluated at the map (i, j) -> (0, j). Loads turn the composed map into a strided
GIR view, so broadcasts cost no copies (and later: transposes, slices, reversals).
"""
from __future__ import annotations

from dataclasses import dataclass

from pfjax.gir import View


@dataclass(frozen=True)
class IndexMap:
    # One row per value dimension: (coefficients over the space dimensions, offset).
    rows: tuple[tuple[tuple[int, ...], int], ...]
    space_rank: int

    @staticmethod
    def identity(rank: int) -> "IndexMap":
        return IndexMap(tuple((tuple(int(i == d) for i in range(rank)), 0) for d in range(rank)), rank)

    def _zero(self) -> tuple[tuple[int, ...], int]:
        return ((0,) * self.space_rank, 0)

    def broadcast_operand(self, operand_shape, out_shape, dims=None) -> "IndexMap":
        """Map for an operand broadcast into a value at `self` (numpy rules when dims is
        None: equal rank with 1s, or rank 0; else broadcast_in_dim's dimensions)."""
        if dims is None:
            if len(operand_shape) == 0:
                return IndexMap((), self.space_rank)
            dims = range(len(out_shape) - len(operand_shape), len(out_shape))
        rows = []
        for k, d in enumerate(dims):
            broadcast = operand_shape[k] == 1 and out_shape[d] != 1
            rows.append(self._zero() if broadcast else self.rows[d])
        return IndexMap(tuple(rows), self.space_rank)

    def flat(self, shape) -> tuple[list[int], int]:
        """The row-major position in a value of `shape` read at this map, as coefficients
        over the space dimensions and an offset."""
        strides, acc = [], 1
        for n in reversed(shape):
            strides.append(acc)
            acc *= n
        strides.reverse()
        terms = [0] * self.space_rank
        offset = 0
        for (coeffs, off), s in zip(self.rows, strides):
            offset += off * s
            for j, c in enumerate(coeffs):
                terms[j] += c * s
        return terms, offset

    def view(self, shape, space) -> View:
        """Strided view of a row-major buffer of `shape` read at this map over `space`."""
        view_strides, offset = self.flat(shape)
        # A stride along a space dimension of extent 1 is never used: normalise it away.
        view_strides = [0 if n == 1 else s for s, n in zip(view_strides, space)]
        return View(tuple(space), tuple(view_strides), offset)
