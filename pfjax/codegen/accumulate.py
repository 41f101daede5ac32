"""Accumulators of the CPU reduction codegen: initial values, types and the combine step
(XLA's NaN propagation for float max / min)."""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen.ctypes_table import literal, register_type


def init_value(op: str, dtype: gir.DType) -> str:
    rt = register_type(dtype)
    if op == "sum":
        return literal(0, dtype)
    if op == "prod":
        return literal(1, dtype)
    if op in ("and", "or"):
        return "1" if op == "and" else "0"
    if dtype is gir.DType.BOOL:
        return "false" if op == "max" else "true"
    if dtype.is_float:
        return f"{'-' if op == 'max' else ''}std::numeric_limits<{rt}>::infinity()"
    return f"std::numeric_limits<{rt}>::{'lowest' if op == 'max' else 'max'}()"


def wide_sum(r: gir.Node) -> bool:
    """A float sum whose blocks' partial sums add up in double: long rows and columns
    then lose no more precision than a pairwise sum (XLA's accuracy or better)."""
    return r.arg.op == "sum" and r.dtype.is_float and r.dtype is not gir.DType.F64


def acc_type(node: gir.Node) -> str:
    # and/or accumulate in int so that OpenMP's bitwise reductions apply
    return "int" if node.arg.op in ("and", "or") else register_type(node.dtype)


def partial_type(final: gir.Node) -> str:
    """A unit's partial of a reduction over all units: float sums and products in double."""
    if final.dtype.is_float and final.arg.op in ("sum", "prod"):
        return "double"
    return acc_type(final)


def combine(op: str, dtype: gir.DType, acc: str, v: str) -> str:
    """acc <- acc (op) v, with XLA's NaN propagation for float max / min."""
    if op == "sum":
        return f"{acc} + {v}" if dtype is not gir.DType.BOOL else f"({acc} || {v})"
    if op == "prod":
        return f"{acc} * {v}" if dtype is not gir.DType.BOOL else f"({acc} && {v})"
    if op == "and":
        return f"{acc} & static_cast<int>({v})"
    if op == "or":
        return f"{acc} | static_cast<int>({v})"
    cmp = ">" if op == "max" else "<"
    if dtype.is_float:
        return f"(({v}) {cmp} ({acc}) || ({v}) != ({v})) ? ({v}) : ({acc})"
    return f"(({v}) {cmp} ({acc})) ? ({v}) : ({acc})"


def omp_clause(r: gir.Node, var: str) -> str:
    op = {"sum": "+", "prod": "*", "max": "max", "min": "min", "and": "&", "or": "|"}[r.arg.op]
    if r.dtype is gir.DType.BOOL and op in "+*":
        op = "||" if op == "+" else "&&"
    return f"reduction({op}:{var})"
