"""pfjax: fuse the memory-bound parts of JAX programs into generated kernels."""
__version__ = "0.1.0"
