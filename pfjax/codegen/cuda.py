"""CUDA codegen: the same scheduled GIR kernel -> a CUDA source using pfjax/cuda_kernel.cuh.

Elementwise kernels: a grid-stride loop in which each thread handles `kVec` consecutive
elements of the innermost dimension; accesses that are contiguous and aligned move as one
16-byte pack, the others element by element (strided, broadcast, guarded or dynamic).
Row reductions: one block per parallel unit (a row), grid-stride over the units; each loop
of the kernel's loop nest strides the threads over the reduced elements, reductions
combine with warp shuffles then through shared memory (pfjax::rt::block_reduce), and
values kept at the local level live in shared memory. bf16/f16 are loaded and stored as
such and computed in float32. Column reductions and reductions over all units are not
generated yet (CudaUnsupported names them).
"""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen.cpu import _Writer, _elems
from pfjax.codegen.ctypes_table import (STORAGE, compute_expr, guarded_load, literal,
                                        load_expr, register_type, store_expr)
from pfjax.gir import DType, Op
from pfjax.gir.loops import is_tile_load, loop_nest

THREADS = 256
PACK_BYTES = 16
BLOCKS_PER_SM = 8


class CudaUnsupported(NotImplementedError):
    """A kernel shape the CUDA backend does not generate yet."""


def emit_cuda_kernel(kernel: gir.Kernel) -> str:
    par = kernel.parallel
    if par.rdims:
        nodes = gir.toposort(kernel.root)
        if par.split > 1 or (par.column_style and loop_nest(kernel).finals(nodes)):
            raise CudaUnsupported("reductions over all column blocks (a finish step)")
        return (_ColumnReduction if par.column_style else _RowReduction)(kernel).source()
    if _Transposed.applies(kernel):
        return _Transposed(kernel).source()
    return _Elementwise(kernel).source()


def _pointer_args(kernel: gir.Kernel) -> tuple[list[str], list[str]]:
    """Kernel parameters and the launch's casts of the FFI buffers to them."""
    params, casts = [], []
    for buf in kernel.inputs:
        t, k = STORAGE[buf.dtype], buf.arg.index
        params.append(f"const {t}* __restrict__ in{k}")
        casts.append(f"static_cast<const {t}*>(in[{k}])")
    for buf in kernel.outputs:
        t, k = STORAGE[buf.dtype], buf.arg.index
        params.append(f"{t}* __restrict__ out{k}")
        casts.append(f"static_cast<{t}*>(out[{k}])")
    return params, casts


def _footer(w: _Writer, kernel: gir.Kernel) -> None:
    name = kernel.name
    in_sizes = ", ".join(str(_elems(b)) for b in kernel.inputs)
    out_sizes = ", ".join(str(_elems(b)) for b in kernel.outputs)
    w(f"constexpr int64_t {name}_in_sizes[] = {{{in_sizes + ', ' if in_sizes else ''}0}};")
    w(f"constexpr int64_t {name}_out_sizes[] = {{{out_sizes + ', ' if out_sizes else ''}0}};")
    w()
    w(f"}}  // namespace {name}_k")
    w()
    ns = f"{name}_k::"
    w(f"PFJAX_CUDA_EXPORT({name}, {ns}{name}_launch, {len(kernel.inputs)}, {ns}{name}_in_sizes, "
      f"{len(kernel.outputs)}, {ns}{name}_out_sizes)")


def _launch_and_footer(w: _Writer, kernel: gir.Kernel, want: str, body: list[str],
                       early_exit: bool = True) -> None:
    """The launch function (grid: the blocks wanted, at most what fills the device) and
    the kernel's exports."""
    w(f"cudaError_t {kernel.name}_launch(void** in, void** out, cudaStream_t stream) {{")
    w.indent()
    w(f"const int64_t want = {want};")
    if early_exit:
        w("if (want == 0) return cudaSuccess;")
    w(f"const int blocks = static_cast<int>(std::min<int64_t>(want, pfjax::rt::DeviceBlocks({BLOCKS_PER_SM})));")
    for line in body:
        w(line)
    w.indent(-1)
    w("}")
    w()
    _footer(w, kernel)


def _buffer_name(buf: gir.Node) -> str:
    return f"{'in' if buf.arg.role == 'in' else 'out'}{buf.arg.index}"


class _Emitter:
    """What both kernel kinds share: values, addresses and the per-lane index."""

    def __init__(self, kernel: gir.Kernel):
        self.kernel = kernel
        self.par = kernel.parallel
        self.space = self.par.space or (1,)
        self.nodes = gir.toposort(kernel.root)
        self.w = _Writer()
        self.names: dict[int, str] = {}
        self.counter = 0

    def idx(self, d: int) -> str:
        return f"i{d}"

    def address(self, n: gir.Node) -> str:
        view = n.arg.view
        terms = [str(view.offset)] + [f"{self.idx(d)} * {s}" for d, s in enumerate(view.strides) if s]
        offset = gir.load_offset(n)
        if offset is not None:
            terms.append(self.names[id(offset)])
        return f"{_buffer_name(n.src[0])}[{' + '.join(terms)}]"

    def value(self, n: gir.Node) -> str:
        """C++ for a computation or load node whose sources are named already."""
        if n.op is Op.LOAD:
            return guarded_load(n, load_expr(self.address(n), n.dtype), self.names)
        if n.op is Op.INDEX:
            return f"static_cast<int64_t>({self.idx(n.arg)})"
        src = [self.names.get(id(s)) for s in n.src]
        expr = compute_expr(n.op, n, src)
        if expr is None:
            raise CudaUnsupported(f"CUDA codegen has no rule for {n.op}")
        return expr

    def define(self, n: gir.Node, expr: str | None = None) -> None:
        v = f"v{self.counter}"  # never reused: a loop body's names must not shadow
        self.counter += 1
        self.names[id(n)] = v
        self.w(f"const {register_type(n.dtype)} {v} = {expr if expr is not None else self.value(n)};")

    def header(self) -> None:
        self.w(f"// Generated by pfjax from GIR kernel {self.kernel.name} (CUDA). Do not edit.")
        self.w('#include "pfjax/cuda_kernel.cuh"')
        self.w()
        self.w(f"namespace {self.kernel.name}_k {{  // several kernels may share a source")
        self.w()

    def unravel(self, flat: str, dims: list[int]) -> None:
        """i{d} for the dims (outermost first) from a row-major flat index."""
        if not dims:
            return
        self.w(f"int64_t r_ = {flat};")
        for k in reversed(range(len(dims))):
            d = dims[k]
            if k:
                self.w(f"const int64_t i{d} = r_ % {self.space[d]}; r_ /= {self.space[d]};")
            else:
                self.w(f"const int64_t i{d} = r_;")


class _Elementwise(_Emitter):
    def __init__(self, kernel: gir.Kernel):
        super().__init__(kernel)
        accesses = [n for n in self.nodes if n.op in (Op.LOAD, Op.STORE)]
        widest = max((n.dtype.itemsize for n in accesses), default=4)
        self.vec = max(1, PACK_BYTES // widest)
        inner = self.space[-1]
        if inner % self.vec:
            self.vec = 1
        self.packed = {id(n) for n in accesses if self.vec > 1 and self._aligned(n)}

    def _aligned(self, n: gir.Node) -> bool:
        """Contiguous along the row, and every pack starts at a multiple of its size."""
        view = n.arg.view
        return view.strides[-1] == 1 and view.offset % self.vec == 0 \
            and all(s % self.vec == 0 for s in view.strides[:-1]) \
            and not n.arg.dynamic and n.arg.fill is None

    def idx(self, d: int) -> str:
        return f"(i{d} + l)" if d == len(self.space) - 1 else f"i{d}"

    def source(self) -> str:
        k, w, name = self.kernel, self.w, self.kernel.name
        total = k.parallel.size
        self.header()
        params, casts = _pointer_args(k)
        w(f"constexpr int64_t kTotal = {total};")
        w(f"constexpr int kVec = {self.vec};  // elements per thread step, along the row")
        w(f"__global__ void __launch_bounds__({THREADS}) {name}_kernel({', '.join(params)}) {{")
        w.indent()
        w(f"for (int64_t s = blockIdx.x * int64_t({THREADS}) + threadIdx.x; s < kTotal / kVec; "
          f"s += int64_t(gridDim.x) * {THREADS}) {{")
        w.indent()
        self.unravel("s * kVec", list(range(len(self.space))))
        pack_of: dict[tuple, str] = {}
        for n in self.nodes:
            if id(n) in self.packed:
                base = self.address_at_lane0(n)
                if n.op is Op.LOAD and base not in pack_of:
                    pack_of[base] = f"pk{len(pack_of)}"
                    w(f"const auto {pack_of[base]} = pfjax::rt::load_pack<{STORAGE[n.dtype]}, kVec>(&{base});")
                elif n.op is Op.STORE:
                    pack_of[("out", id(n))] = f"opk{len(pack_of)}"
                    w(f"pfjax::rt::Pack<{STORAGE[n.dtype]}, kVec> {pack_of[('out', id(n))]};")
        w("#pragma unroll")
        w("for (int l = 0; l < kVec; ++l) {")
        w.indent()
        for n in self.nodes:
            if n.op in (Op.BUFFER, Op.PARALLEL):
                continue
            if n.op is Op.STORE:
                value = store_expr(self.names[id(n.src[1])], n.dtype)
                if id(n) in self.packed:
                    w(f"{pack_of[('out', id(n))]}.v[l] = {value};")
                else:
                    w(f"{self.address(n)} = {value};")
            elif id(n) in self.packed:
                self.define(n, load_expr(f"{pack_of[self.address_at_lane0(n)]}.v[l]", n.dtype))
            else:
                self.define(n)
        w.indent(-1)
        w("}")
        for n in self.nodes:
            if n.op is Op.STORE and id(n) in self.packed:
                w(f"pfjax::rt::store_pack(&{self.address_at_lane0(n)}, {pack_of[('out', id(n))]});")
        w.indent(-1)
        w("}")
        w.indent(-1)
        w("}")
        w()
        _launch_and_footer(w, k, f"(kTotal / kVec + {THREADS - 1}) / {THREADS}", [
            f"PFJAX_LAUNCH({name}_kernel, blocks, {THREADS}, 0, stream, {', '.join(casts)});",
            "return cudaGetLastError();"])
        return "\n".join(w.lines) + "\n"

    def address_at_lane0(self, n: gir.Node) -> str:
        view = n.arg.view
        terms = [str(view.offset)] + [f"i{d} * {s}" for d, s in enumerate(view.strides) if s]
        return f"{_buffer_name(n.src[0])}[{' + '.join(terms)}]"


TILE = 32  # transpose tiles: 32 x 32 elements, a block of 32 x 8 threads


class _Transposed(_Emitter):
    """An elementwise kernel with a load that walks across rows (a transpose): the space's
    last two dimensions go in 32x32 tiles. Each transposed operand is first read along its
    own contiguous direction into shared memory (rows padded to 33 so that the transposed
    reads hit 32 different banks), then every thread reads it transposed while the other
    accesses stay coalesced along the row."""

    @staticmethod
    def transposed(n: gir.Node) -> bool:
        if n.op is not Op.LOAD:
            return False
        s = n.arg.view.strides
        return len(s) >= 2 and abs(s[-1]) > 1 and s[-2] == 1 \
            and not n.arg.dynamic and n.arg.fill is None

    @classmethod
    def applies(cls, kernel: gir.Kernel) -> bool:
        space = kernel.parallel.space
        return len(space) >= 2 and space[-1] >= 2 and space[-2] >= 2 and any(
            cls.transposed(n) for n in gir.toposort(kernel.root))

    def __init__(self, kernel: gir.Kernel):
        super().__init__(kernel)
        self.staged: dict[tuple, tuple[int, gir.Node]] = {}
        for n in self.nodes:
            if self.transposed(n):
                key = (n.src[0].arg.index, n.arg.view)
                self.staged.setdefault(key, (len(self.staged), n))

    def source(self) -> str:
        k, w, name = self.kernel, self.w, self.kernel.name
        rank = len(self.space)
        rows, cols = self.space[-2], self.space[-1]
        outer = 1
        for n in self.space[:-2]:
            outer *= n
        tiles_r, tiles_c = -(-rows // TILE), -(-cols // TILE)
        self.header()
        params, casts = _pointer_args(k)
        w(f"constexpr int64_t kTiles = {outer * tiles_r * tiles_c};")
        w(f"__global__ void __launch_bounds__({TILE * 8}) {name}_kernel({', '.join(params)}) {{")
        w.indent()
        for slot, n in self.staged.values():
            w(f"__shared__ {STORAGE[n.dtype]} stage{slot}[{TILE}][{TILE + 1}];")
        w(f"const int tx = threadIdx.x % {TILE}, ty = threadIdx.x / {TILE};")
        w("for (int64_t t_ = blockIdx.x; t_ < kTiles; t_ += gridDim.x) {")
        w.indent()
        w(f"const int64_t c0 = (t_ % {tiles_c}) * {TILE};")
        w(f"const int64_t r0 = ((t_ / {tiles_c}) % {tiles_r}) * {TILE};")
        self.unravel(f"t_ / {tiles_c * tiles_r}", list(range(rank - 2)))
        # Stage: thread (tx, t) reads element (row r0 + tx, column c0 + t): contiguous in tx.
        w(f"for (int t = ty; t < {TILE}; t += 8) {{")
        w.indent()
        w(f"const int64_t i{rank - 2} = r0 + tx, i{rank - 1} = c0 + t;")
        w(f"if (i{rank - 2} < {rows} && i{rank - 1} < {cols}) {{")
        w.indent()
        for slot, n in self.staged.values():
            w(f"stage{slot}[t][tx] = {_buffer_name(n.src[0])}[{self.flat(n)}];")
        w.indent(-1)
        w("}")
        w.indent(-1)
        w("}")
        w("__syncthreads();")
        # Compute: thread (tx, t) makes element (row r0 + t, column c0 + tx).
        w(f"for (int t = ty; t < {TILE}; t += 8) {{")
        w.indent()
        w(f"const int64_t i{rank - 2} = r0 + t, i{rank - 1} = c0 + tx;")
        w(f"if (i{rank - 2} < {rows} && i{rank - 1} < {cols}) {{")
        w.indent()
        for n in self.nodes:
            if n.op in (Op.BUFFER, Op.PARALLEL):
                continue
            if n.op is Op.STORE:
                w(f"{self.address(n)} = {store_expr(self.names[id(n.src[1])], n.dtype)};")
            elif self.transposed(n):
                slot, _ = self.staged[(n.src[0].arg.index, n.arg.view)]
                self.define(n, load_expr(f"stage{slot}[tx][t]", n.dtype))
            else:
                self.define(n)
        w.indent(-1)
        w("}")
        w.indent(-1)
        w("}")
        w("__syncthreads();  // the stage is refilled for the next tile")
        w.indent(-1)
        w("}")
        w.indent(-1)
        w("}")
        w()
        _launch_and_footer(w, k, "kTiles", [
            f"PFJAX_LAUNCH({name}_kernel, blocks, {TILE * 8}, 0, stream, {', '.join(casts)});",
            "return cudaGetLastError();"])
        return "\n".join(w.lines) + "\n"

    def flat(self, n: gir.Node) -> str:
        view = n.arg.view
        return " + ".join([str(view.offset)] + [f"i{d} * {s}" for d, s in enumerate(view.strides) if s])


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


class _RowReduction(_Emitter):
    """One block per unit; loops of the loop nest stride the threads over the row."""

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

    def idx(self, d: int) -> str:
        if self.vec > 1 and d == self.rdims[-1]:
            return f"(i{d} + l)"
        return f"i{d}"

    def address(self, n: gir.Node) -> str:
        if n.src[0].arg.role == "tile":
            return f"tile{n.src[0].arg.index}[j{' + l' if self.vec > 1 else ''}]"
        return super().address(n)

    def lane0_address(self, n: gir.Node) -> str:
        view = n.arg.view
        terms = [str(view.offset)] + [f"i{d} * {s}" for d, s in enumerate(view.strides) if s]
        return f"{_buffer_name(n.src[0])}[{' + '.join(terms)}]"

    def open_packs(self, body: list[gir.Node]) -> dict[int, str]:
        """Pack loads (and pack buffers for stores) of this loop body, before its lanes."""
        packs: dict[int, str] = {}
        by_address: dict[str, str] = {}
        for n in body:
            if not self.packable(n):
                continue
            address = self.lane0_address(n)
            if n.op is Op.LOAD:
                if address not in by_address:
                    by_address[address] = f"pk{self.counter}"
                    self.counter += 1
                    self.w(f"const auto {by_address[address]} = pfjax::rt::load_pack<"
                           f"{STORAGE[n.dtype]}, {self.vec}>(&{address});")
                packs[id(n)] = by_address[address]
            else:
                packs[id(n)] = f"opk{self.counter}"
                self.counter += 1
                self.w(f"pfjax::rt::Pack<{STORAGE[n.dtype]}, {self.vec}> {packs[id(n)]};")
        return packs

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
        return min(THREADS, max(32, -(-self.row // (32 * self.vec)) * 32))

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

    def source(self) -> str:
        k, w, name = self.kernel, self.w, self.kernel.name
        units = self.units()
        threads = self.threads()
        self.header()
        params, casts = _pointer_args(k)
        tile_bytes = sum(self.row * t.dtype.itemsize for t in self.tiles.values())
        finals = self.nest.finals(self.nodes)
        if finals:
            params = [*params, "double* __restrict__ scratch"]
        w(f"constexpr int64_t kUnits = {units}, kRow = {self.row};")
        w(f"__global__ void __launch_bounds__({threads}) {name}_kernel({', '.join(params)}) {{")
        w.indent()
        w("__shared__ double red_[256];  // partials: one per warp, or per thread of a column block")
        if self.tiles:
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
        for loop in range(self.nest.num_loops):
            in_loop = [r for r in roots if self.nest.loop_of(r) == loop]
            reductions = [r for r in in_loop if r.op is Op.REDUCE]
            for r in reductions:
                acc_t = register_type(r.dtype if r.dtype is not DType.BOOL else DType.I32)
                w(f"{acc_t} acc_{self.acc_name(r)} = {_identity(r.arg.op, r.dtype)};")
            vec = self.vec
            w(f"for (int64_t j = {first} * {vec}; j < kRow; j += {step} * {vec}) {{")
            w.indent()
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
                    w(f"pfjax::rt::store_pack(&{self.lane0_address(n)}, {packs[id(n)]});")
            self.names = local_names  # values of the loop body end with it
            w.indent(-1)
            w("}")
            for r in reductions:
                acc = f"acc_{self.acc_name(r)}"
                red = self.combine(r, acc, _identity(r.arg.op, r.dtype))
                self.define(r, f"static_cast<{register_type(r.dtype)}>({red})")
            self.per_unit(loop + 1)
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
            w(f"for (int64_t u = threadIdx.x; u < kUnits; u += {THREADS}) "
              f"fin_{k} = {op}(fin_{k}, scratch[{k} * kUnits + u]);")
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


class _ColumnReduction(_RowReduction):
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
