"""Large outputs get a non-temporal store path; both paths must give XLA's answer."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pfjax


@pytest.mark.parametrize("mode", ["auto", "1", "0"])
def test_large_outputs_match_xla(monkeypatch, rng, mode):
    monkeypatch.setenv("PFJAX_NONTEMPORAL", mode)
    x = rng.standard_normal((1031, 1029)).astype(np.float32)  # odd rows: unaligned tails
    b = rng.standard_normal((1029,)).astype(np.float32)

    def f(x, b):
        y = jnp.tanh(x + b) * 2.0
        return y, (y > 0).astype(jnp.bfloat16) * x.astype(jnp.bfloat16)

    fused = jax.jit(pfjax.fuse(f))
    want = jax.jit(f)(x, b)
    for _ in range(3):  # later calls may reuse resident output pages: the streaming path
        got = fused(x, b)
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32),
                                       rtol=2e-6, atol=1e-6)
    report = pfjax.explain(f, x, b)
    (group,) = report.groups
    assert group.schedule.nontemporal == (mode != "0")
    source = Path(group.source_path).read_text()
    assert ("stream_copy" in source) == (mode != "0")


@pytest.mark.parametrize("shape", [(64, 4096), (96, 1000), (5, 37, 123)])
@pytest.mark.parametrize("f", [
    lambda x, w: x * 2.0 + w,                                          # elementwise
    lambda x, w: (x - x.mean(-1, keepdims=True)) * w,                  # a row reduction's output loop
    lambda x, w: (jax.nn.softmax(x, -1) * w, jnp.exp(x).sum(-1) + w[0]),  # vf16 loops with exp
    lambda x, w: (x - 0.01 * w / (jnp.sqrt(jnp.abs(x)) + 1e-8), jnp.sqrt(x) * w),  # Adam-like
])
def test_vector_stores_stream_straight_from_registers(monkeypatch, rng, shape, f):
    """Whole vectors of a streamed store leave registers as non-temporal stores where the
    block's destination is 64-byte aligned, the rest through the staging tile: aligned
    rows, rows with a remainder (1000 = 62 x 16 + 8) and unaligned rows (123) all match."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", "1")
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::997] = np.nan
    w = rng.standard_normal(shape[-1:]).astype(np.float32)
    got = jax.jit(pfjax.fuse(f))(x, w)
    want = jax.jit(f)(x, w)
    for g, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=2e-6, atol=1e-6)
    sources = [Path(g.source_path).read_text() for g in pfjax.explain(f, x, w).groups]
    assert any(".stream(&" in s and "if (direct0)" in s for s in sources)
