"""Reuse: decide where a value that several loops of a reduction kernel need lives.

A reduction kernel runs several loops over the same row (gir.loops). A computed value
that a later loop needs again is either recomputed there from its inputs (registers:
free when it is a few cheap ops) or written to a tile at the local level in the loop
that first computes it and read back later (when recomputing would cost more than a store
and a load, e.g. the exp of a softmax). When the unit's tile would not fit the local
level (softmax over axis 0, over very long rows) such a value can still wait in the
output the last loop writes element by element: stored there where it is first computed,
read back and overwritten by the last loop (a global store and load per element against
a transcendental). Inputs are re-read: when the row fits the local level the re-read hits
the cache, else it comes from global memory again. `describe` reports these decisions
for `pfjax.explain`.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.gir import Op
from pfjax.gir.loops import LoopNest, is_tile_load, loop_nest

# Recomputing a value costs its ALU ops (a transcendental ~16); a tile costs a store and
# a load at the local level, about as much as this many simple ops.
TILE_COST = 4
# Waiting in an output at the global level: a store and a load there per element. CPU
# only: the CUDA emitters have not been checked on a device with such a load.
SPILL_COST = 8
SPILL = True


def _weight(n: gir.Node) -> int:
    if n.op is Op.ALU:
        return 16 if gir.alu_op(n.arg).transcendental else 1
    return 1 if n.op in (Op.CAST, Op.SELECT) else 0


def _loop_cones(kernel: gir.Kernel, nest: LoopNest) -> list[list[gir.Node]]:
    """Full nodes each loop computes."""
    nodes = gir.toposort(kernel.root)
    cones = []
    for loop in range(nest.num_loops):
        roots = [r for r in nest.roots(nodes) if nest.loop_of(r) == loop]
        want: set[int] = set()
        stack = [s for r in roots for s in r.src]
        while stack:
            n = stack.pop()
            if id(n) in want or not nest.full.get(id(n), False) or n.op is Op.STORE:
                continue
            want.add(id(n))
            stack.extend(n.src)
        cones.append([n for n in nodes if id(n) in want])
    return cones


def _recompute_cost(node: gir.Node, nest: LoopNest) -> int:
    seen: set[int] = set()
    stack, cost = [node], 0
    while stack:
        n = stack.pop()
        if id(n) in seen or not nest.full.get(id(n), False) or is_tile_load(n):
            continue
        seen.add(id(n))
        cost += _weight(n)
        stack.extend(n.src)
    return cost


def _row_elems(kernel: gir.Kernel, target: gir.Target) -> int:
    par = kernel.parallel
    n = 1
    for d in par.rdims:
        n *= par.space[d]
    return n * (4 * target.lanes if par.column_style else 1)


def _input_row_bytes(kernel: gir.Kernel, nest: LoopNest, rows: int) -> int:
    loaded = {id(n.src[0]): n.src[0] for n in gir.toposort(kernel.root)
              if n.op is Op.LOAD and not is_tile_load(n) and nest.full[id(n)]}
    return sum(b.dtype.itemsize for b in loaded.values()) * rows


def keep_reused(kernel: gir.Kernel, target: gir.Target) -> gir.Kernel:
    if not kernel.parallel.rdims:
        return kernel
    nest = loop_nest(kernel)
    if nest.num_loops < 2:
        return kernel
    rows = _row_elems(kernel, target)
    budget = target.level(gir.LOCAL).capacity_bytes - _input_row_bytes(kernel, nest, rows)
    chosen: list[gir.Node] = []
    spill_to: dict[int, gir.Node] = {}  # value -> the output buffer it waits in
    for loop, cone in enumerate(_loop_cones(kernel, nest)):
        in_cone = {id(n) for n in cone}
        for n in cone:
            if nest.phase[id(n)] != loop:
                continue
            for s in n.src:  # s is computed in an earlier loop and needed in this one
                if id(s) not in in_cone or nest.phase[id(s)] >= loop or s.op is Op.LOAD \
                        or s in chosen or id(s) in spill_to:
                    continue
                cost = _recompute_cost(s, nest)
                if cost <= TILE_COST:
                    continue
                if rows * 4 <= budget:
                    chosen.append(s)
                    budget -= rows * 4
                elif SPILL and target.backend == "cpu" and cost > SPILL_COST:
                    out = _spill_output(kernel, nest, s)
                    if out is not None and all(b is not out for b in spill_to.values()):
                        spill_to[id(s)] = out
    if not chosen and not spill_to:
        return kernel
    return _tile(kernel, nest, chosen, spill_to)


def _spill_output(kernel: gir.Kernel, nest: LoopNest, value: gir.Node) -> gir.Node | None:
    """The output buffer `value` can wait in: one the last loop alone writes, element by
    element over the parallel space (a contiguous view), of value's type."""
    space = kernel.parallel.space
    view = gir.View(space, gir.contiguous_strides(space))
    stores = [n for n in kernel.root.src if n.op is Op.STORE]
    for st in stores:
        buf = st.src[0]
        if buf.arg.role == "out" and st.arg.view == view and buf.dtype == value.dtype \
                and nest.phase[id(st)] == nest.num_loops - 1 and nest.full[id(st)] \
                and st.src[1] is not value and sum(o.src[0] is buf for o in stores) == 1:
            return buf
    return None


def _tile(kernel: gir.Kernel, nest: LoopNest, chosen: list[gir.Node],
          spill_to: dict[int, gir.Node]) -> gir.Kernel:
    """Each chosen value stored to a tile of its own where it is computed, each value of
    spill_to to its output buffer; later loops load it back."""
    space = kernel.parallel.space
    view = gir.View(space, gir.contiguous_strides(space))
    new: dict[int, gir.Node] = {}
    kept: dict[int, gir.Node] = {}  # value -> the store it waits behind
    tiles = 0
    for n in gir.toposort(kernel.root):
        if n.op is Op.PARALLEL:
            continue
        src = []
        for s in n.src:
            runs_in = nest.phase[id(n.src[0])] if n.op is Op.REDUCE else nest.phase.get(id(n), 0)
            if id(s) in kept and runs_in > nest.phase[id(s)]:
                src.append(gir.load_tile(kept[id(s)], view))
            else:
                src.append(new[id(s)])
        new[id(n)] = n.replace(src=tuple(src))
        if any(n is c for c in chosen):
            kept[id(n)] = gir.store(gir.tile(tiles, n.dtype.compute, space), new[id(n)], view)
            tiles += 1
        elif id(n) in spill_to:
            kept[id(n)] = gir.store(spill_to[id(n)], new[id(n)], view)
    root = kernel.root
    stores = [*kept.values(), *(new[id(s)] for s in root.src)]
    return kernel.with_root(gir.parallel(root.arg, stores))


def describe(kernel: gir.Kernel, target: gir.Target) -> list[str]:
    """One line per value that several loops of the kernel use: where it lives."""
    if not kernel.parallel.rdims:
        return []
    nest = loop_nest(kernel)
    if nest.num_loops < 2:
        return ["one loop over the reduced dimensions: every input is read once"]
    rows = _row_elems(kernel, target)
    local = target.level(gir.LOCAL).capacity_bytes
    fits = _input_row_bytes(kernel, nest, rows) <= local
    cones = _loop_cones(kernel, nest)
    lines = []
    loops_of: dict[int, list[int]] = {}
    by_id: dict[int, gir.Node] = {}
    for loop, cone in enumerate(cones):
        for n in cone:
            loops_of.setdefault(id(n), []).append(loop)
            by_id[id(n)] = n
    buffers: dict[str, list[int]] = {}
    for key, loops in loops_of.items():
        n = by_id[key]
        if gir.reads_back(n) and not is_tile_load(n):
            name = f"{n.src[0].arg.role}{n.src[0].arg.index}"
            value = n.src[1].src[1]
            lines.append(f"{name} ({value.arg if value.op is Op.ALU else value.op.value}): "
                         f"written in loop {nest.phase[id(n.src[1])]} and kept there, at the "
                         f"global level (a unit's tile of {rows * n.dtype.itemsize} B would "
                         f"not fit the local level), read back in loop(s) {loops}")
        elif n.op is Op.LOAD and not is_tile_load(n):
            name = f"{n.src[0].arg.role}{n.src[0].arg.index}"
            buffers[name] = sorted(set(buffers.get(name, []) + loops))
        elif is_tile_load(n):
            lines.append(f"tile{n.src[0].arg.index} ({n.src[1].src[1].arg or n.src[1].src[1].op.value}): "
                         f"written in loop {nest.phase[id(n.src[1])]}, kept at the local level "
                         f"({rows * n.dtype.itemsize} B per unit), read in loop(s) {loops}")
        elif len(loops) > 1 and n.op is not Op.CONST and _weight(n):
            lines.append(f"{n.arg if n.op is Op.ALU else n.op.value}: recomputed in registers "
                         f"in loops {loops}")
    for name, loops in sorted(buffers.items()):
        if len(loops) > 1:
            where = (f"stays at the local level ({local // 1024} KiB): later loops re-read it "
                     "from cache" if fits else "does not fit the local level: later loops "
                     "re-read it from global memory")
            lines.append(f"{name}: read in loops {loops}; the unit's rows of all inputs "
                         f"({_input_row_bytes(kernel, nest, rows)} B) {where}")
    return lines
