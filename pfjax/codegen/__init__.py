"""Codegen: GIR kernels to source text. Knows nothing of the build."""
from pfjax.codegen.cpu import emit_kernel
