"""Schedule decisions for a kernel: small, serialisable, applied to the parallel node."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from pfjax import config, gir
from pfjax.gir import Op
from pfjax.schedule.cost import estimate

# Below this much traffic, one thread is faster than waking the pool (~1.3 us per task).
MIN_TASK_BYTES = 96 * 1024
# Outputs at least this large are streamed past the caches (non-temporal stores): they
# would evict the inputs anyway, and streaming saves the read-for-ownership of each line.
NONTEMPORAL_MIN_BYTES = 4 << 20


@dataclass(frozen=True)
class Schedule:
    vector: int        # SIMD lanes per loop step
    chunk: int         # elements per parallel task
    nontemporal: bool  # stream stores past the cache
    block: int = 1     # columns per unit in a column reduction
    split: int = 1     # row segments of a column reduction, combined after the units
    strip: int = 1     # columns per step of a blocked traversal (with block > 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Schedule":
        return Schedule(**json.loads(text))


# Rows per segment of a split column reduction, at least, and the widest column block a
# split reduction reads (whole rows up to this width: long contiguous runs). Against 4096
# rows and 512 columns, on a Zen 3 VM through jax.jit (sum / max / mean + var over axis 0):
# 4096 x 1024 0.48 / 0.66 / 1.8 ms against 1.03 / 1.29 / 3.2 (XLA 0.84 / 0.67 / 2.8);
# 16384 x 256 0.63 / 1.31 / 1.43 against 0.89 / 1.59 / 1.62 (more segments than threads
# keep the two threads balanced). CUDA keeps the earlier 4096 rows and 512 columns (not
# measured on a device with these).
SPLIT_MIN_ROWS = {"cpu": 512, "cuda": 4096}
SPLIT_MAX_BLOCK = {"cpu": 2048, "cuda": 512}


def _split(kernel: gir.Kernel, target: gir.Target, block: int) -> int:
    """Row segments for a column reduction that has too few column blocks to keep every
    thread busy: each segment reduces its rows (long contiguous reads), a finish step adds
    the segments up in order. Only single-loop kernels whose results are all per column."""
    par = kernel.parallel
    if not par.column_style or par.rdims[0] != 0:
        return 1
    nest = gir.loop_nest(kernel)
    nodes = gir.toposort(kernel.root)
    if nest.num_loops != 1 or any(n.op is Op.STORE and nest.full[id(n)] for n in nodes) \
            or nest.finals(nodes) or any(n.op is Op.STORE and n.src[0].arg.role == "tile" for n in nodes):
        return 1
    blocks = -(-par.space[-1] // block)
    want = -(-4 * target.groups // blocks)
    return max(1, min(want, par.space[0] // SPLIT_MIN_ROWS[target.backend]))


# A column reduction with several loops whose narrowest block (4 vectors of columns) would
# not stay at the local level between its loops reads the block again from the shared
# cache or memory, in short strided runs, in every loop. Then whole rows in row order are
# faster: segments of rows, one phase per loop (codegen.cpu_phased), the per-column
# partials combined between phases. Softmax over axis 0 of 4096 x 1024: the column max
# alone took 0.30-0.37 ms in row order, 0.7-1.1 ms over blocks of 64 columns.
PHASE_MIN_ROWS = 256     # rows per segment, at least
PHASE_MAX_COLUMNS = 2048  # the per-column arrays live on the stack


def _column_phases(kernel: gir.Kernel, target: gir.Target) -> int:
    par = kernel.parallel
    if target.backend != "cpu" or len(par.space) != 2 or par.rdims != (0,):
        return 1
    rows, cols = par.space
    nest = gir.loop_nest(kernel)
    nodes = gir.toposort(kernel.root)
    if nest.num_loops < 2 or cols > PHASE_MAX_COLUMNS or cols % target.lanes or nest.finals(nodes) \
            or any(n.op is Op.BUFFER and n.arg.role == "tile" for n in nodes) \
            or any(n.op is Op.REDUCE and n.arg.op not in ROW_SPLIT_OPS for n in nodes):
        return 1
    if gir.column_block_bytes(kernel, 4 * target.lanes) <= target.level(gir.LOCAL).capacity_bytes:
        return 1
    return max(1, min(8 * target.groups, rows // PHASE_MIN_ROWS))


# A row reduction with fewer rows than threads would leave threads idle (a sum of a whole
# array is one row): its rows are cut into segments, reduced apart and combined in order
# by a finish step. A kernel with several loops (softmax, layernorm) runs them as phases,
# each over all segments, with the combined values of the earlier ones (codegen.cpu_reduce).
# Rows kept at the local level between loops (tiles) are not split.
ROW_SPLIT_MIN = 16384  # elements per segment, at least (2 KiB-aligned blocks of the row)
ROW_SPLIT_OPS = ("sum", "prod", "max", "min", "and", "or")


def _row_split(kernel: gir.Kernel, target: gir.Target) -> int:
    par = kernel.parallel
    if target.backend != "cpu" or par.column_style or par.rdims != (len(par.space) - 1,):
        return 1
    nest = gir.loop_nest(kernel)
    nodes = gir.toposort(kernel.root)
    if nest.finals(nodes) or any(
            (n.op is Op.BUFFER and n.arg.role == "tile")
            or (n.op is Op.REDUCE and n.arg.op not in ROW_SPLIT_OPS) for n in nodes):
        return 1
    # Not where the rows share out evenly, and with several loops (each phase reads its
    # segment again) not where threads idle only a little.
    if par.units % target.groups == 0 or (nest.num_loops > 1 and par.units >= 2 * target.groups):
        return 1
    # 8 units per thread keep XLA's pool balanced (3 rows x 3 segments left one thread
    # with 5 of 9)
    want = -(-8 * target.groups // par.units)
    return max(1, min(want, par.space[-1] // ROW_SPLIT_MIN))


def _column_block(cols: int, lanes: int, wanted: int) -> int:
    """`wanted` columns rounded up to whole vectors, at least 4 vectors, at most 512 and
    no wider than the row."""
    return min(-(-cols // lanes) * lanes, max(4 * lanes, min(512, -(-wanted // lanes) * lanes)))


def _choose_reduction(kernel: gir.Kernel, target: gir.Target) -> Schedule:
    """Units are rows (or column blocks); a column block is as wide as 4 vectors, or 1
    when a multi-loop block would not stay at the local level between its loops."""
    par = kernel.parallel
    lanes = target.lanes
    block = 1
    if par.column_style:
        cols = par.space[-1]
        # Wide blocks read longer contiguous runs of each row (DRAM and the prefetchers
        # like that), but every thread needs a few blocks: 4 vectors up to 512 columns.
        block = _column_block(cols, lanes, -(-cols // (2 * target.groups)))
        # Only a kernel that reads its block again (several loops) wants it to stay at the
        # local level; narrow blocks make short strided reads, so never below 4 vectors
        # (softmax over axis 0 of 4096 x 1024: 64 columns 1.27-1.4x faster than 32).
        # When even the narrowest block would not stay, later loops re-read it from the
        # shared cache or memory anyway: then one wide block per thread reads longer runs.
        if gir.loop_nest(kernel).num_loops > 1:
            capacity = target.level(gir.LOCAL).capacity_bytes
            if gir.column_block_bytes(kernel, 2 * lanes) > capacity:
                block = _column_block(cols, lanes, -(-cols // target.groups))
            else:
                while block > 4 * lanes and gir.column_block_bytes(kernel, block) > capacity:
                    block //= 2
    phases = _column_phases(kernel, target) if par.column_style else 1
    if phases > 1:
        block, split = par.space[-1], phases
    elif par.column_style:
        split = _split(kernel, target, block)
        if split > 1:
            block = min(-(-par.space[-1] // lanes) * lanes, SPLIT_MAX_BLOCK[target.backend])
            split = _split(kernel, target, block)
    else:
        split = _row_split(kernel, target)
    units = max(1, gir.Parallel(par.space, rdims=par.rdims, block=block, split=split).units)
    cost = estimate(kernel, target)
    per_unit = max(1, cost.global_bytes // units)
    chunk = max(-(-MIN_TASK_BYTES // per_unit), -(-units // (target.groups * 4)))
    out_bytes = sum(b.dtype.itemsize * math.prod(b.arg.shape) for b in kernel.outputs)
    mode = config.nontemporal()
    stream = mode == "always" or (mode == "auto" and out_bytes >= NONTEMPORAL_MIN_BYTES)
    return Schedule(vector=lanes, chunk=min(chunk, units), nontemporal=stream, block=block,
                    split=split)


def choose(kernel: gir.Kernel, target: gir.Target) -> Schedule:
    par = kernel.parallel
    if par.rdims:
        return _choose_reduction(kernel, target)
    size = max(1, par.size)
    cost = estimate(kernel, target)
    bytes_per_elem = max(1, cost.global_bytes // size)
    min_chunk = max(1, MIN_TASK_BYTES // bytes_per_elem)
    # Several chunks per thread so a slow thread does not hold everyone up.
    chunk = max(min_chunk, -(-size // (target.groups * 4)))
    block = transpose_block(kernel, target)
    strip = transpose_strip(target, kernel) if block > 1 else 1
    blocked = gir.Parallel(par.space, block=block, strip=strip)
    if blocked.strip_tasks:
        # Tasks of whole strips, about 16 per thread: with a task per block, a thread
        # that starts late (XLA's pool wakes it) left the other waiting up to a block at
        # the end (transpose + bias + GELU at 1024 x 4096: 8 blocks of 0.3-0.5 ms, the
        # caller waiting 170-260 us per call for the helper's last one). Quarter blocks
        # there, through jax.jit, old and new interleaved in one process: 1-8% faster in
        # each of six runs (2.89 -> 2.73 ms, 3.43 -> 3.16); the bare transpose within 1%.
        chunk = max(min_chunk, -(-size // (target.groups * 16)))
        chunk = -(-chunk // (block * strip)) * (block * strip)
    else:
        # A blocked traversal with ragged blocks hands out whole blocks of rows.
        align = block * par.space[-1] if block > 1 else 64
        chunk = -(-chunk // align) * align
    out_bytes = sum(b.dtype.itemsize for b in kernel.outputs) * size
    mode = config.nontemporal()
    # A blocked traversal streams too: its output rows are written in runs of whole lines,
    # which through the cache would cost a read for ownership each (and, at power-of-two
    # row strides, conflict in the same cache sets).
    stream = mode == "always" or (mode == "auto" and out_bytes >= NONTEMPORAL_MIN_BYTES)
    return Schedule(vector=target.lanes, chunk=min(chunk, size), nontemporal=stream, block=block,
                    strip=strip)


# A blocked (transposed) traversal (codegen.cpu) stages a block of rows x a strip of
# columns at the local level. With AVX-512, 512 rows x 16 (a 32 KiB stage of floats):
# each source row is read in runs of 2 KiB, one 16 x 16 register transpose per 16 rows
# fills the stage, each output row gets one line per strip and its loop is one 16-lane
# vector. Measured on a 2-core Zen 4 from memory, x.T * 2 + 1 at 1024 x 4096: 1.12-1.18x
# over 256 x 64 and over 32- and 64-wide strips; transpose + bias + tanh-GELU through JAX
# 4.0x -> 5.7x jax.jit. With AVX2 (8 x 8 register transposes), 512 rows x 32 (a 64 KiB
# stage): on a 2-core Zen 3 the 16-wide strip spent most of its time in the row loop's
# one-line stores, 512 of them 4 KiB apart per strip. Through JAX, interleaved in one
# process (ms, x.T * 2 + b / transpose + bias + tanh-GELU), 1024 x 4096: 512 x 16
# 2.30 / 2.96, 512 x 32 1.85 / 2.50, 512 x 64 1.62 / 2.44 (256 x 32 1.84 / 2.40 in
# another run where 512 x 32 took 1.69 / 2.16); 16384 x 4096: 512 x 16 34.3 / 41.6,
# 512 x 32 34.3 / 34.0, 512 x 64 31.2 / 39.2, 256 x 32 49.9 / 51.3 (shorter source runs
# cost most from memory). So with AVX2 a kernel without a transcendental operation takes
# 64-wide strips (its stores set the pace) and the others 32 (their arithmetic does, and
# 64 cost GELU 15% from memory). 512 x 64 against 512 x 32 through JAX, interleaved
# (ms): x.T * 2 + b at 1024 x 4096 1.60 / 1.89, 1.69 / 2.14, 1.96 / 2.05; 4096 x 1024
# 2.15 / 2.43; 2048 x 2048 2.03 / 2.17; from memory (4096 to 16384 x 4096) within 3%
# either way; bf16 x.T * 2 at 2048 x 4096 2.70 / 3.04, 2.77 / 2.89. Smaller blocks where
# the full one would leave a thread fewer than two (on Zen 4, 1024 rows were 5-10% faster
# still in isolation, but 4 blocks for 2 threads balanced badly in XLA's pool: 4.4x).
TRANSPOSE_BLOCK_ROWS = 512
SMALL_TRANSPOSE_BLOCK_ROWS = 64
MAX_STAGE_BYTES = 128 * 1024


def _transposed_accesses(kernel: gir.Kernel) -> list[gir.Node]:
    """Loads and stores strided along the row with unit stride from one row to the next."""
    return [n for n in gir.toposort(kernel.root) if n.op in (Op.LOAD, Op.STORE)
            and abs(n.arg.view.strides[-1]) > 1 and abs(n.arg.view.strides[-2]) == 1]


def transpose_strip(target: gir.Target, kernel: gir.Kernel | None = None) -> int:
    """Columns per step of a blocked traversal of `kernel` on this target (without a
    kernel: the strip of one whose arithmetic includes a transcendental operation). The
    wide strip only where its stage still fits beside full-size blocks: shorter source
    runs would cost more than the wider stores gain."""
    if target.backend != "cpu" or target.vector_bytes >= 64:
        return 16
    if kernel is None or any(n.op is Op.ALU and gir.alu_op(n.arg).transcendental
                             for n in gir.toposort(kernel.root)):
        return 32
    stage_bytes = TRANSPOSE_BLOCK_ROWS * 64 * sum(
        n.dtype.itemsize for n in _transposed_accesses(kernel))
    return 64 if stage_bytes <= MAX_STAGE_BYTES else 32


def transpose_block(kernel: gir.Kernel, target: gir.Target) -> int:
    """Rows per block when an access reads or writes across rows (a transpose: strided
    along the row, unit stride from one row to the next); 1 otherwise."""
    space = kernel.parallel.space
    if len(space) < 2 or space[-1] < 16 or space[-2] < 2:
        return 1
    transposed = _transposed_accesses(kernel)
    if not transposed:
        return 1
    rows = math.prod(space[:-1])
    row_bytes = sum(n.dtype.itemsize for n in transposed) * transpose_strip(target, kernel)
    block = TRANSPOSE_BLOCK_ROWS
    while block > SMALL_TRANSPOSE_BLOCK_ROWS and (
            rows < block * 2 * target.groups or block * row_bytes > MAX_STAGE_BYTES):
        block //= 2
    return block


def apply(kernel: gir.Kernel, schedule: Schedule) -> gir.Kernel:
    par = kernel.parallel
    spec = gir.Parallel(par.space, schedule.chunk, schedule.vector, schedule.nontemporal,
                        par.rdims, schedule.block, schedule.split, schedule.strip)
    assert kernel.root.op is Op.PARALLEL
    return kernel.with_root(kernel.root.replace(arg=spec))
