"""Column variance in one pass (shifted float64 sums) where two passes would re-read memory."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import pfjax
from pfjax import compile as pfcompile, gir
from tests.test_reductions import one_kernel


def column_stats(x):
    return jnp.mean(x, 0), jnp.var(x, 0)


def _loops(f, x):
    plan = pfcompile.plan(f, [jax.core.ShapedArray(x.shape, x.dtype)])
    kernels = [gp.kernel for gp in plan.groups if gp.kernel is not None]
    assert len(kernels) == 1
    return gir.loop_nest(kernels[0]).num_loops


def _f64_var(x, axis):
    return np.var(np.asarray(x, np.float64), axis=axis)


def test_tall_columns_take_one_pass_and_match_float64(rng):
    # 4099 rows x 37 columns: blocks of columns over all rows do not stay local.
    x = (rng.standard_normal((4099, 37)) * 3 + 1000).astype(np.float32)
    assert _loops(column_stats, x) == 1
    mean, var = one_kernel(column_stats, x, tol=dict(rtol=2e-4, atol=1e-4))(x)
    np.testing.assert_allclose(np.asarray(var), _f64_var(x, 0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(mean), np.asarray(x, np.float64).mean(0), rtol=1e-6)


def test_outlier_first_row_keeps_accuracy(rng):
    # The shift is the first row: an outlier there is the shifted sums' worst case.
    x = rng.standard_normal((8192, 32)).astype(np.float32)
    x[0] = 1e4
    x[0, 1] = -3e5
    _, var = pfjax.fuse(column_stats)(x)
    np.testing.assert_allclose(np.asarray(var), _f64_var(x, 0), rtol=1e-5)


def test_constant_columns_give_zero_not_negative(rng):
    x = np.broadcast_to(rng.standard_normal((1, 48)).astype(np.float32) * 1e3, (8192, 48)).copy()
    x[:, 5] = 0.1  # not representable: every x - k is still exactly 0
    _, var = pfjax.fuse(column_stats)(x)
    assert (np.asarray(var) == 0).all()


def test_nan_and_inf_match_xla(rng):
    x = rng.standard_normal((8192, 40)).astype(np.float32)
    x[17, 3] = np.nan
    x[0, 4] = np.inf
    x[900, 5] = -np.inf
    x[0, 6] = np.inf
    x[1, 6] = -np.inf
    want = jax.jit(column_stats)(x)
    got = pfjax.fuse(column_stats)(x)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        ok = ~np.isnan(w)
        np.testing.assert_allclose(np.asarray(g)[ok], np.asarray(w)[ok], rtol=1e-4)


def test_several_reduced_dims_nhwc(rng):
    # batchnorm statistics over (N, H, W) of NHWC
    x = rng.standard_normal((16, 24, 24, 19)).astype(np.float32) + 5
    f = lambda x: (jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2)))
    assert _loops(f, x) == 1
    _, var = one_kernel(f, x, tol=dict(rtol=1e-4, atol=1e-5))(x)
    np.testing.assert_allclose(np.asarray(var), _f64_var(x, (0, 1, 2)), rtol=1e-5)


def test_short_columns_keep_two_passes(rng):
    # 64 rows: the block stays local and the exact two-pass form is kept.
    x = rng.standard_normal((64, 256)).astype(np.float32)
    assert _loops(column_stats, x) == 2
    one_kernel(column_stats, x)


def test_bf16_input_accumulates_wide(rng):
    x = jnp.asarray(rng.standard_normal((8192, 33)) + 2, jnp.bfloat16)
    f = lambda x: jnp.var(x.astype(jnp.float32), 0)
    got = pfjax.fuse(f)(x)
    np.testing.assert_allclose(np.asarray(got), _f64_var(np.asarray(x, np.float32), 0), rtol=1e-5)


@pytest.mark.parametrize("order", [1, 2])
def test_grads(rng, order):
    x = rng.standard_normal((4096, 16)).astype(np.float32)
    f = pfjax.fuse(lambda x: jnp.var(x, 0) * jnp.arange(1.0, 17.0))
    check_grads(f, (x,), order=order, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_float64_keeps_the_exact_two_pass_form(rng):
    # float64 sums would gain nothing over float64 data: the pass leaves it alone
    from tests.test_dtypes import _x64_context
    with _x64_context():
        x = rng.standard_normal((1 << 15, 4))
        x[0] = 1e5
        assert _loops(column_stats, x) == 2
        _, var = pfjax.fuse(column_stats)(x)
        np.testing.assert_allclose(np.asarray(var), np.var(x, axis=0), rtol=1e-12)
