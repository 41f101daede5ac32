"""Property-based: random programs mixing elementwise ops and reductions (over random
axes, with the result broadcast back onto the input) give what `jax.jit` gives."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pfjax

PRE = {
    "tanh": jnp.tanh,
    "square": lambda a: a * a,
    "affine": lambda a: a * 1.5 - 0.25,
    "exp": lambda a: jnp.exp(jnp.clip(a, -10.0, 10.0)),
    "relu": lambda a: jnp.maximum(a, 0.0),
}
REDUCE = {
    "sum": jnp.sum, "mean": jnp.mean, "max": jnp.max, "min": jnp.min,
    "logsumexp": jax.nn.logsumexp,
    "var": jnp.var,
}
COMBINE = {
    "sub": lambda x, r: x - r,
    "div": lambda x, r: x / (jnp.abs(r) + 1.0),
    "mul": lambda x, r: x * r,
}


@st.composite
def programs(draw):
    shape = draw(st.sampled_from([(4, 9), (1, 33), (17, 1), (3, 5, 7), (2, 3, 4, 5)]))
    rank = len(shape)
    axes_options = [(rank - 1,), (0,), tuple(range(rank))]
    if rank >= 3:
        axes_options += [(1,), (0, rank - 1), (1, 2)]
    axes = draw(st.sampled_from(axes_options))
    pre = draw(st.lists(st.sampled_from(sorted(PRE)), min_size=0, max_size=3))
    reds = draw(st.lists(st.sampled_from(sorted(REDUCE)), min_size=1, max_size=3))
    combine = draw(st.sampled_from(sorted(COMBINE)))
    post = draw(st.lists(st.sampled_from(sorted(PRE)), min_size=0, max_size=2))
    return shape, axes, pre, reds, combine, post


def build(axes, pre, reds, combine, post):
    def f(x):
        for op in pre:
            x = PRE[op](x)
        outs = []
        y = x
        for op in reds:
            r = REDUCE[op](x, axis=axes, keepdims=True)
            outs.append(jnp.squeeze(r, axes) * 2.0)
            y = COMBINE[combine](y, r)
        for op in post:
            y = PRE[op](y)
        return (y, *outs)
    return f


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(prog=programs(), seed=st.integers(0, 2**31 - 1), nan=st.booleans())
def test_random_reduction_programs(prog, seed, nan):
    shape, axes, pre, reds, combine, post = prog
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if nan and x.size > 2:
        x.reshape(-1)[x.size // 2] = np.nan
    f = build(axes, pre, reds, combine, post)
    msg = f"shape={shape} axes={axes} pre={pre} reductions={reds} combine={combine} post={post}"
    want = jax.jit(f)(x)
    got = pfjax.fuse(f)(x)
    for g, w in zip(got, want):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, msg
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=msg)
        finite = np.abs(w[np.isfinite(w)])
        scale = float(finite.max()) if finite.size else 1.0
        np.testing.assert_allclose(g, w, rtol=5e-5, atol=5e-5 * max(1.0, scale),
                                   equal_nan=True, err_msg=msg)
