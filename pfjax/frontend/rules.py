"""Per-primitive lowering rules: jaxpr equation -> GIR computation at an index map.

A primitive without a rule is a fusion boundary, reported with its name; never an error.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from jax import lax

from pfjax import gir
from pfjax.gir import DType
from pfjax.frontend.indexing import IndexMap
from pfjax.frontend.shapes import refine, split_flat

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
        return [gir.reduce(op, lw.read(x, lw.reduction_input_map(eqn, imap)),
                           lw.reduction_dims(eqn))]
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
    # int32 positions where the axis allows: twice the lanes of int64 per vector
    narrow = x.aval.shape[axis] < 2**31 - 1
    position = lw.axis_index(x.aval.shape, axis)
    if narrow:
        position = gir.cast(position, DType.I32)
    none = gir.const(2**31 - 1, DType.I32) if narrow else gir.const(2**62, DType.I64)
    where = gir.select(hit, [none, position])
    first = gir.reduce("min", where, lw.rdims)
    return [gir.cast(first, gir_dtype(eqn.outvars[0].aval))]


def take_along_axis(eqn) -> int | None:
    """The axis of a gather that picks one element per row along it, with an index per
    row (jnp.take_along_axis, as in cross-entropy with integer labels); else None."""
    if eqn.name != "gather":
        return None
    dn = eqn.params["dimension_numbers"]
    operand, indices = eqn.invars
    shape = operand.aval.shape
    if len(dn.collapsed_slice_dims) != 1 or tuple(dn.start_index_map) != tuple(dn.collapsed_slice_dims) \
            or any(n != 1 for n in eqn.params["slice_sizes"]) \
            or indices.aval.shape[-1:] != (1,) or not np.issubdtype(operand.aval.dtype, np.floating):
        return None
    (axis,) = dn.collapsed_slice_dims
    rest = [d for d in range(len(shape)) if d != axis and d not in dn.operand_batching_dims]
    if any(shape[d] != 1 for d in rest) or len(rest) != len(dn.offset_dims):
        return None
    mode = str(eqn.params["mode"])
    return axis if "FILL_OR_DROP" in mode or "CLIP" in mode or "PROMISE" in mode else None


@rule("gather")
def _gather(lw, eqn, imap):
    # One element per row: a dynamic load at the row's label (clamped into the row, so
    # that even a broken promise reads inside the operand), once per row, outside the
    # loops over the row.
    axis = take_along_axis(eqn)
    operand, indices = eqn.invars
    dn = eqn.params["dimension_numbers"]
    if tuple(operand.aval.shape) != lw.space or lw.rdims != (axis,) or imap.dyn \
            or imap.guard is not None:
        raise ValueError("the gathered axis is not the kernel's reduced axis")
    # output dims: offset dims (operand dims of extent 1), then the indices' batch dims
    batch_out = [d for d in range(len(eqn.outvars[0].aval.shape)) if d not in dn.offset_dims]
    idx_rows = [imap.rows[d] for d in batch_out] + [imap._zero()]
    rows = [imap._zero()] * len(operand.aval.shape)
    for od, sd in zip(dn.operand_batching_dims, dn.start_indices_batching_dims):
        rows[od] = idx_rows[sd]
    idx_map = IndexMap(tuple(idx_rows), imap.space_rank)
    idx = gir.cast(lw.read(indices, idx_map), DType.I64)
    n = operand.aval.shape[axis]
    mode = str(eqn.params["mode"])
    inside = gir.alu("min", DType.I64, gir.alu("max", DType.I64, idx, gir.const(0, DType.I64)),
                     gir.const(n - 1, DType.I64))
    dyn = [None] * len(rows)
    dyn[axis] = inside
    picked = lw.read(operand, IndexMap(tuple(rows), imap.space_rank, tuple(dyn)))
    if "FILL_OR_DROP" in mode:
        fill = eqn.params.get("fill_value")
        fill = np.nan if fill is None else fill
        out = gir.alu("or", DType.BOOL, gir.alu("lt", DType.BOOL, idx, gir.const(0, DType.I64)),
                      gir.alu("ge", DType.BOOL, idx, gir.const(n, DType.I64)))
        picked = gir.select(out, [picked, gir.const(fill, picked.dtype)])
    return [gir.cast(picked, gir_dtype(eqn.outvars[0].aval))]


@rule("reshape", "squeeze")
def _reshape(lw, eqn, imap):
    # Row-major order is kept: read the operand at the same flat position, which is
    # affine in the space when both shapes coarsen it (frontend/shapes.py).
    (x,) = eqn.invars[:1]
    out_shape = eqn.outvars[0].aval.shape
    terms, offset = imap.flat(out_shape)
    rows = split_flat(terms, offset, x.aval.shape, lw.space)
    if rows is None or imap.dyn:
        raise ValueError(f"reshape {x.aval.shape} -> {out_shape} is not affine in {lw.space}")
    return [lw.read(x, imap.derive(rows))]


def put_along_axis(eqn) -> int | None:
    """The axis of a scatter-add that adds one update per row at an index along it (the
    transpose of take_along_axis, in the gradient of cross-entropy); else None."""
    if eqn.name != "scatter-add":
        return None
    dn = eqn.params["dimension_numbers"]
    operand, indices, updates = eqn.invars
    shape = operand.aval.shape
    if len(dn.inserted_window_dims) != 1 or tuple(dn.scatter_dims_to_operand_dims) != tuple(
            dn.inserted_window_dims) or indices.aval.shape[-1:] != (1,):
        return None
    (axis,) = dn.inserted_window_dims
    rest = [d for d in range(len(shape)) if d != axis and d not in dn.operand_batching_dims]
    if any(shape[d] != 1 for d in rest) or len(rest) != len(dn.update_window_dims):
        return None
    return axis if "CLIP" not in str(eqn.params["mode"]) else None


@rule("scatter-add")
def _scatter_add(lw, eqn, imap):
    axis = put_along_axis(eqn)
    operand, indices, updates = eqn.invars
    dn = eqn.params["dimension_numbers"]
    if imap.dyn or imap.guard is not None:
        raise ValueError("scatter-add read through a dynamic slice, concatenation or padding")
    base = lw.read(operand, imap)
    rank = len(updates.aval.shape)
    batch_upd = [d for d in range(rank) if d not in dn.update_window_dims]
    upd_rows = [imap._zero()] * rank
    for od, sd in zip(dn.operand_batching_dims, dn.scatter_indices_batching_dims):
        upd_rows[batch_upd[sd]] = imap.rows[od]
    idx_rows = [upd_rows[d] for d in batch_upd] + [imap._zero()]
    upd = lw.read(updates, IndexMap(tuple(upd_rows), imap.space_rank))
    idx = gir.cast(lw.read(indices, IndexMap(tuple(idx_rows), imap.space_rank)), DType.I64)
    where = lw.index_expr(imap.rows[axis])
    hit = gir.alu("eq", DType.BOOL, where, idx)
    added = gir.select(hit, [gir.const(0, upd.dtype), upd])
    return [gir.alu("add", base.dtype, base, added)]


def unit_reshape(eqn) -> bool:
    x, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    return [n for n in x if n != 1] == [n for n in out if n != 1] and (
        eqn.name == "squeeze" or eqn.params.get("dimensions") is None)


def cannot_lower(eqn) -> str | None:
    """Why a primitive with a rule still cannot lower this equation (None: it can)."""
    if eqn.name == "scatter-add" and put_along_axis(eqn) is None:
        return "scatter-add other than one update per row (the transpose of take_along_axis)"
    if eqn.name == "gather" and take_along_axis(eqn) is None:
        return "gather other than one element per row (take_along_axis)"
    if eqn.name == "reshape" and (eqn.params.get("dimensions") is not None or refine(
            eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape) is None):
        return "reshape that is not a split or merge of dimensions"
    return None


# Equations that are free or nearly so when recomputed inside a consumer's loop.
CHEAP_TO_RECOMPUTE = {"iota", "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not",
                      "broadcast_in_dim", "convert_element_type", "copy", "copy_p", "neg", "reshape", "squeeze",
                      "add", "sub", "mul", "max", "min", "select_n", "abs"}


# Data movement primitives (transpose, slice, concatenate, pad, ...): their own file.
from pfjax.frontend import movement  # noqa: E402,F401  (registers its rules)
MOVEMENT = {"transpose", "slice", "rev", "iota", "concatenate", "pad", "dynamic_slice",
            "dynamic_update_slice", "tile", "stack"}
