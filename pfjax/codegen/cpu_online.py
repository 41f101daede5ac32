"""Online max and shifted sums: the first two loops of a logsumexp-shaped row unit as one.

A row unit that takes `M = max(x)` in its first loop and `sum(exp(a - s(M)))` in its
second and last (logsumexp, cross-entropy) reads its row twice: once from memory for
the max, once from the cache for the exponentials, with the memory idle during the second
pass. Here both run block by block over the row: each block's max, then its shifted sum
while the block is still in L1, with the running sum rescaled by exp(s_old - s_new)
whenever the max grows. Memory traffic then overlaps the exponentials.

For a finite max without NaN in the row the shift used at the end is s(final max), the
value the two-loop form uses, and the sum differs only by the rescalings' rounding (a
few float ulps over the few times a random row's max grows). Rows with a NaN or an
infinite max take the two-loop form again, so special values come out exactly as before.
"""
from __future__ import annotations

from dataclasses import dataclass

from pfjax import gir
from pfjax.codegen.ctypes_table import register_type
from pfjax.gir import Op

ONLINE = True
ONLINE_BLOCK = 512     # elements per block: 2 KiB of float32, in L1 for the second pass
ONLINE_MIN_ROW = 4096  # shorter rows stay in L1 between the two loops anyway
ONLINE_PREFETCH_BYTES = 4096


@dataclass
class OnlinePlan:
    max_root: gir.Node        # loop 0's only root: reduce max over the row
    sums: list[gir.Node]      # loop 1's roots: reduce sum of exp(a - shift)
    shift: gir.Node           # per-unit value computed from the max


def _depends(node: gir.Node, target: gir.Node) -> bool:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n is target:
            return True
        if id(n) not in seen:
            seen.add(id(n))
            stack.extend(s for s in n.src if s.op is not Op.BUFFER)
    return False


def online_plan(em) -> OnlinePlan | None:
    """The plan when the kernel's first two loops have the logsumexp shape."""
    # Only where the two loops are all there is: with a third loop (log-softmax) the row
    # is read again anyway, and the two-loop form prefetches the next row over two loops
    # (measured 3-7% slower online, against 1.2x on logsumexp and cross-entropy).
    if not ONLINE or em.column or em.rdims != (em.lane,) or em.nest.num_loops != 2 \
            or em.space[em.lane] < ONLINE_MIN_ROW:
        return None
    roots = em.nest.roots(em.nodes)
    first = [r for r in roots if em.nest.loop_of(r) == 0]
    second = [r for r in roots if em.nest.loop_of(r) == 1]
    if len(first) != 1 or first[0].op is not Op.REDUCE or first[0].arg.op != "max" \
            or first[0].dtype is not gir.DType.F32 or not second:
        return None
    max_root, shift = first[0], None
    for r in second:
        if r.op is not Op.REDUCE or r.arg.op != "sum" or r.dtype is not gir.DType.F32:
            return None
        e = r.src[0]
        if e.op is not Op.ALU or e.arg != "exp" or e.src[0].op is not Op.ALU \
                or e.src[0].arg != "sub":
            return None
        a, s = e.src[0].src
        if em.nest.full.get(id(s), True) or not em.nest.full.get(id(a), False) \
                or (shift is not None and s is not shift):
            return None
        shift = s
    if not _depends(shift, max_root):
        return None
    # Nothing else in the sums may move with the max.
    for n in em.cone(second, full=True):
        for s in n.src:
            if s.op is Op.BUFFER or s is shift or em.nest.full.get(id(s), True):
                continue
            if _depends(s, max_root):
                return None
    return OnlinePlan(max_root, second, shift)


def emit_online(em, plan: OnlinePlan) -> None:
    w = em.w
    m = em.names[id(plan.max_root)] = f"a{len(em.names)}"
    sums = []
    for r in plan.sums:
        em.names[id(r)] = f"a{len(em.names)}"
        sums.append(em.names[id(r)])
    n_lane = em.space[em.lane]
    w("// loops 0 and 1 as one: block max, then the block's shifted sums from L1")
    w(f"float {m} = -std::numeric_limits<float>::infinity();")
    w(f"int {m}_nan = 0;")
    # s(M) as a function of the max, for the rescalings (the per-unit values are emitted
    # again after the loop, from the final max)
    before = dict(em.names)
    w(f"auto shift_of = [&](const float {m}) -> float {{")
    w.indent()
    em.emit_unit_values([plan.shift])
    w(f"return {em.names[id(plan.shift)]};")
    w.indent(-1)
    w("};")
    em.names = before
    w(f"float sh = shift_of({m});")
    for a in sums:
        w(f"double {a}_t = 0.0;")
    w(f"for (int64_t t0 = 0; t0 < {n_lane}; t0 += {ONLINE_BLOCK}) {{")
    w.indent()
    w(f"const int64_t t1 = std::min<int64_t>(t0 + {ONLINE_BLOCK}, {n_lane});")
    # the block's max
    w(f"float {m}_p = -std::numeric_limits<float>::infinity();")
    w(f"int {m}_p_nan = 0;")
    w(f"#pragma omp simd simdlen({em.par.vector}) reduction(max:{m}_p) reduction(|:{m}_p_nan)")
    w("for (int64_t j = t0; j < t1; ++j) {")
    w.indent()
    local = em.emit_body(em.cone([plan.max_root], full=True))
    v = em.ref(plan.max_root.src[0], local)
    w(f"{m}_p = ({v}) > {m}_p ? ({v}) : {m}_p;")
    w(f"{m}_p_nan |= ({v}) != ({v});")
    w.indent(-1)
    w("}")
    w(f"{m}_nan |= {m}_p_nan;")
    w(f"if ({m}_p > {m}) {{")
    w.indent()
    w(f"const float grown = shift_of({m}_p);")
    w("const double k = static_cast<double>(pfjax::math::exp_f32(sh - grown));")
    for a in sums:  # (an empty sum stays 0: k may be huge while the shift is not finite)
        w(f"if ({a}_t != 0.0) {a}_t *= k;")
    w(f"sh = grown; {m} = {m}_p;")
    w.indent(-1)
    w("}")
    # the block's sums with the current shift
    shift_name = em.names.get(id(plan.shift))
    em.names[id(plan.shift)] = "sh"
    body = em.cone(plan.sums, full=True)
    clauses = []
    for a in sums:
        w(f"float {a}_p = 0.0f;")
        clauses.append(f"reduction(+:{a}_p)")
    # The block max reads memory once the block's sums are done with the core: the sums
    # prefetch two blocks ahead (logsumexp over 128 x 32000, C driver: 1.01-1.2x, noisy;
    # 2 and 8 KiB ahead 1.1x in the same run as 4 KiB's 1.2x).
    prefetch = {id(n): ONLINE_PREFETCH_BYTES for n in body
                if n.op is Op.LOAD and n.src[0].arg.role == "in" and not n.arg.dynamic
                and n.arg.view.strides[em.lane] == 1}
    # Where the sums' exp reads the very x the max reduces, sh (the running max, as long as
    # it is finite) is at least every x read so far: exp(x - sh) takes the shifted form
    # (`exp_minus_max`). A row whose max ends NaN or infinite is summed again below.
    exps = [r.src[0] for r in plan.sums]  # exp(x - shift), as online_plan checked
    if all(e.src[0].src[0] is plan.max_root.src[0] and e.dtype is gir.DType.F32 for e in exps):
        em.below_shift = {id(e) for e in exps}
    start = em.emit_vector_part(body, plan.sums, prefetch)
    with em.remainder(start, n_lane % 16 == 0 and ONLINE_BLOCK % 16 == 0):
        w(f"#pragma omp simd simdlen({em.par.vector}) {' '.join(clauses)}")
        w(f"for (int64_t j = {start}; j < t1; ++j) {{")
        w.indent()
        local = em.emit_body(body)
        for r, a in zip(plan.sums, sums):
            w(f"{a}_p = {a}_p + {em.ref(r.src[0], local)};")
        w.close()
    em.below_shift = set()
    for a in sums:
        w(f"{a}_t += {a}_p;")
    if shift_name is None:
        del em.names[id(plan.shift)]
    else:
        em.names[id(plan.shift)] = shift_name
    w.indent(-1)
    w("}")
    w(f"const bool online_exact = !{m}_nan && std::isfinite({m});")
    w(f"if ({m}_nan) {m} = std::numeric_limits<float>::quiet_NaN();")
    # the per-unit values from the final max, then the two-loop sums where needed
    em.emit_unit_values(plan.sums)
    w("if (!online_exact) {")
    w.indent()
    em.loop_index = 1
    em._emit_loop(plan.sums)
    for r, a in zip(plan.sums, sums):
        w(f"{a}_t = {em.names[id(r)]}_t;")
        em.names[id(r)] = a
    w.indent(-1)
    w("}")
    for r, a in zip(plan.sums, sums):
        w(f"const {register_type(r.dtype)} {a} = static_cast<{register_type(r.dtype)}>({a}_t);")
