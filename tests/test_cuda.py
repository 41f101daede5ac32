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
from pfjax.bench.cuda_report import compile_report, workload_sources
from pfjax.bench.workloads import WORKLOADS
from pfjax.build.cuda import find_nvcc
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


def _sources(size):
    return workload_sources(WORKLOADS, size)


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
    assert len(sources) >= len(WORKLOADS)


def test_benchmark_kernels_compile_without_spills(nvcc):
    """Every generated kernel in one translation unit, device code for sm_90, ptxas -v."""
    sources, _ = _sources("cache")
    rows, output = compile_report(sources)
    assert rows and all(r is not None for _, _, r in rows), output[-4000:]
    spills = {k: r for _, k, r in rows if r.spill_stores or r.spill_loads}
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
