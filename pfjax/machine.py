"""Description of the host CPU, and a memory-bandwidth probe.

Both come from the compiled module ``pfjax._native``. When that module was not
built (for example when running from a bare source tree), :func:`machine_info`
warns once and falls back to a pure-Python description; :func:`measure_bandwidth`
needs the native module and raises ``RuntimeError`` without it.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import warnings
from pathlib import Path
from typing import Any

__all__ = ["machine_info", "measure_bandwidth", "native_available", "stream_kernel"]

_FIX_HINT = (
    "Build it by installing pfjax from the repository root, e.g. "
    "`python3 -m venv .venv && .venv/bin/pip install -e .` "
    "(needs a C++17 compiler and CMake >= 3.18)."
)

_warned = False


def _load_native():
    """Import ``pfjax._native``; returns ``(module, None)`` or ``(None, error)``."""
    try:
        return importlib.import_module("pfjax._native"), None
    except ImportError as e:  # ModuleNotFoundError, or a broken .so
        return None, e


def native_available() -> bool:
    return _load_native()[0] is not None


@functools.cache
def machine_info() -> dict[str, Any]:
    """Return a dict describing the CPU.

    Keys: ``num_cores``, ``simd_bytes``, ``isa`` (list of str), ``l1d_bytes``,
    ``l2_bytes``, ``l3_bytes`` (0 when unknown), ``cache_line_bytes``,
    ``cpu_model``, ``page_bytes``. The result is cached; do not mutate it.
    """
    native, err = _load_native()
    if native is not None:
        info = dict(native.machine_info())
        info["isa"] = list(info["isa"])
        return info
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"pfjax: the native module pfjax._native was not built or could not be "
            f"loaded ({err}); using a slower, less precise Python description of "
            f"the CPU. {_FIX_HINT}",
            RuntimeWarning,
            stacklevel=2,
        )
    return _python_machine_info()


def _native_or_raise(what: str):
    native, err = _load_native()
    if native is None:
        raise RuntimeError(
            f"pfjax.machine.{what} needs the native module pfjax._native, which was not "
            f"built or could not be loaded ({err}). {_FIX_HINT}"
        )
    return native


def stream_kernel(read_bytes: int, write_bytes: int, threads: int = 0,
                  nontemporal: bool = False):
    """A kernel that reads ``read_bytes`` and writes ``write_bytes`` (float32 arrays
    allocated once, the reads spread evenly between the writes, split over ``threads``
    threads, 0: all):
    ``.run()`` makes one pass and returns its seconds, ``.bytes_moved`` is the sum. The
    fastest a fused kernel can move the same bytes in the same proportion; for timing
    that ceiling in the same rounds as the kernel."""
    return _native_or_raise("stream_kernel").StreamMix(
        int(read_bytes), int(write_bytes), int(threads), bool(nontemporal))


def measure_bandwidth(
    bytes_per_array: int, threads: int = 0, repeats: int = 10, nontemporal: bool = False
) -> float:
    """STREAM-triad bandwidth in GB/s (best of ``repeats``).

    ``a[i] = b[i] + s*c[i]`` over three float32 arrays of ``bytes_per_array`` bytes
    each, split over ``threads`` threads (0: all hardware threads); bytes moved per
    pass are counted as ``3 * bytes_per_array``.
    """
    return float(
        _native_or_raise("measure_bandwidth").measure_bandwidth(
            int(bytes_per_array), int(threads), int(repeats), bool(nontemporal)
        )
    )


# ----------------------------------------------------------------- Python fallback

# /proc/cpuinfo flag -> name used by pfjax (same spelling as the native module).
_X86_FLAGS = {
    "sse2": "sse2",
    "sse4_2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512dq": "avx512dq",
    "avx512_vnni": "avx512vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512fp16",
}


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _parse_size(s: str) -> int:
    s = s.strip()
    if not s:
        return 0
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1].upper(), 1)
    digits = s[:-1] if mult != 1 else s
    try:
        return int(digits) * mult
    except ValueError:
        return 0


def _sysconf(name: str) -> int:
    try:
        v = os.sysconf(name)
    except (ValueError, OSError, AttributeError):
        return 0
    return v if v and v > 0 else 0


def _sys_caches() -> dict[str, int]:
    out = {"l1d": 0, "l2": 0, "l3": 0, "line": 0}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")):
        level, kind = _read(idx / "level"), _read(idx / "type")
        if kind == "Instruction":
            continue
        size = _parse_size(_read(idx / "size"))
        if level == "1":
            out["l1d"] = size
            out["line"] = _parse_size(_read(idx / "coherency_line_size"))
        elif level == "2":
            out["l2"] = size
        elif level == "3":
            out["l3"] = size
    return out


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = "", set()
    text = _read("/proc/cpuinfo")
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = val.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(val.split())
    return model, flags


def _python_machine_info() -> dict[str, Any]:
    model, flags = _cpuinfo()
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        isa = [name for flag, name in _X86_FLAGS.items() if flag in flags]
        if machine in ("x86_64", "amd64") and "sse2" not in isa:
            isa.insert(0, "sse2")  # baseline of x86-64
    elif machine in ("aarch64", "arm64"):
        isa = ["neon"] + [f for f in ("sve", "asimdhp") if f in flags]
    else:
        isa = ["neon"] if ("neon" in flags or "asimd" in flags) else []
    simd = (
        64 if "avx512f" in isa
        else 32 if "avx2" in isa
        else 16 if ("sse2" in isa or "neon" in isa)
        else 8
    )
    caches = _sys_caches()
    return {
        "num_cores": os.cpu_count() or 1,
        "simd_bytes": simd,
        "isa": isa,
        "l1d_bytes": _sysconf("SC_LEVEL1_DCACHE_SIZE") or caches["l1d"],
        "l2_bytes": _sysconf("SC_LEVEL2_CACHE_SIZE") or caches["l2"],
        "l3_bytes": _sysconf("SC_LEVEL3_CACHE_SIZE") or caches["l3"],
        "cache_line_bytes": _sysconf("SC_LEVEL1_DCACHE_LINESIZE") or caches["line"] or 64,
        "cpu_model": model,
        "page_bytes": _sysconf("SC_PAGESIZE") or 4096,
    }


# CUDA runtime attribute codes (cudaDeviceAttr).
_CUDA_ATTRS = {"shared_per_block": 8, "sms": 16, "l2_bytes": 38, "cc_major": 75, "cc_minor": 76}


@functools.lru_cache(maxsize=None)
def cuda_device_info() -> dict[str, Any] | None:
    """Multiprocessors, shared memory per block, L2 size and compute capability of GPU 0,
    read through the CUDA runtime (the system's, or the one JAX's CUDA plugin installs);
    None without a runtime or a GPU."""
    import ctypes
    import glob
    import sys
    candidates = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    for base in sys.path:
        candidates += sorted(glob.glob(os.path.join(base, "nvidia", "cu*", "lib", "libcudart.so*")))
    for name in candidates:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        values = {}
        for key, code in _CUDA_ATTRS.items():
            v = ctypes.c_int(0)
            if lib.cudaDeviceGetAttribute(ctypes.byref(v), code, 0) != 0:
                return None  # a runtime, but no usable device
            values[key] = v.value
        return {"sms": values["sms"], "shared_per_block": values["shared_per_block"],
                "l2_bytes": values["l2_bytes"],
                "sm": values["cc_major"] * 10 + values["cc_minor"]}
    return None
