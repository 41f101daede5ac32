"""Variance in one pass where a second pass would go back to memory.

`sum((x - mean(x))**2)` needs the mean before the squares, so it makes two loops over x.
In a row reduction the row is still at the local level for the second loop; in a column
reduction (statistics over the batch) a block of columns over all rows does not fit, and
the second loop reads x again from the shared cache or memory. There the pass rewrites the
centred sum with shifted sums, which need only x:

    sum((x - m)**2) = sum((x - k)**2) - sum(x - k)**2 / n,   k = x at reduced index 0

The shift k (one element of the column) keeps the two sums the size of the spread of the
data rather than of its mean (the shifted-data algorithm). The subtraction can still lose
up to log10(n) digits when k is an outlier (a first row far from the rest), so the
differences, squares and sums are float64: exact squares of float32 values, and n * 1e-16
relative error in the sums, which keeps the result within float32 rounding of the
two-pass value for any data.
"""
from __future__ import annotations

import math

from pfjax import gir
from pfjax.gir import Op
from pfjax.gir.loops import loop_nest


def _mean_of(m: gir.Node, rdims: tuple[int, ...], count: int) -> gir.Node | None:
    """The x of `m = sum(x) / count` over rdims, else None."""
    if m.op is not Op.ALU or m.arg != "div" or m.src[1].op is not Op.CONST:
        return None
    total = m.src[0]
    if total.op is not Op.REDUCE or total.arg.op != "sum" or set(total.arg.dims) != set(rdims):
        return None
    return total.src[0] if float(m.src[1].arg) == float(count) else None


def _plain_load(x: gir.Node) -> gir.Node | None:
    """x as one static, unguarded load of an input (possibly cast), else None."""
    inner = x.src[0] if x.op is Op.CAST else x
    if inner.op is Op.LOAD and not gir.is_tile_load(inner) and len(inner.src) == 1:
        return inner
    return None


def _shift(x: gir.Node, rdims: tuple[int, ...]) -> gir.Node:
    """x at index 0 of the reduced dimensions: the same load with those strides zeroed."""
    inner = _plain_load(x)
    view = inner.arg.view
    strides = tuple(0 if d in rdims else s for d, s in enumerate(view.strides))
    k = gir.load(inner.src[0], gir.View(view.shape, strides, view.offset), inner.level)
    return gir.cast(k, x.dtype)


def _centred(node: gir.Node, rdims, count):
    """x when node is sum((x - m) * (x - m)) over rdims with m = mean(x), else None."""
    if node.op is not Op.REDUCE or node.arg.op != "sum" or set(node.arg.dims) != set(rdims):
        return None
    sq = node.src[0]
    if sq.op is not Op.ALU or sq.arg != "mul" or sq.src[0] is not sq.src[1]:
        return None
    d = sq.src[0]
    if d.op is not Op.ALU or d.arg != "sub":
        return None
    for x, m in ((d.src[0], d.src[1]), (d.src[1], d.src[0])):
        if _mean_of(m, rdims, count) is x and _plain_load(x) is not None:
            return x
    return None


def one_pass_moments(kernel: gir.Kernel, target: gir.Target) -> gir.Kernel:
    par = kernel.parallel
    if not par.column_style or par.split > 1:
        return kernel
    rdims = par.rdims
    count = math.prod(par.space[d] for d in rdims)
    # A block of two vectors of columns that stays local keeps the exact two-pass form
    # (the schedule narrows blocks to fit then: schedule.decisions).
    if gir.column_block_bytes(kernel, 2 * max(1, target.lanes)) <= target.level(gir.LOCAL).capacity_bytes:
        return kernel
    nest = loop_nest(kernel)

    def rewrite(node: gir.Node) -> gir.Node | None:
        x = _centred(node, rdims, count)
        # float64 data gains nothing from float64 sums: there the shifted form would lose
        # up to log10(n) digits against the two-pass one.
        if x is None or node.dtype not in (gir.DType.F32, gir.DType.BF16, gir.DType.F16) \
                or x.dtype is gir.DType.F64 or nest.phase.get(id(x), 1) != 0:
            return None
        dt, f64 = node.dtype, gir.DType.F64
        d = gir.alu("sub", f64, gir.cast(x, f64), gir.cast(_shift(x, rdims), f64))
        s1 = gir.reduce("sum", d, rdims)
        s2 = gir.reduce("sum", gir.alu("mul", f64, d, d), rdims)
        mean_part = gir.alu("div", f64, gir.alu("mul", f64, s1, s1), gir.const(float(count), f64))
        # Rounding can leave a tiny negative where the spread is ~0; the true sum is >= 0.
        centred = gir.alu("max", f64, gir.alu("sub", f64, s2, mean_part), gir.const(0.0, f64))
        return gir.cast(centred, dt)

    return kernel.with_root(gir.rewrite(kernel.root, rewrite))
