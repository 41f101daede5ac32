"""CUDA reductions: the loop nest of a reduction kernel on blocks of threads.

Row reductions: one block per parallel unit (a row); each loop of the kernel's loop nest
strides the threads over the row (16-byte packs where aligned), reductions combine with
warp shuffles then through shared memory (pfjax::rt::block_reduce). Where a thread's
share of the row is a few packs the loops are unrolled, and the packs a later loop reads
again, like the values the reuse pass keeps at the local level, stay in registers;
otherwise those values live in shared memory. Column
reductions: a block per 32 columns, 8 row slices combined in order. Reductions over all
units: per-unit partials in a scratch buffer, combined by a one-block finish kernel.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen.ctypes_table import STORAGE, literal, load_expr, register_type, store_expr
from pfjax.codegen.cuda import (PACK_BYTES, THREADS, CudaUnsupported, Emitter,
                                _launch_and_footer, _pointer_args)
from pfjax.gir import DType, Op
from pfjax.gir.loops import is_tile_load, loop_nest


# Rows that take a thread at most this many packs are walked by fully unrolled loops, and
# packs that a later loop reads again stay in registers (at most CACHE_REGISTERS of them
# per thread) instead of being loaded twice.
MAX_UNROLLED = 8
MAX_THREADS = 1024  # a block's most
CACHE_REGISTERS = 32
SHORT_KERNEL_NODES = 64

_REDUCE_OP = {"sum": "OpSum", "prod": "OpProd", "max": "OpMax", "min": "OpMin",
              "and": "OpAnd", "or": "OpOr"}


def _identity(op: str, dtype: DType) -> str:
    rt = dtype.compute if dtype is not DType.BOOL else DType.I32
    if op == "sum" or op == "or":
        return literal(0, rt)
    if op == "prod" or op == "and":
        return literal(1, rt)
    if rt.is_float:
        return literal(float("-inf") if op == "max" else float("inf"), rt)
    limit = "lowest" if op == "max" else "max"
    return f"std::numeric_limits<{register_type(rt)}>::{limit}()"


class RowReduction(Emitter):
    """One block per unit; loops of the loop nest stride the threads over the row."""

    parts = "kUnits"  # partials of a reduction over all units, combined by the finish kernel

    def __init__(self, kernel: gir.Kernel):
        super().__init__(kernel)
        self.nest = loop_nest(kernel)
        self.rdims = list(self.par.rdims)
        self.kept = [d for d in range(len(self.space)) if d not in self.rdims]
        self.row = 1
        for d in self.rdims:
            self.row *= self.space[d]
        self.accs: dict[int, int] = {}
        self.vec = self.choose_vec()
        self.tiles = {n.src[0].arg.index: n.src[0] for n in self.nodes
                      if n.op is Op.STORE and n.src[0].arg.role == "tile"}
        self.cached: dict[str, str] = {}  # address of a packed load -> its register array
        self.filled: set[str] = set()
        # A row walked by unrolled loops keeps its tiles (values the reuse pass keeps at
        # the local level) in registers too: shared memory costs a store and a load per
        # element, with bank conflicts between the threads' packs.
        iters = self.iterations()
        self.register_tiles = bool(self.tiles) and iters is not None and \
            sum(iters * self.vec * max(1, t.dtype.itemsize // 4) for t in self.tiles.values()) \
            <= CACHE_REGISTERS

    def value(self, n: gir.Node) -> str:
        if is_tile_load(n):
            return load_expr(self.address(n), n.dtype)
        return super().value(n)

    # -- 16-byte packs along the row (row reductions whose row splits into packs) --

    def choose_vec(self) -> int:
        if self.par.column_style or not self.rdims:
            return 1
        accesses = [n for n in self.nodes if n.op in (Op.LOAD, Op.STORE)
                    and n.src[0].arg.role != "tile"]
        vec = max(1, PACK_BYTES // max((n.dtype.itemsize for n in accesses), default=4))
        return vec if self.space[self.rdims[-1]] % vec == 0 else 1

    def packable(self, n: gir.Node) -> bool:
        """A global access contiguous along the row, each pack aligned to its size."""
        if n.op not in (Op.LOAD, Op.STORE) or n.src[0].arg.role == "tile" or self.vec == 1:
            return False
        view, lane = n.arg.view, self.rdims[-1]
        return view.strides[lane] == 1 and view.offset % self.vec == 0 \
            and all(s % self.vec == 0 for d, s in enumerate(view.strides) if d != lane) \
            and not n.arg.dynamic and n.arg.fill is None

    def iterations(self) -> int | None:
        """Packs per thread of a row walked by unrolled loops, or None (a strided loop)."""
        if self.vec == 1:
            return None
        iters = -(-self.row // (self.threads() * self.vec))
        return iters if iters <= MAX_UNROLLED else None

    def plan_register_cache(self, roots: list[gir.Node], iters: int) -> None:
        """Packed loads that more than one loop of the nest reads: kept in registers."""
        loops_of: dict[str, tuple[gir.Node, set[int]]] = {}
        for loop in range(self.nest.num_loops):
            in_loop = [r for r in roots if self.nest.loop_of(r) == loop]
            for n in self.cone(in_loop, full=True):
                if n.op is Op.LOAD and self.packable(n):
                    loops_of.setdefault(self.plain_address(n), (n, set()))[1].add(loop)
        budget = CACHE_REGISTERS
        if self.register_tiles:
            for index, t in sorted(self.tiles.items()):
                budget -= iters * self.vec * max(1, t.dtype.itemsize // 4)
                self.w(f"{register_type(t.dtype)} tile{index}[{iters}][{self.vec}];")
        for address, (n, loops) in loops_of.items():
            regs = -(-iters * self.vec * n.dtype.itemsize // 4)
            if len(loops) > 1 and regs <= budget:
                budget -= regs
                name = f"rc{len(self.cached)}_"
                self.cached[address] = name
                self.w(f"pfjax::rt::Pack<{STORAGE[n.dtype]}, {self.vec}> {name}[{iters}];")

    def open_packs(self, body: list[gir.Node]) -> dict[int, str]:
        packs: dict[int, str] = {}
        rest = []
        for n in body:
            address = self.plain_address(n) if n.op is Op.LOAD and self.packable(n) else None
            if address not in self.cached:
                rest.append(n)
                continue
            name = self.cached[address]
            if address not in self.filled:  # the first loop that reads it loads it
                self.filled.add(address)
                self.w(f"{name}[it_] = pfjax::rt::load_pack<{STORAGE[n.dtype]}, {self.vec}>(&{address});")
            packs[id(n)] = f"{name}[it_]"
        packs.update(super().open_packs(rest))
        return packs

    def idx(self, d: int) -> str:
        if self.vec > 1 and d == self.rdims[-1]:
            return f"(i{d} + l)"
        return f"i{d}"

    def address(self, n: gir.Node) -> str:
        if n.src[0].arg.role == "tile":
            if self.register_tiles:
                return f"tile{n.src[0].arg.index}[it_][{'l' if self.vec > 1 else '0'}]"
            return f"tile{n.src[0].arg.index}[j{' + l' if self.vec > 1 else ''}]"
        return super().address(n)

    def acc_name(self, r: gir.Node) -> int:
        return self.accs.setdefault(id(r), len(self.accs))

    def cone(self, roots: list[gir.Node], full: bool) -> list[gir.Node]:
        want: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if id(n) in want or n.op in (Op.BUFFER, Op.PARALLEL) or id(n) in self.names:
                continue
            if n.op is Op.STORE and n not in roots:
                continue  # a tile load's ordering edge
            if n.op is Op.REDUCE and n not in roots:
                continue  # combined after its own loop
            if full and n not in roots and not self.nest.full.get(id(n), False):
                continue
            want.add(id(n))
            stack.extend(n.src)
        return [n for n in self.nodes if id(n) in want]

    def per_unit(self, upto: int) -> None:
        """Values constant along the row that are computable after loop `upto - 1`."""
        for n in self.nodes:
            if n.op in (Op.BUFFER, Op.PARALLEL, Op.STORE, Op.REDUCE) or id(n) in self.names:
                continue
            if self.nest.full.get(id(n), True) or self.nest.phase.get(id(n), 0) > upto \
                    or self.nest.final.get(id(n), False):
                continue
            if any(id(s) not in self.names for s in n.src
                   if s.op not in (Op.BUFFER, Op.STORE)):
                continue
            self.define(n)

    # -- how units map onto a block (a row reduction: the block strides over one row) --

    def threads(self) -> int:
        """256 threads, fewer for a short row. Up to 1024 where that lets unrolled loops
        keep the whole row in registers and the nest has three loops or more: on the H200
        log-softmax over 32000 classes (three passes) went 0.92x -> 1.14x of XLA GPU, but
        logsumexp and cross-entropy (two passes, the second mostly from L2) went 1.01x ->
        0.92x and 0.90x -> 0.84x, with one such block per multiprocessor and nothing to
        overlap its reductions with."""
        base = min(THREADS, max(32, -(-self.row // (32 * self.vec)) * 32))
        if self.vec > 1 and self.nest.num_loops >= 3 and \
                -(-self.row // (base * self.vec)) > MAX_UNROLLED:
            wide = -(-self.row // (MAX_UNROLLED * self.vec * 32)) * 32
            if wide <= MAX_THREADS:
                return wide
        return base

    def units(self) -> int:
        return self.par.units

    def unit_setup(self) -> None:
        self.unravel("u", self.kept)

    def loop_start(self) -> tuple[str, str]:
        return "threadIdx.x", str(self.threads())

    def store_guard(self) -> str | None:
        return None

    def after_guard(self) -> str:
        return "threadIdx.x == 0"

    def combine(self, r: gir.Node, acc: str, ident: str) -> str:
        op = f"pfjax::rt::{_REDUCE_OP[r.arg.op]}()"
        if r.dtype.is_float and r.dtype is not DType.F64:
            return f"pfjax::rt::block_reduce({acc}, {op}, {ident}, reinterpret_cast<float*>(red_))"
        if r.dtype is DType.F64:
            return f"pfjax::rt::block_reduce({acc}, {op}, {ident}, red_)"
        return (f"pfjax::rt::block_reduce(static_cast<long long>({acc}), {op}, "
                f"static_cast<long long>({ident}), reinterpret_cast<long long*>(red_))")

    def open_accumulators(self, in_loop: list[gir.Node]) -> list[gir.Node]:
        """Declare the accumulators of a loop's reductions; returns those reductions."""
        reductions = [r for r in in_loop if r.op is Op.REDUCE]
        for r in reductions:
            acc_t = register_type(r.dtype if r.dtype is not DType.BOOL else DType.I32)
            self.w(f"{acc_t} acc_{self.acc_name(r)} = {_identity(r.arg.op, r.dtype)};")
        return reductions

    def emit_loop(self, opening: list[str], prologue: list[str], in_loop: list[gir.Node]) -> None:
        """A loop over the row: its opening lines, then (inside) the prologue and body."""
        for line in opening:
            self.w(line)
        self.w.indent()
        for line in prologue:
            self.w(line)
        self.loop_body(in_loop)
        self.w.indent(-1)
        self.w("}")

    def loop_body(self, in_loop: list[gir.Node]) -> None:
        """One element (or pack) of a loop over the row: its values, reductions, stores."""
        w, vec = self.w, self.vec
        self.unravel("j", self.rdims)
        body = self.cone(in_loop, full=True)
        local_names = dict(self.names)
        guard = self.store_guard()
        packs = self.open_packs(body)
        if vec > 1:
            w("#pragma unroll")
            w(f"for (int l = 0; l < {vec}; ++l) {{")
            w.indent()
        for n in body:
            if n.op is Op.REDUCE:
                op = _REDUCE_OP[n.arg.op]
                v = self.names[id(n.src[0])]
                acc = f"acc_{self.acc_name(n)}"
                w(f"{acc} = pfjax::rt::{op}()({acc}, static_cast<decltype({acc})>({v}));")
            elif n.op is Op.STORE:
                value = store_expr(self.names[id(n.src[1])], n.dtype)
                store = f"{packs[id(n)]}.v[l] = {value};" if id(n) in packs else \
                    f"{self.address(n)} = {value};"
                w(f"if ({guard}) {store}" if guard and n.src[0].arg.role != "tile" else store)
            elif id(n) in packs:
                self.define(n, load_expr(f"{packs[id(n)]}.v[l]", n.dtype))
            else:
                self.define(n)
        if vec > 1:
            w.indent(-1)
            w("}")
        for n in body:
            if n.op is Op.STORE and id(n) in packs:
                store = f"pfjax::rt::store_pack(&{self.plain_address(n)}, {packs[id(n)]});"
                w(f"if ({guard}) {store}" if guard else store)
        self.names = local_names  # values of the loop body end with it

    def after_loops(self, roots: list[gir.Node], finals: list[gir.Node]) -> None:
        """Stores of per-unit values after the last loop, and the per-unit partials of
        reductions over all units."""
        w = self.w
        after = [r for r in roots if r.op is Op.STORE and self.nest.loop_of(r) is None]
        if after or finals:
            w(f"if ({self.after_guard()}) {{")
            w.indent()
            for n in self.cone([s.src[1] for s in after] + [f.src[0] for f in finals], full=False):
                self.define(n)
            for s in after:
                w(f"{self.address(s)} = {store_expr(self.names[id(s.src[1])], s.dtype)};")
            for slot, f in enumerate(finals):  # partials of the reductions over all units
                w(f"scratch[{slot} * kUnits + u] = static_cast<double>({self.names[id(f.src[0])]});")
            w.indent(-1)
            w("}")

    def source(self) -> str:
        k, w, name = self.kernel, self.w, self.kernel.name
        units = self.units()
        threads = self.threads()
        self.header()
        params, casts = _pointer_args(k)
        tile_bytes = 0 if self.register_tiles else \
            sum(self.row * t.dtype.itemsize for t in self.tiles.values())
        finals = self.nest.finals(self.nodes)
        if finals:
            params = [*params, "double* __restrict__ scratch"]
        w(f"constexpr int64_t kUnits = {units}, kRow = {self.row};")
        # Unrolled rows of a short kernel: left alone, ptxas picked 64 registers and
        # spilled (residual + layernorm); asked for two blocks per multiprocessor it takes
        # up to 128 and spills nothing. Long kernels (a training step) need more.
        short = self.iterations() and len(self.nodes) < SHORT_KERNEL_NODES and threads <= THREADS
        bounds = f"{threads}, 2" if short else str(threads)
        w(f"__global__ void __launch_bounds__({bounds}) {name}_kernel({', '.join(params)}) {{")
        w.indent()
        w("__shared__ double red_[256];  // partials: one per warp, or per thread of a column block")
        if tile_bytes:
            w(f"PFJAX_DYNAMIC_SHARED(tiles_, {tile_bytes});")
            offset = 0
            for index, t in sorted(self.tiles.items()):
                w(f"{STORAGE[t.dtype]}* tile{index} = reinterpret_cast<{STORAGE[t.dtype]}*>(tiles_ + {offset});")
                offset += self.row * t.dtype.itemsize
        w("for (int64_t u = blockIdx.x; u < kUnits; u += gridDim.x) {")
        w.indent()
        self.unit_setup()
        roots = self.nest.roots(self.nodes)
        self.per_unit(0)
        first, step = self.loop_start()
        iters = self.iterations()
        if iters is not None:
            self.plan_register_cache(roots, iters)
        for loop in range(self.nest.num_loops):
            in_loop = [r for r in roots if self.nest.loop_of(r) == loop]
            reductions = self.open_accumulators(in_loop)
            vec = self.vec
            if iters is None:
                self.emit_loop([f"for (int64_t j = {first} * {vec}; j < kRow; j += {step} * {vec}) {{"],
                               [], in_loop)
            else:
                self.emit_loop(["#pragma unroll", f"for (int it_ = 0; it_ < {iters}; ++it_) {{"],
                               [f"const int64_t j = ({first} + it_ * {step}) * {vec};"] +
                               (["if (j >= kRow) break;"] if self.row % (int(step) * vec) else []),
                               in_loop)
            for r in reductions:
                acc = f"acc_{self.acc_name(r)}"
                red = self.combine(r, acc, _identity(r.arg.op, r.dtype))
                self.define(r, f"static_cast<{register_type(r.dtype)}>({red})")
            self.per_unit(loop + 1)
        self.after_loops(roots, finals)
        w("__syncthreads();  // shared memory is reused by the next unit")
        w.indent(-1)
        w("}")
        w.indent(-1)
        w("}")
        w()
        if finals:
            self.finish_kernel(params, finals)
        body = []
        if tile_bytes > 48 * 1024:
            body.append(f"cudaFuncSetAttribute({name}_kernel, "
                        f"cudaFuncAttributeMaxDynamicSharedMemorySize, {tile_bytes});")
        args = ", ".join(casts)
        if finals:
            # A finish step runs even without units (a mean over no rows is NaN).
            body += [
                "double* scratch = nullptr;",
                f"cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&scratch), "
                f"sizeof(double) * {len(finals)} * std::max<int64_t>(kUnits, 1), stream);",
                "if (err != cudaSuccess) return err;",
                f"if (blocks > 0) PFJAX_LAUNCH({name}_kernel, blocks, {threads}, {tile_bytes}, stream, {args}, scratch);",
                f"PFJAX_LAUNCH({name}_finish, 1, {THREADS}, 0, stream, {args}, scratch);",
                "err = cudaGetLastError();",
                "const cudaError_t freed = cudaFreeAsync(scratch, stream);",
                "return err != cudaSuccess ? err : freed;"]
        else:
            body += [f"PFJAX_LAUNCH({name}_kernel, blocks, {threads}, {tile_bytes}, stream, {args});",
                     "return cudaGetLastError();"]
        _launch_and_footer(w, k, "kUnits", body, early_exit=not finals)
        return "\n".join(w.lines) + "\n"


    def finish_kernel(self, params: list[str], finals: list[gir.Node]) -> None:
        """One block combines the units' partials of each reduction over all units, then
        computes and stores what depends on them (the mean of per-row losses)."""
        w, name = self.w, self.kernel.name
        self.names = {}
        w(f"__global__ void __launch_bounds__({THREADS}) {name}_finish({', '.join(params)}) {{")
        w.indent()
        w("__shared__ double red_[256];")
        for d in range(len(self.space)):
            w(f"const int64_t i{d} = 0;  // no unit: only values constant over units remain")
        for k, f in enumerate(finals):
            op = f"pfjax::rt::{_REDUCE_OP[f.arg.op]}()"
            ident = _identity(f.arg.op, DType.F64)
            w(f"double fin_{k} = {ident};")
            w(f"for (int64_t u = threadIdx.x; u < {self.parts}; u += {THREADS}) "
              f"fin_{k} = {op}(fin_{k}, scratch[{k} * {self.parts} + u]);")
            self.define(f, f"static_cast<{register_type(f.dtype)}>(pfjax::rt::block_reduce(fin_{k}, {op}, {ident}, red_))")
        stores = [n for n in self.nodes if n.op is Op.STORE and self.nest.final.get(id(n), False)]
        w("if (threadIdx.x == 0) {")
        w.indent()
        want: set[int] = set()
        stack = [s.src[1] for s in stores]
        while stack:
            n = stack.pop()
            if id(n) in want or id(n) in self.names or n.op in (Op.BUFFER, Op.PARALLEL):
                continue
            want.add(id(n))
            stack.extend(n.src)
        for n in self.nodes:
            if id(n) in want:
                self.define(n)
        for st in stores:
            w(f"{self.address(st)} = {store_expr(self.names[id(st.src[1])], st.dtype)};")
        w.indent(-1)
        w("}")
        w.indent(-1)
        w("}")
        w()


COLUMNS = 32   # columns per block of a column reduction: one warp wide (coalesced rows)
SLICES = THREADS // COLUMNS  # row slices per block, combined in order through shared memory


class ColumnReduction(RowReduction):
    """A block reduces 32 adjacent columns: thread (slice, column) walks every 8th row of
    its column, then the 8 slices are combined in slice order through shared memory."""

    def __init__(self, kernel: gir.Kernel):
        super().__init__(kernel)
        if self.tiles:
            raise CudaUnsupported("column reductions that keep values at the local level")
        self.lane = len(self.space) - 1
        self.outer = [d for d in self.kept if d != self.lane]
        self.col_blocks = -(-self.space[self.lane] // COLUMNS)

    def threads(self) -> int:
        return THREADS

    def iterations(self) -> None:
        return None

    def units(self) -> int:
        n = self.col_blocks
        for d in self.outer:
            n *= self.space[d]
        return n

    def unit_setup(self) -> None:
        w, lane = self.w, self.lane
        w(f"const int64_t cb_ = u % {self.col_blocks};")
        self.unravel(f"u / {self.col_blocks}", self.outer)
        w(f"const bool live_ = cb_ * {COLUMNS} + (threadIdx.x % {COLUMNS}) < {self.space[lane]};")
        # Threads past the last column read the last one (in bounds) and store nothing.
        w(f"const int64_t i{lane} = std::min<int64_t>(cb_ * {COLUMNS} + threadIdx.x % {COLUMNS}, "
          f"{self.space[lane] - 1});")

    def loop_start(self) -> tuple[str, str]:
        return f"threadIdx.x / {COLUMNS}", str(SLICES)

    def store_guard(self) -> str:
        return "live_"

    def after_guard(self) -> str:
        return f"threadIdx.x < {COLUMNS} && live_"

    def combine(self, r: gir.Node, acc: str, ident: str) -> str:
        w = self.w
        t = register_type(r.dtype if r.dtype is not DType.BOOL else DType.I32)
        name = f"col_{self.acc_name(r)}"
        op = f"pfjax::rt::{_REDUCE_OP[r.arg.op]}()"
        w(f"{t}* {name}_s = reinterpret_cast<{t}*>(red_);")
        w("__syncthreads();")
        w(f"{name}_s[threadIdx.x] = {acc};")
        w("__syncthreads();")
        w(f"if (threadIdx.x < {COLUMNS}) {{")
        w(f"  {t} c_ = {name}_s[threadIdx.x];")
        w(f"  for (int k = 1; k < {SLICES}; ++k) c_ = {op}(c_, {name}_s[k * {COLUMNS} + threadIdx.x]);")
        w(f"  {name}_s[threadIdx.x] = c_;")
        w("}")
        w("__syncthreads();")
        w(f"const {t} {name} = {name}_s[threadIdx.x % {COLUMNS}];")
        return name
