"""ctypes view of a compiled kernel's descriptor (`<name>_info`, csrc/include/pfjax/kernel.h),
for tests that call a kernel's body directly, and a build of a kernel's source without
AVX-512."""
from __future__ import annotations

import ctypes
import platform
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

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


needs_x86_gxx = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or shutil.which("g++") is None,
    reason="needs g++ on x86-64")


def aligned(n: int) -> np.ndarray:
    """n float32 zeros starting on a 64-byte boundary."""
    buf = np.zeros(n + 16, np.float32)
    off = (-buf.ctypes.data % 64) // 4
    return buf[off:off + n]


def build_for(source: Path, lib: Path, march: str) -> None:
    """The kernel source built with pfjax's own compiler command for `march` instead of
    the native machine (x86-64-v3: AVX2; x86-64-v4: AVX-512 F, BW, VL, DQ)."""
    import jax
    from pfjax.build import ToolchainMissing, find_toolchain
    try:
        toolchain = find_toolchain(jax.ffi.include_dir())
    except ToolchainMissing as err:
        pytest.skip(str(err))
    cmd = [c if c != "-march=native" else f"-march={march}"
           for c in toolchain.command(str(source), str(lib))]
    subprocess.run(cmd, check=True, capture_output=True)


def build_without_avx512(source: Path, lib: Path) -> KernelInfo:
    """The kernel source built for AVX2 (vf16 as two AVX2 registers); its descriptor (the
    library stays loaded)."""
    build_for(source, lib, "x86-64-v3")
    name = re.search(r"PFJAX_EXPORT_(?:PHASED_)?KERNEL\((\w+),", source.read_text()).group(1)
    return kernel_info(ctypes.CDLL(str(lib)), name)
