"""Property-based: random programs mixing data movement (transposes, slices, reversal,
padding, concatenation), elementwise ops and an optional reduction give what `jax.jit`
gives."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pfjax

UNARY = {
    "tanh": jnp.tanh,
    "affine": lambda a: a * 1.5 - 0.25,
    "exp": lambda a: jnp.exp(jnp.clip(a, -10.0, 10.0)),
}


def _transpose(x, k):
    perm = list(range(x.ndim))
    perm = perm[k % x.ndim:] + perm[:k % x.ndim] if x.ndim > 1 else perm
    return jnp.transpose(x, perm)


def _slice(x, k):
    d = k % x.ndim
    step = 1 + k % 2
    return jax.lax.slice_in_dim(x, k % 2, x.shape[d], step, axis=d)


def _pad(x, k):
    config = [(0, 0, 0)] * x.ndim
    config[k % x.ndim] = (1 + k % 2, -(k % 2) if x.shape[k % x.ndim] > 1 else 0, k % 3 == 0)
    return jax.lax.pad(x, 0.5, config)


def _concat(x, k):
    d = k % x.ndim
    return jnp.concatenate([x, jnp.sin(x)], axis=d)


MOVES = {
    "transpose": _transpose,
    "slice": _slice,
    "rev": lambda x, k: jnp.flip(x, k % x.ndim),
    "pad": _pad,
    "concat": _concat,
}


@st.composite
def programs(draw):
    shape = draw(st.sampled_from([(4, 9), (1, 33), (17, 3), (3, 5, 7), (2, 3, 4, 5), (40, 36)]))
    steps = draw(st.lists(st.tuples(st.sampled_from(sorted(MOVES) + sorted(UNARY)),
                                    st.integers(0, 5)), min_size=1, max_size=5))
    reduce = draw(st.sampled_from([None, "sum_last", "max_first"]))
    return shape, steps, reduce


def build(steps, reduce):
    def f(x):
        y = x * 2.0
        for op, k in steps:
            y = MOVES[op](y, k) if op in MOVES else UNARY[op](y)
        y = y + 1.0
        if reduce == "sum_last":
            return jnp.sum(y, axis=-1)
        if reduce == "max_first":
            return jnp.max(y, axis=0)
        return y
    return f


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(prog=programs(), seed=st.integers(0, 2**31 - 1), nan=st.booleans())
def test_random_movement_programs(prog, seed, nan):
    shape, steps, reduce = prog
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if nan and x.size > 2:
        x.reshape(-1)[x.size // 2] = np.nan
    f = build(steps, reduce)
    msg = f"shape={shape} steps={steps} reduce={reduce}"
    want = np.asarray(jax.jit(f)(x))
    got = np.asarray(jax.jit(pfjax.fuse(f))(x))
    assert got.shape == want.shape and got.dtype == want.dtype, msg
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=msg)
    np.testing.assert_allclose(got, want, rtol=5e-5, atol=5e-5, equal_nan=True, err_msg=msg)
