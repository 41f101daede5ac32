"""Loop structure of a kernel with reductions.

Per parallel unit (one index of the kept dimensions) a reduction kernel runs a sequence
of loops over the reduced dimensions. A value's *phase* is the first loop that can
compute it: loads and constants are available in loop 0, a reduction's result after the
loop that consumed its input. Values that vary along the reduced dimensions ("full"
values) are computed inside a loop; the others are per-unit values computed between
loops. A full value needed by two loops is either recomputed in the later one or kept in
a tile at the local level (the reuse pass decides). A reduction over the parallel units
themselves ("final", e.g. the mean of per-row losses) is combined once all units are
done, from per-unit partial results left in a scratch buffer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pfjax.gir.graph import Kernel, Node, Op, is_tile_load, reads_back, toposort


@dataclass
class LoopNest:
    rdims: tuple[int, ...]
    phase: dict[int, int]    # id(node) -> first loop that can compute it
    full: dict[int, bool]    # id(node) -> varies along the reduced dimensions
    num_loops: int
    final: dict[int, bool]   # id(node) -> depends on a reduction over the parallel units

    def loop_of(self, node: Node) -> int | None:
        """The loop a root runs in: a reduction where its input is computed, a store of a
        full value where the value is; None for stores after the last loop."""
        if node.op is Op.REDUCE:
            return self.phase[id(node.src[0])]
        if node.op is Op.STORE:
            if self.final[id(node)]:
                return None
            return self.phase[id(node)] if self.full[id(node)] else None
        raise ValueError(f"{node.op} is not a loop root")

    def roots(self, nodes: list[Node]) -> list[Node]:
        """Reductions over the reduced dimensions and stores done per unit."""
        return [n for n in nodes if (n.op is Op.REDUCE or n.op is Op.STORE)
                and not self.final[id(n)]]

    def finals(self, nodes: list[Node]) -> list[Node]:
        """Reductions over the parallel units (combined after all units are done)."""
        return [n for n in nodes if n.op is Op.REDUCE and self.final[id(n)]
                and not any(self.final[id(s)] for s in n.src)]


def loop_nest(kernel: Kernel) -> LoopNest:
    rdims = kernel.parallel.rdims
    phase: dict[int, int] = {}
    full: dict[int, bool] = {}
    final: dict[int, bool] = {}
    num_loops = 0
    for n in toposort(kernel.root):
        src = [s for s in n.src if s.op is not Op.BUFFER]
        if n.op in (Op.BUFFER, Op.PARALLEL):
            continue
        final[id(n)] = any(final[id(s)] for s in src) or (
            n.op is Op.REDUCE and set(n.arg.dims) != set(rdims))
        if final[id(n)]:
            phase[id(n)], full[id(n)] = max((phase[id(s)] for s in src), default=0), False
            continue
        if n.op is Op.LOAD:
            if reads_back(n):
                phase[id(n)], full[id(n)] = phase[id(n.src[1])] + 1, True
            else:  # a dynamic or guarded load also waits for its offset and guard
                phase[id(n)] = max((phase[id(s)] for s in src), default=0)
                full[id(n)] = any(n.arg.view.strides[d] for d in rdims) or any(
                    full[id(s)] for s in src)
        elif n.op is Op.CONST:
            phase[id(n)], full[id(n)] = 0, False
        elif n.op is Op.INDEX:
            phase[id(n)], full[id(n)] = 0, n.arg in rdims
        elif n.op is Op.REDUCE:
            phase[id(n)], full[id(n)] = phase[id(src[0])] + 1, False
            num_loops = max(num_loops, phase[id(src[0])] + 1)
        else:
            phase[id(n)] = max((phase[id(s)] for s in src), default=0)
            full[id(n)] = any(full[id(s)] for s in src)
            if n.op is Op.STORE:
                full[id(n)] = full[id(n)] or any(n.arg.view.strides[d] for d in rdims)
                if full[id(n)]:
                    num_loops = max(num_loops, phase[id(n)] + 1)
    return LoopNest(rdims, phase, full, num_loops, final)


def column_block_bytes(kernel: Kernel, columns: int) -> int:
    """Input bytes under a block of `columns` columns over every reduced index: what a
    column reduction with several loops reads again in each later loop."""
    par = kernel.parallel
    rows = 1
    for d in par.rdims:
        rows *= par.space[d]
    return rows * columns * (sum(b.dtype.itemsize for b in kernel.inputs) or 4)


def global_bytes(kernel: Kernel) -> int:
    """Bytes the kernel moves at the global level: for each input, the distinct elements
    its loads can touch (a slice reads its part only, a broadcast its source once; never
    more than the whole buffer), and each output written once."""
    views: dict[int, tuple[Node, set]] = {}
    for n in toposort(kernel.root):
        if n.op is Op.LOAD and not is_tile_load(n):
            views.setdefault(id(n.src[0]), (n.src[0], set()))[1].add(n.arg.view)
    total = 0
    for buf, seen in views.values():
        touched = sum(math.prod(s for s, st in zip(v.shape, v.strides) if st) for v in seen)
        total += min(math.prod(buf.arg.shape), touched) * buf.dtype.itemsize
    return total + sum(math.prod(b.arg.shape) * b.dtype.itemsize for b in kernel.outputs)
