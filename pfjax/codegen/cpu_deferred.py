"""A row unit's last loop run one unit late, block by block inside the loop before it.

A softmax row unit runs three loops: the max (the row in from memory), exp(x - max) into
a tile with its sum, and the tile over the sum out to memory. The second is arithmetic
with the memory idle; the third is a burst of streaming stores with little arithmetic,
faster than the write path takes them. Here the last loop of unit u - 1 runs inside the
loop before it of unit u, block by block, so that its stores overlap the exponentials
(softmax over 1024 x 4096 on a 2-core Zen 4, in a C driver: 1.12-1.22x; the stores
within the same inner loop gained 1.2-1.28x, at the cost of one loop body per pair).

Where both loops have the vf16 form and the rows are whole vectors, the previous unit's
stores go further in: one vector of them in each vf16 step of the exponentials
(emit_late_step), so that they drain while the arithmetic runs instead of in a burst per
block; builds without vf16 keep the block form.

The previous unit's tiles survive because they are double-buffered (swapped at the end of
each unit); the per-unit values its last loop reads are carried in `d0, d1, ...` and its
kept indices in `p0, p1, ...`. After the unit loop the call's last unit runs the loop on
its own.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from pfjax import gir
from pfjax.codegen.ctypes_table import register_type
from pfjax.codegen.vector import VECTOR_CALLS
from pfjax.gir import Op

DEFER = True
DEFER_MIN_ROW = 256  # shorter rows: a block's stores are too few to be worth the carry
# The previous unit's stores inside the host loop's vf16 steps rather than after each
# block: softmax over 1024 x 4096 on a 2-core Zen 3, C driver: 1.03-1.07x.
IN_STEP = True


@dataclass
class DeferredPlan:
    host: int                   # the loop whose blocks also run the previous unit's last
    last: int                   # the deferred loop (the last one)
    roots: list[gir.Node]       # its stores
    carried: list[gir.Node]     # per-unit values its body reads
    kept: list[int]             # the unit's (kept) dimensions


def deferred_plan(em) -> DeferredPlan | None:
    """The plan for a row unit whose last loop only stores outputs and whose loop before
    it calls exp / log / logistic / erfc (the arithmetic the stores can hide behind)."""
    if not DEFER or em.column or em.row_split or em.rdims != (em.lane,) or em.online \
            or em.space[em.lane] < DEFER_MIN_ROW:
        return None
    last = em.nest.num_loops - 1
    if last < 1:
        return None
    roots = em.nest.roots(em.nodes)
    late = [r for r in roots if em.nest.loop_of(r) == last]
    host = [r for r in roots if em.nest.loop_of(r) == last - 1]
    if not late or any(r.op is not Op.STORE or r.src[0].arg.role != "out" for r in late):
        return None
    if not any(n.op is Op.ALU and n.arg in VECTOR_CALLS for n in em.cone(host, full=True)):
        return None
    carried, seen = [], set()
    for n in em.cone(late, full=True):
        for s in n.src:
            if s.op in (Op.BUFFER, Op.STORE, Op.PARALLEL) or em.nest.full.get(id(s), True) \
                    or id(s) in seen:
                continue
            seen.add(id(s))
            carried.append(s)
    kept = [d for d in range(len(em.space)) if d not in em.rdims]
    return DeferredPlan(last - 1, last, late, carried, kept)


@contextlib.contextmanager
def previous_unit(em, plan: DeferredPlan):
    """Emit code for the previous unit: its carried values, indices and tiles."""
    names = dict(em.names)
    for k, n in enumerate(plan.carried):
        em.names[id(n)] = f"d{k}"
    em.previous = True
    try:
        yield
    finally:
        em.previous = False
        em.names = names


def emit_carried(em, plan: DeferredPlan) -> None:
    """Before the unit loop: the variables that carry a unit's values to the next."""
    for k, n in enumerate(plan.carried):
        t = register_type(n.dtype)
        em.w(f"{t} d{k} = {t}();")
    for d in plan.kept:
        em.w(f"int64_t p{d} = 0;")


def emit_late_block(em, plan: DeferredPlan) -> None:
    """Inside the host loop's block [t0, t1): the previous unit's last loop over it."""
    em.w("if (u > begin) {  // the previous unit's last loop, over this block")
    em.w.indent()
    with previous_unit(em, plan):
        body = em.cone(plan.roots, full=True)
        em.emit_store_paths(plan.roots, lambda: em.emit_row_block(plan.roots, body, []))
    em.w.close()


def late_in_step_ok(em, plan: DeferredPlan, host_body: list[gir.Node]) -> bool:
    """The previous unit's last loop can run inside the host loop's vf16 steps, 16 lanes
    at a time: both bodies have the vf16 form, every block is whole vectors, and the host
    streams no stores of its own (the late stores take the direct flags)."""
    if not IN_STEP or not em.whole_vectors or em.streamed or not em.vector_form_ok(host_body):
        return False
    with previous_unit(em, plan):
        return em.vector_form_ok(em.cone(plan.roots, full=True), streams=True)


def _late_streamed(em, plan: DeferredPlan, body: list[gir.Node]) -> list[gir.Node]:
    ids = {id(r) for r in em.streamable(plan.roots)}
    return [n for n in body if id(n) in ids]


def emit_late_flags(em, plan: DeferredPlan) -> None:
    """Before the host's vf16 loop: whether a previous unit runs here, and per streamable
    store whether this block of it goes out non-temporally (`stream` and the block's start
    64-byte aligned; else plain stores)."""
    em.w("const bool late = u > begin;")
    with previous_unit(em, plan):
        em.lane_var = "t0"
        for k, st in enumerate(_late_streamed(em, plan, em.cone(plan.roots, full=True))):
            em.w(f"const bool direct{k} = stream && "
                 f"reinterpret_cast<uintptr_t>(&{em.address(st)}) % 64 == 0;")
        em.lane_var = "j"


def emit_late_step(em, plan: DeferredPlan) -> None:
    """Inside the host's vf16 step: the previous unit's last loop over the same 16 lanes,
    its stores spread among the exponentials rather than in a burst per block."""
    em.w("if (late) {")
    em.w.indent()
    with previous_unit(em, plan):
        body = em.cone(plan.roots, full=True)
        em.streamed = {id(n) for n in _late_streamed(em, plan, body)}
        em.late_step = True
        try:
            em.emit_vector_step(body, {}, set())
        finally:
            em.late_step = False
            em.streamed = set()
    em.w.close()


def emit_unit_end(em, plan: DeferredPlan) -> None:
    """Where the last loop would run: the values it reads, carried to the next unit with
    the indices and tiles."""
    em.emit_unit_values(plan.roots)
    for k, n in enumerate(plan.carried):
        em.w(f"d{k} = {em.names[id(n)]};")
    for d in plan.kept:
        em.w(f"p{d} = i{d};")
    for index, _ in em.tiles:
        em.w(f"std::swap(tile{index}, tile{index}_p);")


def emit_flush(em, plan: DeferredPlan) -> None:
    """After the unit loop: the last loop of the call's last unit."""
    em.w("if (end > begin) {  // the last unit's last loop")
    em.w.indent()
    with previous_unit(em, plan):
        em.loop_index = plan.last
        em.emit_loop(plan.roots)
    em.w.close()
