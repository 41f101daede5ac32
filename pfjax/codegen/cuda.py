"""CUDA codegen: a GIR kernel (after the passes, for the CUDA target) -> a CUDA source
using pfjax/cuda_kernel.cuh. This file: what every kernel shares, elementwise kernels and
transposes; reductions are in cuda_reduce.py, cuda_split.py and cuda_threadrows.py.

Elementwise kernels: a block per 256 x kUnroll steps, each thread's step `kVec`
consecutive elements of the innermost dimension; accesses that are contiguous and aligned
move as one 16-byte pack (a thread loads all its packs before it computes any), the others
element by element (strided, broadcast, guarded or dynamic). A
load that walks across rows (a transpose) goes through 32x33 shared-memory tiles. bf16/f16
are loaded and stored as such and computed in float32.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen.cpu import _Writer, emit_sizes
from pfjax.codegen.ctypes_table import (STORAGE, compute_expr, guarded_load, load_expr,
                                        register_type, store_expr)
from pfjax.gir import Op
from pfjax.gir.loops import loop_nest

THREADS = 256
PACK_BYTES = 16
MAX_UNROLL = 4  # packs per thread of an elementwise kernel


class CudaUnsupported(NotImplementedError):
    """A kernel shape the CUDA backend does not generate yet."""


def emit_cuda_kernel(kernel: gir.Kernel) -> str:
    par = kernel.parallel
    if par.rdims:
        from pfjax.codegen.cuda_reduce import ColumnReduction, RowReduction
        from pfjax.codegen.cuda_split import split_emitter
        from pfjax.codegen.cuda_threadrows import thread_rows_emitter
        emitter = thread_rows_emitter(kernel) if par.split <= 1 else None
        if emitter is None:
            nodes = gir.toposort(kernel.root)
            if par.split > 1 or (par.column_style and loop_nest(kernel).finals(nodes)):
                raise CudaUnsupported("reductions over all column blocks (a finish step)")
            emitter = split_emitter(kernel) or \
                (ColumnReduction if par.column_style else RowReduction)(kernel)
        return emitter.source()
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
    emit_sizes(w, kernel)
    w()
    w(f"}}  // namespace {name}_k")
    w()
    ns = f"{name}_k::"
    w(f"PFJAX_CUDA_EXPORT({name}, {ns}{name}_launch, {len(kernel.inputs)}, {ns}{name}_in_sizes, "
      f"{len(kernel.outputs)}, {ns}{name}_out_sizes)")


def _launch_and_footer(w: _Writer, kernel: gir.Kernel, want: str, body: list[str],
                       early_exit: bool = True) -> None:
    """The launch function and the kernel's exports. The grid is every block wanted: the
    persistent grid this replaced assumed 8 resident blocks per multiprocessor, and a
    kernel with more registers than that allows ran a second, part-empty wave."""
    w(f"cudaError_t {kernel.name}_launch(void** in, void** out, cudaStream_t stream) {{")
    w.indent()
    w(f"const int64_t want = {want};")
    if early_exit:
        w("if (want == 0) return cudaSuccess;")
    w("const int blocks = static_cast<int>(std::min<int64_t>(want, 0x7fffffff));")
    for line in body:
        w(line)
    w.indent(-1)
    w("}")
    w()
    _footer(w, kernel)


def _buffer_name(buf: gir.Node) -> str:
    return f"{'in' if buf.arg.role == 'in' else 'out'}{buf.arg.index}"


class Emitter:
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

    def plain_address(self, n: gir.Node) -> str:
        """The access at every index's own value (lane 0 of a pack, a tile element)."""
        view = n.arg.view
        terms = [str(view.offset)] + [f"i{d} * {s}" for d, s in enumerate(view.strides) if s]
        return f"{_buffer_name(n.src[0])}[{' + '.join(terms)}]"

    def packable(self, n: gir.Node) -> bool:
        return False

    def open_packs(self, body: list[gir.Node]) -> dict[int, str]:
        """Pack loads (and pack buffers for stores) of these nodes, before their lanes;
        id(node) -> the pack's name."""
        packs: dict[int, str] = {}
        by_address: dict[str, str] = {}
        for n in body:
            if not self.packable(n):
                continue
            address = self.plain_address(n)
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


class _Elementwise(Emitter):
    def __init__(self, kernel: gir.Kernel):
        super().__init__(kernel)
        accesses = [n for n in self.nodes if n.op in (Op.LOAD, Op.STORE)]
        widest = max((n.dtype.itemsize for n in accesses), default=4)
        self.vec = max(1, PACK_BYTES // widest)
        inner = self.space[-1]
        if inner % self.vec:
            self.vec = 1

    def packable(self, n: gir.Node) -> bool:
        """Contiguous along the row, and every pack starts at a multiple of its size."""
        if n.op not in (Op.LOAD, Op.STORE) or self.vec == 1:
            return False
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
        loads = {}  # address -> (pack array, dtype) of the packed loads, in order
        for n in self.nodes:
            if n.op is Op.LOAD and self.packable(n):
                loads.setdefault(self.plain_address(n), (f"pa{len(loads)}_", n.dtype))
        unroll = max(1, min(MAX_UNROLL, 8 // max(1, len(loads))))
        w(f"constexpr int kUnroll = {unroll};  // packs per thread, all loaded before any is used")
        w(f"__global__ void __launch_bounds__({THREADS}) {name}_kernel({', '.join(params)}) {{")
        w.indent()
        w(f"for (int64_t b = blockIdx.x; b * {THREADS} * kUnroll < kTotal / kVec; b += gridDim.x) {{")
        w.indent()
        for array, dtype in loads.values():
            w(f"pfjax::rt::Pack<{STORAGE[dtype]}, {self.vec}> {array}[kUnroll];")
        tail = (total // self.vec) % (THREADS * unroll) != 0
        for phase in ("load", "compute"):
            w("#pragma unroll")
            w("for (int q = 0; q < kUnroll; ++q) {")
            w.indent()
            w(f"const int64_t s = (b * kUnroll + q) * {THREADS} + threadIdx.x;")
            if tail:
                w("if (s >= kTotal / kVec) break;")
            saved = dict(self.names)
            self.unravel("s * kVec", list(range(len(self.space))))
            if phase == "load":
                for address, (array, dtype) in loads.items():
                    w(f"{array}[q] = pfjax::rt::load_pack<{STORAGE[dtype]}, {self.vec}>(&{address});")
            else:
                self.compute_packs(loads)
            self.names = saved
            w.indent(-1)
            w("}")
        w.indent(-1)
        w("}")
        w.indent(-1)
        w("}")
        w()
        _launch_and_footer(w, k, f"(kTotal / kVec + {THREADS} * kUnroll - 1) / ({THREADS} * kUnroll)", [
            f"PFJAX_LAUNCH({name}_kernel, blocks, {THREADS}, 0, stream, {', '.join(casts)});",
            "return cudaGetLastError();"])
        return "\n".join(w.lines) + "\n"

    def compute_packs(self, loads: dict) -> None:
        """One pack of every output from the loaded packs (pack arrays indexed by q)."""
        w = self.w
        packs = {id(n): f"{loads[self.plain_address(n)][0]}[q]" for n in self.nodes
                 if n.op is Op.LOAD and self.packable(n)}
        packs.update(self.open_packs([n for n in self.nodes if n.op is Op.STORE]))
        w("#pragma unroll")
        w("for (int l = 0; l < kVec; ++l) {")
        w.indent()
        for n in self.nodes:
            if n.op in (Op.BUFFER, Op.PARALLEL):
                continue
            if n.op is Op.STORE:
                value = store_expr(self.names[id(n.src[1])], n.dtype)
                if id(n) in packs:
                    w(f"{packs[id(n)]}.v[l] = {value};")
                else:
                    w(f"{self.address(n)} = {value};")
            elif id(n) in packs:
                self.define(n, load_expr(f"{packs[id(n)]}.v[l]", n.dtype))
            else:
                self.define(n)
        w.indent(-1)
        w("}")
        for n in self.nodes:
            if n.op is Op.STORE and id(n) in packs:
                w(f"pfjax::rt::store_pack(&{self.plain_address(n)}, {packs[id(n)]});")


TILE = 32  # transpose tiles: 32 x 32 elements, a block of 32 x 8 threads


class _Transposed(Emitter):
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
            w(f"stage{slot}[t][tx] = {self.plain_address(n)};")
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

