"""JAX integration: the fused-group primitive and FFI registration."""
from pfjax.jaxext.primitive import (KernelRef, bind_fused, ffi_include_dir, fused_p, gpu_info,
                                    is_registered, make_closed_jaxpr, register_cuda_library,
                                    register_library, set_dispatch_library, set_refuse)
