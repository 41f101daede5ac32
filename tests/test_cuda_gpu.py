"""On an NVIDIA GPU: fused functions run as pfjax CUDA kernels and give XLA GPU's results.
Skips where JAX has no GPU backend (the compile-only and emulated checks of the CUDA
codegen are in test_cuda.py and test_cuda_emulation.py)."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pfjax
from pfjax.bench.workloads import WORKLOADS

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu",
                                reason="needs JAX with an NVIDIA GPU backend")


@pytest.mark.parametrize("w", WORKLOADS, ids=lambda w: w.name)
def test_workloads_on_the_gpu(w):
    args = w.make_inputs("tiny")
    want = jax.jit(w.fn)(*args)
    fused = jax.jit(w.pfjax_version(pfjax.fuse))
    got = fused(*args)
    for g, x in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(x, np.float32),
                                   rtol=max(w.rtol, 1e-4), atol=max(w.atol, 1e-4))
    hlo = fused.lower(*args).as_text()
    assert re.search(r"custom_call_target\s*=\s*\"pfjax_", hlo) or "pfjax_" in hlo, hlo


def test_a_fused_layernorm_is_one_cuda_kernel():
    x = jax.random.normal(jax.random.key(0), (256, 1024), jnp.float32)

    def ln(x):
        m = x.mean(-1, keepdims=True)
        return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5)
    report = pfjax.explain(ln, x)
    (group,) = report.groups
    assert group.ref is not None and group.ref.cuda, group.cuda_problem
    np.testing.assert_allclose(jax.jit(pfjax.fuse(ln))(x), jax.jit(ln)(x), rtol=1e-4, atol=1e-4)
