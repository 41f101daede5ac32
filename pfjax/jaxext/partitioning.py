"""Sharded jit: a fused group split by rows runs its kernel on each device's rows.

When XLA's SPMD partitioner splits a jitted computation over several devices, an opaque
custom call would be gathered onto every device. A group whose leading dimension is a
*row* dimension (each output row depends only on the same row of the row-carrying inputs:
no reduction, movement or broadcast across rows) is lowered instead through JAX's
`custom_partitioning`. Its Shardy rule ties the row dimension of every row-carrying operand
and result and keeps every other dimension replicated; at partitioning time XLA hands the
callback the per-device shapes, and the callback fuses the group again at those shapes, so
each device runs a pfjax kernel on its own rows and the results keep the row sharding.
Groups that cannot be split this way return None here and are left to XLA.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

from jax.experimental.custom_partitioning import ArrayMapping, SdyShardingRule, custom_partitioning
from jax.extend import core as jcore
from jax.interpreters import mlir
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from jax._src import sharding_impls

log = logging.getLogger("pfjax")

# Element by element (operands of size 1 along a dimension, or scalars, broadcast).
_ELEMENTWISE = set("""
neg abs sign floor ceil round is_finite exp exp2 log log1p expm1 tanh logistic sin cos tan
asin acos atan sinh cosh asinh acosh atanh sqrt rsqrt cbrt erf erfc erf_inv lgamma digamma
square integer_pow not population_count clz real imag conj reduce_precision
convert_element_type copy copy_p stop_gradient add add_any sub mul div rem pow max min
atan2 nextafter and or xor eq ne lt le gt ge shift_left shift_right_logical
shift_right_arithmetic select_n clamp
""".split())
_REDUCTIONS = {"reduce_sum", "reduce_prod", "reduce_max", "reduce_min", "reduce_and",
               "reduce_or", "reduce_xor", "argmax", "argmin"}
_CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
# Calls whose body is analysed (and, per shard, evaluated) in place; lowering needs no
# differentiation rule, so custom_jvp/vjp calls are just their bodies here.
_CALLS = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr"}


class _NotRowwise(Exception):
    pass


def _require(cond: bool) -> None:
    if not cond:
        raise _NotRowwise


def _with_rows(shape, n: int) -> tuple:
    return (n, *tuple(shape)[1:])


def _rule(eqn, rows_in: list[bool], N: int, n: int) -> tuple[dict, list[bool]]:
    """(params at n rows, which outputs carry rows) for one equation; _NotRowwise if the
    equation mixes rows or its row dimension cannot be followed."""
    name, p = eqn.primitive.name, dict(eqn.params)
    avals = [a.aval for a in eqn.invars]
    n_out = len(eqn.outvars)
    _require(p.get("sharding") is None and p.get("out_sharding") is None)
    if name == "iota":
        # An iota along another dimension is the same in every row; along rows it is not.
        if p["shape"] and p["shape"][0] == N and p["dimension"] != 0:
            return {**p, "shape": _with_rows(p["shape"], n)}, [True]
        return p, [False]
    if name == "broadcast_in_dim":
        _require(len(avals) == 1)
        shape, dims = p["shape"], p["broadcast_dimensions"]
        if rows_in[0]:
            _require(len(dims) > 0 and dims[0] == 0)
            return {**p, "shape": _with_rows(shape, n)}, [True]
        if shape and shape[0] == N and 0 not in dims:  # a row-independent value, per row
            return {**p, "shape": _with_rows(shape, n)}, [True]
        return p, [False]
    if not any(rows_in):  # computed from row-independent values only: the same everywhere
        return p, [False] * n_out
    if name in _ELEMENTWISE:
        # Operands broadcast where their size is 1 (or they are scalars): a row-independent
        # operand must not have a row dimension of its own.
        ndim = eqn.outvars[0].aval.ndim
        _require(all(a.ndim == ndim if r else (a.ndim == 0 or (a.ndim == ndim and a.shape[0] == 1))
                     for r, a in zip(rows_in, avals)))
        return p, [True] * n_out
    _require(n_out == 1 and rows_in[0])
    if name == "reshape":  # row-major: rows stay rows while the leading size is kept
        _require(len(avals) == 1 and p.get("dimensions") is None and p["new_sizes"]
                 and p["new_sizes"][0] == N)
        return {**p, "new_sizes": _with_rows(p["new_sizes"], n)}, [True]
    if name in _REDUCTIONS:
        _require(0 not in p["axes"])
    elif name in _CUMULATIVE:
        _require(p["axis"] != 0)
    elif name == "squeeze" or name == "rev":
        _require(0 not in p["dimensions"])
    elif name == "transpose":
        _require(p["permutation"][0] == 0)
    elif name == "slice":
        strides = p.get("strides")
        _require(p["start_indices"][0] == 0 and p["limit_indices"][0] == N
                 and (strides is None or strides[0] == 1))
        return {**p, "limit_indices": _with_rows(p["limit_indices"], n)}, [True]
    elif name == "pad":
        _require(not rows_in[1] and tuple(p["padding_config"][0]) == (0, 0, 0))
    elif name == "concatenate":
        _require(p["dimension"] != 0 and all(rows_in))
    else:
        raise _NotRowwise
    return p, [True]


def _inner(eqn):
    """(body, consts) of a call equation."""
    inner = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
    if isinstance(inner, jcore.ClosedJaxpr):
        return inner.jaxpr, list(inner.consts)
    return inner, []


def _steps(jaxpr, rows_in: list[bool], N: int, n: int) -> tuple[list, list[bool]]:
    """Per equation, what to bind at n rows: ("eqn", eqn, params) or ("call", eqn, consts,
    inner steps); with which outputs of `jaxpr` carry rows."""
    rows: dict = {v: False for v in jaxpr.constvars}
    rows.update(zip(jaxpr.invars, rows_in))

    def read(atom) -> bool:
        return False if isinstance(atom, jcore.Literal) else rows[atom]

    steps = []
    for eqn in jaxpr.eqns:
        ins = [read(a) for a in eqn.invars]
        body, consts = _inner(eqn) if eqn.primitive.name in _CALLS else (None, [])
        if isinstance(body, jcore.Jaxpr):
            _require(len(body.invars) == len(ins))
            inner_steps, outs = _steps(body, ins, N, n)
            steps.append(("call", eqn, consts, inner_steps))
        else:
            params, outs = _rule(eqn, ins, N, n)
            steps.append(("eqn", eqn, params))
        rows.update(zip(eqn.outvars, outs))
    return steps, [read(v) for v in jaxpr.outvars]


def _evaluate(jaxpr, consts: list, steps: list, args: list) -> list:
    env: dict = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))

    def read(atom):
        return atom.val if isinstance(atom, jcore.Literal) else env[atom]

    for step in steps:
        eqn, ins = step[1], [read(a) for a in step[1].invars]
        if step[0] == "call":
            body, _ = _inner(eqn)
            outs = _evaluate(body, step[2], step[3], ins)
        else:
            prim = eqn.primitive
            outs = prim.bind(*ins, **prim.get_bind_params(step[2]))
            outs = list(outs) if prim.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


@dataclass(frozen=True)
class RowSplit:
    rows_in: tuple[bool, ...]  # which inputs carry the row dimension (dimension 0)
    size: int                  # the global number of rows


def _try_split(closed: jcore.ClosedJaxpr, rows_in: list[bool], N: int) -> bool:
    try:
        _, rows_out = _steps(closed.jaxpr, rows_in, N, N)
    except (_NotRowwise, KeyError, IndexError, TypeError):
        return False
    return all(rows_out)


@functools.lru_cache(maxsize=512)
def row_split(closed: jcore.ClosedJaxpr) -> RowSplit | None:
    """How the group splits by rows, or None if it does not (conservatively)."""
    outs = closed.out_avals
    if not outs or any(a.ndim == 0 for a in outs) or len({a.shape[0] for a in outs}) != 1:
        return None
    N = outs[0].shape[0]
    if N < 2:
        return None
    candidates = [a.ndim > 0 and a.shape[0] == N for a in closed.in_avals]
    # An input whose leading size merely equals N (a bias over a square matrix) may not
    # be indexed by rows: try again with only the highest-rank candidates as row inputs.
    top = max((a.ndim for a, c in zip(closed.in_avals, candidates) if c), default=0)
    for rows_in in (candidates, [c and a.ndim == top for a, c in zip(closed.in_avals, candidates)]):
        if any(rows_in) and _try_split(closed, rows_in, N):
            return RowSplit(tuple(rows_in), N)
    return None


def _local_function(closed: jcore.ClosedJaxpr, split: RowSplit, n: int) -> Callable:
    steps, _ = _steps(closed.jaxpr, list(split.rows_in), split.size, n)
    return lambda *args: _evaluate(closed.jaxpr, list(closed.consts), steps, list(args))


@functools.lru_cache(maxsize=256)
def _fused_local(closed: jcore.ClosedJaxpr, split: RowSplit, n: int, refuse: Callable | None):
    """The group at n rows, fused again (cached: XLA may partition the same module twice)."""
    local = _local_function(closed, split, n)
    return local, (refuse(local) if refuse is not None else local)


def _sharding_rule(closed: jcore.ClosedJaxpr, split: RowSplit) -> SdyShardingRule:
    # "r" is the row dimension shared by all row-carrying values; every other dimension is
    # its own factor that must stay replicated (the kernel sees whole rows).
    fresh = (f"d{k}" for k in range(10 ** 6))
    others: list[str] = []

    def mapping(aval, rows: bool) -> ArrayMapping:
        dims = [next(fresh) for _ in range(aval.ndim - (1 if rows else 0))]
        others.extend(dims)
        return ArrayMapping(*(["r"] if rows else []), *dims)

    operands = tuple(mapping(a, r) for a, r in zip(closed.in_avals, split.rows_in))
    results = tuple(mapping(a, True) for a in closed.out_avals)
    return SdyShardingRule(operands, results, need_replication_factors=tuple(others))


def _row_axes(mesh, shapes, rows_in) -> tuple | None:
    """The mesh axes that split rows: those of the first row input sharded on dimension 0."""
    for shape, rows in zip(shapes, rows_in):
        sharding = getattr(shape, "sharding", None)
        if rows and isinstance(sharding, NamedSharding) and len(sharding.spec) > 0 \
                and sharding.spec[0] is not None:
            axes = sharding.spec[0]
            return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
    return None


def _typed_shardings_fit(avals, rows_in) -> bool:
    """With explicit mesh axes the operands' shardings are in their types: split only
    when nothing but rows is sharded (the rule would otherwise gather the other
    dimensions). Operands without a sharding in their type come from other groups, which
    were split by rows too."""
    row_axes = set()
    for aval, rows in zip(avals, rows_in):
        spec = getattr(getattr(aval, "sharding", None), "spec", None)
        if spec is None:
            continue
        if any(s is not None for s in spec[1 if rows else 0:]):
            return False
        if rows and len(spec) > 0 and spec[0] is not None:
            row_axes.add(spec[0])
    return len(row_axes) <= 1


def lower_by_rows(ctx, args, closed: jcore.ClosedJaxpr, whole: Callable,
                  refuse: Callable | None):
    """Lower the group so that XLA's partitioner runs it per row shard, or return None
    (the caller then inlines the group for XLA). `whole(*args)` runs the group's own
    kernel on unsplit operands; `refuse(fun)` fuses a function again."""
    axis_ctx = ctx.module_context.axis_context
    if not isinstance(axis_ctx, sharding_impls.ShardingContext) \
            or axis_ctx.device_assignment is None or axis_ctx.abstract_mesh is None:
        return None  # no concrete mesh to name the shardings with
    # With auto axes Shardy decides the operands' shardings after lowering and would
    # reshard a column-sharded operand to fit the rule: only explicit axes are split.
    if any(t != AxisType.Explicit for t in axis_ctx.abstract_mesh.axis_types):
        return None
    split = row_split(closed)
    if split is None or not _typed_shardings_fit(ctx.avals_in, split.rows_in):
        return None
    rank = [a.ndim for a in closed.in_avals]
    out_rank = [a.ndim for a in closed.out_avals]

    def shardings(mesh, axes):
        spec = lambda r, rows: P(*(((axes if len(axes) > 1 else axes[0]),) if rows else ()),
                                 *([None] * (r - (1 if rows else 0))))
        ins = tuple(NamedSharding(mesh, spec(r, rows)) for r, rows in zip(rank, split.rows_in))
        outs = [NamedSharding(mesh, spec(r, True)) for r in out_rank]
        return ins, outs

    def infer(mesh, arg_shapes, result_shape):  # the GSPMD partitioner's propagation
        axes = _row_axes(mesh, arg_shapes, split.rows_in)
        return shardings(mesh, axes)[1] if axes else [NamedSharding(mesh, P())] * len(out_rank)

    def partition(mesh, arg_shapes, result_shape):
        axes = _row_axes(mesh, arg_shapes, split.rows_in)
        if axes is None:  # not split by rows: each device runs the whole group
            replicated = NamedSharding(mesh, P())
            return mesh, whole, [replicated] * len(out_rank), (replicated,) * len(rank)
        ins, outs = shardings(mesh, axes)
        first = split.rows_in.index(True)

        def per_shard(*xs):  # traced at the per-device shapes
            local, fused = _fused_local(closed, split, xs[first].shape[0], refuse)
            try:
                return fused(*xs)
            except Exception as err:  # never fail XLA's compilation over a kernel
                log.warning("pfjax: per-shard fusion failed (%s); XLA runs the group", err)
                return local(*xs)
        return mesh, per_shard, outs, ins

    call = custom_partitioning(jcore.jaxpr_as_fun(closed))
    call.def_partition(partition, infer_sharding_from_operands=infer,
                       sharding_rule=_sharding_rule(closed, split))
    return mlir.lower_fun(lambda *a: call(*a), multiple_results=True)(ctx, *args)
