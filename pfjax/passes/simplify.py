"""Algebraic clean-up on GIR: fold constants and no-op casts."""
from __future__ import annotations

import numpy as np

from pfjax import gir
from pfjax.gir import Op
from pfjax.gir.interp import numpy_dtype


def _fold(node: gir.Node) -> gir.Node | None:
    if node.op is Op.SELECT and node.src[0].op is Op.CONST:
        cases = node.src[1:]
        return cases[min(max(int(node.src[0].arg), 0), len(cases) - 1)]
    if node.op is Op.SELECT and node.dtype is gir.DType.BOOL and len(node.src) == 3 \
            and all(s.op is Op.CONST for s in node.src[1:]):
        # select(c, False, True) is c (a mask built by jnp.where from an iota compare)
        cases = tuple(bool(s.arg) for s in node.src[1:])
        if cases == (False, True) and node.src[0].dtype is gir.DType.BOOL:
            return node.src[0]
        if cases == (True, False) and node.src[0].dtype is gir.DType.BOOL:
            return gir.alu("not", gir.DType.BOOL, node.src[0])
    if node.op is Op.CAST and node.src[0].op is Op.CONST:
        value = np.asarray(node.src[0].arg, numpy_dtype(node.src[0].dtype))
        if node.dtype.is_int and np.issubdtype(value.dtype, np.floating):
            return None  # saturation semantics: leave to the kernel
        with np.errstate(all="ignore"):
            return gir.const(value.astype(numpy_dtype(node.dtype)).item(), node.dtype)
    if node.op is Op.ALU and node.src and all(s.op is Op.CONST for s in node.src) \
            and node.dtype in (gir.DType.F32, gir.DType.F64) \
            and not gir.alu_op(node.arg).transcendental:
        # Exact IEEE arithmetic in numpy gives the same bits as the kernel would.
        args = [np.asarray(s.arg, numpy_dtype(s.dtype)) for s in node.src]
        with np.errstate(all="ignore"):
            out = np.asarray(gir.alu_op(node.arg).numpy_impl(*args))
        return gir.const(out.astype(numpy_dtype(node.dtype)).item(), node.dtype)
    return None


def simplify(kernel: gir.Kernel) -> gir.Kernel:
    return kernel.with_root(gir.rewrite(kernel.root, _fold))
