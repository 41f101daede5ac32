"""ctypes view of a compiled kernel's descriptor (`<name>_info`, csrc/include/pfjax/kernel.h),
for tests that call a kernel's body directly."""
from __future__ import annotations

import ctypes

# body(inputs, outputs, begin, end, stream)
BODY = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p),
                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int32)


# finish(inputs, outputs)
FINISH = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p))


class KernelInfo(ctypes.Structure):
    """The descriptor (pfjax::rt::KernelInfo)."""
    _fields_ = [("abi_version", ctypes.c_int32), ("body", BODY),
                ("num_in", ctypes.c_int64), ("num_out", ctypes.c_int64),
                ("in_sizes", ctypes.POINTER(ctypes.c_int64)),
                ("out_sizes", ctypes.POINTER(ctypes.c_int64)),
                ("total", ctypes.c_int64), ("chunk", ctypes.c_int64),
                ("can_stream", ctypes.c_int32), ("finish", ctypes.c_void_p),
                ("scratch_bytes", ctypes.c_int64), ("num_phases", ctypes.c_int32),
                ("later_bodies", ctypes.POINTER(ctypes.c_void_p)),
                ("later_finishes", ctypes.POINTER(ctypes.c_void_p))]


def phases(info: KernelInfo) -> list[tuple[BODY, FINISH | None]]:
    """(body, finish or None) of each phase, in order."""
    def finish(address):
        return FINISH(address) if address else None
    out = [(info.body, finish(info.finish))]
    for p in range(1, max(1, info.num_phases)):
        out.append((BODY(info.later_bodies[p - 1]), finish(info.later_finishes[p - 1])))
    return out


def kernel_info(lib: ctypes.CDLL, name: str) -> KernelInfo:
    getter = getattr(lib, name + "_info")
    getter.restype = ctypes.POINTER(KernelInfo)
    return getter().contents
