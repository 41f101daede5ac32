"""Per-primitive lowering rules: jaxpr equation -> GIR computation at an index map.

A primitive without a rule is a fusion boundary, reported with its name; never an error.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from jax import lax

from pfjax import gir
from pfjax.gir import DType

# rule(lowerer, eqn, index_map) -> list of GIR nodes, one per output
Rule = Callable[..., list]
RULES: dict[str, Rule] = {}
# Primitives whose fused cost is mostly arithmetic (kept out of "cheap" recomputation).
TRANSCENDENTAL: set[str] = set()


def rule(*names: str):
    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn
    return register


def gir_dtype(aval) -> DType:
    return gir.dtype_from_name(np.dtype(aval.dtype).name)


def _operands(lw, eqn, imap) -> list:
    out_shape = eqn.outvars[0].aval.shape
    return [lw.read(a, imap.broadcast_operand(a.aval.shape, out_shape)) for a in eqn.invars]


def _alu_rule(op_name: str):
    def lower(lw, eqn, imap):
        out_dtype = gir_dtype(eqn.outvars[0].aval)
        return [gir.alu(op_name, out_dtype, *_operands(lw, eqn, imap))]
    return lower


_UNARY = {
    "neg": "neg", "abs": "abs", "sign": "sign", "floor": "floor", "ceil": "ceil",
    "sqrt": "sqrt", "rsqrt": "rsqrt", "cbrt": "cbrt", "exp": "exp", "exp2": "exp2",
    "expm1": "expm1", "log": "log", "log1p": "log1p", "tanh": "tanh", "logistic": "logistic",
    "erf": "erf", "erfc": "erfc", "sin": "sin", "cos": "cos", "tan": "tan", "not": "not",
    "is_finite": "is_finite",
}
_BINARY = {
    "add": "add", "add_any": "add", "sub": "sub", "mul": "mul", "div": "div", "rem": "rem",
    "max": "max", "min": "min", "pow": "pow", "atan2": "atan2", "and": "and", "or": "or",
    "xor": "xor", "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge",
}
for _prim, _op in {**_UNARY, **_BINARY}.items():
    RULES[_prim] = _alu_rule(_op)
    if gir.alu_op(_op).transcendental:
        TRANSCENDENTAL.add(_prim)


@rule("copy", "copy_p", "stop_gradient")
def _copy(lw, eqn, imap):
    return _operands(lw, eqn, imap)


@rule("square")
def _square(lw, eqn, imap):
    (x,) = _operands(lw, eqn, imap)
    return [gir.alu("mul", x.dtype, x, x)]


@rule("round")
def _round(lw, eqn, imap):
    (x,) = _operands(lw, eqn, imap)
    away = eqn.params["rounding_method"] == lax.RoundingMethod.AWAY_FROM_ZERO
    return [gir.alu("round_away" if away else "round_even", x.dtype, x)]


@rule("integer_pow")
def _integer_pow(lw, eqn, imap):
    # Same multiplication order as JAX's own lowering, so results match bit for bit.
    (x,) = _operands(lw, eqn, imap)
    y = eqn.params["y"]
    one = gir.const(1, x.dtype)
    if y == 0:
        return [one]
    reciprocal, y = y < 0, abs(y)
    acc = None
    while y > 0:
        if y & 1:
            acc = x if acc is None else gir.alu("mul", x.dtype, acc, x)
        y >>= 1
        if y > 0:
            x = gir.alu("mul", x.dtype, x, x)
    return [gir.alu("div", acc.dtype, one, acc) if reciprocal else acc]


@rule("convert_element_type")
def _convert(lw, eqn, imap):
    (x,) = _operands(lw, eqn, imap)
    return [gir.cast(x, gir_dtype(eqn.outvars[0].aval))]


@rule("select_n")
def _select_n(lw, eqn, imap):
    which, *cases = _operands(lw, eqn, imap)
    return [gir.select(which, cases)]


@rule("clamp")
def _clamp(lw, eqn, imap):
    lo, x, hi = _operands(lw, eqn, imap)
    return [gir.alu("min", x.dtype, gir.alu("max", x.dtype, x, lo), hi)]


@rule("broadcast_in_dim")
def _broadcast_in_dim(lw, eqn, imap):
    (x,) = eqn.invars
    inner = imap.broadcast_operand(x.aval.shape, eqn.params["shape"], eqn.params["broadcast_dimensions"])
    return [lw.read(x, inner)]


# Reductions: a group's iteration space is their input's shape, reduced over `axes`.
REDUCTIONS = {"reduce_sum": "sum", "reduce_prod": "prod", "reduce_max": "max",
              "reduce_min": "min", "reduce_and": "and", "reduce_or": "or",
              "argmax": "max", "argmin": "min"}


def _reduce_rule(op: str):
    def lower(lw, eqn, imap):
        (x,) = eqn.invars
        return [gir.reduce(op, lw.read(x, lw.reduction_input_map(eqn, imap)), lw.rdims)]
    return lower


for _prim in ("reduce_sum", "reduce_prod", "reduce_max", "reduce_min", "reduce_and", "reduce_or"):
    RULES[_prim] = _reduce_rule(REDUCTIONS[_prim])


@rule("argmax", "argmin")
def _argmax(lw, eqn, imap):
    # Two reductions: the extreme value, then the first index holding it (or holding a
    # NaN, which is the extreme when there is one), as XLA's argmax does.
    (x,) = eqn.invars
    (axis,) = eqn.params["axes"]
    v = lw.read(x, lw.reduction_input_map(eqn, imap))
    best = gir.reduce(REDUCTIONS[eqn.name], v, lw.rdims)
    hit = gir.alu("eq", DType.BOOL, v, best)
    if v.dtype.is_float:
        hit = gir.alu("or", DType.BOOL, hit, gir.alu("ne", DType.BOOL, v, v))
    where = gir.select(hit, [gir.const(2**62, DType.I64), gir.index(axis)])
    first = gir.reduce("min", where, lw.rdims)
    return [gir.cast(first, gir_dtype(eqn.outvars[0].aval))]


# Equations that are free or nearly so when recomputed inside a consumer's loop.
CHEAP_TO_RECOMPUTE = {"broadcast_in_dim", "convert_element_type", "copy", "copy_p", "neg",
                      "add", "sub", "mul", "max", "min", "select_n", "abs"}
