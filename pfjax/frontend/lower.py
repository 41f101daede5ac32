"""Lower one fusion group to a GIR kernel."""
from __future__ import annotations

import dataclasses

import numpy as np

from pfjax import gir
from pfjax.frontend.indexing import IndexMap
from pfjax.frontend.shapes import groups, natural_rows
from pfjax.frontend.partition import Group
from pfjax.frontend.program import Atom, Eqn, Lit
from pfjax.frontend.rules import RULES, gir_dtype


class LoweringError(Exception):
    """A group could not be lowered; carries the equation that failed."""


class Lowerer:
    def __init__(self, group: Group):
        self.group = group
        self.space = group.space
        self.rdims = tuple(group.axes or ())
        self.buffers: dict[int, gir.Node] = {}
        for k, atom in enumerate(group.inputs):
            self.buffers[id(atom) if isinstance(atom, Lit) else atom.id] = gir.buffer(
                k, "in", gir_dtype(atom.aval), tuple(atom.aval.shape))
        # var id -> (equation, output index) for everything computed inside the loop
        self.producers: dict[int, tuple[Eqn, int]] = {}
        for eqn in [*group.recomputed, *group.eqns]:
            self._add_producer(eqn)
        self.memo: dict[tuple[int, IndexMap], list[gir.Node]] = {}

    def _add_producer(self, eqn: Eqn) -> None:
        for k, v in enumerate(eqn.outvars):
            self.producers[v.id] = (eqn, k)
        if eqn.body is not None:
            for inner in eqn.body.eqns:
                self._add_producer(inner)

    def read(self, atom: Atom, imap: IndexMap) -> gir.Node:
        if isinstance(atom, Lit) and np.ndim(atom.val) == 0:
            return gir.const(np.asarray(atom.val).item(), gir_dtype(atom.aval))
        key = id(atom) if isinstance(atom, Lit) else atom.id
        if key in self.producers:
            eqn, k = self.producers[key]
            return self.evaluate(eqn, imap)[k]
        if key not in self.buffers:
            raise LoweringError(f"value {atom} is neither an input nor computed in the group")
        buf = self.buffers[key]
        shape = atom.aval.shape
        return gir.load(buf, imap.view(shape, self.space), offset=imap.dynamic_offset(shape),
                        guard=imap.guard, fill=False if buf.dtype is gir.DType.BOOL else 0)

    def reduction_input_map(self, eqn: Eqn, imap: IndexMap) -> IndexMap:
        """Where a reduction reads its input when its result is wanted at `imap`: the kept
        dimensions at imap, the reduced ones along the kernel's reduced dimensions."""
        (x,) = eqn.invars
        axes = tuple(sorted(eqn.params["axes"]))
        if imap.dyn or imap.guard is not None:
            raise LoweringError("a reduction read through a dynamic slice, concatenation or "
                                "padding")
        if self.is_final(eqn):
            return self.output_map(tuple(x.aval.shape))
        shape = tuple(x.aval.shape)
        spans = groups(shape, self.space)
        if spans is None or tuple(sorted(k for d in axes for k in spans[d])) != tuple(
                d for d in self.rdims if self.space[d] != 1):
            raise LoweringError(f"reduction over {axes} of {shape} in a kernel reducing "
                                f"{self.rdims} of {self.space}")
        for coeffs, _ in imap.rows:
            if any(coeffs[d] for d in self.rdims):
                raise LoweringError("a reduced value is read along the dimensions it reduces")
        natural = natural_rows(shape, self.space)
        kept = iter(imap.rows)
        rows = tuple(natural[d] if d in axes else next(kept) for d in range(len(shape)))
        return IndexMap(rows, len(self.space))

    def axis_index(self, shape: tuple[int, ...], axis: int) -> gir.Node:
        """The index along `axis` of a value of `shape` laid over the space, as GIR."""
        return self.index_expr(natural_rows(shape, self.space)[axis])

    def index_expr(self, row) -> gir.Node:
        """An index-map row (coefficients over the space, offset) as a GIR int64 value."""
        coeffs, offset = row
        terms = [gir.index(d) if c == 1 else gir.alu("mul", gir.DType.I64, gir.index(d),
                                                     gir.const(c, gir.DType.I64))
                 for d, c in enumerate(coeffs) if c]
        out = terms[0] if terms else gir.const(0, gir.DType.I64)
        for t in terms[1:] + ([gir.const(offset, gir.DType.I64)] if offset else []):
            out = gir.alu("add", gir.DType.I64, out, t)
        return out

    def index_value(self, imap: IndexMap, axis: int) -> gir.Node:
        """The index along `axis` of the value read at `imap`, run-time part included."""
        out = self.index_expr(imap.rows[axis])
        dyn = imap.dyn_of(axis)
        return out if dyn is None else gir.alu("add", gir.DType.I64, out, dyn)

    def is_final(self, eqn: Eqn) -> bool:
        """A reduction of a per-unit value over every parallel unit (the kernel's rows)."""
        shape = tuple(eqn.invars[0].aval.shape)
        if not self.rdims or groups(shape, self.space) is not None:
            return False
        return set(eqn.params["axes"]) >= {d for d, n in enumerate(shape) if n != 1}

    def reduction_dims(self, eqn: Eqn) -> tuple[int, ...]:
        if self.is_final(eqn):
            return tuple(d for d in range(len(self.space)) if d not in self.rdims)
        return self.rdims

    def output_map(self, shape: tuple[int, ...]) -> IndexMap:
        """Map from the space to a value of `shape` laid over it in row-major order: the
        space itself or a coarsening of it, or a per-unit value (the kept dimensions, the
        reduced ones dropped or kept as 1), written once per unit."""
        rank = len(self.space)
        if shape == self.space:
            return IndexMap.identity(rank)
        if all(n == 1 for n in shape):
            return IndexMap(tuple(((0,) * rank, 0) for _ in shape), rank)
        rows = natural_rows(shape, self.space)
        if rows is None and self.rdims:
            kept = [d for d in range(rank) if d not in self.rdims and self.space[d] != 1]
            sub = natural_rows(tuple(n for n in shape if n != 1), self.space, kept)
            if sub is not None:
                it = iter(sub)
                rows = [next(it) if n != 1 else ((0,) * rank, 0) for n in shape]
        if rows is None:
            raise LoweringError(f"output of shape {shape} does not fit the space {self.space}")
        return IndexMap(tuple(rows), rank)

    def evaluate(self, eqn: Eqn, imap: IndexMap) -> list[gir.Node]:
        memo_key = (id(eqn), imap)
        if memo_key not in self.memo:
            if eqn.body is not None:
                out = [self.read(a, imap) for a in eqn.body.outvars]
            else:
                try:
                    out = RULES[eqn.name](self, eqn, imap)
                except Exception as err:  # keep the equation in the message
                    raise LoweringError(f"lowering {eqn}: {err}") from err
            self.memo[memo_key] = out
        return self.memo[memo_key]


def lower_group(group: Group, backend: str = "cpu") -> gir.Kernel:
    """The group's GIR kernel. backend: the layout of reductions over short rows that are
    then reduced again over all rows (a mean loss) depends on it, see _reduction_layout."""
    lw = Lowerer(group)
    space = tuple(group.space)
    outputs, stores = [], []
    for k, var in enumerate(group.outputs):
        dtype = gir_dtype(var.aval)
        shape = tuple(var.aval.shape)
        imap = lw.output_map(shape)
        buf = gir.buffer(k, "out", dtype, shape)
        value = gir.cast(lw.read(var, imap), dtype)
        outputs.append(buf)
        stores.append(gir.store(buf, value, imap.view(shape, space)))
    inputs = tuple(lw.buffers[id(a) if isinstance(a, Lit) else a.id] for a in group.inputs)
    kernel = gir.Kernel(gir.parallel(gir.Parallel(space, rdims=lw.rdims), stores), inputs,
                        tuple(outputs))
    return _reduction_layout(kernel, backend) if lw.rdims else kernel


def _contiguous_dim(kernel: gir.Kernel, nodes) -> int:
    """The space dimension along which most bytes are accessed with unit stride (ties go
    to the innermost): the one to walk in the innermost loop."""
    space = kernel.parallel.space
    score = [0] * len(space)
    for n in nodes:
        if n.op in (gir.Op.LOAD, gir.Op.STORE):
            strides = n.arg.view.strides
            elems = 1
            for s, extent in zip(strides, space):
                elems *= extent if s else 1
            for d, s in enumerate(strides):
                if abs(s) == 1 and space[d] > 1:
                    score[d] += elems * n.dtype.itemsize
    return max(reversed(range(len(space))), key=lambda d: score[d])


SHORT_ROW = 16  # float32 lanes of the widest vector: shorter rows go across the lanes


def _has_finals(kernel: gir.Kernel, nodes) -> bool:
    rdims = set(kernel.parallel.rdims)
    return any(n.op is gir.Op.REDUCE and set(n.arg.dims) != rdims for n in nodes)


def _reduction_layout(kernel: gir.Kernel, backend: str = "cpu") -> gir.Kernel:
    """Reorder the space to kept dims, reduced dims, then a kept dim if it is the one read
    contiguously (a column reduction vectorises across it): the layout the reduction
    codegen expects. A reduced dim read contiguously goes last among the reduced ones (a
    row reduction over a transposed view walks memory in order)."""
    par = kernel.parallel
    rank = len(par.space)
    kept = [d for d in range(rank) if d not in par.rdims]
    rdims = list(par.rdims)
    nodes = gir.toposort(kernel.root)
    best = _contiguous_dim(kernel, nodes)
    # The CUDA column reduction has no finish step for a reduction over all its rows.
    finals_ok = backend == "cpu" or not _has_finals(kernel, nodes)
    if rdims == [best] and par.space[best] < SHORT_ROW and kept and finals_ok:
        # Rows shorter than a vector: lay them across the lanes (a column reduction over
        # the units, its accesses staged through a block transpose).
        lane = max(kept, key=lambda d: par.space[d])
        if par.space[lane] >= SHORT_ROW:
            best = lane
    if best in rdims:
        rdims = [d for d in rdims if d != best] + [best]
        inner = []
    else:
        inner = [best] if best in kept else []
        kept = [d for d in kept if d != best]
    perm = kept + rdims + inner                    # new dim k is old dim perm[k]
    where = {old: new for new, old in enumerate(perm)}
    space = tuple(par.space[d] for d in perm)
    rdims = tuple(range(len(kept), len(kept) + len(par.rdims)))

    def view(v: gir.View) -> gir.View:
        return gir.View(space, tuple(v.strides[d] for d in perm), v.offset)

    def fix(node: gir.Node) -> gir.Node | None:
        if node.op in (gir.Op.LOAD, gir.Op.STORE):
            m = node.arg
            return node.replace(arg=dataclasses.replace(m, view=view(m.view)))
        if node.op is gir.Op.INDEX:
            return node.replace(arg=where[node.arg])
        if node.op is gir.Op.REDUCE:
            return node.replace(arg=gir.Reduction(node.arg.op,
                                                  tuple(sorted(where[d] for d in node.arg.dims))))
        if node.op is gir.Op.PARALLEL:
            return node.replace(arg=gir.Parallel(space, rdims=rdims))
        return None

    return kernel.with_root(gir.rewrite(kernel.root, fix))
