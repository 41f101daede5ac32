"""ctypes view of a compiled kernel's descriptor (`<name>_info`, csrc/include/pfjax/kernel.h),
for tests that call a kernel's body directly."""
from __future__ import annotations

import ctypes

# body(inputs, outputs, begin, end, stream)
BODY = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p),
                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int32)


class KernelInfo(ctypes.Structure):
    """The descriptor's leading fields (the ones these tests read)."""
    _fields_ = [("abi_version", ctypes.c_int32), ("body", BODY),
                ("num_in", ctypes.c_int64), ("num_out", ctypes.c_int64),
                ("in_sizes", ctypes.POINTER(ctypes.c_int64)),
                ("out_sizes", ctypes.POINTER(ctypes.c_int64)),
                ("total", ctypes.c_int64), ("chunk", ctypes.c_int64)]


def kernel_info(lib: ctypes.CDLL, name: str) -> KernelInfo:
    getter = getattr(lib, name + "_info")
    getter.restype = ctypes.POINTER(KernelInfo)
    return getter().contents
