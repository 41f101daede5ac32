"""Split the innermost loop where conditions on its index change.

A concatenation or padding along the innermost dimension selects per element which piece
an element comes from (`index >= 64 ? piece1 : piece0`). Within an interval of that index
every such comparison has one value, so each interval gets its own loop in which the
selects are resolved and the guarded loads become plain vector loads (or vanish): each
output element is computed from its own piece only.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.gir import DType, Op

_CMP = {"lt", "le", "gt", "ge", "eq", "ne"}
_MIRROR = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}
MAX_INTERVALS = 8


def _index_plus(node: gir.Node, dim: int) -> int | None:
    """c when node is index(dim) + c (c may be 0), else None."""
    if node.op is Op.INDEX and node.arg == dim:
        return 0
    if node.op is Op.ALU and node.arg in ("add", "sub") and len(node.src) == 2:
        a, b = node.src
        if a.op is Op.INDEX and a.arg == dim and b.op is Op.CONST and isinstance(b.arg, int):
            return b.arg if node.arg == "add" else -b.arg
    return None


def _comparison(node: gir.Node, dim: int) -> tuple[str, int] | None:
    """(op, c) when node compares index(dim) with the constant c: index <op> c."""
    if node.op is not Op.ALU or node.arg not in _CMP:
        return None
    a, b = node.src
    for x, y, op in ((a, b, node.arg), (b, a, _MIRROR[node.arg])):
        shift = _index_plus(x, dim)
        if shift is not None and y.op is Op.CONST and isinstance(y.arg, int):
            return op, y.arg - shift
    return None


def breakpoints(nodes: list[gir.Node], dim: int, extent: int) -> list[int]:
    """Indices in (0, extent) where a comparison of index(dim) with a constant changes."""
    cuts: set[int] = set()
    for n in nodes:
        cmp = _comparison(n, dim)
        if cmp is None:
            continue
        op, c = cmp
        cuts.update({"lt": [c], "ge": [c], "le": [c + 1], "gt": [c + 1],
                     "eq": [c, c + 1], "ne": [c, c + 1]}[op])
    return sorted(c for c in cuts if 0 < c < extent)


def _holds(op: str, i: int, c: int) -> bool:
    return {"lt": i < c, "le": i <= c, "gt": i > c, "ge": i >= c, "eq": i == c, "ne": i != c}[op]


def specialise(root: gir.Node, dim: int, lo: int) -> gir.Node:
    """The graph for the interval starting at `lo` (comparisons are constant on it)."""
    def fold(n: gir.Node) -> gir.Node | None:
        cmp = _comparison(n, dim)
        if cmp is not None:
            return gir.const(_holds(cmp[0], lo, cmp[1]), DType.BOOL)
        if n.op is Op.SELECT and n.src[0].op is Op.CONST:
            cases = n.src[1:]
            return cases[min(max(int(n.src[0].arg), 0), len(cases) - 1)]
        if n.op is Op.ALU and n.arg in ("and", "or") and n.dtype is DType.BOOL:
            a, b = n.src
            for x, y in ((a, b), (b, a)):
                if x.op is Op.CONST:
                    absorbing = n.arg == "or"  # true or y = true; false and y = false
                    return x if bool(x.arg) == absorbing else y
        guard = gir.load_guard(n)
        if guard is not None and guard.op is Op.CONST:
            if not guard.arg:
                return gir.const(n.arg.fill, n.dtype)
            return gir.load(n.src[0], n.arg.view, n.level, gir.load_offset(n))
        return None
    return gir.rewrite(root, fold)


def intervals(root: gir.Node, dim: int, extent: int) -> list[tuple[int, int, gir.Node]]:
    """[(lo, hi, graph)] covering [0, extent); one entry with the graph itself when there is
    nothing to split (or too much)."""
    cuts = breakpoints(gir.toposort(root), dim, extent)
    if not cuts or len(cuts) + 1 > MAX_INTERVALS:
        return [(0, extent, root)]
    bounds = [0, *cuts, extent]
    return [(a, b, specialise(root, dim, a)) for a, b in zip(bounds, bounds[1:])]
