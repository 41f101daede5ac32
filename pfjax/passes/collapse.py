"""Layout: merge iteration dimensions that every access walks contiguously, and drop
dimensions of extent 1, so that loops are as long and as few as possible."""
from __future__ import annotations

from pfjax import gir
from pfjax.gir import Op


def _accesses(root: gir.Node) -> list[gir.Node]:
    return [n for n in gir.toposort(root) if n.op in (Op.LOAD, Op.STORE)]


def collapse_dims(kernel: gir.Kernel) -> gir.Kernel:
    space = list(kernel.parallel.space)
    if 0 in space or not space:
        return kernel
    views = {id(n): list(n.arg.view.strides) for n in _accesses(kernel.root)}
    # keep[d] is False for a dimension folded into the one after it
    dims = [d for d in range(len(space)) if space[d] != 1] or [len(space) - 1]
    groups: list[list[int]] = [[dims[0]]]
    for d in dims[1:]:
        prev = groups[-1][-1]
        # prev merges with d when stride[prev] == stride[d] * extent(d) for every access
        if all(s[prev] == s[d] * space[d] for s in views.values()):
            groups[-1].append(d)
        else:
            groups.append([d])
    new_space = tuple(_prod(space[d] for d in g) for g in groups)
    if new_space == tuple(space):
        return kernel

    def new_view(view: gir.View) -> gir.View:
        return gir.View(new_space, tuple(view.strides[g[-1]] if new_space[i] != 1 else 0
                                         for i, g in enumerate(groups)), view.offset)

    def fix(node: gir.Node) -> gir.Node | None:
        if node.op in (Op.LOAD, Op.STORE):
            move = node.arg
            return node.replace(arg=gir.Move(move.src_level, move.dst_level, new_view(move.view)))
        if node.op is Op.PARALLEL:
            par = node.arg
            return node.replace(arg=gir.Parallel(new_space, par.chunk, par.vector, par.nontemporal))
        return None

    return kernel.with_root(gir.rewrite(kernel.root, fix))


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n
