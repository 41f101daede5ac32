"""Division by a per-unit value: multiply by its reciprocal, computed once per unit.

In a reduction kernel, `x / s` with s constant along the row (softmax's sum, a norm's
standard deviation) costs a vector division per element; one division per row and a
multiplication per element is several times cheaper. The result may differ from the
division by one rounding (<= 1 ulp more error), which the accuracy tests bound. It is
done only where the reciprocal cannot overflow: divisors that are square roots (at least
~4e-23 when not 0) or sums of exponentials (softmax: at least 1).
"""
from __future__ import annotations

from pfjax import gir
from pfjax.gir import Op
from pfjax.gir.loops import loop_nest


def _at_least_row_max(n: gir.Node) -> bool:
    if n.op is Op.REDUCE:
        return n.arg.op == "max"
    return n.op is Op.ALU and n.arg == "max" and any(_at_least_row_max(s) for s in n.src)


def _feeds_max(d: gir.Node) -> bool:
    """The row max in exp(x - m) reduces the same x the sum's exp reads."""
    return _max_of_minuend(d.src[0].src[0])


def _max_of_minuend(sub: gir.Node) -> bool:
    """The max reduction inside m of x - m reduces this same x."""
    stack = [sub.src[1]]
    while stack:
        n = stack.pop()
        if n.op is Op.REDUCE and n.arg.op == "max":
            return n.src[0] is sub.src[0]
        stack.extend(s for s in n.src if s.op is Op.ALU or s.op is Op.REDUCE)
    return False


def shifted_by_row_max(n: gir.Node) -> tuple[gir.Node, gir.Node] | None:
    """(x, m) when n is float32 exp(x - m) with m at least the max over the row of this
    same x (softmax's shift): x - m is then <= 0, or NaN, in every lane."""
    if n.op is not Op.ALU or n.arg != "exp" or n.dtype is not gir.DType.F32:
        return None
    sub = n.src[0]
    if sub.op is not Op.ALU or sub.arg != "sub" or sub.dtype is not gir.DType.F32 \
            or not _at_least_row_max(sub.src[1]) or not _max_of_minuend(sub):
        return None
    return sub.src[0], sub.src[1]


def _reciprocal_is_finite(d: gir.Node) -> bool:
    if d.op is Op.CAST:
        return _reciprocal_is_finite(d.src[0])
    if d.op is Op.ALU and d.arg == "sqrt":
        return True
    if d.op is Op.REDUCE and d.arg.op == "sum":
        v = d.src[0]
        # sum(exp(x - max(x))) >= 1: the row's maximum contributes exp(0)
        return v.op is Op.ALU and v.arg == "exp" and v.src[0].op is Op.ALU \
            and v.src[0].arg == "sub" and _at_least_row_max(v.src[0].src[1]) \
            and _feeds_max(d)
    return False


def per_unit_reciprocal(kernel: gir.Kernel) -> gir.Kernel:
    if not kernel.parallel.rdims:
        return kernel
    nest = loop_nest(kernel)

    done: dict[int, gir.Node] = {}
    for n in gir.toposort(kernel.root):
        src = tuple(done[id(s)] for s in n.src)
        new = n if all(a is b for a, b in zip(src, n.src)) else n.replace(src=src)
        if n.op is Op.ALU and n.arg == "div" and n.dtype in (gir.DType.F32, gir.DType.BF16,
                                                            gir.DType.F16) \
                and nest.full.get(id(n.src[0])) and not nest.full.get(id(n.src[1]), True) \
                and not nest.final.get(id(n.src[1]), False) and _reciprocal_is_finite(n.src[1]):
            inv = gir.alu("div", n.dtype, gir.const(1.0, n.dtype), src[1])
            new = gir.alu("mul", n.dtype, src[0], inv)
        done[id(n)] = new
    return kernel.with_root(done[id(kernel.root)])
