"""jax.export of a fused function gives a self-contained artifact (the groups are exported
as their XLA equations, since kernels live only in this process's cache)."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import pfjax


def test_export_roundtrip(rng):
    x = rng.standard_normal((7, 129)).astype(np.float32)
    b = rng.standard_normal((129,)).astype(np.float32)

    def f(x, b):
        return jax.nn.gelu(x + b) * 2.0, jax.nn.silu(x)

    fused = jax.jit(pfjax.fuse(f))
    assert "custom_call @pfjax_" in fused.lower(x, b).as_text()  # fused when run here
    exported = jax.export.export(fused)(x, b)
    assert "custom_call @pfjax_" not in exported.mlir_module()
    want = jax.jit(f)(x, b)
    for got, w in zip(exported.call(x, b), want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=2e-6, atol=1e-6)
    pytest.importorskip("flatbuffers")  # needed by JAX's serialization
    restored = jax.export.deserialize(exported.serialize())
    for got, w in zip(restored.call(x, b), want):
        np.testing.assert_allclose(np.asarray(got), np.asarray(w), rtol=2e-6, atol=1e-6)
