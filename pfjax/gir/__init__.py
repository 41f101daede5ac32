"""GIR: the instruction-level graph IR. Knows nothing of JAX."""
from pfjax.gir.dtypes import DType, dtype_from_name
from pfjax.gir.graph import (REDUCE_OPS, Buffer, Reduction, index, load_tile, reduce, tile, Kernel, Move, Node, Op, Parallel, View, alu, buffer, cast,
                             const, contiguous_strides, load, parallel, rewrite, select, store,
                             toposort)
from pfjax.gir.ops import ALU_OPS, alu_op
from pfjax.gir.printer import format_kernel
from pfjax.gir.target import GLOBAL, LOCAL, REG, MemoryLevel, Target, cpu_target
from pfjax.gir.verify import GirError, verify
from pfjax.gir import interp
from pfjax.gir.loops import LoopNest, loop_nest
