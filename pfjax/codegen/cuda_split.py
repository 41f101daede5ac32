"""CUDA reductions with too few units to fill the GPU: a sum over a whole array, softmax
over three long rows, statistics of 256 columns of 262144 rows. With one block per unit
such a kernel ran a handful of blocks on a 132-multiprocessor device (1-4% of its
bandwidth).

Here each unit's rows are cut into chunks and each loop of the loop nest is a launch of
its own, one block per (unit, chunk). A launch first combines, in chunk order, the
partial results that earlier launches left in a scratch buffer for the reductions of the
earlier loops, then runs its own loop over its chunk and leaves its partials. A last
launch, one block per unit, makes the stores after the loops (and the per-unit partials
of reductions over all units, which the finish kernel combines as before). Combining in a
fixed order keeps results deterministic, and summing per chunk first is more accurate
than one running sum over the whole row.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen.ctypes_table import register_type
from pfjax.codegen.cuda import THREADS, _launch_and_footer, _pointer_args
from pfjax.codegen.cuda_reduce import (_REDUCE_OP, ColumnReduction, RowReduction,
                                       _identity)
from pfjax.gir import DType, Op

WANT_BLOCKS = 2048   # blocks per launch that keep the device's memory system busy
MIN_CHUNK = 4096     # elements a block reads per loop, at least


def chunk_count(units: int, elements_per_row: int, blocks_per_unit_max: int) -> int:
    """Chunks per unit: enough for WANT_BLOCKS blocks, none smaller than MIN_CHUNK."""
    if units <= 0 or units >= WANT_BLOCKS // 2:
        return 1
    return max(1, min(-(-WANT_BLOCKS // units), elements_per_row // MIN_CHUNK,
                      blocks_per_unit_max))


class _Split:
    """Mixed into a row or column reduction emitter (before it in the bases)."""

    width = 1  # partials per block and reduction: one, or one per column of the block

    def setup_split(self) -> None:
        step = int(self.loop_start()[1]) * self.vec
        self.chunks = chunk_count(self.units(), self.row * self.width, -(-self.row // step))
        self.chunk = -(-self.row // self.chunks // step) * step  # whole strides per chunk
        self.chunks = -(-self.row // self.chunk)

    def iterations(self) -> None:
        return None  # chunks are long: strided loops

    def threads(self) -> int:
        return THREADS  # a full block per chunk (never the wide rows of RowReduction)

    def partial_index(self, slot: int, chunk: str) -> str:
        return f"(({slot} * kUnits + u) * kChunks + {chunk}) * {self.width}"

    # A block's partials: written by `writer` threads at `partial_lane` past the slot's index;
    # combined by each thread over the chunks `gather_from` walks.
    writer, partial_lane = "threadIdx.x == 0", ""

    def gather(self, r: gir.Node, slot: int) -> str:
        """The combined result of reduction r from the chunks' partials (every thread)."""
        t, ident = _gather_type(r)
        op = f"pfjax::rt::{_REDUCE_OP[r.arg.op]}()"
        g = f"g{self.acc_name(r)}_"
        self.w(f"{t} {g} = {ident};")
        self.w(f"for (int64_t cc = {self.gather_from}) {g} = {op}({g}, static_cast<{t}>("
               f"part_[{self.partial_index(slot, 'cc')}{self.partial_lane}]));")
        return self.gathered(g, op, ident, t)

    def write_partial(self, r: gir.Node, slot: int, value: str) -> None:
        p = f"p{self.acc_name(r)}_"
        self.w(f"const auto {p} = {value};")
        self.w(f"if ({self.writer}) part_[{self.partial_index(slot, 'c_')}{self.partial_lane}] = "
               f"static_cast<double>({p});")

    def source(self) -> str:
        k, w, name = self.kernel, self.w, self.kernel.name
        threads = self.threads()
        self.header()
        params, casts = _pointer_args(k)
        finals = self.nest.finals(self.nodes)
        roots = self.nest.roots(self.nodes)
        loops = self.nest.num_loops
        slots = {id(r): i for i, r in enumerate(r for r in roots if r.op is Op.REDUCE)}
        params = [*params, "double* __restrict__ part_", "double* __restrict__ scratch"]
        w(f"constexpr int64_t kUnits = {self.units()}, kRow = {self.row}, "
          f"kChunks = {self.chunks}, kChunk = {self.chunk};")
        first, step = self.loop_start()
        for launch in range(loops + 1):
            last = launch == loops
            self.names = {}
            w(f"__global__ void __launch_bounds__({threads}) {name}_p{launch}({', '.join(params)}) {{")
            w.indent()
            w("__shared__ double red_[256];")
            if last:
                w("const int64_t u = blockIdx.x;")
            else:
                w("const int64_t u = blockIdx.x / kChunks, c_ = blockIdx.x % kChunks;")
            self.unit_setup()
            self.per_unit(0)
            for loop in range(launch):
                for r in roots:
                    if r.op is Op.REDUCE and self.nest.loop_of(r) == loop:
                        self.define(r, f"static_cast<{register_type(r.dtype)}>({self.gather(r, slots[id(r)])})")
                self.per_unit(loop + 1)
            if last:
                self.after_loops(roots, finals)
            else:
                in_loop = [r for r in roots if self.nest.loop_of(r) == launch]
                reductions = self.open_accumulators(in_loop)
                w("const int64_t lo_ = c_ * kChunk, hi_ = lo_ + kChunk < kRow ? lo_ + kChunk : kRow;")
                self.emit_loop([f"for (int64_t j = lo_ + {first} * {self.vec}; j < hi_; "
                                f"j += {step} * {self.vec}) {{"], [], in_loop)
                for r in reductions:
                    acc = f"acc_{self.acc_name(r)}"
                    self.write_partial(r, slots[id(r)], self.combine(r, acc, _identity(r.arg.op, r.dtype)))
            w.indent(-1)
            w("}")
            w()
        if finals:
            self.finish_kernel([p for p in params if "part_" not in p], finals)
        args = ", ".join(casts)
        part = max(1, len(slots)) * self.width
        body = [
            "double* part_ = nullptr;",
            "double* scratch = nullptr;",
            f"cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&part_), "
            f"sizeof(double) * {part} * std::max<int64_t>(kUnits * kChunks, 1), stream);",
            "if (err != cudaSuccess) return err;",
            f"err = cudaMallocAsync(reinterpret_cast<void**>(&scratch), "
            f"sizeof(double) * {max(1, len(finals))} * std::max<int64_t>(kUnits, 1), stream);",
            "if (err != cudaSuccess) { cudaFreeAsync(part_, stream); return err; }",
            "if (blocks > 0) {"]
        for launch in range(loops):
            body.append(f"  PFJAX_LAUNCH({name}_p{launch}, blocks * kChunks, {threads}, 0, stream, "
                        f"{args}, part_, scratch);")
        body += [f"  PFJAX_LAUNCH({name}_p{loops}, blocks, {threads}, 0, stream, {args}, part_, scratch);",
                 "}"]
        if finals:
            body.append(f"PFJAX_LAUNCH({name}_finish, 1, {THREADS}, 0, stream, {args}, scratch);")
        body += ["err = cudaGetLastError();",
                 "const cudaError_t freed = cudaFreeAsync(part_, stream);",
                 "const cudaError_t freed2 = cudaFreeAsync(scratch, stream);",
                 "return err != cudaSuccess ? err : freed != cudaSuccess ? freed : freed2;"]
        _launch_and_footer(w, k, "kUnits", body, early_exit=not finals)
        return "\n".join(w.lines) + "\n"


def _gather_type(r: gir.Node) -> tuple[str, str]:
    """(C++ type, identity) in which the partials of r are combined."""
    if r.dtype.is_float:
        return "double", _identity(r.arg.op, DType.F64)
    return "long long", f"static_cast<long long>({_identity(r.arg.op, r.dtype)})"


class SplitRows(_Split, RowReduction):
    """A row cut into chunks; a block's partial is its block-wide result, and the threads
    share the chunks of a gather."""

    def __init__(self, kernel: gir.Kernel):
        RowReduction.__init__(self, kernel)
        self.setup_split()
        self.gather_from = f"threadIdx.x; cc < kChunks; cc += {self.threads()}"

    def gathered(self, g: str, op: str, ident: str, t: str) -> str:
        return f"pfjax::rt::block_reduce({g}, {op}, {ident}, reinterpret_cast<{t}*>(red_))"


class SplitColumns(_Split, ColumnReduction):
    """Rows of a column block cut into chunks; a block's partials are its 32 columns', and
    each thread gathers its own column's."""

    width = 32
    writer, partial_lane = "threadIdx.x < 32", " + threadIdx.x % 32"
    gather_from = "0; cc < kChunks; ++cc"

    def __init__(self, kernel: gir.Kernel):
        ColumnReduction.__init__(self, kernel)
        self.setup_split()

    def gathered(self, g: str, op: str, ident: str, t: str) -> str:
        return g


def split_emitter(kernel: gir.Kernel):
    """The split form of a reduction kernel where it needs one, else None."""
    par = kernel.parallel
    emitter = (SplitColumns if par.column_style else SplitRows)(kernel)
    reductions = [n for n in emitter.nodes if n.op is Op.REDUCE]
    if emitter.chunks <= 1 or emitter.tiles or \
            any(r.dtype in (DType.I64, DType.U64) for r in reductions):
        return None  # 64-bit integer sums would not survive the double partials
    return emitter
