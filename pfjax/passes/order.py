"""Loop order of an elementwise kernel: walk the outer dimensions in the order of the
largest input, not of the output.

The iteration space comes from the output. When a permutation of outer dimensions keeps
the innermost one contiguous on both sides (the attention-head reshuffle
(B,S,H,D) -> (B,H,S,D)), output order reads runs of D elements scattered one per page,
where the cache prefetchers, which follow a stream within a page, cannot run ahead.
Reads are what the core waits for; stores of whole lines are posted (and streamed past
the caches for large outputs), so reading in order and scattering the writes is the
cheaper side. Transposes of the innermost dimension go through stage tiles instead
(schedule.transpose_block) and are left alone here.
"""
from __future__ import annotations

import dataclasses
import math

from pfjax import gir
from pfjax.gir import Op


def _largest_input_load(nodes: list[gir.Node]) -> gir.Node | None:
    loads = [n for n in nodes if n.op is Op.LOAD and n.src[0].arg.role == "in"]
    if not loads:
        return None
    return max(loads, key=lambda n: math.prod(n.src[0].arg.shape))


def input_order(kernel: gir.Kernel) -> gir.Kernel:
    par = kernel.parallel
    space = par.space
    if par.rdims or len(space) < 3 or 0 in space:
        return kernel
    nodes = gir.toposort(kernel.root)
    accesses = [n for n in nodes if n.op in (Op.LOAD, Op.STORE)]
    if any(n.src[0].arg.role == "tile" or len(n.src) > (1 if n.op is Op.LOAD else 2)
           for n in accesses):
        return kernel  # staged, dynamic or guarded accesses keep the output order
    if any(n.arg.view.strides[-1] not in (0, 1) for n in accesses):
        return kernel  # the innermost dimension is transposed: stage tiles handle it
    lead = _largest_input_load(nodes)
    if lead is None or lead.arg.view.strides[-1] != 1:
        return kernel
    strides = lead.arg.view.strides
    outer = range(len(space) - 1)
    # Dimensions the lead input broadcasts keep their place first; then descending stride.
    perm = [d for d in outer if strides[d] == 0] + \
        sorted((d for d in outer if strides[d] != 0), key=lambda d: (-abs(strides[d]), d))
    perm.append(len(space) - 1)
    if perm == list(range(len(space))):
        return kernel
    new_space = tuple(space[d] for d in perm)
    where = {d: i for i, d in enumerate(perm)}

    def fix(node: gir.Node) -> gir.Node | None:
        if node.op in (Op.LOAD, Op.STORE):
            view = node.arg.view
            view = gir.View(new_space, tuple(view.strides[d] for d in perm), view.offset)
            return node.replace(arg=dataclasses.replace(node.arg, view=view))
        if node.op is Op.INDEX:
            return node.replace(arg=where[node.arg])
        if node.op is Op.PARALLEL:
            return node.replace(arg=dataclasses.replace(par, space=new_space))
        return None

    return kernel.with_root(gir.rewrite(kernel.root, fix))
