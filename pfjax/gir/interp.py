"""Reference interpreter: executes a GIR kernel with numpy, to check lowering and passes."""
from __future__ import annotations

import numpy as np

from pfjax.gir.dtypes import DType
from pfjax.gir.graph import Kernel, Op, load_guard, load_offset, reads_back, toposort
from pfjax.gir.ops import alu_op

_NP = {DType.F64: np.float64, DType.F32: np.float32, DType.F16: np.float16,
       DType.BF16: np.float32, DType.I64: np.int64, DType.I32: np.int32,
       DType.I16: np.int16, DType.I8: np.int8, DType.U64: np.uint64, DType.U32: np.uint32,
       DType.U16: np.uint16, DType.U8: np.uint8, DType.BOOL: np.bool_}


def numpy_dtype(dtype: DType):
    """numpy type holding values of `dtype` (bfloat16 values are held in float32)."""
    return _NP[dtype]


def _round_bf16(x: np.ndarray) -> np.ndarray:
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.where(np.isnan(x), x.astype(np.float32), out)


def _as_type(x: np.ndarray, dtype: DType) -> np.ndarray:
    if dtype is DType.BF16:
        return _round_bf16(x.astype(np.float32))
    if dtype is DType.F16:
        return x.astype(np.float16).astype(np.float32)
    if dtype.is_int and x.dtype.kind == "f":
        # XLA's float -> int conversion: NaN -> 0, saturating at the type's bounds.
        info = np.iinfo(_NP[dtype])
        xf = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=np.inf, neginf=-np.inf)
        hi, lo = xf >= float(info.max), xf <= float(info.min)
        mid = np.where(hi | lo, 0, np.trunc(xf)).astype(_NP[dtype])
        return np.where(hi, info.max, np.where(lo, info.min, mid)).astype(_NP[dtype])
    return x.astype(_NP[dtype.compute])


def _reduce(op: str, x: np.ndarray, dims: tuple[int, ...], dtype: DType) -> np.ndarray:
    x = np.asarray(x)
    if op in ("and", "or"):
        fn = np.all if op == "and" else np.any
        out = fn(x.astype(bool), axis=dims, keepdims=True)
    elif op in ("max", "min"):
        if x.dtype.kind == "f":
            init = -np.inf if op == "max" else np.inf
        elif x.dtype.kind == "b":
            init = op == "min"
        else:
            info = np.iinfo(x.dtype)
            init = info.min if op == "max" else info.max
        fn = np.max if op == "max" else np.min
        out = fn(x, axis=dims, keepdims=True, initial=init)
    else:
        fn = np.sum if op == "sum" else np.prod
        out = fn(x, axis=dims, keepdims=True, dtype=x.dtype)
    return np.broadcast_to(out, x.shape).astype(x.dtype)


def run(kernel: Kernel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run the kernel on numpy inputs; returns numpy outputs (bfloat16 as float32)."""
    space = kernel.parallel.space
    flat_in = {id(b): np.ascontiguousarray(x).reshape(-1) for b, x in zip(kernel.inputs, inputs)}
    outs = {id(b): np.zeros(int(np.prod(b.arg.shape, dtype=np.int64)), _NP[b.dtype.compute])
            for b in kernel.outputs}
    values: dict[int, np.ndarray] = {}

    def gather(flat, view):
        idx = np.full(space, view.offset, dtype=np.int64)
        for d, (n, s) in enumerate(zip(space, view.strides)):
            shape = [1] * len(space)
            shape[d] = n
            idx = idx + (np.arange(n, dtype=np.int64) * s).reshape(shape)
        return idx

    with np.errstate(all="ignore"):
        for node in toposort(kernel.root):
            if node.op in (Op.BUFFER, Op.PARALLEL):
                continue
            src = [values[id(s)] for s in node.src if s.op not in (Op.BUFFER, Op.STORE)]
            if reads_back(node):  # what its store wrote
                values[id(node)] = values[id(node.src[1].src[1])]
            elif node.op is Op.LOAD:
                flat = flat_in[id(node.src[0])]
                idx = gather(flat, node.arg.view)
                if load_offset(node) is not None:
                    idx = idx + values[id(load_offset(node))].astype(np.int64)
                guard = load_guard(node)
                ok = np.broadcast_to(values[id(guard)], space) if guard is not None else True
                if flat.size:
                    v = flat[np.where(ok, idx, 0)]
                else:
                    v = np.zeros(space, flat.dtype)
                if guard is not None:
                    v = np.where(ok, v, np.asarray(node.arg.fill).astype(v.dtype))
                values[id(node)] = _as_type(v, node.dtype)
            elif node.op is Op.STORE and node.src[0].arg.role == "tile":
                continue
            elif node.op is Op.STORE:
                flat = outs[id(node.src[0])]
                if flat.size:
                    flat[gather(flat, node.arg.view)] = _as_type(src[0], node.dtype)
            elif node.op is Op.CONST:
                values[id(node)] = np.full(space, node.arg, _NP[node.dtype.compute])
            elif node.op is Op.CAST:
                values[id(node)] = _as_type(src[0], node.dtype)
            elif node.op is Op.ALU:
                # Half-precision values stay in float32 between operations (as XLA's
                # excess precision does); rounding happens at casts and stores.
                out = np.asarray(alu_op(node.arg).numpy_impl(*src))
                values[id(node)] = out.astype(_NP[node.dtype.compute])
            elif node.op is Op.INDEX:
                shape = [1] * len(space)
                shape[node.arg] = space[node.arg]
                values[id(node)] = np.broadcast_to(
                    np.arange(space[node.arg], dtype=np.int64).reshape(shape), space)
            elif node.op is Op.REDUCE:
                values[id(node)] = _reduce(node.arg.op, src[0], node.arg.dims, node.dtype)
            elif node.op is Op.SELECT:
                which = src[0].astype(np.int64)
                values[id(node)] = np.choose(np.clip(which, 0, len(src) - 2), src[1:])
            else:
                raise NotImplementedError(node.op)
    return [outs[id(b)].reshape(b.arg.shape) for b in kernel.outputs]
