"""Affine index maps from a group's iteration space to the index space of one value.

Lowering evaluates every value *at* a map: a value of shape (1, 8) read by an op over
(4, 8) is evaluated at the map (i, j) -> (0, j). Loads turn the composed map into a strided
GIR view, so broadcasts cost no copies (and later: transposes, slices, reversals).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pfjax import gir
from pfjax.gir import DType, View

Row = tuple[tuple[int, ...], int]


@dataclass(frozen=True)
class IndexMap:
    """rows: one per value dimension, (coefficients over the space dimensions, offset).
    dyn: per row, a GIR int64 value added at run time (a dynamic slice's start, an interior
    padding's quotient), or None; () when there is none. guard: a GIR bool that holds where
    the value is really read (a piece of a concatenation or padding); loads elsewhere are
    skipped."""
    rows: tuple[Row, ...]
    space_rank: int
    dyn: tuple[Any, ...] = ()
    guard: Any = None

    def dyn_of(self, k: int):
        return self.dyn[k] if self.dyn else None

    def derive(self, rows, dyn=None) -> "IndexMap":
        """A map with new rows (and their run-time parts), under the same guard."""
        dyn = tuple(dyn) if dyn is not None and any(x is not None for x in dyn) else ()
        return IndexMap(tuple(rows), self.space_rank, dyn, self.guard)

    def pick(self, dims) -> "IndexMap":
        """Row k is this map's row dims[k] (None: a zero row)."""
        rows = [self.rows[d] if d is not None else self._zero() for d in dims]
        return self.derive(rows, [self.dyn_of(d) if d is not None else None for d in dims])

    def affine(self, spec) -> "IndexMap":
        """Row k is scale * (this map's row src) + add, for spec[k] = (src, scale, add)."""
        rows, dyn = [], []
        for src, scale, add in spec:
            coeffs, off = self.rows[src]
            rows.append((tuple(c * scale for c in coeffs), off * scale + add))
            d = self.dyn_of(src)
            if d is not None and scale != 1:
                d = gir.alu("mul", DType.I64, d, gir.const(scale, DType.I64))
            dyn.append(d)
        return self.derive(rows, dyn)

    def shifted(self, k: int, value) -> "IndexMap":
        """Row k plus a run-time int64 value."""
        dyn = [self.dyn_of(j) for j in range(len(self.rows))]
        dyn[k] = value if dyn[k] is None else gir.alu("add", DType.I64, dyn[k], value)
        return self.derive(self.rows, dyn)

    def guarded(self, cond) -> "IndexMap":
        guard = cond if self.guard is None else gir.alu("and", DType.BOOL, self.guard, cond)
        return IndexMap(self.rows, self.space_rank, self.dyn, guard)

    def dynamic_offset(self, shape):
        """The run-time part of the row-major position in a value of `shape`, or None."""
        if not self.dyn:
            return None
        out = None
        for d, stride in zip(self.dyn, _row_major_strides(shape)):
            if d is None:
                continue
            term = d if stride == 1 else gir.alu("mul", DType.I64, d, gir.const(stride, DType.I64))
            out = term if out is None else gir.alu("add", DType.I64, out, term)
        return out

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
        picked = [None if operand_shape[k] == 1 and out_shape[d] != 1 else d
                  for k, d in enumerate(dims)]
        return self.pick(picked)

    def flat(self, shape) -> tuple[list[int], int]:
        """The row-major position in a value of `shape` read at this map, as coefficients
        over the space dimensions and an offset."""
        strides = _row_major_strides(shape)
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


def _row_major_strides(shape) -> list[int]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return strides[::-1]
