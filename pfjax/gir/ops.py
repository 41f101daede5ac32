"""The computation primitives: ALU operation names, their arity and numpy meaning.

Codegen backends map the same names to target code; the interpreter uses `numpy_impl`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class AluOp:
    name: str
    arity: int
    kinds: str          # element kinds it accepts: f float, i int, b bool
    transcendental: bool
    numpy_impl: Callable
    predicate: bool = False  # result is bool


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype)


def _erfc(x):
    return np.vectorize(math.erfc, otypes=[np.float64])(x).astype(x.dtype)


def _int_div(a, b):
    if a.dtype.kind == "f":
        return a / b
    safe = np.where(b == 0, 1, b)
    q = np.abs(a) // np.abs(safe) * np.sign(a) * np.sign(safe)
    return np.where(b == 0, -1, q).astype(a.dtype)


def _int_rem(a, b):
    if a.dtype.kind == "f":
        return np.fmod(a, b)
    safe = np.where(b == 0, 1, b)
    return np.where(b == 0, a, np.fmod(a, safe)).astype(a.dtype)


def _round_away(x):
    return np.where(np.abs(x - np.trunc(x)) == 0.5, np.trunc(x) + np.sign(x), np.rint(x))


_TABLE = [
    # name, arity, kinds, transcendental, impl
    ("neg", 1, "fi", False, np.negative),
    ("abs", 1, "fi", False, np.abs),
    ("sign", 1, "fi", False, np.sign),
    ("floor", 1, "f", False, np.floor),
    ("ceil", 1, "f", False, np.ceil),
    ("round_even", 1, "f", False, np.rint),
    ("round_away", 1, "f", False, _round_away),
    ("sqrt", 1, "f", False, np.sqrt),
    ("rsqrt", 1, "f", False, lambda x: 1 / np.sqrt(x)),
    ("cbrt", 1, "f", True, np.cbrt),
    ("exp", 1, "f", True, np.exp),
    ("exp2", 1, "f", True, np.exp2),
    ("expm1", 1, "f", True, np.expm1),
    ("log", 1, "f", True, np.log),
    ("log1p", 1, "f", True, np.log1p),
    ("tanh", 1, "f", True, np.tanh),
    ("logistic", 1, "f", True, lambda x: 1 / (1 + np.exp(-x))),
    ("one_plus_exp2", 1, "f", True, lambda x: 1 + np.exp2(x)),  # passes/logistic.py
    ("erf", 1, "f", True, _erf),
    ("erfc", 1, "f", True, _erfc),
    ("sin", 1, "f", True, np.sin),
    ("cos", 1, "f", True, np.cos),
    ("tan", 1, "f", True, np.tan),
    ("not", 1, "ib", False, lambda x: np.logical_not(x) if x.dtype == bool else np.invert(x)),
    ("add", 2, "fi", False, np.add),
    ("sub", 2, "fi", False, np.subtract),
    ("mul", 2, "fi", False, np.multiply),
    ("div", 2, "fi", False, _int_div),
    ("rem", 2, "fi", False, _int_rem),
    ("max", 2, "fib", False, np.maximum),
    ("min", 2, "fib", False, np.minimum),
    ("pow", 2, "f", True, np.power),
    ("atan2", 2, "f", True, np.arctan2),
    ("and", 2, "ib", False, lambda a, b: np.logical_and(a, b) if a.dtype == bool else a & b),
    ("or", 2, "ib", False, lambda a, b: np.logical_or(a, b) if a.dtype == bool else a | b),
    ("xor", 2, "ib", False, lambda a, b: np.logical_xor(a, b) if a.dtype == bool else a ^ b),
]
_PREDICATES = [
    ("eq", np.equal), ("ne", np.not_equal), ("lt", np.less), ("le", np.less_equal),
    ("gt", np.greater), ("ge", np.greater_equal),
]

ALU_OPS: dict[str, AluOp] = {name: AluOp(name, n, k, t, f) for name, n, k, t, f in _TABLE}
ALU_OPS.update({name: AluOp(name, 2, "fib", False, f, predicate=True) for name, f in _PREDICATES})
ALU_OPS["is_finite"] = AluOp("is_finite", 1, "f", False, np.isfinite, predicate=True)


def alu_op(name: str) -> AluOp:
    try:
        return ALU_OPS[name]
    except KeyError:
        raise KeyError(f"GIR has no ALU operation {name!r}") from None
