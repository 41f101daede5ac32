"""The frontend's view of a traced function: a flat list of equations.

Tracing gives a jaxpr; `flatten` inlines `jit` (pjit) and `closed_call` bodies with fresh
variables, and keeps custom_jvp / custom_vjp calls as single *composite* equations whose
body is lowered for fusion while the original call (and so its differentiation rule) is
what JAX sees. `evaluate` replays a program, which is how fused programs are rebuilt.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import numpy as np
from jax.extend import core as jcore

# Calls whose bodies are planned in place. "pfjax_fused" is an already fused group (a
# fused function called inside another, or the JVP/transpose of one that a transformed
# function carries): planned again with its surroundings, it can fuse across the call.
_INLINED_CALLS = {"jit", "pjit", "closed_call", "core_call", "pfjax_fused"}
_COMPOSITE_CALLS = {"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}
_ids = itertools.count()


class Var:
    """A value of the flattened program (jaxpr Vars are not unique across inlined bodies)."""
    __slots__ = ("aval", "id")

    def __init__(self, aval):
        self.aval = aval
        self.id = next(_ids)

    def __repr__(self) -> str:
        return f"v{self.id}:{self.aval.str_short()}"


@dataclass(frozen=True)
class Lit:
    val: Any
    aval: Any

    def __repr__(self) -> str:
        return f"{self.val}:{self.aval.str_short()}"


Atom = Var | Lit


@dataclass(eq=False)
class Eqn:
    prim: Any
    params: dict
    invars: list[Atom]
    outvars: list[Var]
    eqn: Any                      # the original jaxpr equation (for binding and messages)
    body: "Program | None" = None  # lowered body of a composite call

    @property
    def name(self) -> str:
        return self.prim.name

    def __repr__(self) -> str:
        return f"{self.outvars} = {self.name} {self.invars}"


@dataclass(eq=False)
class Program:
    invars: list[Var]
    outvars: list[Atom]
    eqns: list[Eqn] = field(default_factory=list)


def flatten(closed: jcore.ClosedJaxpr) -> tuple[Program, list]:
    """Program whose invars are (consts..., args...); returns it with the const values."""
    jaxpr = closed.jaxpr
    env: dict = {}
    constvars = [Var(v.aval) for v in jaxpr.constvars]
    invars = [Var(v.aval) for v in jaxpr.invars]
    env.update(zip(jaxpr.constvars, constvars))
    env.update(zip(jaxpr.invars, invars))
    eqns: list[Eqn] = []
    _inline(jaxpr, env, eqns)
    outvars = [_read(env, v) for v in jaxpr.outvars]
    return Program(constvars + invars, outvars, eqns), list(closed.consts)


def _read(env, atom) -> Atom:
    if isinstance(atom, jcore.Literal):
        return Lit(atom.val, atom.aval)
    return env[atom]


def _inline(jaxpr, env: dict, out: list[Eqn]) -> None:
    for eqn in jaxpr.eqns:
        ins = [_read(env, a) for a in eqn.invars]
        name = eqn.primitive.name
        if name in _INLINED_CALLS and ("jaxpr" in eqn.params or "call_jaxpr" in eqn.params):
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            inner_jaxpr, consts = _open(inner)
            sub = {}
            sub.update(zip(inner_jaxpr.constvars, [Lit(c, jcore.get_aval(c)) for c in consts]))
            sub.update(zip(inner_jaxpr.invars, ins))
            _inline(inner_jaxpr, sub, out)
            for outer, inner_out in zip(eqn.outvars, inner_jaxpr.outvars):
                env[outer] = _read(sub, inner_out)
            continue
        folded = _fold_scalar(eqn, ins)
        if folded is not None:
            env.update(zip(eqn.outvars, folded))
            continue
        outs = [Var(v.aval) for v in eqn.outvars]
        env.update(zip(eqn.outvars, outs))
        if name == "split":  # one slice per piece: each fuses where it is used
            out.extend(_split_as_slices(eqn, ins, outs))
            continue
        if name in _UNIT_REDUCTIONS and all(ins[0].aval.shape[a] == 1 for a in eqn.params["axes"]):
            # Reducing axes of extent 1 (the transpose of a keepdims broadcast, in every
            # backward pass) only drops them: a reshape, which fuses with the row group
            # around it where a reduction over a size-1 space would stand alone.
            params = dict(new_sizes=tuple(outs[0].aval.shape), dimensions=None, sharding=None)
            out.append(Eqn(jax.lax.reshape_p, params, ins, outs, eqn))
            continue
        body = None
        if name in _COMPOSITE_CALLS and "call_jaxpr" in eqn.params:
            body = _composite_body(eqn.params["call_jaxpr"], eqn.params.get("num_consts", 0), ins, outs)
        out.append(Eqn(eqn.primitive, dict(eqn.params), ins, outs, eqn, body))


_UNIT_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                    "reduce_or"}


def _split_as_slices(eqn, ins: list[Atom], outs: list[Var]) -> list[Eqn]:
    shape = ins[0].aval.shape
    axis = eqn.params["axis"]
    pieces, start = [], 0
    for size, var in zip(eqn.params["sizes"], outs):
        lo = [0] * len(shape)
        hi = list(shape)
        lo[axis], hi[axis] = start, start + size
        params = dict(start_indices=tuple(lo), limit_indices=tuple(hi), strides=None)
        pieces.append(Eqn(jax.lax.slice_p, params, [ins[0]], [var], eqn))
        start += size
    return pieces


def _fold_scalar(eqn, ins: list[Atom]) -> list[Lit] | None:
    """Scalar arithmetic on literals (jnp.var's ddof handling, dtype juggling) is folded
    now, as XLA would fold it, so that it does not stay behind as an unfused equation."""
    from pfjax.frontend.rules import REDUCTIONS, RULES
    name = eqn.primitive.name
    if name not in RULES or name in REDUCTIONS or eqn.effects or not ins \
            or eqn.primitive.multiple_results \
            or not all(isinstance(a, Lit) and np.ndim(a.val) == 0 for a in ins) \
            or any(v.aval.shape != () for v in eqn.outvars):
        return None
    with jax.ensure_compile_time_eval():
        value = eqn.primitive.bind(*[a.val for a in ins], **eqn.primitive.get_bind_params(eqn.params))
    return [Lit(np.asarray(value), eqn.outvars[0].aval)]


def _open(inner):
    if isinstance(inner, jcore.ClosedJaxpr):
        return inner.jaxpr, inner.consts
    return inner, []


def _composite_body(call_jaxpr, num_consts, ins, outs) -> Program:
    """The body of a custom_jvp/vjp call, as a program over the call's own operands."""
    inner_jaxpr, consts = _open(call_jaxpr)
    sub = {}
    sub.update(zip(inner_jaxpr.constvars, [Lit(c, jcore.get_aval(c)) for c in consts]))
    sub.update(zip(inner_jaxpr.invars, ins))
    eqns: list[Eqn] = []
    _inline(inner_jaxpr, sub, eqns)
    return Program([a for a in ins if isinstance(a, Var)], [_read(sub, v) for v in inner_jaxpr.outvars], eqns)


def bind_eqn(eqn: Eqn, args: list) -> list:
    params = eqn.prim.get_bind_params(eqn.params)
    result = eqn.prim.bind(*args, **params)
    return list(result) if eqn.prim.multiple_results else [result]


def evaluate(program: Program, args: list, steps: list[Callable] | None = None) -> list:
    """Evaluate `program` on args. `steps`, when given, replaces its equation list: each
    step is a function (read, write) -> None, used to run fused groups in place of eqns."""
    env: dict[int, Any] = {}

    def read(atom):
        return atom.val if isinstance(atom, Lit) else env[atom.id]

    def write(var, value):
        env[var.id] = value

    for var, value in zip(program.invars, args):
        write(var, value)
    if steps is None:
        for eqn in program.eqns:
            for v, value in zip(eqn.outvars, bind_eqn(eqn, [read(a) for a in eqn.invars])):
                write(v, value)
    else:
        for step in steps:
            step(read, write)
    return [read(a) for a in program.outvars]


def dce(program: Program) -> Program:
    """Drop equations whose results nobody uses (and that have no side effects)."""
    live = {a.id for a in program.outvars if isinstance(a, Var)}
    kept: list[Eqn] = []
    for eqn in reversed(program.eqns):
        effects = getattr(eqn.eqn, "effects", None)
        if effects or any(v.id in live for v in eqn.outvars):
            kept.append(eqn)
            live.update(a.id for a in eqn.invars if isinstance(a, Var))
    return Program(program.invars, program.outvars, kept[::-1])


def trace(fun: Callable, flat_avals: list) -> tuple[Program, list]:
    closed = jax.make_jaxpr(fun)(*[jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type)
                                   for a in flat_avals])
    program, consts = flatten(closed)
    return dce(program), consts
