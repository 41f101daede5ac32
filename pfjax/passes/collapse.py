"""Layout: merge iteration dimensions that every access walks contiguously, and drop
dimensions of extent 1, so that loops are as long and as few as possible.

In a reduction kernel, reduced and kept dimensions never merge with each other, and the
reduced dimensions are kept even at extent 1 (the loop structure needs one).
"""
from __future__ import annotations

import dataclasses

from pfjax import gir
from pfjax.gir import Op


def _accesses(root: gir.Node) -> list[gir.Node]:
    return [n for n in gir.toposort(root) if n.op in (Op.LOAD, Op.STORE)]


def collapse_dims(kernel: gir.Kernel) -> gir.Kernel:
    par = kernel.parallel
    space = list(par.space)
    if 0 in space or not space:
        return kernel
    nodes = gir.toposort(kernel.root)
    if any(n.op is Op.INDEX for n in nodes):
        return kernel  # an index names its dimension: keep them all
    rdims = set(par.rdims)
    views = [list(n.arg.view.strides) for n in nodes
             if n.op in (Op.LOAD, Op.STORE) and n.src[0].arg.role != "tile"]
    dims = [d for d in range(len(space)) if space[d] != 1 or d in rdims] or [len(space) - 1]
    groups: list[list[int]] = [[dims[0]]]
    for d in dims[1:]:
        prev = groups[-1][-1]
        # prev merges with d when stride[prev] == stride[d] * extent(d) for every access
        if (prev in rdims) == (d in rdims) and all(s[prev] == s[d] * space[d] for s in views):
            groups[-1].append(d)
        else:
            groups.append([d])
    new_space = tuple(_prod(space[d] for d in g) for g in groups)
    new_rdims = tuple(i for i, g in enumerate(groups) if g[0] in rdims)
    if new_space == tuple(space):
        return kernel

    def new_view(view: gir.View) -> gir.View:
        return gir.View(new_space, tuple(view.strides[g[-1]] if new_space[i] != 1 else 0
                                         for i, g in enumerate(groups)), view.offset)

    def fix(node: gir.Node) -> gir.Node | None:
        if node.op in (Op.LOAD, Op.STORE):
            move = node.arg
            if node.src[0].arg.role == "tile":
                view = gir.View(new_space, gir.contiguous_strides(new_space))
            else:
                view = new_view(move.view)
            return node.replace(arg=dataclasses.replace(move, view=view))
        if node.op is Op.REDUCE:
            if set(node.arg.dims) == rdims:
                return node.replace(arg=gir.Reduction(node.arg.op, new_rdims))
            kept = tuple(i for i in range(len(new_space)) if i not in new_rdims)
            return node.replace(arg=gir.Reduction(node.arg.op, kept))
        if node.op is Op.PARALLEL:
            return node.replace(arg=gir.Parallel(new_space, par.chunk, par.vector, par.nontemporal,
                                                 new_rdims, par.block, par.split, par.strip))
        return None

    return kernel.with_root(gir.rewrite(kernel.root, fix))


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n
