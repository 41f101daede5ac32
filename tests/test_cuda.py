"""CUDA backend, compile-only (no GPU needed): the same GIR, after the same passes, for the
CUDA target, generates sources that nvcc compiles for sm_80 and sm_90, with ptxas's
register report showing no spills on the benchmark shapes. Skips cleanly without nvcc."""
from __future__ import annotations

import shutil
import subprocess

import jax
import jax.numpy as jnp
import pytest

from pfjax import gir
from pfjax.bench.workloads import WORKLOADS
from pfjax.build.cuda import find_nvcc, ptxas_report
from pfjax.build.toolchain import ToolchainMissing
from pfjax.compile import cuda_sources
from pfjax.jaxext import ffi_include_dir



@pytest.fixture(scope="module")
def nvcc():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed: CUDA compile checks skipped")
    try:
        return find_nvcc(ffi_include_dir())
    except ToolchainMissing as err:
        pytest.skip(str(err))


def _avals(w, size):
    inputs = jax.eval_shape(lambda: w.make_inputs(size))
    return [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]


def _sources(size):
    out, missing = [], {}
    for w in WORKLOADS:
        for group, src, why in cuda_sources(w.fn, _avals(w, size)):
            if src is None:
                missing[w.name] = why
            else:
                out.append((w.name, src))
    return out, missing


def test_cuda_target_describes_the_device_levels():
    t = gir.cuda_target()
    assert t.backend == "cuda" and t.isa == ("sm_90",)
    assert [lv.name for lv in t.levels] == [gir.GLOBAL, gir.LOCAL, gir.REG]
    assert t.level(gir.LOCAL).capacity_bytes == 48 * 1024 and t.groups == 132 * 8
    assert gir.cuda_target({"sm": 80, "sms": 108}).name == "cuda-sm80"


def test_every_workload_generates_or_says_why():
    sources, missing = _sources("tiny")
    assert {name for name, _ in sources} | set(missing) == {w.name for w in WORKLOADS}
    assert not missing, missing
    assert all("__global__" in src and "PFJAX_CUDA_EXPORT" in src for _, src in sources)


def test_benchmark_kernels_compile_without_spills(nvcc, tmp_path):
    """One translation unit with every generated kernel, device code for sm_90, ptxas -v."""
    sources, _ = _sources("cache")
    unit = tmp_path / "all.cu"
    seen, parts = set(), []
    for _, src in sources:
        body = src.split('#include "pfjax/cuda_kernel.cuh"\n', 1)[1]
        if body not in seen:
            seen.add(body)
            parts.append(body)
    unit.write_text('#include "pfjax/cuda_kernel.cuh"\n' + "\n".join(parts))
    proc = subprocess.run(nvcc.cubin_command(str(unit), str(tmp_path / "all.cubin")),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = ptxas_report(proc.stdout + proc.stderr)
    kernels = {k: r for k, r in report.items() if "_kernel" in k}
    assert len(kernels) == len(parts), report
    spills = {k: r for k, r in kernels.items() if r.spill_stores or r.spill_loads}
    assert not spills, spills


def test_full_build_for_sm80_and_sm90(nvcc, tmp_path):
    """The library the CUDA backend would load: host code, FFI handler, both archs."""
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32)
    (_, src, _), = cuda_sources(lambda x: jax.nn.softmax(jnp.concatenate([x, x * 2.0], 1)), [x])
    (tmp_path / "k.cu").write_text(src)
    proc = subprocess.run(nvcc.command(str(tmp_path / "k.cu"), str(tmp_path / "k.so")),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    symbols = subprocess.run(["nm", "-D", str(tmp_path / "k.so")], capture_output=True, text=True).stdout
    assert "_ffi" in symbols
