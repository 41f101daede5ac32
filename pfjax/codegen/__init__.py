"""Codegen: GIR kernels to source text. Knows nothing of the build."""
from pfjax import gir
from pfjax.codegen.cpu import emit_kernel as _emit_elementwise
from pfjax.codegen.cpu_reduce import emit_reduce_kernel


def emit_kernel(kernel: gir.Kernel) -> str:
    """C++ source for a scheduled kernel: the reduction emitter when it reduces."""
    if kernel.parallel.rdims:
        return emit_reduce_kernel(kernel)
    return _emit_elementwise(kernel)
