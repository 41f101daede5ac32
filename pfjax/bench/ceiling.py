"""Bandwidth ceilings, machine description and allocator settings for the benchmark.

Uses ``pfjax.machine`` when it imports and works; otherwise measures a jitted jax
triad and says so in ``source``.
"""
from __future__ import annotations

import os
import time

MiB = 1 << 20
GiB = 1 << 30
CACHE_BYTES_PER_ARRAY = (32 * MiB // 3) // 64 * 64   # ~32 MiB moved by the triad
DRAM_BYTES_PER_ARRAY = 1 * GiB

ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
}
_ALLOCATOR_VARS = tuple(ALLOCATOR_ENV) + ("GLIBC_TUNABLES",)


def allocator_settings() -> str:
    """The glibc malloc settings active in this process, as one line."""
    s = [f"{k}={os.environ[k]}" for k in _ALLOCATOR_VARS if k in os.environ]
    return " ".join(s) if s else "glibc defaults"


def _machine_module():
    try:
        from pfjax import machine
        return machine, None
    except Exception as e:  # not written yet, or broken
        return None, f"{type(e).__name__}: {e}"


def _fallback_machine_info() -> dict:
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and model == "unknown":
                    model = v.strip()
                elif k == "flags" and not flags:
                    flags = set(v.split())
    except OSError:
        pass
    simd = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16
    isa = "avx512" if simd == 64 else "avx2" if simd == 32 else "sse"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"num_cores": cores, "simd_bytes": simd, "cpu_model": model, "isa": isa,
            "source": "bench fallback (/proc/cpuinfo)"}


def machine_info() -> dict:
    m, err = _machine_module()
    if m is not None:
        try:
            info = dict(m.machine_info())
            info.setdefault("source", "pfjax.machine")
            return info
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
    info = _fallback_machine_info()
    info["fallback_reason"] = err
    return info


def stream_kernel(read_bytes: int, write_bytes: int, nontemporal: bool = False):
    """pfjax.machine.stream_kernel on all threads (RuntimeError without the native module)."""
    m, err = _machine_module()
    if m is None:
        raise RuntimeError(err)
    return m.stream_kernel(read_bytes, write_bytes, threads=0, nontemporal=nontemporal)


def jax_triad_bandwidth(bytes_per_array: int, repeats: int = 10) -> float:
    """GB/s of a jitted ``b + s*c`` (3 * bytes_per_array moved), best of repeats."""
    import jax
    import jax.numpy as jnp
    n = bytes_per_array // 4
    b = jnp.ones((n,), jnp.float32)
    c = jnp.full((n,), 2.0, jnp.float32)
    triad = jax.jit(lambda b, c: b + 3.0 * c)
    jax.block_until_ready(triad(b, c))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(triad(b, c))
        best = min(best, time.perf_counter() - t0)
        del out
    return 3 * n * 4 / best / 1e9


def jax_copy_bandwidth(bytes_per_array: int, repeats: int = 10) -> float:
    """GB/s (read + written) of a jitted device-to-device copy, best of repeats: the
    ceiling on a GPU, where kernels are measured against what a copy reaches."""
    import jax
    import jax.numpy as jnp
    n = bytes_per_array // 4
    x = jnp.ones((n,), jnp.float32)
    copy = jax.jit(lambda x: x * 1.0 + 0.0)  # one read, one write (XLA keeps it a kernel)
    jax.block_until_ready(copy(x))
    batch = 20  # enqueued back to back: Python's dispatch must not be what is timed
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = None
        for _ in range(batch):
            out = copy(x)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / batch)
        del out
    return 2 * n * 4 / best / 1e9


def measure_ceilings(need_dram: bool, quick: bool, log=print) -> dict:
    """{'cache': GB/s, 'dram': GB/s or None, 'source': str, ...}."""
    m, err = _machine_module()
    reps = 3 if quick else 10
    out = {"cache": None, "dram": None, "source": None}
    import jax
    if jax.default_backend() == "gpu":
        log("ceiling: device-to-device copy on the GPU")
        out["cache"] = jax_copy_bandwidth(CACHE_BYTES_PER_ARRAY, reps * 3)
        if need_dram:
            out["dram"] = out["dram_plain"] = jax_copy_bandwidth(DRAM_BYTES_PER_ARRAY, reps)
        out["source"] = f"GPU device-to-device copy ({jax.devices()[0].device_kind})"
        return out

    def pfjax_bw(bpa, nontemporal):
        return float(m.measure_bandwidth(bpa, threads=0, repeats=reps, nontemporal=nontemporal))

    if m is not None:
        try:
            log("ceiling: cache-resident triad (pfjax.machine)")
            out["cache"] = pfjax_bw(CACHE_BYTES_PER_ARRAY, False)
            if need_dram:
                log("ceiling: DRAM triad, plain and non-temporal (pfjax.machine)")
                plain = pfjax_bw(DRAM_BYTES_PER_ARRAY, False)
                nt = pfjax_bw(DRAM_BYTES_PER_ARRAY, True)
                out.update(dram=max(plain, nt), dram_plain=plain, dram_nontemporal=nt)
            out["source"] = "pfjax.machine.measure_bandwidth (STREAM triad)"
            return out
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
    log(f"ceiling: pfjax.machine unavailable ({err}); measuring a jitted jax triad")
    short = err.split(" (")[0].split(". ")[0][:160]
    out["cache"] = jax_triad_bandwidth(CACHE_BYTES_PER_ARRAY, reps * 3)
    if need_dram:
        out["dram"] = out["dram_plain"] = jax_triad_bandwidth(DRAM_BYTES_PER_ARRAY, reps)
    out["source"] = f"FALLBACK jitted jax triad b+s*c, plain stores only (pfjax.machine: {short})"
    return out
