# %% [markdown]
# # Where a pfjax call's time goes: before the kernel, in it, after it
# Runs as a script (`python notebooks/call_timeline.py`, CPU only) or as a notebook with
# `# %%` cells. For a fused function with one kernel it builds a copy of the kernel whose
# body records when each task starts and ends on which thread, registers that copy under
# the kernel's name (the dispatcher looks the name up at every call, so the jitted function
# runs it from then on), and times calls through `jax.jit`:
#
# - pre: from the Python call to the first task's start (jit dispatch, XLA, the
#   dispatcher, waking the pool);
# - work: first task start to last task end; helper late: how long after the first task
#   the first task on another thread began;
# - post: last task end to the Python call's return.
#
# On the 2-core Zen 3 VM (twenty-fifth session) pre and post grew with the bytes the kernel
# moves (x * 2 + 1 over 64 Ki / 1 Mi / 4 Mi floats: 17 / 40 / 70 us each; transpose + bias +
# GELU 1024 x 4096: 115-160 us each): the dispatch code runs on caches the kernel has
# just flushed. Run it under the benchmark's allocator settings (see README).

# %%
import ctypes
import os
import subprocess
import tempfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

import pfjax
from pfjax import jaxext
from pfjax.build.toolchain import find_toolchain
from pfjax.jaxext import primitive

_RECORDER = r"""
#include <atomic>
#include <ctime>
#include <sys/syscall.h>
#include <unistd.h>
extern "C" {
__attribute__((visibility("default"))) int64_t timeline_start[1024], timeline_end[1024];
__attribute__((visibility("default"))) int64_t timeline_thread[1024];
__attribute__((visibility("default"))) std::atomic<int> timeline_count{0};
}
namespace {
int64_t timeline_now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // the clock of Python's time.perf_counter_ns
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
void NAME_body(void* const* in, void* const* out, int64_t begin, int64_t end, int32_t stream) {
  const int64_t t0 = timeline_now();
  timed_body(in, out, begin, end, stream);
  const int64_t t1 = timeline_now();
  const int k = timeline_count.fetch_add(1);
  if (k < 1024) {
    timeline_start[k] = t0;
    timeline_end[k] = t1;
    timeline_thread[k] = syscall(SYS_gettid);
  }
}
}  // namespace
"""


def instrumented(fn, *args):
    """(jitted fn, library): fn's one kernel replaced by a copy that records its tasks."""
    report = pfjax.explain(fn, *args)
    kernels = [gp for gp in report.groups if gp.ref is not None and gp.ref.target]
    if len(kernels) != 1 or kernels[0].source_path is None:
        raise ValueError(f"needs exactly one compiled CPU kernel, got {len(kernels)}")
    name, source = kernels[0].ref.target, open(kernels[0].source_path).read()
    if f"{name}_later_bodies" in source or "PFJAX_EXPORT_PHASED_KERNEL" in source:
        raise ValueError("phased kernels are not supported: only the first phase would be timed")
    body = f"void {name}_body("
    if source.count(body) != 1:
        raise ValueError(f"{name}: no single body function in {kernels[0].source_path}")
    source = source.replace(body, "void timed_body(", 1)
    at = source.index(f"constexpr int64_t {name}_in_sizes")
    source = (source[:at] + "}  // namespace\n" + _RECORDER.replace("NAME", name)
              + "namespace {\n" + source[at:])
    work = tempfile.mkdtemp(prefix="pfjax-timeline-")
    src, lib_path = os.path.join(work, "kernel.cc"), os.path.join(work, "kernel.so")
    with open(src, "w") as f:
        f.write(source)
    toolchain = find_toolchain(jaxext.ffi_include_dir())
    subprocess.run(toolchain.command(src, lib_path), check=True)
    jitted = jax.jit(pfjax.fuse(fn))
    jax.block_until_ready(jitted(*args))  # loads and registers the real kernel first
    lib = ctypes.CDLL(lib_path)
    info = getattr(lib, name + "_info")
    info.restype = ctypes.c_void_p
    if primitive._dispatch.pfjax_register_kernel(name.encode(), info()) != 0:
        raise RuntimeError("the instrumented copy has a different ABI version")
    return jitted, lib


def timeline(fn, *args, calls: int = 200, warmup: int = 20) -> dict:
    """Median microseconds of pre, work, post, helper_late and total over `calls`."""
    jitted, lib = instrumented(fn, *args)
    starts = (ctypes.c_int64 * 1024).in_dll(lib, "timeline_start")
    ends = (ctypes.c_int64 * 1024).in_dll(lib, "timeline_end")
    threads = (ctypes.c_int64 * 1024).in_dll(lib, "timeline_thread")
    count = ctypes.c_int.in_dll(lib, "timeline_count")
    me = threading.get_native_id()
    rows = []
    for i in range(warmup + calls):
        count.value = 0
        t0 = time.perf_counter_ns()
        jax.block_until_ready(jitted(*args))
        t1 = time.perf_counter_ns()
        tasks = [(starts[k], ends[k], threads[k]) for k in range(min(count.value, 1024))]
        if i < warmup or not tasks:
            continue
        first, last = min(t[0] for t in tasks), max(t[1] for t in tasks)
        others = [t[0] for t in tasks if t[2] != me]
        rows.append({"total": t1 - t0, "pre": first - t0, "work": last - first,
                     "post": t1 - last, "helper_late": min(others) - first if others else 0,
                     "tasks": len(tasks)})
    return {k: float(np.median([r[k] for r in rows])) / (1 if k == "tasks" else 1e3)
            for k in rows[0]}


# %%
if __name__ == "__main__":
    def transpose_bias_gelu(x, b):
        return jax.nn.gelu(x.T + b)

    key = jax.random.key(0)
    x = jax.random.normal(key, (1024, 4096), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (1024,), jnp.float32)
    cases = [("transpose + bias + GELU 1024x4096", transpose_bias_gelu, (x, b))]
    for n in (1 << 16, 1 << 20, 1 << 22):
        v = jax.random.normal(key, (n,), jnp.float32)
        cases.append((f"x * 2 + 1 over {n}", lambda v: v * 2.0 + 1.0, (v,)))
    for label, fn, args in cases:
        t = timeline(fn, *args)
        print(f"{label:36s} " + "  ".join(f"{k} {v:7.1f}" for k, v in t.items())
              + "  (us; tasks: count)", flush=True)
