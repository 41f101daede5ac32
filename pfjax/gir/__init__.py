"""GIR: the instruction-level graph IR. Knows nothing of JAX."""
from pfjax.gir.dtypes import DType, dtype_from_name
from pfjax.gir.graph import (REDUCE_OPS, Buffer, Kernel, Move, Node, Op, Parallel, Reduction,
                             View, alu, buffer, cast, const, contiguous_strides, index,
                             is_tile_load, load, load_guard, load_offset, load_tile, parallel,
                             reads_back, reduce, rewrite, select, store, tile, toposort)
from pfjax.gir.ops import ALU_OPS, alu_op
from pfjax.gir.printer import format_kernel
from pfjax.gir.target import GLOBAL, LOCAL, REG, MemoryLevel, Target, cpu_target, cuda_target
from pfjax.gir.verify import GirError, verify
from pfjax.gir import interp
from pfjax.gir.loops import LoopNest, column_block_bytes, global_bytes, loop_nest
