"""CUDA reductions over short rows (a router's 8 experts, 10 classes): a thread per row.

With a block per row, a row of 10 elements kept 22 of a block's 32 threads idle and ran
six million tiny blocks (1% of the bandwidth); laid across the 32 lanes of a column block
it read one element per thread. Here each thread walks its own row, fully unrolled, in
packs where the row allows, so a warp reads 32 consecutive rows. Reductions stay in the
thread; a reduction over all rows (the mean of per-row losses) is combined per block
first, so the finish kernel reads one partial per block instead of one per row.
"""
from __future__ import annotations

from pfjax import gir
from pfjax.codegen.ctypes_table import register_type, store_expr
from pfjax.codegen.cuda import PACK_BYTES, THREADS, _launch_and_footer, _pointer_args
from pfjax.codegen.cuda_reduce import _REDUCE_OP, RowReduction, _identity
from pfjax.gir import DType, Op

MAX_ROW = 32        # longest row a thread walks alone
MIN_UNITS = 4096    # rows wanted, so that the threads fill the device


class ThreadRows(RowReduction):
    parts = "kParts"

    def choose_vec(self) -> int:
        accesses = [n for n in self.nodes if n.op in (Op.LOAD, Op.STORE)
                    and n.src[0].arg.role != "tile"]
        vec = max(1, PACK_BYTES // max((n.dtype.itemsize for n in accesses), default=4))
        while vec > 1 and self.space[self.rdims[-1]] % vec:
            vec //= 2
        return vec

    def iterations(self) -> None:
        return None

    def threads(self) -> int:
        return THREADS

    def unit_setup(self) -> None:
        # Threads past the last row walk the last row (in bounds) and store nothing.
        self.w("const int64_t u = blockIdx.x * int64_t(kThreads) + threadIdx.x;")
        self.w("const bool live_ = u < kUnits;")
        self.unravel("(live_ ? u : kUnits - 1)", self.kept)

    def store_guard(self) -> str:
        return "live_"

    def after_guard(self) -> str:
        return "live_"

    def combine(self, r: gir.Node, acc: str, ident: str) -> str:
        return acc

    def after_loops(self, roots: list[gir.Node], finals: list[gir.Node]) -> None:
        w = self.w
        after = [r for r in roots if r.op is Op.STORE and self.nest.loop_of(r) is None]
        for n in self.cone([s.src[1] for s in after] + [f.src[0] for f in finals], full=False):
            self.define(n)
        for s in after:
            w(f"if (live_) {self.address(s)} = {store_expr(self.names[id(s.src[1])], s.dtype)};")
        for slot, f in enumerate(finals):  # one partial per block
            op = f"pfjax::rt::{_REDUCE_OP[f.arg.op]}()"
            ident = _identity(f.arg.op, DType.F64)
            v = f"fp{slot}_"
            w(f"double {v} = live_ ? static_cast<double>({self.names[id(f.src[0])]}) : {ident};")
            w(f"{v} = pfjax::rt::block_reduce({v}, {op}, {ident}, red_);")
            w(f"if (threadIdx.x == 0) scratch[{slot} * kParts + blockIdx.x] = {v};")

    def source(self) -> str:
        k, w, name = self.kernel, self.w, self.kernel.name
        self.header()
        params, casts = _pointer_args(k)
        finals = self.nest.finals(self.nodes)
        if finals:
            params = [*params, "double* __restrict__ scratch"]
        units = self.units()
        w(f"constexpr int64_t kUnits = {units}, kRow = {self.row};")
        w(f"constexpr int kThreads = {THREADS};")
        w("constexpr int64_t kParts = (kUnits + kThreads - 1) / kThreads;  // blocks")
        w(f"__global__ void __launch_bounds__({THREADS}) {name}_kernel({', '.join(params)}) {{")
        w.indent()
        w("__shared__ double red_[256];")
        self.unit_setup()
        roots = self.nest.roots(self.nodes)
        self.per_unit(0)
        for loop in range(self.nest.num_loops):
            in_loop = [r for r in roots if self.nest.loop_of(r) == loop]
            reductions = self.open_accumulators(in_loop)
            self.emit_loop(["#pragma unroll", f"for (int64_t j = 0; j < kRow; j += {self.vec}) {{"],
                           [], in_loop)
            for r in reductions:
                self.define(r, f"static_cast<{register_type(r.dtype)}>(acc_{self.acc_name(r)})")
            self.per_unit(loop + 1)
        self.after_loops(roots, finals)
        w.indent(-1)
        w("}")
        w()
        if finals:
            self.finish_kernel(params, finals)
        args = ", ".join(casts)
        if finals:
            body = [
                "double* scratch = nullptr;",
                f"cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&scratch), "
                f"sizeof(double) * {len(finals)} * std::max<int64_t>(kParts, 1), stream);",
                "if (err != cudaSuccess) return err;",
                f"if (blocks > 0) PFJAX_LAUNCH({name}_kernel, blocks, {THREADS}, 0, stream, {args}, scratch);",
                f"PFJAX_LAUNCH({name}_finish, 1, {THREADS}, 0, stream, {args}, scratch);",
                "err = cudaGetLastError();",
                "const cudaError_t freed = cudaFreeAsync(scratch, stream);",
                "return err != cudaSuccess ? err : freed;"]
        else:
            body = [f"PFJAX_LAUNCH({name}_kernel, blocks, {THREADS}, 0, stream, {args});",
                    "return cudaGetLastError();"]
        _launch_and_footer(w, k, "kParts", body, early_exit=not finals)
        return "\n".join(w.lines) + "\n"


def thread_rows_emitter(kernel: gir.Kernel):
    """The thread-per-row form of a reduction over short rows, else None."""
    par = kernel.parallel
    if not par.rdims:
        return None
    emitter = ThreadRows(kernel)
    if emitter.row > MAX_ROW or emitter.units() < MIN_UNITS or emitter.tiles:
        return None
    return emitter
