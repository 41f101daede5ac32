"""The generated CUDA kernels give JAX's results: each source is compiled by g++ against
pfjax/cuda_emulation.h (CUDA threads as host threads, real barriers and warp shuffles) and
run on small odd shapes. Checks the CUDA codegen without a GPU; the GPU run itself is the
job of the device tests."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pfjax.build.toolchain import pfjax_include_dir
from pfjax.compile import cuda_sources
from pfjax.frontend import trace
from pfjax.frontend.program import Lit
from tests.test_e2e import randn

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")


def run_emulated(f, args, tmp_path, program=None):
    """Outputs of f's single fusion group (of `program`, f traced, where given), computed
    by its CUDA kernel on emulated threads."""
    avals = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in args]
    if program is None:
        program, _ = trace(f, avals)
    (group, src, why), = cuda_sources(f, avals, program)
    assert src is not None, why
    name = src.split("GIR kernel ")[1].split(" ")[0]
    source = tmp_path / f"{name}.cc"  # one file per kernel: dlopen caches by path
    source.write_text(src)
    lib = tmp_path / f"{name}.so"
    cmd = ["g++", "-O1", "-std=c++20", "-pthread", "-fPIC", "-shared", "-fopenmp-simd",
           "-Wno-unused-variable", f"-I{pfjax_include_dir()}", str(source), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    by_var = {v.id: np.ascontiguousarray(np.asarray(a)) for v, a in zip(program.invars, args)}
    ins = [np.ascontiguousarray(np.asarray(a.val)) if isinstance(a, Lit) else by_var[a.id]
           for a in group.inputs]
    outs = [np.zeros(v.aval.shape, v.aval.dtype) for v in group.outputs]
    fn = getattr(ctypes.CDLL(str(lib)), f"{name}_emulate")
    ptrs = lambda arrays: (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])
    assert fn(ptrs(ins), ptrs(outs)) == 0
    return group, outs


def check(f, *args, tmp_path, tol=dict(rtol=2e-5, atol=2e-5)):
    group, got = run_emulated(f, args, tmp_path)
    want = jax.jit(f)(*args)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), **tol)


def test_elementwise_with_packs_and_movement(rng, tmp_path):
    x, b = randn(rng, 6, 40), randn(rng, 40)
    check(lambda x, b: jax.nn.gelu(x + b) * 2.0, x, b, tmp_path=tmp_path)  # 16-byte packs
    check(lambda x: jnp.concatenate([jnp.exp(x[:, :3]), jnp.flip(x, 1), jnp.pad(x, ((0, 0), (1, 0)))], 1),
          x, tmp_path=tmp_path)
    y = randn(rng, 5, 7, 3)
    check(lambda y: jnp.transpose(jnp.tanh(y), (2, 0, 1)) + 1.0, y, tmp_path=tmp_path)


def test_dynamic_slice_and_bf16(rng, tmp_path):
    x = randn(rng, 9, 13)
    check(lambda x, i: jax.lax.dynamic_slice(x * 2.0, (i, 3), (4, 5)) + 1.0, x, np.int32(7),
          tmp_path=tmp_path)
    h = jnp.asarray(randn(rng, 4, 24), jnp.bfloat16)
    check(lambda h: (h * 2 + 1).astype(jnp.bfloat16), h, tmp_path=tmp_path,
          tol=dict(rtol=1e-2, atol=1e-2))


def test_row_reductions(rng, tmp_path, monkeypatch):
    x, w, b = randn(rng, 5, 300), randn(rng, 300), randn(rng, 300)

    def layernorm(x, w, b):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) * jax.lax.rsqrt(v + 1e-5) * w + b
    check(layernorm, x, w, b, tmp_path=tmp_path, tol=dict(rtol=1e-4, atol=1e-4))
    # three packs per thread, the last one partial: unrolled loops, x kept in registers
    x3, w3, b3 = randn(rng, 3, 2600), randn(rng, 2600), randn(rng, 2600)
    check(layernorm, x3, w3, b3, tmp_path=tmp_path, tol=dict(rtol=1e-4, atol=1e-4))
    # a row past 8 packs of 256 threads: more threads (288), the row still in registers
    import pfjax.codegen.cuda_split as split
    monkeypatch.setattr(split, "WANT_BLOCKS", 2)  # two rows: not cut into chunks
    x9 = randn(rng, 2, 9000)
    _, src = cuda_sources(jax.nn.log_softmax, [jax.ShapeDtypeStruct(x9.shape, x9.dtype)])[0][:2]
    assert "__launch_bounds__(288)" in src and "it_ < 8" in src
    check(lambda x: jax.nn.log_softmax(x, -1), x9, tmp_path=tmp_path, tol=dict(rtol=1e-5, atol=1e-5))
    check(lambda x: jax.nn.softmax(x, -1), x, tmp_path=tmp_path)  # exp kept in shared memory
    check(lambda x: jax.nn.softmax(x * 2.0, -1), randn(rng, 3, 301), tmp_path=tmp_path)  # no packs
    x[1, 7] = np.nan
    check(lambda x: (jnp.max(x, -1), jnp.argmax(x, -1)), x, tmp_path=tmp_path)


def test_column_reductions(rng, tmp_path):
    x = randn(rng, 37, 70)  # columns past the last block of 32, rows over 8 slices
    check(lambda x: (x.mean(0), x.var(0)), x, tmp_path=tmp_path, tol=dict(rtol=1e-4, atol=1e-5))
    check(lambda x: jnp.sum(x, axis=(0, 2)), randn(rng, 4, 6, 33), tmp_path=tmp_path,
          tol=dict(rtol=1e-4, atol=1e-4))
    # short rows are laid across the lanes: a column reduction over the units
    check(lambda x: jax.nn.softmax(x, -1), randn(rng, 45, 7), tmp_path=tmp_path)


def test_reduction_over_all_rows_has_a_finish_kernel(rng, tmp_path):
    logits, labels = randn(rng, 7, 50), rng.integers(0, 50, 7).astype(np.int32)

    def cross_entropy(logits, labels):
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], -1))
    check(cross_entropy, logits, labels, tmp_path=tmp_path, tol=dict(rtol=1e-5, atol=1e-5))


def test_transposes_go_through_shared_memory_tiles(rng, tmp_path):
    x, b = randn(rng, 70, 45), randn(rng, 70)  # partial tiles on both sides
    check(lambda x, b: jnp.tanh(x.T + b) * 2.0, x, b, tmp_path=tmp_path)
    y = randn(rng, 3, 40, 33)
    check(lambda y: jnp.swapaxes(y, 1, 2) * jnp.swapaxes(jnp.exp(y), 1, 2), y, tmp_path=tmp_path)
    h = jnp.asarray(randn(rng, 2, 50, 36), jnp.bfloat16)
    check(lambda h: (jnp.swapaxes(h, 1, 2) + 1).astype(jnp.bfloat16), h, tmp_path=tmp_path,
          tol=dict(rtol=1e-2, atol=1e-2))


def test_tall_column_variance_in_one_pass(rng, tmp_path):
    # tall enough that the moments pass turns the centred sum into shifted float64 sums
    x = randn(rng, 3001, 37) + 100
    x[0, 3] = 1e4
    check(lambda x: (x.mean(0), x.var(0)), x, tmp_path=tmp_path, tol=dict(rtol=1e-4, atol=1e-5))


def test_reductions_with_few_units_are_cut_into_chunks(rng, tmp_path, monkeypatch):
    """A whole-array sum, long rows and tall columns: each loop a launch of its own over
    (unit, chunk) blocks, partials combined in chunk order (chunks made small here)."""
    import pfjax.codegen.cuda_split as split
    monkeypatch.setattr(split, "MIN_CHUNK", 64)
    monkeypatch.setattr(split, "WANT_BLOCKS", 16)
    x = randn(rng, 2, 20000)  # rows too long for shared memory: no tile
    _, src = cuda_sources(lambda x: jnp.sum(x), [jax.ShapeDtypeStruct(x.shape, x.dtype)])[0][:2]
    assert "kChunks = " in src and "_p1(" in src
    check(lambda x: jnp.sum(x * x), x, tmp_path=tmp_path, tol=dict(rtol=1e-5, atol=1e-3))
    check(lambda x: jax.nn.softmax(x, -1), x, tmp_path=tmp_path)
    y = randn(rng, 3000, 70)
    check(lambda y: (y.mean(0), y.var(0)), y, tmp_path=tmp_path, tol=dict(rtol=1e-4, atol=1e-5))
    check(lambda y: jax.nn.softmax(y, 0), y, tmp_path=tmp_path)
    y[5, 3] = np.nan
    y[7, 4] = np.inf
    check(lambda y: (jnp.max(y, 0), jnp.argmax(y, 0), jnp.any(y > 3.0, 0)), y, tmp_path=tmp_path)


def test_short_rows_take_a_thread_each(rng, tmp_path, monkeypatch):
    """Rows of 7-10 elements: each thread walks its own row; the last block's threads past
    the last row store nothing; a mean over all rows is combined per block first."""
    import pfjax.codegen.cuda_threadrows as threadrows
    monkeypatch.setattr(threadrows, "MIN_UNITS", 16)
    x = randn(rng, 300, 8)
    _, src = cuda_sources(lambda x: jax.nn.softmax(x, -1), [jax.ShapeDtypeStruct(x.shape, x.dtype)])[0][:2]
    assert "kParts" in src
    check(lambda x: jax.nn.softmax(x, -1), x, tmp_path=tmp_path)
    check(lambda x: jax.nn.softmax(x, -1), randn(rng, 301, 7), tmp_path=tmp_path)
    x[3, 2] = np.nan
    check(lambda x: (jnp.argmax(x, -1), jnp.max(x, -1)), x, tmp_path=tmp_path)
    logits, labels = randn(rng, 1000, 10), rng.integers(0, 10, 1000).astype(np.int32)

    def cross_entropy(logits, labels):
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], -1))
    check(cross_entropy, logits, labels, tmp_path=tmp_path, tol=dict(rtol=1e-5, atol=1e-5))
