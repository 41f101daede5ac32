"""Cost model: bytes per memory level over the target's bandwidth, plus arithmetic."""
from __future__ import annotations

from dataclasses import dataclass

from pfjax import gir
from pfjax.gir import Op


@dataclass(frozen=True)
class Cost:
    global_bytes: int
    alu_ops: int       # per element of the iteration space
    seconds: float


def estimate(kernel: gir.Kernel, target: gir.Target) -> Cost:
    nodes = gir.toposort(kernel.root)
    size = kernel.parallel.size
    moved = 0
    seen_buffers = set()
    for n in nodes:
        if n.op in (Op.LOAD, Op.STORE):
            buf = n.src[0]
            if id(buf) in seen_buffers:
                continue
            seen_buffers.add(id(buf))
            elems = 1
            for d in buf.arg.shape:
                elems *= d
            moved += elems * buf.dtype.itemsize
    alu = sum(1 + 15 * gir.alu_op(n.arg).transcendental for n in nodes if n.op is Op.ALU)
    bw = target.level(gir.GLOBAL).bandwidth_gbps * 1e9
    flops = target.groups * target.lanes * 2e9  # ~2 GHz, one vector op per cycle per core
    return Cost(moved, alu, max(moved / bw, size * alu / flops))
