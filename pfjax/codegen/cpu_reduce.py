"""CPU codegen for kernels with reductions (gir.loop_nest explains the loop structure).

Each parallel unit is one index of the kept dimensions. For it the kernel runs the loop
nest's loops over the reduced dimensions, one after another; values that do not vary
along them are computed once per unit between loops.

Row style (the innermost dimension is reduced): the innermost loop is a SIMD loop along
the row with OpenMP reduction clauses, in blocks whose partial results are added into the
unit's accumulator (blocked summation: long rows lose less precision than one running
sum). Column style (a kept dimension is innermost): a unit is a block of columns, every
value is a vector of them, and accumulators are arrays updated lane-wise.
"""
from __future__ import annotations

import contextlib
import math

from pfjax import gir
from pfjax.codegen.ctypes_table import (STORAGE, compute_expr, guarded_load, load_expr,
                                        register_type, store_expr)
from pfjax.codegen.cpu import _Writer, emit_sizes, stream_mode
from pfjax.codegen.cpu_columns import (column_vectors_ok, emit_column_finals,
                                       emit_column_vectors, emit_split_finish,
                                       emit_split_scratch, split_bytes)
from pfjax.codegen.cpu_deferred import (deferred_plan, emit_carried, emit_flush, emit_late_block,
                                       emit_late_flags, emit_late_step, late_in_step_ok,
                                        emit_unit_end)
from pfjax.codegen.cpu_online import emit_online, online_plan
from pfjax.codegen.cpu_phased import emit_phased
from pfjax.codegen.cpu_segments import segment_plan
from pfjax.codegen.accumulate import (acc_type, combine, init_value, omp_clause, partial_type,
                                      wide_sum)
from pfjax.codegen import vector as vector_mode
from pfjax.codegen.vector import (VECTOR_CALLS, VECTOR_WAYS, direct_flag, scalar_tail,
                                   stored_value, vector_body_ok, vector_decl, vector_store,
                                   vector_streamed_store, vector_uniform)
from pfjax.gir import Op
from pfjax.gir.loops import LoopNest, is_tile_load, loop_nest
from pfjax.passes.reciprocal import shifted_by_row_max

ROW_BLOCK = 2048  # elements per partial accumulation in row style
# Row units with several loops: the first loop streams the row in from memory, the later
# ones work from the cache with the memory idle. They prefetch the next unit's row, a few
# lines per block of PREFETCH_BLOCK elements, so that its first loop finds it in cache
# (on a 2-core Zen 4: softmax at 1024 x 4096 2.70 -> 2.16 ms; 32000-wide rows, which
# do not fit L1 but stay in L2, 5-12% on logsumexp, cross-entropy and log-softmax).
PREFETCH = True
PREFETCH_BLOCK = 256
COL_BLOCK = 64    # rows per partial accumulation of a column sum
# Phased column loops prefetch their rows this many rows ahead (softmax over axis 0 of
# 4096 x 1024, C driver: the max phase 1.16x, the last phase 1.08x faster).
COLUMN_PREFETCH = True
COLUMN_PREFETCH_ROWS = 2
# Short rows staged across the lanes: the next block's rows are prefetched once this one
# is staged (its loads otherwise wait on memory at the start of every block).
STAGE_PREFETCH = True


class _Emitter:
    def __init__(self, kernel: gir.Kernel):
        self.kernel = kernel
        self.par = kernel.parallel
        self.space = self.par.space
        self.nest: LoopNest = loop_nest(kernel)
        self.rdims = self.par.rdims
        self.column = self.par.column_style
        self.lane = len(self.space) - 1
        self.nodes = gir.toposort(kernel.root)
        self.names: dict[int, str] = {}      # per-unit values and accumulators
        self.lane_var = "j"
        self.streamed: set[int] = set()      # stores that go through a tile, non-temporally
        # values waiting in an output for a later phase (cpu_phased), streamed where aligned
        self.stream_spills: set[int] = set()
        self.w = _Writer()
        self.stage_of, self.staged = self._stages()
        self.tiles = sorted({n.src[0].arg.index: n.src[0] for n in self.nodes
                             if n.op is Op.STORE and n.src[0].arg.role == "tile"}.items())
        self.loop_index = 0
        self.prefetched = self._prefetched()
        # Row reductions split into segments of the row (few long rows): each unit reduces
        # one segment, the finish step combines a row's segments in order. With several
        # loops, each loop is a phase of its own (see emit_phased).
        self.row_split = self.par.split > 1 and not self.column
        # Column reductions split into row segments with several loops: a phase per loop
        self.column_phases = self.column and self.par.split > 1 and self.nest.num_loops > 1
        if self.row_split:
            self.prefetched = []
        self.online = None if self.row_split else online_plan(self)
        # The online sums' exp(x - shift) nodes while their block loop is written: the
        # shift is then the running max of x (cpu_online), so x - shift <= 0
        self.below_shift: set[int] = set()
        self.whole_vectors = False  # every block of the row loop is whole vf16 vectors
        self.previous = False  # emitting the previous unit's deferred loop (cpu_deferred)
        self.late_step = False  # ... inside the host loop's vf16 step
        self.deferred = deferred_plan(self)
        # Loops that prefetch the next unit's rows: the later ones, unless fused online or
        # deferred.
        self.prefetch_loops = [k for k in range(1, self.nest.num_loops)
                               if not (self.online and k == 1)
                               and not (self.deferred and k == self.deferred.last)]

    def _prefetched(self) -> list[tuple[str, gir.Node]]:
        """Input rows the later loops of a row unit prefetch for the next unit: contiguous
        along the row and varying from one unit to the next (not broadcast weights)."""
        if not PREFETCH or self.column or self.rdims != (self.lane,) or self.nest.num_loops < 2:
            return []
        kept = [d for d in range(len(self.space)) if d not in self.rdims]
        if not kept:
            return []
        unit_dim = kept[-1]
        seen: dict[tuple, tuple[str, gir.Node]] = {}
        for n in self.nodes:
            if n.op is not Op.LOAD or n.src[0].arg.role != "in" or n.arg.dynamic \
                    or n.arg.fill is not None or gir.load_guard(n) is not None:
                continue
            view = n.arg.view
            if view.strides[self.lane] != 1 or view.strides[unit_dim] == 0:
                continue
            key = (n.src[0].arg.index, view)
            if key not in seen:
                seen[key] = (f"pf{len(seen)}", n)
        return list(seen.values())

    def emit_prefetch_bases(self) -> None:
        """Byte address of the next unit's row of each prefetched input (integer
        arithmetic: past the last unit it points outside the buffer, which a prefetch
        tolerates)."""
        if not self.prefetch_loops:
            return
        kept = [d for d in range(len(self.space)) if d not in self.rdims]
        for name, n in self.prefetched:
            view = n.arg.view
            terms = [str(view.offset)] + [
                f"{f'(i{d} + 1)' if d == kept[-1] else f'i{d}'} * {s}"
                for d, s in enumerate(view.strides) if s and d != self.lane]
            self.w(f"const uintptr_t {name} = reinterpret_cast<uintptr_t>(in{n.src[0].arg.index}) + "
                   f"static_cast<uintptr_t>({' + '.join(terms)}) * {n.dtype.itemsize};")

    def emit_prefetches(self) -> None:
        """This block's share of the next unit's rows: loop k of the m loops that prefetch
        (the later ones) takes the k-th m-th of each row, in step with its own position."""
        m, n = len(self.prefetch_loops), self.space[self.lane]
        k = self.prefetch_loops.index(self.loop_index)
        for name, node in self.prefetched:
            size = node.dtype.itemsize
            lo, hi = (f"{k * n} + t0", f"{k * n} + t1") if m > 1 else ("t0", "t1")
            if m > 1:
                lo, hi = f"({lo}) / {m}", f"({hi}) / {m}"
            self.w(f"for (int64_t q = {lo}; q < {hi}; q += {max(1, 64 // size)}) "
                   f"__builtin_prefetch(reinterpret_cast<const void*>({name} + q * {size}), 0, 3);")

    # -- indexing ---------------------------------------------------------------------

    def idx(self, d: int) -> str:
        if d == self.lane:
            return "(c0 + j)" if self.column else self.lane_var
        return f"p{d}" if self.previous else f"i{d}"

    def _stages(self) -> tuple[dict[int, str], list[tuple[str, gir.Node]]]:
        """Accesses of a column reduction that are strided across its lanes but contiguous
        along its one reduced dimension (short rows laid across the lanes): they go through
        a stage tile at the local level, filled (or emptied) by a block transpose."""
        stage_of: dict[int, str] = {}
        staged: list[tuple[str, gir.Node]] = []
        if not self.column or len(self.rdims) != 1:
            return stage_of, staged
        rd = self.rdims[0]
        by_view: dict[tuple, str] = {}
        for n in self.nodes:
            if n.op not in (Op.LOAD, Op.STORE) or n.src[0].arg.role == "tile" \
                    or n.arg.dynamic or n.arg.fill is not None:
                continue
            strides = n.arg.view.strides
            if abs(strides[self.lane]) <= 1 or strides[rd] != 1:
                continue
            key = (n.op, n.src[0].arg.role, n.src[0].arg.index, n.arg.view)
            if key not in by_view:
                by_view[key] = f"{'stage' if n.op is Op.LOAD else 'ostage'}{len(staged)}"
                staged.append((by_view[key], n))
            stage_of[id(n)] = by_view[key]
        return stage_of, staged

    def blocks_outermost(self, outer: list[int]) -> bool:
        """Whether a column reduction's units should step through its other kept indices
        (`outer`) before its blocks of columns: where the largest input is laid out with
        those indices closer together than a block's columns (a masked softmax over
        (B, 7, 7) rows: its 7 rows of a batch element sit 7 floats apart, the batch 49
        floats apart; stepping the batch first read the input 7 times, 0.5x jax.jit)."""
        loads = [n for n in self.nodes if n.op is Op.LOAD and n.src[0].arg.role == "in"]
        if not outer or not loads:
            return False
        main = max(loads, key=lambda n: math.prod(n.src[0].arg.shape))
        strides = main.arg.view.strides
        block_stride = abs(strides[self.lane]) * self.par.block
        return any(0 < abs(strides[d]) < block_stride for d in outer)

    def stage_base(self, node: gir.Node) -> str:
        """Address of the access at the unit's first lane (c0) and row 0."""
        view, rd = node.arg.view, self.rdims[0]
        terms = [str(view.offset)] + [f"i{d} * {s}" for d, s in enumerate(view.strides)
                                      if s and d not in (self.lane, rd)]
        terms.append(f"c0 * {view.strides[self.lane]}")
        base = f"{'in' if node.src[0].arg.role == 'in' else 'out'}{node.src[0].arg.index}"
        return f"&{base}[{' + '.join(terms)}]"

    def address(self, node: gir.Node) -> str:
        buf = node.src[0]
        if id(node) in self.stage_of:
            return f"{self.stage_of[id(node)]}[{self.idx(self.rdims[0])} * {self.par.block} + j]"
        if buf.arg.role == "tile":
            flat = "0"
            for d in self.rdims:
                flat = f"({flat}) * {self.space[d]} + {self.idx(d)}" if flat != "0" else self.idx(d)
            if self.column:
                flat = f"({flat}) * {self.par.block} + j"
            return f"tile{buf.arg.index}{'_p' if self.previous else ''}[{flat}]"
        view = node.arg.view
        terms = [str(view.offset)] + [f"{self.idx(d)} * {s}" for d, s in enumerate(view.strides) if s]
        base = f"{'in' if buf.arg.role == 'in' else 'out'}{buf.arg.index}"
        return f"{base}[{' + '.join(terms)}]"

    # -- values -----------------------------------------------------------------------

    def ref(self, node: gir.Node, local: dict[int, str]) -> str:
        if id(node) in local:
            return local[id(node)]
        name = self.names[id(node)]
        return f"{name}[j]" if self.column else name

    def expr(self, n: gir.Node, local: dict[int, str]) -> str:
        src = [self.ref(s, local) for s in n.src if s.op is not Op.BUFFER and s.op is not Op.STORE]
        if n.op is Op.LOAD:
            if is_tile_load(n):
                return self.address(n)
            address = self.address(n)
            if gir.load_offset(n) is not None:
                address = f"{address[:-1]} + {self.ref(gir.load_offset(n), local)}]"
            guard = gir.load_guard(n)
            names = {id(guard): self.ref(guard, local)} if guard is not None else {}
            return guarded_load(n, load_expr(address, n.dtype), names)
        if n.op is Op.INDEX:
            return f"static_cast<int64_t>({self.idx(n.arg)})"
        shifted = None if self.column else shifted_by_row_max(n)
        if shifted is None and id(n) in self.below_shift:
            shifted = n.src[0].src[0], n.src[0].src[1]
        if shifted is not None and id(shifted[1]) not in local and id(shifted[1]) in self.names:
            # softmax's exp(x - max): the subtraction folds into exp's range reduction
            x, m = shifted
            return f"pfjax::math::exp_minus_max({self.ref(x, local)}, {self.ref(m, local)})"
        expr = compute_expr(n.op, n, src)
        if expr is not None:
            return expr
        raise NotImplementedError(f"reduction codegen has no rule for {n.op}")

    def cone(self, roots: list[gir.Node], full: bool) -> list[gir.Node]:
        """Nodes that `roots` need, in order: the full ones (inside a loop) when `full`,
        else the per-unit ones not yet computed."""
        want: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if id(n) in want or n.op in (Op.BUFFER, Op.PARALLEL):
                continue
            if n.op is Op.STORE and n not in roots:
                continue  # a tile load's ordering edge, not a value
            if not full and id(n) in self.names:
                continue
            if full and n not in roots and not self.nest.full.get(id(n), False):
                continue  # per-unit value, computed before the loop
            want.add(id(n))
            if n.op is not Op.REDUCE or n in roots:
                stack.extend(n.src)
        return [n for n in self.nodes if id(n) in want]

    # -- per-unit values --------------------------------------------------------------

    def emit_unit_values(self, roots: list[gir.Node]) -> None:
        """Compute the per-unit values `roots` need (scalars, or arrays of columns)."""
        needed = []
        for r in roots:
            if r.op is Op.REDUCE:
                deps = [s for s in self.cone([r], full=True) if s is not r]
                if not self.nest.full.get(id(r.src[0]), True) and id(r.src[0]) not in self.names:
                    needed.append(r.src[0])  # constant along the row, still counted per element
            else:
                deps = self.cone([r], full=True)
            for n in deps:
                for s in n.src:
                    if s.op not in (Op.BUFFER, Op.STORE) and not self.nest.full.get(id(s), True) \
                            and id(s) not in self.names:
                        needed.append(s)
            if not self.nest.full.get(id(r), True) and r.op is not Op.REDUCE:
                needed.append(r)
        nodes = [n for n in self.cone(needed, full=False) if n.op is not Op.REDUCE]
        nodes = [n for n in nodes if n.op is not Op.STORE]
        if not nodes:
            return
        w = self.w
        if self.column:
            # Within the loop the values are read from registers, not back from their
            # arrays: g++ turns a select between two array elements into a masked load,
            # which it does not vectorise beside bool arrays, and then leaves the whole
            # loop scalar (a per-row log with it). A dynamic load (a gather at a per-row
            # label) gets a loop of its own for the same reason.
            parts = _split_at(nodes, lambda n: gir.load_offset(n) is not None)
            # Only values read outside their own loop get an array: the rest were dead
            # stores g++ kept (a label's bounds checks in int64: 36 KiB per block of 512).
            kept = self._read_outside(parts, roots)
            for n in nodes:
                self.names[id(n)] = f"h{len(self.names)}"
                # (g++ vectorises selects on uint8_t arrays, not on bool ones)
                t = "uint8_t" if n.dtype is gir.DType.BOOL else register_type(n.dtype)
                if id(n) in kept:
                    w(f"{t} {self.names[id(n)]}[{self.par.block}];")
            for part in parts:
                w(f"#pragma omp simd simdlen({self.par.vector})")
                w("for (int64_t j = 0; j < cn; ++j) {")
                w.indent()
                local: dict[int, str] = {}
                for n in part:
                    name = self.names[id(n)]
                    w(f"const {register_type(n.dtype)} {name}_ = {self.expr(n, local)};")
                    if id(n) in kept:
                        w(f"{name}[j] = {name}_;")
                    local[id(n)] = f"{name}_"
                w.indent(-1)
                w("}")
        else:
            for n in nodes:
                self.names[id(n)] = f"h{len(self.names)}"
                w(f"const {register_type(n.dtype)} {self.names[id(n)]} = {self.expr(n, {})};")

    def _read_outside(self, parts: list[list[gir.Node]], roots: list[gir.Node]) -> set[int]:
        """ids of the per-unit values that code outside their own loop in `parts` reads:
        the roots asked for, and those with a consumer elsewhere in the kernel."""
        part_of = {id(n): i for i, part in enumerate(parts) for n in part}
        kept = {id(n) for n in roots if id(n) in part_of}
        for user in self.nodes:
            for s in user.src:
                if id(s) in part_of and part_of.get(id(user)) != part_of[id(s)]:
                    kept.add(id(s))
        return kept

    # -- loops ------------------------------------------------------------------------

    def streamable(self, roots: list[gir.Node]) -> list[gir.Node]:
        """Output stores of a store-only row-style loop that can stream past the cache."""
        if not self.par.nontemporal or self.column or any(r.op is Op.REDUCE for r in roots):
            return []
        stores = [r for r in roots if r.op is Op.STORE and r.src[0].arg.role == "out"]
        if len(stores) != len(roots):
            return []
        return [r for r in stores if r.arg.view.strides[self.lane] == 1]

    def emit_loop(self, roots: list[gir.Node]) -> None:
        self.emit_store_paths(roots, lambda: self._emit_loop(roots))

    def emit_store_paths(self, roots: list[gir.Node], emit) -> None:
        """`emit()` the code for `roots` once, or twice where their stores can stream:
        streaming pays only on output pages already mapped, which the dispatcher decides
        per call (`stream`)."""
        streamed = self.streamable(roots)
        if not streamed:
            emit()
            return
        self.emit_unit_values(roots)
        self.w("if (stream) {")
        self.w.indent()
        self.streamed = {id(r) for r in streamed}
        emit()
        self.streamed = set()
        self.w.indent(-1)
        self.w("} else {")
        self.w.indent()
        emit()
        self.w.close()

    def _emit_loop(self, roots: list[gir.Node]) -> None:
        w = self.w
        reduces = [r for r in roots if r.op is Op.REDUCE]
        self.emit_unit_values(roots)
        for r in reduces:
            name = f"a{len(self.names)}"
            self.names[id(r)] = name
            init = init_value(r.arg.op, r.dtype)
            if wide_sum(r):  # the running total of a float sum is a double
                if self.column:
                    w(f"double {name}_t[{self.par.block}];")
                    w(f"for (int64_t j = 0; j < cn; ++j) {name}_t[j] = 0.0;")
                else:
                    w(f"double {name}_t = 0.0;")
            elif self.column:
                w(f"{acc_type(r)} {name}[{self.par.block}];")
                w(f"for (int64_t j = 0; j < cn; ++j) {name}[j] = {init};")
            else:
                w(f"{acc_type(r)} {name} = {init};")
                if r.arg.op in ("max", "min") and r.dtype.is_float:
                    w(f"int {name}_nan = 0;")
        outer = [d for d in self.rdims if self.column or d != self.lane]
        # Column float sums accumulate in blocks of rows too (blocked summation).
        blocked = [r for r in reduces if self.column and wide_sum(r)]
        if blocked:
            lo, hi = self.first_range(outer)
            w(f"for (int64_t b0 = {lo}; b0 < {hi}; b0 += {COL_BLOCK}) {{")
            w.indent()
            for r in blocked:
                a = self.names[id(r)]
                w(f"{acc_type(r)} {a}_p[{self.par.block}];")
                w(f"for (int64_t j = 0; j < cn; ++j) {a}_p[j] = {init_value('sum', r.dtype)};")
        first_lo, first_hi = self.first_range(outer)
        for k, d in enumerate(outer):
            lo, hi = ("b0", f"std::min<int64_t>(b0 + {COL_BLOCK}, {first_hi})") \
                if blocked and k == 0 else (first_lo, first_hi) if k == 0 else ("0", str(self.space[d]))
            w(f"for (int64_t i{d} = {lo}; i{d} < {hi}; ++i{d}) {{")
            w.indent()
        body = self.cone(roots, full=True)
        if self.column:
            self.emit_column_prefetch(body, outer[-1] if outer else None)
            vectors = column_vectors_ok(self, body, reduces)
            if vectors:
                emit_column_vectors(self, body, reduces, blocked)
                w("#else")
            w(f"#pragma omp simd simdlen({self.par.vector})")
            w("for (int64_t j = 0; j < cn; ++j) {")
            w.indent()
            local = self.emit_body(body)
            for r in reduces:
                acc = f"{self.names[id(r)]}{'_p' if r in blocked else ''}[j]"
                w(f"{acc} = {combine(r.arg.op, r.dtype, acc, self.ref(r.src[0], local))};")
            w.indent(-1)
            w("}")
            if vectors:
                w("#endif")
        else:
            n_lane = self.space[self.lane]
            prefetch = bool(self.prefetched) and self.loop_index in self.prefetch_loops
            block = PREFETCH_BLOCK if prefetch else ROW_BLOCK
            self.whole_vectors = n_lane % 16 == 0 and (n_lane <= block or block % 16 == 0)
            if self.row_split:  # this unit's segment of the row, in whole blocks
                per_segment = -(-n_lane // self.par.split)
                seg = -(-per_segment // block) * block
                w(f"const int64_t seg_end = std::min<int64_t>(seg * {seg} + {seg}, {n_lane});")
                w(f"for (int64_t t0 = seg * {seg}; t0 < seg_end; t0 += {block}) {{")
                w.indent()
                w(f"const int64_t t1 = std::min<int64_t>(t0 + {block}, seg_end);")
            elif n_lane <= block:  # one block: constant bounds
                w("{")
                w.indent()
                w("constexpr int64_t t0 = 0;")
                w(f"constexpr int64_t t1 = {n_lane};")
            else:
                w(f"for (int64_t t0 = 0; t0 < {n_lane}; t0 += {block}) {{")
                w.indent()
                w(f"const int64_t t1 = std::min<int64_t>(t0 + {block}, {n_lane});")
            late = self.deferred if self.deferred and self.loop_index == self.deferred.host else None
            in_step = late is not None and late_in_step_ok(self, late, body)
            # the next unit's lines one per vf16 step, where that is a line per input
            step_prefetch = prefetch and in_step and len(self.prefetch_loops) == 1 \
                and all(n.dtype.itemsize * 16 == 64 for _, n in self.prefetched)
            if prefetch:
                if step_prefetch:
                    w("#if !PFJAX_VF16")
                self.emit_prefetches()
                if step_prefetch:
                    w("#endif")
            self.emit_row_block(roots, body, reduces, late if in_step else None, step_prefetch)
            if late is not None:
                if in_step:  # builds without vf16 run it after the block
                    w("#if !PFJAX_VF16")
                emit_late_block(self, late)
                if in_step:
                    w("#endif")
            w.indent(-1)
            w("}")
        for _ in outer:
            w.indent(-1)
            w("}")
        if blocked:
            for r in blocked:
                a = self.names[id(r)]
                w(f"for (int64_t j = 0; j < cn; ++j) {a}_t[j] += {a}_p[j];")
            w.indent(-1)
            w("}")
        for r in reduces:
            if wide_sum(r):
                a, t = self.names[id(r)], register_type(r.dtype)
                if self.column:
                    w(f"{t} {a}[{self.par.block}];")
                    w(f"for (int64_t j = 0; j < cn; ++j) {a}[j] = static_cast<{t}>({a}_t[j]);")
                else:
                    w(f"const {t} {a} = static_cast<{t}>({a}_t);")
        if not self.column:
            for r in reduces:
                if r.arg.op in ("max", "min") and r.dtype.is_float:
                    a = self.names[id(r)]
                    w(f"if ({a}_nan) {a} = std::numeric_limits<{register_type(r.dtype)}>::quiet_NaN();")

    def emit_column_prefetch(self, body: list[gir.Node], row_dim: int | None) -> None:
        """A phased column loop's rows COLUMN_PREFETCH_ROWS ahead, prefetched line by line
        at the start of each row: a row's few KiB are too short a run for the hardware
        prefetchers to get ahead of."""
        if not (COLUMN_PREFETCH and self.column_phases) or row_dim is None:
            return  # phases only: a single loop over 4096 x 1024 measured no gain
        ahead: dict[str, tuple[int, int]] = {}  # address -> (bytes ahead, elements a line)
        for n in body:
            if n.op is not Op.LOAD or is_tile_load(n) or n.arg.dynamic \
                    or n.src[0].arg.role not in ("in", "out") or id(n) in self.stage_of:
                continue
            strides, size = n.arg.view.strides, n.dtype.itemsize
            if strides[self.lane] == 1 and strides[row_dim]:
                ahead[self.address(n)] = (COLUMN_PREFETCH_ROWS * strides[row_dim] * size, 64 // size)
        for address, (skip, per_line) in ahead.items():
            self.w(f"for (int64_t j = 0; j < cn; j += {per_line}) __builtin_prefetch("
                   f"reinterpret_cast<const char*>(&{address}) + {skip}, 0, 3);")

    def emit_row_block(self, roots: list[gir.Node], body: list[gir.Node],
                       reduces: list[gir.Node], late=None, step_prefetch: bool = False) -> None:
        """One block [t0, t1) of a row-style loop: the vector part, the scalar remainder,
        the streamed stores' copies out and the block's partial results. `late`: the
        deferred plan whose previous unit runs inside the vector steps; `step_prefetch`:
        they prefetch the next unit's rows (else the caller did, per block)."""
        w = self.w
        for k, st in enumerate(r for r in roots if id(r) in self.streamed):
            w(f"alignas(64) {STORAGE[st.dtype]} stile{k}[{ROW_BLOCK}];")
        clauses = []
        for r in reduces:
            p = self.names[id(r)] + "_p"
            w(f"{acc_type(r)} {p} = {init_value(r.arg.op, r.dtype)};")
            clauses.append(omp_clause(r, p))
            if r.arg.op in ("max", "min") and r.dtype.is_float:
                w(f"int {p}_nan = 0;")
                clauses.append(f"reduction(|:{p}_nan)")
        start = self.emit_vector_part(body, reduces, late=late, step_prefetch=step_prefetch)
        with self.remainder(start, self.whole_vectors):
            self.emit_scalar_loop(body, reduces, start, clauses)
        self.lane_var = "t0"
        for k, st in enumerate(r for r in roots if id(r) in self.streamed):
            if start == "tv":  # whole vectors went straight out where aligned
                self.lane_var = "tv"
                w(f"if (direct{k}) pfjax::rt::stream_copy(&{self.address(st)}, "
                  f"stile{k} + (tv - t0), t1 - tv);")
                self.lane_var = "t0"
                w(f"else pfjax::rt::stream_copy(&{self.address(st)}, stile{k}, t1 - t0);")
            else:
                w(f"pfjax::rt::stream_copy(&{self.address(st)}, stile{k}, t1 - t0);")
        self.lane_var = "j"
        for r in reduces:
            a, p = self.names[id(r)], self.names[id(r)] + "_p"
            if wide_sum(r):
                w(f"{a}_t += {p};")
            else:
                w(f"{a} = {combine(r.arg.op, r.dtype, a, p)};")
            if r.arg.op in ("max", "min") and r.dtype.is_float:
                w(f"{a}_nan |= {p}_nan;")

    @contextlib.contextmanager
    def remainder(self, start: str, whole: bool):
        """Around the scalar loop after a vf16 part (start "tv"). Where the vector part
        takes every element of every block (`whole`) the loop is dead code, yet present it
        slowed the vector loop (softmax over 4096 columns, C driver: 1.09-1.1x without
        it): it stays only for builds without vf16. Elsewhere it calls the inline twins
        of the vector-ABI functions (vector.scalar_tail)."""
        dead = start == "tv" and whole
        if dead:
            self.w("#if !PFJAX_VF16")
        mark = len(self.w.lines)
        yield
        if dead:
            self.w("#endif")
        elif start == "tv":
            scalar_tail(self.w.lines, mark)

    def emit_scalar_loop(self, body: list[gir.Node], reduces: list[gir.Node], start: str,
                         clauses: list[str]) -> None:
        """The row block's elements from `start` to t1, one lane per iteration."""
        w = self.w
        if self.space[self.lane] >= self.par.vector:
            # Rows shorter than a vector are left to the compiler's straight-line code:
            # mostly-masked vectors and horizontal reductions cost more there.
            w(f"#pragma omp simd simdlen({self.par.vector}) {' '.join(clauses)}".rstrip())
        w(f"for (int64_t j = {start}; j < t1; ++j) {{")
        w.indent()
        local = self.emit_body(body)
        for r in reduces:
            p = self.names[id(r)] + "_p"
            v = self.ref(r.src[0], local)
            if r.arg.op in ("max", "min"):
                cmp = ">" if r.arg.op == "max" else "<"
                w(f"{p} = ({v}) {cmp} {p} ? ({v}) : {p};")
                if r.dtype.is_float:
                    w(f"{p}_nan |= ({v}) != ({v});")
            else:
                w(f"{p} = {combine(r.arg.op, r.dtype, p, v)};")
        w.close()

    def first_range(self, outer: list[int]) -> tuple[str, str]:
        """Bounds of the outermost reduced loop: a unit's row segment when split."""
        if not outer:
            return "0", "0"  # unused: the only reduced dimension is the row itself
        d = outer[0]
        if self.par.split <= 1:
            return "0", str(self.space[d])
        seg = -(-self.space[d] // self.par.split)
        return f"seg * {seg}", f"std::min<int64_t>(seg * {seg} + {seg}, {self.space[d]})"

    def emit_body(self, body: list[gir.Node]) -> dict[int, str]:
        local: dict[int, str] = {}
        streamed = [n for n in body if id(n) in self.streamed]
        for n in body:
            if n.op is Op.REDUCE:
                continue
            if n.op is Op.STORE:
                value = self.ref(n.src[1], local)
                if id(n) in self.streamed:
                    self.w(f"stile{streamed.index(n)}[j - t0] = {store_expr(value, n.dtype)};")
                elif n.src[0].arg.role == "tile":
                    self.w(f"{self.address(n)} = {value};")
                else:
                    self.w(f"{self.address(n)} = {store_expr(value, n.dtype)};")
                continue
            v = f"v{len(local)}"
            local[id(n)] = v
            self.w(f"const {register_type(n.dtype)} {v} = {self.expr(n, local)};")
        return local

    def lane_stride(self, n: gir.Node) -> int:
        if n.src[0].arg.role == "tile":
            return 1  # a row unit's tile is indexed by the lane
        if id(n) in self.streamed or id(n) in self.stage_of:
            return 1  # (a staged access reads its stage along the lane)
        return n.arg.view.strides[self.lane]

    def vector_form_ok(self, body: list[gir.Node], streams: bool | None = None) -> bool:
        """The loop body gets a vf16 form (`streams`: its stores stream; by default those
        in self.streamed)."""
        if streams is None:
            streams = any(id(n) in self.streamed for n in body)
        return vector_mode.VECTOR_LOOPS and self.space[self.lane] >= 16 \
            and self.par.vector == 16 and vector_body_ok(body, self.lane_stride, streams=streams)

    def emit_vector_part(self, body: list[gir.Node], reduces: list[gir.Node],
                         prefetch: dict[int, int] | None = None, late=None,
                         step_prefetch: bool = False) -> str:
        """The vf16 loop over the block [t0, t1) where the body has that form; returns
        where the scalar loop starts. `prefetch`: as emit_vector_step's; `late` and
        `step_prefetch`: as emit_row_block's."""
        streamed = [n for n in body if id(n) in self.streamed]
        if not self.vector_form_ok(body):
            return "t0"
        self.w("int64_t tv = t0;")
        self.lane_var = "t0"
        for k, st in enumerate(streamed):
            self.w(direct_flag(k, f"&{self.address(st)}"))
        self.lane_var = "j"
        if late is not None:
            emit_late_flags(self, late)
        self.emit_vector_loop(body, reduces, prefetch, late, step_prefetch)
        return "tv"

    def emit_vector_step(self, body: list[gir.Node], local: dict[int, str], uniform: set[int],
                         prefetch: dict[int, int] | None = None) -> None:
        """The values and stores of one vf16 step over `body` (reductions left to the
        caller). `local` names the values (it may hold some already), `uniform` those the
        same in every lane; `prefetch`: load -> bytes ahead it prefetches per step."""
        w = self.w
        streamed = [n for n in body if id(n) in self.streamed]
        for n in body:
            if n.op is Op.REDUCE:
                continue
            if prefetch and id(n) in prefetch:
                w(f"__builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>("
                  f"&{self.address(n)}) + {prefetch[id(n)]}), 0, 3);")
            if n.op is Op.STORE:
                stored = stored_value(n)
                value = self.ref(stored, local)
                is_uniform = id(stored) in uniform or id(stored) not in local
                if id(n) in self.stream_spills:  # aligned vectors past the cache
                    address = self.address(n)
                    w(f"if (stream && reinterpret_cast<uintptr_t>(&{address}) % 64 == 0) "
                      + vector_store(value, is_uniform, address, stream=True))
                    w("else " + vector_store(value, is_uniform, address))
                elif id(n) in self.streamed:
                    k = streamed.index(n)
                    staged = None if self.late_step else f"stile{k}[j - t0]"  # no tile in a step
                    for line in vector_streamed_store(k, value, is_uniform, self.address(n),
                                                      staged, n.dtype):
                        w(line)
                else:
                    w(vector_store(value, is_uniform, self.address(n), dtype=n.dtype))
                continue
            v = f"v{len(local)}"
            local[id(n)] = v
            is_uniform = vector_uniform(n, uniform, local, self.lane_stride)
            if is_uniform:
                uniform.add(id(n))
            w(vector_decl(n, v, is_uniform, lambda: self.expr(n, local),
                          lambda: self.address(n), lambda s: self.ref(s, local)))

    def emit_vector_loop(self, body: list[gir.Node], reduces: list[gir.Node],
                         prefetch: dict[int, int] | None = None, late=None,
                         step_prefetch: bool = False) -> None:
        """The block's whole vectors over pfjax::vf16, up to `tv`; the scalar loop that
        follows takes the remainder, its accumulators starting from these. The body is a
        lambda applied to `ways` vectors per step, each into its own accumulators: one
        accumulator is a dependency chain of an add (or fma) per vector, whose latency
        bounds a loop over data already in cache to a third of its throughput."""
        w = self.w
        calls = any(n.op is Op.ALU and n.arg in VECTOR_CALLS for n in body)
        ways = 1 if not reduces else 2 if calls else VECTOR_WAYS
        w("#if PFJAX_VF16")
        w("tv = t0 + (t1 - t0) / 16 * 16;")
        w("{")
        w.indent()
        for r in reduces:
            p = self.names[id(r)] + "_p"
            more = "".join(f", pfjax::vf16({init_value(r.arg.op, r.dtype)})" for _ in range(ways - 1))
            w(f"pfjax::vf16 {p}_v[{ways}] = {{pfjax::vf16({p}){more}}};")
            if r.arg.op in ("max", "min"):
                w(f"int {p}_vnan = 0;")
        w("auto step = [&](int64_t j, int k) __attribute__((always_inline)) {")
        w.indent()
        local: dict[int, str] = {}
        uniform: set[int] = set()
        self.emit_vector_step(body, local, uniform, prefetch)
        for r in reduces:  # lane-wise into the vector accumulators
            acc = self.names[id(r)] + "_p_v[k]"
            v = self.ref(r.src[0], local)
            w(f"{acc} = {acc} + {v};" if r.arg.op == "sum" else
              f"{acc} = pfjax::acc_{r.arg.op}({acc}, {v}); "
              f"{self.names[id(r)]}_p_vnan |= pfjax::any_nan({v});")
        if late is not None:
            emit_late_step(self, late)
        if step_prefetch:  # spread evenly: 16 prefetches at a block's start did less
            for name, _ in self.prefetched:
                w(f"__builtin_prefetch(reinterpret_cast<const void*>({name} + j * 4), 0, 3);")
        w.indent(-1)
        w("};")
        w("int64_t j = t0;")
        if ways > 1:
            steps = " ".join(f"step(j{f' + {16 * k}' if k else ''}, {k});" for k in range(ways))
            w(f"for (; j + {16 * ways} <= tv; j += {16 * ways}) {{ {steps} }}")
        w("for (; j < tv; j += 16) step(j, 0);")
        for r in reduces:  # across the accumulators and lanes, into the scalar loop's
            p = self.names[id(r)] + "_p"
            op = r.arg.op
            total = f"{p}_v[0]"
            for k in range(1, ways):
                total = f"{total} + {p}_v[{k}]" if op == "sum" else \
                    f"pfjax::acc_{op}({total}, {p}_v[{k}])"
            w(f"{p} = pfjax::reduce_sum({total});" if op == "sum" else
              f"{p} = pfjax::reduce_{op}({total}); {p}_nan |= {p}_vnan;")
        w.indent(-1)
        w("}")
        w("#endif")

    def emit_epilogue(self, stores: list[gir.Node]) -> None:
        if not stores:
            return
        self.emit_unit_values(stores)
        w = self.w
        if self.column:
            w("for (int64_t j = 0; j < cn; ++j) {")
            w.indent()
        for s in stores:
            w(f"{self.address(s)} = {store_expr(self.ref(s.src[1], {}), s.dtype)};")
        if self.column:
            w.indent(-1)
            w("}")

    # -- reductions over the units ----------------------------------------------------

    def emit_pointers(self) -> None:
        for buf in self.kernel.inputs:
            t = STORAGE[buf.dtype]
            self.w(f"const {t}* __restrict in{buf.arg.index} = static_cast<const {t}*>(in_[{buf.arg.index}]);")
        for buf in self.kernel.outputs:
            t = STORAGE[buf.dtype]
            self.w(f"{t}* __restrict out{buf.arg.index} = static_cast<{t}*>(out_[{buf.arg.index}]);")

    def emit_scratch(self, finals: list[gir.Node]) -> None:
        """Per-unit partial results of each final reduction: 8 bytes per unit, in order."""
        for k, f in enumerate(finals):
            t = partial_type(f) if f.dtype is not gir.DType.BOOL else "uint8_t"
            self.w(f"{t}* __restrict scratch{k} = reinterpret_cast<{t}*>(static_cast<char*>("
                   f"out_[{len(self.kernel.outputs)}]) + {8 * k * self.par.units});")

    def emit_finish(self, finals: list[gir.Node]) -> None:
        """Combine the units' partials in unit order (deterministic for any thread count;
        float sums in double), then compute and store what depends on them."""
        w, name = self.w, self.kernel.name
        w(f"void {name}_finish(void* const* in_, void* const* out_) {{")
        w.indent()
        self.emit_pointers()
        self.emit_scratch(finals)
        column, self.column = self.column, False  # the finish computes scalars only
        self.names = {}
        for k, f in enumerate(finals):
            acc_t = "double" if f.dtype.is_float and f.arg.op in ("sum", "prod") else acc_type(f)
            w(f"{acc_t} f{k} = {init_value(f.arg.op, f.dtype)};")
            w(f"for (int64_t u = 0; u < {self.par.units}; ++u) "
              f"f{k} = {combine(f.arg.op, f.dtype, f'f{k}', f'scratch{k}[u]')};")
            w(f"const {register_type(f.dtype)} fin{k} = static_cast<{register_type(f.dtype)}>(f{k});")
            self.names[id(f)] = f"fin{k}"
        stores = [n for n in self.nodes if n.op is Op.STORE and self.nest.final[id(n)]]
        for n in self.cone([s.src[1] for s in stores], full=False):
            if id(n) in self.names or n.op in (Op.STORE, Op.REDUCE):
                continue
            self.names[id(n)] = f"h{len(self.names)}"
            w(f"const {register_type(n.dtype)} {self.names[id(n)]} = {self.expr(n, {})};")
        for st in stores:
            w(f"{self.address(st)} = {store_expr(self.ref(st.src[1], {}), st.dtype)};")
        self.column = column
        w.indent(-1)
        w("}")
        w()

    def emit_combined_partial(self, slot: int, r: gir.Node, partials: str) -> None:
        """a{slot}: the reduction's partials `partials` (an expression in s) combined in
        segment order (float sums in double)."""
        a, rt = f"a{slot}", register_type(r.dtype)
        t = "double" if wide_sum(r) else acc_type(r)
        self.w(f"{t} {a}_t = {'0.0' if wide_sum(r) else init_value(r.arg.op, r.dtype)};")
        self.w(f"for (int64_t s = 0; s < {self.par.split}; ++s) "
               f"{a}_t = {combine(r.arg.op, r.dtype, f'{a}_t', partials)};")
        self.w(f"const {rt} {a} = static_cast<{rt}>({a}_t);")
        self.names[id(r)] = a

    def emit_unit_indices(self, unit: str) -> None:
        """i{d} of the kept dimensions, unravelled from the row number `unit`."""
        self.w(f"int64_t r = {unit};")
        for d in reversed([d for d in range(len(self.space)) if d not in self.rdims]):
            self.w(f"const int64_t i{d} = r % {self.space[d]}; r /= {self.space[d]};")
        self.w("(void)r;")

    # -- the kernel -------------------------------------------------------------------

    def emit(self) -> str:
        k, w, par = self.kernel, self.w, self.par
        name = k.name
        if self.row_split or self.column_phases:
            return emit_phased(self)
        w(f"// Generated by pfjax from GIR kernel {name} (reduction). Do not edit.")
        w('#include "pfjax/kernel.h"')
        w()
        w("namespace {")
        w()
        w(f"void {name}_body(void* const* in_, void* const* out_, int64_t begin, int64_t end, "
          f"int32_t stream) {{")
        w.indent()
        self.emit_pointers()
        finals = self.nest.finals(self.nodes)
        self.emit_scratch(finals)
        split_reduces = [r for r in self.nest.roots(self.nodes) if r.op is Op.REDUCE] \
            if par.split > 1 else []
        emit_split_scratch(self, split_reduces)
        rsize = 1
        for d in self.rdims:
            rsize *= self.space[d]
        segments = segment_plan(self)
        if segments:  # the tiles and stages are the staged plan's only
            w("#if !PFJAX_SEGMENTS")
        for index, buf in self.tiles:
            t = register_type(buf.dtype)
            size = rsize * (par.block if self.column else 1)
            if self.deferred:  # this unit's and the previous one's, swapped per unit
                w(f"pfjax::rt::Scratch<{t}> tile{index}_({2 * size});")
                w(f"{t}* tile{index} = tile{index}_.data;")
                w(f"{t}* tile{index}_p = tile{index}_.data + {size};")
            else:
                w(f"pfjax::rt::Scratch<{t}> tile{index}_({size});")
                w(f"{t}* __restrict tile{index} = tile{index}_.data;")
        for stage, n in self.staged:
            t = STORAGE[n.dtype]
            w(f"pfjax::rt::Scratch<{t}> {stage}_({rsize * par.block});")
            w(f"{t}* __restrict {stage} = {stage}_.data;")
        if segments:
            w("#endif")
        kept = [d for d in range(len(self.space)) if d not in self.rdims]
        if not self.column:
            # Row units: indices unravelled once, then stepped with carries (short rows
            # pay no divisions per unit).
            w("int64_t r = begin;")
            for d in reversed(kept):
                w(f"int64_t i{d} = r % {self.space[d]}; r /= {self.space[d]};")
            w("(void)r;")
        if self.deferred:
            emit_carried(self, self.deferred)
        w("for (int64_t u = begin; u < end; ++u) {")
        w.indent()
        if self.column:
            w("int64_t r = u;")
        if self.column:
            c = self.space[self.lane]
            blocks = -(-c // par.block)
            kept = kept[:-1]
            blocks_first = par.split == 1 and self.blocks_outermost(kept)

            def kept_indices() -> None:
                for d in reversed(kept):
                    w(f"const int64_t i{d} = r % {self.space[d]}; r /= {self.space[d]};")
            if blocks_first:
                kept_indices()
            w(f"const int64_t c0 = (r % {blocks}) * {par.block}; r /= {blocks};")
            if par.split > 1:
                w("const int64_t seg = r; r = 0;")
            if c % par.block == 0:  # a constant trip count keeps accumulators in registers
                w(f"constexpr int64_t cn = {par.block};")
            else:
                w(f"const int64_t cn = std::min<int64_t>({par.block}, {c} - c0);")
            if not blocks_first:
                kept_indices()
            w("(void)r;")
        roots = self.nest.roots(self.nodes)
        epilogue = [r for r in roots if r.op is Op.STORE and self.nest.loop_of(r) is None]
        if segments:
            w("#if PFJAX_SEGMENTS")
            names = dict(self.names)  # the two branches name their values apart
            segments.emit_unit(epilogue)
            emit_column_finals(self, finals)
            self.names = names
            w("#else")
        rows = self.space[self.rdims[0]] if self.staged else 0
        for stage, n in self.staged:
            if n.op is Op.LOAD:  # the block's short rows, laid across the lanes
                stride = n.arg.view.strides[self.lane]
                w(f"pfjax::rt::stage_transpose({stage}, {par.block}, {self.stage_base(n)}, "
                  f"{stride}, cn, {rows});")
                if STAGE_PREFETCH and stride == rows:  # packed rows: the next block follows
                    w(f"pfjax::rt::prefetch_range({self.stage_base(n)} + {par.block * stride}, "
                      f"{par.block * stride * n.dtype.itemsize});")
        self.emit_prefetch_bases()
        for loop in range(self.nest.num_loops):
            if self.online and loop < 2:
                if loop == 0:
                    emit_online(self, self.online)
                continue
            if self.deferred and loop == self.deferred.last:
                w(f"// loop {loop}: runs with the next unit's loop {self.deferred.host}")
                emit_unit_end(self, self.deferred)
                continue
            w(f"// loop {loop}")
            self.loop_index = loop
            self.emit_loop([r for r in roots if self.nest.loop_of(r) == loop])
        for stage, n in self.staged:
            if n.op is Op.STORE:  # back to rows
                w(f"pfjax::rt::stage_transpose({self.stage_base(n)}, {n.arg.view.strides[self.lane]}, "
                  f"{stage}, {par.block}, {rows}, cn);")
        split_reduces = [r for r in roots if r.op is Op.REDUCE] if par.split > 1 else []
        if split_reduces:
            w("// this segment's partial results, combined by the finish step")
            for slot, r in enumerate(split_reduces):
                a = self.names[id(r)] + ("_t" if wide_sum(r) else "")
                w(f"for (int64_t j = 0; j < cn; ++j) "
                  f"split{slot}[seg * {self.space[self.lane]} + c0 + j] = {a}[j];")
        else:
            w("// per-unit results")
            self.emit_epilogue(epilogue)
        emit_column_finals(self, finals)
        if segments:
            w("#endif")
        if not self.column:  # (a column reduction's partials came with its unit)
            for slot, f in enumerate(finals):
                self.emit_unit_values([f.src[0]])
                w(f"scratch{slot}[u] = {self.ref(f.src[0], {})};")
        if not self.column and kept:  # the next unit's indices
            for depth, d in enumerate(reversed(kept[1:])):
                w("  " * depth + f"if (++i{d} == {self.space[d]}) {{ i{d} = 0;")
            w("  " * (len(kept) - 1) + f"++i{kept[0]};")
            for depth in reversed(range(len(kept) - 1)):
                w("  " * depth + "}")
        w.indent(-1)
        w("}")
        if self.deferred:
            emit_flush(self, self.deferred)
        can_stream = self.nest.num_loops > 0 and bool(self.streamable(
            [r for r in roots if self.nest.loop_of(r) == self.nest.num_loops - 1]))
        w("if (stream) pfjax::rt::stream_fence();" if can_stream else "(void)stream;")
        w.indent(-1)
        w("}")
        w()
        if finals:
            self.emit_finish(finals)
        if split_reduces:
            emit_split_finish(self, split_reduces, epilogue)
        emit_sizes(w, k)
        w()
        w("}  // namespace")
        w()
        w(f"PFJAX_EXPORT_KERNEL({name}, {name}_body, {len(k.inputs)}, {name}_in_sizes, "
          f"{len(k.outputs)}, {name}_out_sizes, {par.units}, {max(1, par.chunk)}, {stream_mode(can_stream)}, "
          f"{name + '_finish' if finals or split_reduces else 'nullptr'}, "
          f"{8 * par.units * len(finals) + split_bytes(self, split_reduces)});")
        return "\n".join(w.lines) + "\n"


def _split_at(nodes: list[gir.Node], alone) -> list[list[gir.Node]]:
    """nodes in order, cut into runs with each node for which alone(node) holds in a run
    of its own."""
    parts: list[list[gir.Node]] = [[]]
    for n in nodes:
        if alone(n):
            parts += [[n], []]
        else:
            parts[-1].append(n)
    return [p for p in parts if p]


def emit_reduce_kernel(kernel: gir.Kernel) -> str:
    return _Emitter(kernel).emit()
