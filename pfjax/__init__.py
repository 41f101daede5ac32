"""pfjax: fuse the memory-bound parts of JAX programs into generated kernels."""
__version__ = "0.1.0"

from pfjax.api import explain, fuse  # noqa: E402
from pfjax.errors import CompileError, PfjaxError, PfjaxWarning  # noqa: E402

__all__ = ["fuse", "explain", "PfjaxError", "CompileError", "PfjaxWarning", "__version__"]
