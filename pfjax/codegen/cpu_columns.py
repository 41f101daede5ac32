"""Column-style pieces of the reduction codegen (cpu_reduce._Emitter writes the kernel):
the vf16 form of a column loop, the per-unit partials of reductions over all rows, and the
finish step of a column reduction split into row segments (one loop; with several loops
the phases of cpu_phased take over)."""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen import vector as vector_mode
from pfjax.codegen.accumulate import acc_type, combine, init_value, partial_type, wide_sum
from pfjax.codegen.ctypes_table import register_type
from pfjax.codegen.vector import VECTOR_CALLS, vector_body_ok
from pfjax.gir import Op


def column_vectors_ok(em, body: list[gir.Node], reduces: list[gir.Node]) -> bool:
    """A column loop with an exp (or the like) in it has a vf16 form: blocks of whole
    vectors, float accumulators and per-unit values (short rows staged across the lanes
    too: their stage is read along the lane). In the `omp simd` form each call goes
    through the vector-function ABI and spills the loop's live vectors around it
    (exp(x).mean(0) over 4096 x 1024: 0.73x jax.jit; cross-entropy over 393216 x 10:
    4.55-5.00 against 3.75-4.15 ms)."""
    if not (vector_mode.VECTOR_LOOPS and em.par.vector == 16 and em.par.block % 16 == 0
            and em.space[em.lane] % em.par.block == 0):
        return False
    if not any(n.op is Op.ALU and n.arg in VECTOR_CALLS for n in body) \
            or any(r.dtype is not gir.DType.F32 for r in reduces):
        return False
    inside = {id(n) for n in body}
    for n in body:
        for src in n.src:
            if src.op not in (Op.BUFFER, Op.STORE, Op.PARALLEL) and id(src) not in inside \
                    and register_type(src.dtype) != "float":
                return False
    return vector_body_ok(body, em.lane_stride)


def emit_column_vectors(em, body: list[gir.Node], reduces: list[gir.Node],
                        blocked: list[gir.Node]) -> None:
    """The column loop over pfjax::vf16, 16 columns a step: per-unit values and
    accumulators are loaded from (and stored back to) their arrays."""
    w = em.w
    w("#if PFJAX_VF16")
    w("for (int64_t j = 0; j < cn; j += 16) {")
    w.indent()
    local: dict[int, str] = {}
    uniform: set[int] = set()
    inside = {id(n) for n in body}
    for n in body:
        for src in n.src:
            if src.op in (Op.BUFFER, Op.STORE, Op.PARALLEL) or id(src) in inside \
                    or id(src) in local:
                continue
            local[id(src)] = f"v{len(local)}"
            w(f"const pfjax::vf16 {local[id(src)]} = pfjax::vf16::load(&{em.names[id(src)]}[j]);")
    em.emit_vector_step(body, local, uniform)
    for r in reduces:
        acc = f"{em.names[id(r)]}{'_p' if r in blocked else ''}"
        v = em.ref(r.src[0], local)
        if id(r.src[0]) in uniform:
            v = f"pfjax::vf16({v})"
        # max_f32(v, a): a where equal, as the scalar form's `v > a ? v : a`; NaN sticks
        new = "a + v" if r.arg.op == "sum" else f"pfjax::math::{r.arg.op}_f32(v, a)"
        w(f"{{ const pfjax::vf16 a = pfjax::vf16::load(&{acc}[j]), v = {v}; "
          f"({new}).store(&{acc}[j]); }}")
    w.close()


def emit_column_finals(em, finals: list[gir.Node]) -> None:
    """A column reduction's partials of the reductions over all rows: its block's rows
    combined in a fixed order (a float sum or product in double, in four chains)."""
    if not finals or not em.column:
        return
    em.emit_unit_values([f.src[0] for f in finals])
    for slot, f in enumerate(finals):
        op, t, init = f.arg.op, partial_type(f), init_value(f.arg.op, f.dtype)
        if t == "double":
            # Four chains: one double add after another held a 512-row block to the add's
            # latency (a tenth of cross-entropy over 10 classes on Zen 3).
            em.w(f"{{ auto at = [&](int64_t j) {{ return {em.ref(f.src[0], {})}; }};")
            em.w(f"  double part0 = {init}, part1 = {init}, part2 = {init}, part3 = {init};")
            em.w("  int64_t j = 0;")
            steps = " ".join(f"part{k} = {combine(op, f.dtype, f'part{k}', f'at(j + {k})')};"
                             for k in range(4))
            em.w(f"  for (; j + 4 <= cn; j += 4) {{ {steps} }}")
            em.w(f"  for (; j < cn; ++j) part0 = {combine(op, f.dtype, 'part0', 'at(j)')};")
            both = combine(op, f.dtype, f"({combine(op, f.dtype, 'part0', 'part1')})",
                           f"({combine(op, f.dtype, 'part2', 'part3')})")
            em.w(f"  scratch{slot}[u] = {both}; }}")
            continue
        em.w(f"{{ {t} p = {init};")
        em.w(f"  for (int64_t j = 0; j < cn; ++j) "
               f"p = {combine(op, f.dtype, 'p', em.ref(f.src[0], {}))};")
        em.w(f"  scratch{slot}[u] = p; }}")


def split_bytes(em, reduces: list[gir.Node]) -> int:
    return 8 * em.par.split * em.space[em.lane] * len(reduces)


def emit_split_scratch(em, reduces: list[gir.Node]) -> None:
    per = 8 * em.par.split * em.space[em.lane]
    for slot, r in enumerate(reduces):
        t = "double" if wide_sum(r) else acc_type(r)
        em.w(f"{t}* __restrict split{slot} = reinterpret_cast<{t}*>(static_cast<char*>("
               f"out_[{len(em.kernel.outputs)}]) + {slot * per});")


def emit_split_finish(em, reduces: list[gir.Node], epilogue: list[gir.Node]) -> None:
    """Add the segments' partials up in segment order, then the per-column results."""
    w, par, name = em.w, em.par, em.kernel.name
    cols = em.space[em.lane]
    w(f"void {name}_finish(void* const* in_, void* const* out_) {{")
    w.indent()
    em.emit_pointers()
    emit_split_scratch(em, reduces)
    w(f"for (int64_t c0 = 0; c0 < {cols}; c0 += {par.block}) {{")
    w.indent()
    w(f"const int64_t cn = std::min<int64_t>({par.block}, {cols} - c0);")
    em.names = {}
    for slot, r in enumerate(reduces):
        a = f"a{slot}"
        t = "double" if wide_sum(r) else acc_type(r)
        w(f"{t} {a}_t[{par.block}];")
        init = "0.0" if wide_sum(r) else init_value(r.arg.op, r.dtype)
        w(f"for (int64_t j = 0; j < cn; ++j) {a}_t[j] = {init};")
        w(f"for (int64_t s = 0; s < {par.split}; ++s)")
        w(f"  for (int64_t j = 0; j < cn; ++j) {a}_t[j] = "
          f"{combine(r.arg.op, r.dtype, f'{a}_t[j]', f'split{slot}[s * {cols} + c0 + j]')};")
        rt = register_type(r.dtype)
        w(f"{rt} {a}[{par.block}];")
        w(f"for (int64_t j = 0; j < cn; ++j) {a}[j] = static_cast<{rt}>({a}_t[j]);")
        em.names[id(r)] = a
    em.emit_epilogue(epilogue)
    w.close(2)
    w()
