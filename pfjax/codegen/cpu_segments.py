"""Short packed rows reduced inside the vector registers (CPU: AVX-512, or AVX2 + FMA).

A reduction over rows of W = 2 .. 16 float32 elements stored back to back (row stride W)
holds 16 / L whole rows in each 16-lane vector, L being W rounded up to a power of 2 (rows
of 7 expand into segments of 8 lanes at the load, and compress back at the store). Its
reductions are butterflies inside each row's segment of lanes (csrc/include/pfjax/
segments.h), which leave the row's result in all of the row's lanes; so per-row values and per-element values are vectors of
one layout, and a unit's block of rows is one pass over its vectors: load, compute,
reduce, store, with no transpose of the rows across the lanes and back (the staging of
the general column plan). On a 2-core Zen 4, through JAX: softmax over 8 1.17x -> 2.6-3.1x
jax.jit, argmax over 8 0.74x -> 1.2-1.5x.

The plan holds where every node the pass needs has a form here: float32 arithmetic with a
pfjax::vf16 spelling (codegen/vector.py), bool predicates, the positions along the row and
what argmax / argmin make of them (int32 lanes, selected, compared and reduced by min or
max), loads that are packed rows, rows a stride apart, per-row or per-position operands or
uniform, and stores of packed or strided rows or of one value per row. Per-row values the
pass does not need (a label, its gather, a per-row log) may run after it as a "tail",
16 rows a vector, on the staged plan's per-unit loops. Elsewhere the staged plan runs; it
is also what the kernel runs where the compiler has neither AVX-512 F, BW, VL and DQ nor
AVX2 with FMA (the `#else` of PFJAX_SEGMENTS). On a 2-core Zen 3 with AVX2 only
(segments_avx2.h: vf16 as two halves), through JAX: argmax over 8 1.12x -> 2.44x jax.jit,
softmax over 8 1.95x -> 3.06x.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen.ctypes_table import register_type
from pfjax.codegen.vector import VECTOR_FLOATS, vector_node_ok, stored_value, vector_decl
from pfjax.gir import Op

ENABLED = True
MAX_ROW = 16
_INT32 = (-(1 << 31), (1 << 31) - 1)
_INTS = (gir.DType.I32, gir.DType.I64)
# Half-precision rows load into float32 lanes and store from them (compute in float32).
_HALF = {gir.DType.BF16: "bf16", gir.DType.F16: "f16"}
_VALUES = (*VECTOR_FLOATS, gir.DType.BOOL)
# int32 lane compares: the AVX-512 predicate of each
_INT_COMPARE = {"eq": "_MM_CMPINT_EQ", "ne": "_MM_CMPINT_NE", "lt": "_MM_CMPINT_LT",
                "le": "_MM_CMPINT_LE", "gt": "_MM_CMPINT_NLE", "ge": "_MM_CMPINT_NLT"}

# Kinds of values: a uniform scalar, a vf16 (float lanes), a vb16 (lane predicates), a
# vi16 (int32 lanes). Loads also say how they read.
UNIFORM, FLOAT, BOOL, INT = "u", "f", "b", "i"


class _Unsupported(Exception):
    pass


def _fits_int32(n: gir.Node) -> bool:
    """A uniform int operand of int32 lanes: an int32, or a constant in its range."""
    if n.dtype is gir.DType.I32:
        return True
    return n.op is Op.CONST and _INT32[0] <= int(n.arg) <= _INT32[1]


class SegmentPlan:
    def __init__(self, em, width: int, calls_after: bool = True):
        self.em = em
        self.W = width
        self.L = 1 << (width - 1).bit_length()
        self.rd = em.rdims[0]
        self.kind: dict[int, str] = {}
        self.access: dict[int, str] = {}   # load / store -> packed, per_row, per_position, uniform
        self.tile_value: dict[int, gir.Node] = {}
        self.rows = "cn - j"  # rows left from row j (at least 16 / L in the whole-vector loop)
        # Per-row values that feed only per-row stores and the reductions over all rows
        # (cross-entropy's label, its gather and log) where they have no form here or are
        # transcendental: the "tail", computed after the vector pass for 16 rows a vector
        # as the staged plan does (a per-row log in the pass costs a whole vector per
        # 16 / L rows, at the end of the pass's longest chain of latencies: measured 0.4x
        # the kernel's speed), from the pass's values it reads (the "boundary"), which the
        # pass stores to arrays. (calls_after=False keeps the transcendentals in the
        # pass: where a tail would make the plan not pay, see segment_plan.)
        self.tail: set[int] = set()
        needed = self._needed_by_the_pass()
        for n in em.nodes:
            if n.op in (Op.BUFFER, Op.PARALLEL):
                continue
            free = id(n) not in needed and (n.op is not Op.REDUCE or em.nest.final[id(n)])
            if any(id(s) in self.tail for s in n.src) or (calls_after and free and n.op is Op.ALU
                                                          and gir.alu_op(n.arg).transcendental):
                if not free:
                    raise _Unsupported
                self.tail.add(id(n))
                continue
            try:
                self.kind[id(n)] = self._classify(n)
            except _Unsupported:
                if not free:
                    raise
                self.tail.add(id(n))
        self.boundary = self._boundary()
        self.first = self._first_positions()

    def _needed_by_the_pass(self) -> set[int]:
        """Nodes the vector pass computes whatever else it does: what the reductions over
        the row and the values along it are computed from."""
        nest, needed = self.em.nest, set()
        stack = [n for n in self.em.nodes if n.op not in (Op.BUFFER, Op.PARALLEL, Op.STORE)
                 and not nest.final[id(n)] and (n.op is Op.REDUCE or nest.full.get(id(n)))]
        while stack:
            n = stack.pop()
            if id(n) not in needed:
                needed.add(id(n))
                stack.extend(s for s in n.src if s.op is not Op.BUFFER)
        return needed

    def _boundary(self) -> list[gir.Node]:
        """Values of the vector pass the tail reads: float or int32 lanes, one per row."""
        out: dict[int, gir.Node] = {}
        for n in self.em.nodes:
            if id(n) not in self.tail:
                continue
            for s in n.src:
                if s.op is Op.BUFFER or id(s) in self.tail or id(s) in out:
                    continue
                if self.kind[id(s)] == UNIFORM:
                    continue  # the tail computes it again
                if self.kind[id(s)] == BOOL or s.dtype not in (gir.DType.F32, gir.DType.I32):
                    raise _Unsupported
                out[id(s)] = s
        return list(out.values())

    def _first_positions(self) -> dict[int, tuple[gir.Node, gir.Node]]:
        """argmax / argmin: min over the row of select(pred, position, none), only stored
        per row (through int casts). Each row's result is then the first set bit of its
        segment of pred's lane mask, found in scalar registers as it is stored: through JAX,
        argmax over 7 0.82x -> 1.20x jax.jit, over 8 1.1x -> 1.5x, over 15 0.80x -> 1.08x;
        over 3 (4 rows a vector) 0.89x -> 0.67x, so rows of 4 or fewer keep the butterfly.
        reduce -> (pred, none)."""
        users: dict[int, list[gir.Node]] = {}
        for n in self.em.nodes:
            for s in n.src:
                users.setdefault(id(s), []).append(n)

        def stored_only(n: gir.Node) -> bool:
            return all((u.op is Op.STORE and self.access.get(id(u)) == "per_row")
                       or (u.op is Op.CAST and self.kind.get(id(u)) == INT and stored_only(u))
                       for u in users.get(id(n), []))

        def position(n: gir.Node) -> bool:
            while n.op is Op.CAST and self.kind[id(n)] == INT:
                n = n.src[0]
            return n.op is Op.INDEX and n.arg == self.rd

        first = {}
        if 16 // self.L > 2:  # 4 or 8 rows a vector: the scalar work outweighs the butterfly
            return first
        for n in self.em.nodes:
            if n.op is Op.REDUCE and self.kind.get(id(n)) == INT and n.arg.op == "min":
                sel = n.src[0]
                if sel.op is Op.SELECT and self.kind[id(sel)] == INT and position(sel.src[2]) \
                        and self.kind[id(sel.src[1])] == UNIFORM and stored_only(n):
                    first[id(n)] = (sel.src[0], sel.src[1])
        return first

    def _first_of(self, n: gir.Node) -> gir.Node | None:
        """The first-position reduction `n` is (or is an int cast of)."""
        while n.op is Op.CAST and self.kind[id(n)] == INT and id(n) not in self.first:
            n = n.src[0]
        return n if id(n) in self.first else None

    # -- which nodes have a form here -----------------------------------------------

    def _strides(self, n: gir.Node) -> tuple[int, int]:
        s = n.arg.view.strides
        return s[self.em.lane], s[self.rd]

    def _classify(self, n: gir.Node) -> str:
        kinds = [self.kind[id(s)] for s in n.src if id(s) in self.kind and s.op is not Op.STORE]
        all_uniform = all(k == UNIFORM for k in kinds)
        if n.op is Op.CONST:
            return UNIFORM  # int ranges are checked where int32 lanes take them
        if n.op is Op.LOAD:
            return self._classify_load(n)
        if n.op is Op.STORE:
            self._classify_store(n)
            return ""
        if n.op is Op.INDEX:
            if n.arg == self.rd:
                return INT
            if n.arg == self.em.lane:
                raise _Unsupported
            return UNIFORM
        if all_uniform and n.op is not Op.REDUCE:
            return UNIFORM
        if n.op is Op.REDUCE:
            src = n.src[0]
            if n.arg.dims != (self.rd,) or n.arg.op not in ("sum", "max", "min"):
                raise _Unsupported
            if kinds[0] in (FLOAT, UNIFORM) and (n.dtype is gir.DType.F32 or (
                    n.dtype in _HALF and n.arg.op != "sum")):  # a half max / min is exact
                return FLOAT
            if n.dtype in _INTS and n.arg.op != "sum" and (kinds[0] == INT or _fits_int32(src)):
                return INT
            raise _Unsupported
        if n.dtype in _INTS:
            return self._classify_int(n, kinds)
        if n.op is Op.ALU and n.arg in _INT_COMPARE and INT in kinds and all(
                k == INT or _fits_int32(s) for k, s in zip(kinds, n.src)):
            return BOOL  # a position against a row index: a mask from iotas
        if n.dtype not in _VALUES or INT in kinds \
                or any(s.dtype not in _VALUES for s in n.src) or not vector_node_ok(n):
            raise _Unsupported
        return BOOL if n.dtype is gir.DType.BOOL else FLOAT

    def _classify_int(self, n: gir.Node, kinds: list[str]) -> str:
        """int32 lanes: positions along the row, converted between int types, selected
        under a predicate (argmax / argmin). Every value stays below 2^31."""
        if n.op is Op.CAST and kinds == [INT]:
            return INT
        if n.op is Op.SELECT and len(n.src) == 3 and n.src[0].dtype is gir.DType.BOOL \
                and kinds[0] in (BOOL, UNIFORM) \
                and all(k == INT or _fits_int32(s) for k, s in zip(kinds[1:], n.src[1:])):
            return INT
        raise _Unsupported

    def _classify_load(self, n: gir.Node) -> str:
        role = n.src[0].arg.role
        if role == "tile":
            stored = self.tile_value.get(n.src[0].arg.index)
            if stored is None:
                raise _Unsupported
            return self.kind[id(stored)]
        if role != "in" or n.arg.dynamic or n.arg.fill is not None \
                or gir.load_guard(n) is not None or gir.load_offset(n) is not None:
            raise _Unsupported
        s_lane, s_row = self._strides(n)
        if s_lane == 0 and s_row == 0:
            self.access[id(n)] = "uniform"
            return UNIFORM
        if n.dtype not in VECTOR_FLOATS:
            raise _Unsupported
        if s_lane == self.W and s_row == 1:
            self.access[id(n)] = "packed"
        elif n.dtype is not gir.DType.F32:  # gathers read 4 bytes a lane
            raise _Unsupported
        elif s_lane == 0 and abs(s_row) * self.L < (1 << 28):
            self.access[id(n)] = "per_position"
        elif s_row == 0 and abs(s_lane) * 16 < (1 << 28):
            self.access[id(n)] = "per_row"
        elif s_row == 1 and abs(s_lane) * 16 < (1 << 28):
            self.access[id(n)] = "strided"
        else:
            raise _Unsupported
        return FLOAT

    def _classify_store(self, n: gir.Node) -> None:
        buf, value = n.src[0], n.src[1]
        if buf.arg.role == "tile":
            if buf.arg.index in self.tile_value:
                raise _Unsupported
            self.tile_value[buf.arg.index] = value
            return
        if n.arg.dynamic:
            raise _Unsupported
        s_lane, s_row = self._strides(n)
        kind = self.kind[id(stored_value(n))]
        if s_row == 0 and self.em.nest.full.get(id(value), False):
            raise _Unsupported  # one value per row must not vary along it
        if n.dtype in VECTOR_FLOATS and kind in (FLOAT, UNIFORM) and s_lane == self.W and s_row == 1:
            self.access[id(n)] = "packed"
        elif n.dtype is gir.DType.F32 and kind in (FLOAT, UNIFORM) and s_row == 1 \
                and abs(s_lane) >= self.W and abs(s_lane) * 16 < (1 << 28):
            self.access[id(n)] = "strided"
        elif s_row == 0 and s_lane == 1 and (
                (n.dtype in VECTOR_FLOATS and kind in (FLOAT, UNIFORM))
                or (n.dtype is gir.DType.I32 and (kind == INT or _fits_int32(value)))):
            self.access[id(n)] = "per_row"
        else:
            raise _Unsupported

    # -- the unit's pass over its rows ------------------------------------------------

    def emit_unit(self, tail_stores: list[gir.Node]) -> None:
        """The unit's block of cn rows (from c0), 16 / L rows per vector; then the tail,
        row by row, with the epilogue's stores among tail_stores."""
        em, w, L, LW = self.em, self.em.w, self.L, f"{self.L}, {self.W}"
        local: dict[int, str] = {}
        for k, n in enumerate(self.boundary):
            em.names[id(n)] = f"row{k}"
            w(f"{register_type(n.dtype)} row{k}[{em.par.block}];")
        for n in em.nodes:  # per-position operands: the same vector for every row
            if self.access.get(id(n)) == "per_position":
                local[id(n)] = name = f"p{len(local)}"
                w(f"const pfjax::vf16 {name} = pfjax::seg::positions<{LW}>("
                  f"{em.stage_base(n)}, {self._strides(n)[1]});")
        # Whole vectors first, their row count a constant (the masks fold: an argmax over
        # rows of 3 ran 1.15-1.34x faster), then the last, partial one.
        step = 16 // L
        w("{")
        w.indent()
        w("int64_t j = 0;")
        for rows, head in ((str(step), f"for (; j + {step} <= cn; j += {step}) {{"),
                           ("cn - j", "if (j < cn) {")):
            self.rows = rows
            w(head)
            w.indent()
            self._emit_vector(dict(local))
            w.close()
        w.close()
        em.emit_epilogue([n for n in tail_stores if id(n) in self.tail])

    def _emit_vector(self, local: dict[int, str]) -> None:
        """One vector of rows from row j: `self.rows` of them (or more) left."""
        em, w, L, LW = self.em, self.em.w, self.L, f"{self.L}, {self.W}"
        w(f"const __mmask16 live = pfjax::seg::live<{LW}>({self.rows});")
        for n in em.nodes:
            if n.op in (Op.BUFFER, Op.PARALLEL) or id(n) in local or id(n) in self.tail:
                continue
            if n.op is Op.STORE:
                self._emit_store(n, local)
                continue
            if n.op is Op.LOAD and n.src[0].arg.role == "tile":
                local[id(n)] = local[id(self.tile_value[n.src[0].arg.index])]
                continue
            if n.op is Op.CAST and self.kind[id(n)] == INT:  # small ints: the same lanes
                local[id(n)] = local[id(n.src[0])]
                continue
            local[id(n)] = name = f"v{len(local)}"
            w(self._decl(n, name, local))
        for k, n in enumerate(self.boundary):
            w(f"pfjax::seg::store_rows<{L}>(row{k} + j, {local[id(n)]}, {self.rows});")

    def _operand(self, s: gir.Node, local: dict[int, str], want: str) -> str:
        """A value as an operand of `want` lanes: uniform ones broadcast."""
        name = local[id(s)]
        if self.kind[id(s)] != UNIFORM:
            return name
        if want == INT:
            return f"pfjax::vi16(static_cast<int32_t>({name}))"
        return f"pfjax::vb16({name})" if want == BOOL else f"pfjax::vf16({name})"

    def _decl(self, n: gir.Node, name: str, local: dict[int, str]) -> str:
        em, L, W, kind = self.em, self.L, self.W, self.kind[id(n)]
        if kind == UNIFORM:
            return f"const {register_type(n.dtype)} {name} = {em.expr(n, local)};"
        if n.op is Op.LOAD:
            base = em.stage_base(n)
            if self.access[id(n)] == "packed":
                half = f"_{_HALF[n.dtype]}" if n.dtype in _HALF else ""
                return (f"const pfjax::vf16 {name} = pfjax::seg::load{half}<{L}, {W}>("
                        f"{base} + j * {W}, live, {self.rows});")
            s_lane = self._strides(n)[0]
            if self.access[id(n)] == "strided":
                return (f"const pfjax::vf16 {name} = pfjax::seg::load_strided<{L}, {W}>("
                        f"{base} + j * {s_lane}, {s_lane}, live);")
            return (f"const pfjax::vf16 {name} = pfjax::seg::per_row<{L}>({base} + j * {s_lane}, "
                    f"{s_lane}, live);")
        if n.op is Op.INDEX:
            return f"const pfjax::vi16 {name} = pfjax::seg::position<{L}>();"
        if id(n) in self.first:  # its lane mask; the rows' positions come at the store
            pred = self._operand(self.first[id(n)][0], local, BOOL)
            return f"const __mmask16 {name} = pfjax::seg::bits({pred});"
        if n.op is Op.REDUCE:
            t = "vi16" if kind == INT else "vf16"
            return (f"const pfjax::{t} {name} = pfjax::seg::{n.arg.op}<{L}, {W}>("
                    f"{self._operand(n.src[0], local, kind)});")
        if kind == BOOL and n.op is Op.ALU and n.arg in _INT_COMPARE and any(
                self.kind[id(s)] == INT for s in n.src):
            a, b = (self._operand(s, local, INT) for s in n.src)
            return (f"const pfjax::vb16 {name} = pfjax::seg::compare<{_INT_COMPARE[n.arg]}>("
                    f"{a}, {b});")
        if kind == INT:  # a select
            c, a, b = (self._operand(s, local, k)
                       for s, k in zip(n.src, (BOOL, INT, INT)))
            return f"const pfjax::vi16 {name} = pfjax::select_i32({c}, {b}, {a});"
        return vector_decl(n, name, False, lambda: em.expr(n, local), None,
                           lambda s: local[id(s)])

    def _emit_store(self, n: gir.Node, local: dict[int, str]) -> None:
        if n.src[0].arg.role == "tile":
            return
        em, L, W = self.em, self.L, self.W
        base = em.stage_base(n)
        first = self._first_of(stored_value(n)) if n.dtype is gir.DType.I32 else None
        if first is not None:
            none = local[id(self.first[id(first)][1])]
            em.w(f"pfjax::seg::store_first<{L}, {W}>({base} + j, {local[id(first)]}, "
                 f"static_cast<int32_t>({none}), {self.rows});")
            return
        want = INT if n.dtype is gir.DType.I32 else FLOAT
        v = self._operand(stored_value(n), local, want)  # halves round in the store
        half = f"_{_HALF[n.dtype]}" if n.dtype in _HALF else ""
        if self.access[id(n)] == "packed":
            em.w(f"pfjax::seg::store{half}<{L}, {W}>({base} + j * {W}, {v}, live, {self.rows});")
        elif self.access[id(n)] == "strided":
            s_lane = self._strides(n)[0]
            em.w(f"pfjax::seg::store_strided<{L}, {W}>({base} + j * {s_lane}, {s_lane}, {v}, "
                 f"live);")
        else:
            em.w(f"pfjax::seg::store_rows{half}<{L}>({base} + j, {v}, {self.rows});")


def segment_plan(em) -> SegmentPlan | None:
    """The plan for the emitter's kernel (a column reduction whose short rows are staged),
    or None where it does not hold."""
    if not ENABLED or not em.column or not em.staged or len(em.rdims) != 1 \
            or em.par.split > 1 or em.par.vector != 16:
        return None
    width = em.space[em.rdims[0]]
    if not 2 <= width <= MAX_ROW:
        return None
    try:
        plan = SegmentPlan(em, width)
    except _Unsupported:
        return None
    # With per-row work after the pass (cross-entropy's gather and log), one row a vector
    # or many padded lanes cost more than the staged plan's rows across the lanes: over
    # 10 and 12 classes 1.35-1.57x jax.jit against 2.0x staged, over 5 1.84x against
    # 2.27x; over 3, 7 and 8 the segments are as fast or faster (2.2-2.55x).
    if plan.tail and (plan.L > 8 or 4 * width < 3 * plan.L):
        try:  # without the per-row transcendentals after the pass, is there a tail left?
            plan = SegmentPlan(em, width, calls_after=False)
        except _Unsupported:
            return None
        return None if plan.tail else plan
    return plan
