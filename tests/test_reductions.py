"""Reductions fused with what produces and consumes them: one kernel, XLA's answer."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pfjax
from pfjax import gir
from tests.test_e2e import assert_tree_close, num_kernel_calls, randn

TOL = dict(rtol=2e-5, atol=2e-5)


LEFT_OVER = re.compile(r"= \S+ (reduce|fusion)\(")  # what XLA would run for the group


def one_kernel(f, *args, tol=TOL, left_over=LEFT_OVER):
    """f fuses into exactly one pfjax kernel, no XLA reduction or fusion (or whatever
    `left_over` matches) is left in the compiled HLO, and the result matches jax.jit(f)."""
    want = jax.jit(f)(*args)
    fused = pfjax.fuse(f)
    assert_tree_close(fused(*args), want, **tol)
    assert_tree_close(jax.jit(fused)(*args), want, **tol)
    assert num_kernel_calls(fused, *args) == 1, pfjax.explain(f, *args)
    hlo = jax.jit(fused).lower(*args).compile().as_text()
    assert not left_over.search(hlo), hlo
    return fused


# ---- every reduction over every kind of axis set --------------------------------------

AXES = {"last": (2,), "leading": (0,), "middle": (1,), "several": (0, 2), "all": (0, 1, 2)}
REDUCERS = {
    "sum": lambda x, a: jnp.sum(x, a),
    "max": lambda x, a: jnp.max(x, a),
    "min": lambda x, a: jnp.min(x, a),
    "prod": lambda x, a: jnp.prod(x, a),
    "all": lambda x, a: jnp.all(x > -0.5, a),
    "any": lambda x, a: jnp.any(x > 1.5, a),
}


@pytest.mark.parametrize("axes", AXES)
@pytest.mark.parametrize("op", REDUCERS)
def test_reduction_fused_before_and_after(op, axes, rng):
    x = randn(rng, 6, 5, 37) * 0.3 + 0.2

    def f(x):
        r = REDUCERS[op](jnp.tanh(x) * 1.5 + 0.1, AXES[axes])
        return r.astype(jnp.float32) * 2.0 + 1.0

    one_kernel(f, x, tol=dict(rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("axes", ["last", "leading", "middle"])
@pytest.mark.parametrize("op", ["argmax", "argmin"])
def test_argmax_argmin(op, axes, rng):
    x = randn(rng, 6, 5, 37)
    x[1, 2, :5] = x[1, 2, 10]  # ties: the first index wins
    fn = jnp.argmax if op == "argmax" else jnp.argmin
    (axis,) = AXES[axes]
    one_kernel(lambda x: fn(jnp.abs(x) - 1.0, axis) * 3, x)


def test_argmax_nan_and_inf(rng):
    x = randn(rng, 4, 33)
    x[0, 7] = np.nan
    x[0, 20] = np.nan
    x[1, 3] = np.inf
    x[2, :] = -np.inf
    got = pfjax.fuse(lambda x: (jnp.argmax(x + 1, -1), jnp.argmin(x + 1, -1)))(x)
    want = jax.jit(lambda x: (jnp.argmax(x + 1, -1), jnp.argmin(x + 1, -1)))(x)
    assert_tree_close(got, want)


def test_max_min_propagate_nan(rng):
    x = randn(rng, 5, 40)
    x[1, 3] = np.nan
    x[3, 39] = np.nan
    x[:, 0] = np.inf
    f = lambda x: (jnp.max(x * 2, -1), jnp.min(x * 2, 0), jnp.sum(x * 2, -1))
    assert_tree_close(pfjax.fuse(f)(x), jax.jit(f)(x), **TOL)


def test_several_reductions_of_one_input_are_one_kernel(rng):
    x = randn(rng, 64, 130)

    def stats(x):
        y = x * 0.5 + 1.0
        return y.mean(-1), y.max(-1), y.min(-1), (y * y).sum(-1)

    one_kernel(stats, x)


def test_broadcast_back_onto_the_input(rng):
    x = randn(rng, 9, 130)
    one_kernel(lambda x: x - x.max(-1, keepdims=True) + x.mean(-1, keepdims=True), x)


@pytest.mark.parametrize("shape,axis", [((4, 0), 1), ((0, 5), 1), ((3, 0, 4), 1), ((0, 5), 0)])
def test_empty(shape, axis, rng):
    x = randn(rng, *shape)
    f = lambda x: (jnp.sum(x * 2, axis), jax.lax.reduce_max(x * 2, (axis,)), jnp.prod(x + 1, axis))
    assert_tree_close(pfjax.fuse(f)(x), jax.jit(f)(x))


@pytest.mark.parametrize("shape", [(3, 7), (1, 1), (5, 1), (1, 300001), (2, 65537)])
def test_short_and_long_rows(shape, rng):
    x = randn(rng, *shape)
    one_kernel(lambda x: jax.nn.softmax(x * 1.5), x)
    one_kernel(layernorm_plain, x, tol=dict(rtol=1e-4, atol=1e-4))


def test_long_row_sum_is_as_accurate_as_xla(rng):
    x = (rng.random((2, 1 << 20)) + 0.5).astype(np.float32)
    exact = x.astype(np.float64).sum(-1)
    f = lambda x: jnp.sum(x * 1.0001, -1)
    want = np.asarray(jax.jit(f)(x), np.float64)
    got = np.asarray(pfjax.fuse(f)(x), np.float64)
    exact = exact * np.float64(np.float32(1.0001))
    assert np.all(np.abs(got - exact) <= np.maximum(np.abs(want - exact), 1e-6 * np.abs(exact)))


def test_integer_and_column_reductions(rng):
    x = rng.integers(-50, 50, size=(300, 40)).astype(np.int32)
    f = lambda x: (jnp.sum(x * 3, 0), jnp.max(x - 1, 0), jnp.min(x, 1), jnp.argmax(x, 0))
    assert_tree_close(pfjax.fuse(f)(x), jax.jit(f)(x))


# ---- the workloads, as users write them -------------------------------------------------

def layernorm_plain(x):
    m = x.mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5)


def layernorm(x, w, b):
    m = x.mean(-1, keepdims=True)
    v = jnp.var(x, -1, keepdims=True)
    return (x - m) / jnp.sqrt(v + 1e-5) * w + b


def flax_layernorm(x, scale, bias, eps=1e-6):
    # flax.linen.LayerNorm: mean and mean of squares in one pass ("fast variance")
    mean = jnp.mean(x, -1, keepdims=True)
    mean2 = jnp.mean(jax.lax.square(x), -1, keepdims=True)
    var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
    y = (x - mean) * jax.lax.rsqrt(var + eps)
    return y * scale + bias


def rmsnorm(x, w):
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-6) * w


def residual_layernorm(x, r, w, b):
    s = x + r
    return s, layernorm(s, w, b)


def scale_mask_softmax(x, mask):
    return jax.nn.softmax(jnp.where(mask, x * 0.125, -1e9), axis=-1)


def column_mean_var(x):
    return jnp.mean(x, 0), jnp.var(x, 0)


def batchnorm_apply(x, mean, var, g, b):
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * g + b


def batchnorm_train(x, g, b):
    mean, var = x.mean(0), x.var(0)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * g + b


def group_norm(x, g, b, groups=4):
    n, h, w, c = x.shape
    xg = x.reshape(n, h * w, groups, c // groups)
    m = xg.mean((1, 3), keepdims=True)
    v = ((xg - m) ** 2).mean((1, 3), keepdims=True)
    y = ((xg - m) * jax.lax.rsqrt(v + 1e-5)).reshape(n, h, w, c)
    return y * g + b


def cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def cross_entropy_one_hot(logits, labels):
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), -1))


def logsumexp_rows(x):
    return jax.nn.logsumexp(x, axis=-1)


def test_layernorm_with_weight_and_bias(rng):
    x, w, b = randn(rng, 33, 257), randn(rng, 257), randn(rng, 257)
    one_kernel(layernorm, x, w, b, tol=dict(rtol=1e-4, atol=1e-4))
    one_kernel(flax_layernorm, x, w, b, tol=dict(rtol=1e-4, atol=1e-4))


def test_rmsnorm(rng):
    one_kernel(rmsnorm, randn(rng, 17, 513), randn(rng, 513))


def test_residual_layernorm_two_outputs(rng):
    x, r = randn(rng, 16, 200), randn(rng, 16, 200)
    one_kernel(residual_layernorm, x, r, randn(rng, 200), randn(rng, 200),
               tol=dict(rtol=1e-4, atol=1e-4))


def test_softmax_family(rng):
    x = randn(rng, 12, 301) * 4
    one_kernel(jax.nn.softmax, x)
    one_kernel(jax.nn.log_softmax, x)
    one_kernel(logsumexp_rows, x)
    one_kernel(jax.nn.logsumexp, x)


@pytest.mark.parametrize("f", [jax.nn.softmax, jax.nn.log_softmax, logsumexp_rows,
                               lambda x: jax.nn.gelu(x * 2.0 + 1.0),
                               lambda x: jax.nn.gelu(x - 1.0, approximate=False),
                               lambda x: jax.nn.silu(x) * jnp.max(x, -1, keepdims=True)])
def test_exp_loops_run_over_explicit_vectors(f, rng):
    """Loops that call exp, logistic or erfc run over pfjax::vf16 for whole vectors and the
    scalar loop for the remainder (301 = 18 x 16 + 13): both agree with XLA, including
    NaN, +-inf and huge values in either part."""
    x = randn(rng, 9, 301) * 4
    x[1, 5], x[2, 299], x[3, 40], x[4, 300], x[5, 7] = np.nan, np.nan, np.inf, -np.inf, -1e30
    x[6, :] = -np.inf
    x[7, 100] = 1e30
    got = pfjax.fuse(f)(x)
    want = jax.jit(f)(x)
    assert_tree_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    (group,) = pfjax.explain(f, x).groups
    assert "pfjax::vf16" in open(group.source_path).read()


def _masked_softmax(x, mask):
    return jax.nn.softmax(jnp.where(mask, x * 0.125, -1e9), axis=-1)


@pytest.mark.parametrize("f", [
    _masked_softmax,
    lambda x, mask: jax.nn.softmax(jnp.where(mask | (x > 3.0), x, -jnp.inf), axis=-1),
    lambda x, mask: jnp.exp(jnp.where(x != x, 2.0, jnp.minimum(x, 1.0)))
    * jnp.where(mask, x.astype(bool), 0.5),
    lambda x, mask: jnp.where(jnp.isfinite(x) & ~mask, jax.nn.sigmoid(x), -1.0)
    + jnp.where(mask ^ (x <= 0.5), 1.0, 0.0) + (mask == (x >= -1.0)).astype(jnp.float32),
    lambda x, mask: jnp.where(mask[:, :1], jnp.exp(x - 1.0), x),   # a mask uniform per row
    lambda x, mask: jax.nn.logsumexp(jnp.where(mask, x, 2.0), axis=-1,
                                     where=x < jnp.max(x, -1, keepdims=True)),
])
def test_predicated_exp_loops_run_over_explicit_vectors(f, rng):
    """Loops that call exp or logistic under masks, compares and selects keep the vf16
    form: bool inputs load as lane masks, compares follow C++'s NaN rules (only != holds),
    selects blend. Whole vectors and the remainder (301 = 18 x 16 + 13) agree with XLA,
    with NaN, +-inf and masked-out rows in both parts."""
    x = randn(rng, 9, 301) * 4
    x[1, 5], x[2, 299], x[3, 40], x[4, 300], x[5, 7] = np.nan, np.nan, np.inf, -np.inf, -1e30
    x[7, 100] = 1e30
    x[0, 3], x[0, 290] = 0.0, 0.0
    mask = rng.random((9, 301)) < 0.7
    mask[6, :] = False
    mask[8, :] = True
    got = pfjax.fuse(f)(x, mask)
    want = jax.jit(f)(x, mask)
    assert_tree_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
    sources = [open(g.source_path).read() for g in pfjax.explain(f, x, mask).groups]
    assert any("pfjax::vf16" in src for src in sources)


@pytest.mark.parametrize("f,is_lse", [
    (logsumexp_rows, True), (lambda x: jax.nn.logsumexp(x, axis=-1), True),
    (lambda x: cross_entropy(x, (jnp.arange(x.shape[0]) * 37) % x.shape[1]), False)])
def test_online_max_and_shifted_sum(f, is_lse, rng):
    """Long rows take the max and the shifted sum in one pass, rescaling as the max grows
    (ascending rows rescale at every block); rows with NaN, +-inf or all -inf take the
    two-pass form again and match XLA exactly in kind. The one-pass sums shift by the
    running max (`exp_minus_max`), also where the first blocks are all -inf; logsumexp's
    two-pass form, whose shift may be 0 below some x, does not."""
    x = randn(rng, 8, 5003) * 4
    x[7, :1200] = -np.inf                       # the running max is -inf for two blocks
    x[1] = np.linspace(-300, 60, 5003)          # the max grows in every block
    x[2, 4000] = np.nan
    x[3, 17] = np.inf
    x[4, :] = -np.inf
    x[5, 5002] = -np.inf
    x[6] = randn(rng, 5003) - 120.0             # all exps underflow without the shift
    got = pfjax.fuse(f)(x)
    want = jax.jit(f)(x)
    assert_tree_close(got, want, rtol=2e-6, atol=1e-5, equal_nan=True)
    (group,) = pfjax.explain(f, x).groups
    source = open(group.source_path).read()
    assert "shift_of" in source
    # the online sums prefetch the row 4 KiB ahead (the blocks' max loops read memory)
    online = source[source.index("shift_of"):source.index("online_exact")]
    assert "__builtin_prefetch" in online and "+ 4096)" in online
    assert "exp_minus_max(" in online
    if is_lse:  # against float64 on the finite rows
        # jax's shift is 0 where the max is not finite: the two-pass form keeps exp_v
        assert "exp_minus_max(" not in source[source.index("if (!online_exact)"):]
        rows = x[[0, 1, 6, 7]].astype(np.float64)
        ref = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
        np.testing.assert_allclose(np.asarray(got)[[0, 1, 6, 7]], ref, rtol=1e-6)


def test_later_loops_prefetch_the_next_row(rng):
    """A row unit's later loops prefetch the next unit's input row (also across the
    outer dimensions and past the last row); broadcast weights and column reductions are
    not prefetched (phased ones are: test_column_phases)."""
    x, w = randn(rng, 3, 5, 301) * 4, randn(rng, 301)
    f = lambda x, w: jax.nn.softmax(x, axis=-1) * w
    one_kernel(f, x, w)
    (group,) = pfjax.explain(f, x, w).groups
    source = open(group.source_path).read()
    assert "__builtin_prefetch" in source and source.count("const uintptr_t pf") == 1
    (group,) = pfjax.explain(lambda x: x - x.mean(0), x[0]).groups
    assert "__builtin_prefetch" not in open(group.source_path).read()


@pytest.mark.parametrize("shape", [(37, 1000), (1, 7), (300, 64)])
def test_cross_entropy_is_one_kernel(shape, rng):
    logits = randn(rng, *shape) * 3
    labels = rng.integers(0, shape[1], size=shape[0]).astype(np.int32)
    one_kernel(cross_entropy, logits, labels, tol=dict(rtol=1e-5, atol=1e-5))


def test_cross_entropy_bad_labels_and_grad(rng):
    logits = randn(rng, 16, 50)
    labels = rng.integers(0, 50, size=16).astype(np.int32)
    labels[3] = 50  # out of range: take_along_axis fills NaN
    labels[5] = -2  # negative: counts from the end
    assert_tree_close(pfjax.fuse(cross_entropy)(logits, labels),
                      jax.jit(cross_entropy)(logits, labels), equal_nan=True)
    labels[3] = 7
    assert_tree_close(jax.grad(pfjax.fuse(cross_entropy))(logits, labels),
                      jax.grad(cross_entropy)(logits, labels), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["clip", "fill", "promise_in_bounds"])
def test_label_pick_is_one_load_per_row(mode, rng):
    """take_along_axis reads the labelled element with one dynamic load per row (clamped
    into the row), not with a pass over the row; out-of-range labels follow the mode."""
    logits = randn(rng, 24, 300)
    labels = rng.integers(0, 300, size=24).astype(np.int32)
    if mode != "promise_in_bounds":
        labels[[2, 9]] = [300, -301]

    def f(logits, labels):
        logp = jax.nn.log_softmax(logits, -1)
        picked = jnp.take_along_axis(logp, labels[:, None], axis=-1, mode=mode)
        return -jnp.mean(picked), picked

    want = jax.jit(f)(logits, labels)
    assert_tree_close(pfjax.fuse(f)(logits, labels), want, rtol=1e-5, atol=1e-5, equal_nan=True)
    (group,) = pfjax.explain(f, logits, labels).groups
    kernel = group.kernel
    picks = [n for n in gir.toposort(kernel.root) if n.op is gir.Op.LOAD and n.arg.dynamic]
    assert picks and all(not any(n.arg.view.strides[d] for d in kernel.parallel.rdims)
                         for n in picks), gir.format_kernel(kernel)


def test_reduction_over_all_rows_of_a_row_reduction(rng):
    x = randn(rng, 33, 70)
    one_kernel(lambda x: jnp.mean(jax.nn.logsumexp(x, -1)), x)
    one_kernel(lambda x: jnp.max(jnp.sum(x * x, -1)) + 1.0, x)
    one_kernel(lambda x: jnp.sum(jnp.exp(x)), x)


def test_scale_mask_softmax(rng):
    x = randn(rng, 8, 64, 64)
    mask = np.tril(np.ones((64, 64), bool))[None]
    one_kernel(scale_mask_softmax, x, mask)


def test_softmax_subtracts_the_max(rng):
    x = randn(rng, 4, 100) * 30 + 200  # exp would overflow without the max subtracted
    got = pfjax.fuse(jax.nn.softmax)(x)
    ref = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_column_only_costly_values_are_computed_once_per_task(rng):
    """rsqrt(var + eps) (and exp of a column iota) depend on the column only: computed
    once per task into a tile, read per element; NaN/Inf in the weights propagate."""
    x, mean, var = randn(rng, 3000, 77) * 2 + 3, randn(rng, 77), np.abs(randn(rng, 77)) + 0.1
    var[5], var[9], mean[11] = np.nan, -1.0, np.inf
    g, b = randn(rng, 77), randn(rng, 77)
    one_kernel(batchnorm_apply, x, mean, var, g, b)
    (group,) = pfjax.explain(batchnorm_apply, x, mean, var, g, b).groups
    source = open(group.source_path).read()
    assert "hoist0[col + " in source and "rsqrt" in source.split("while (begin")[0]
    f = lambda x: x * jnp.exp(jnp.arange(77, dtype=jnp.float32) * 0.1) + 1.0
    one_kernel(f, x)
    (group,) = pfjax.explain(f, x).groups
    assert "hoist0[col + " in open(group.source_path).read()
    # with an exp per element too: the explicit-vector loop reads the hoisted tile
    f = lambda x, var: jnp.exp(x * 0.1) * jax.lax.rsqrt(var + 1e-5)
    one_kernel(f, x, var, tol=dict(rtol=1e-5, atol=1e-6, equal_nan=True))
    (group,) = pfjax.explain(f, x, var).groups
    source = open(group.source_path).read()
    assert "pfjax::vf16::load(&hoist0[col + " in source


def test_column_statistics_and_batchnorm(rng):
    x = randn(rng, 1000, 48) * 2 + 3
    one_kernel(column_mean_var, x, tol=dict(rtol=1e-4, atol=1e-5))
    mean, var = x.mean(0), x.var(0)
    one_kernel(batchnorm_apply, x, mean, var, randn(rng, 48), randn(rng, 48))
    one_kernel(batchnorm_train, x, randn(rng, 48), randn(rng, 48), tol=dict(rtol=1e-4, atol=1e-4))


def test_group_norm(rng):
    x = randn(rng, 2, 6, 5, 16)
    one_kernel(group_norm, x, randn(rng, 16), randn(rng, 16), tol=dict(rtol=1e-4, atol=1e-4))


# ---- numerics ---------------------------------------------------------------------------

def _f64(f, *args):
    with jax.enable_x64(True):
        return np.asarray(jax.jit(f)(*[np.asarray(a, np.float64) for a in args]))


@pytest.mark.parametrize("fn", [layernorm_plain, jax.nn.softmax, jax.nn.log_softmax, rmsnorm])
def test_accuracy_against_float64(fn, rng):
    args = [randn(rng, 8, 4096) * 3 + 1]
    if fn is rmsnorm:
        args.append(randn(rng, 4096))
    exact = _f64(fn, *args)
    err_xla = np.abs(np.asarray(jax.jit(fn)(*args), np.float64) - exact).max()
    err_pf = np.abs(np.asarray(pfjax.fuse(fn)(*args), np.float64) - exact).max()
    assert err_pf <= max(2 * err_xla, 1e-6), (err_pf, err_xla)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("fn", [layernorm_plain, jax.nn.softmax])
def test_half_precision_accumulates_in_float32(fn, dtype, rng):
    x = jnp.asarray(randn(rng, 16, 2048) * 2 + 1, dtype)
    exact = _f64(fn, np.asarray(x, np.float32))
    got = np.asarray(pfjax.fuse(fn)(x), np.float64)
    want = np.asarray(jax.jit(fn)(x), np.float64)
    assert pfjax.fuse(fn)(x).dtype == dtype
    eps = float(jnp.finfo(dtype).eps)
    assert np.abs(got - exact).max() <= max(np.abs(want - exact).max(), 4 * eps * np.abs(exact).max())


# ---- transformations ----------------------------------------------------------------------

def test_grad_and_vmap_of_reductions(rng):
    x, w, b = randn(rng, 6, 40), randn(rng, 40), randn(rng, 40)
    loss = lambda x, w, b: jnp.sum(layernorm(x, w, b) ** 2) + jnp.sum(jax.nn.log_softmax(x))
    fused = pfjax.fuse(loss)
    assert_tree_close(jax.grad(fused, (0, 1, 2))(x, w, b), jax.grad(loss, (0, 1, 2))(x, w, b),
                      rtol=1e-4, atol=1e-4)
    xs = randn(rng, 3, 6, 40)
    assert_tree_close(jax.vmap(pfjax.fuse(layernorm), (0, None, None))(xs, w, b),
                      jax.vmap(layernorm, (0, None, None))(xs, w, b), rtol=1e-4, atol=1e-4)


def test_check_grads_of_reductions(rng):
    from jax.test_util import check_grads
    with jax.enable_x64(True):
        x = rng.standard_normal((4, 9))
        w = rng.standard_normal(9)
        check_grads(pfjax.fuse(lambda x: jax.nn.softmax(x) * w), (x,), order=2, modes=("fwd", "rev"))
        check_grads(pfjax.fuse(lambda x: layernorm(x, w, w)), (x,), order=2, modes=("fwd", "rev"))
        check_grads(pfjax.fuse(lambda x: column_mean_var(x)[1]), (x,), order=1, modes=("fwd", "rev"))


def test_explain_reports_reuse_levels(rng):
    x = randn(rng, 64, 1000)
    text = str(pfjax.explain(jax.nn.softmax, x))
    assert "tile0 (exp)" in text and "local level" in text
    assert "reduces over (1,)" in text
    text = str(pfjax.explain(layernorm_plain, x))
    assert "recomputed in registers" in text and "re-read it from cache" in text
    big = jax.ShapeDtypeStruct((4, 1 << 20), jnp.float32)
    assert "re-read it from global memory" in str(pfjax.explain(layernorm_plain, big))


def flax_group_norm(x, scale, bias, groups=4, eps=1e-6):
    # flax.linen.GroupNorm: statistics over the grouped view, repeated back to channels
    n, h, w, c = x.shape
    xg = x.reshape(n, h, w, groups, c // groups)
    mean = jnp.mean(xg, (1, 2, 4))
    mean2 = jnp.mean(jax.lax.square(xg), (1, 2, 4))
    var = jnp.maximum(0.0, mean2 - jax.lax.square(mean))
    mean = jnp.repeat(mean, c // groups, axis=-1)[:, None, None, :]
    var = jnp.repeat(var, c // groups, axis=-1)[:, None, None, :]
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def test_flax_style_group_norm(rng):
    x = randn(rng, 2, 6, 5, 16)
    one_kernel(flax_group_norm, x, randn(rng, 16), randn(rng, 16), tol=dict(rtol=1e-4, atol=1e-4))


def test_reshape_between_elementwise_and_reductions(rng):
    x = randn(rng, 6, 20)
    one_kernel(lambda x: jnp.tanh(x).reshape(3, 2, 4, 5).sum(-1) * 2, x)
    one_kernel(lambda x: (x.reshape(120) * 2).reshape(12, 10).max(0), x)
    # (6, 20) -> (4, 30) is no split or merge: two kernels, still the right answer
    f = lambda x: (x.reshape(120) * 2).reshape(4, 30).max(0)
    assert_tree_close(pfjax.fuse(f)(x), jax.jit(f)(x))


def ln_ce_loss(x, w, b, labels):
    return cross_entropy(jax.nn.gelu(layernorm(x, w, b)), labels)


def test_grad_of_layernorm_cross_entropy_is_all_kernels(rng):
    x, w, b = randn(rng, 32, 96), randn(rng, 96), randn(rng, 96)
    labels = rng.integers(0, 96, size=32).astype(np.int32)
    step = jax.jit(jax.value_and_grad(pfjax.fuse(ln_ce_loss), argnums=(0, 1, 2)))
    hlo = step.lower(x, w, b, labels).compile().as_text()
    assert re.search(r'custom_call_target="pfjax_', hlo)
    assert not re.search(r"= \S+ (reduce|fusion|scatter|gather)\(", hlo), hlo
    want = jax.jit(jax.value_and_grad(ln_ce_loss, argnums=(0, 1, 2)))(x, w, b, labels)
    assert_tree_close(step(x, w, b, labels), want, rtol=1e-4, atol=1e-5)


def test_check_grads_of_layernorm_cross_entropy(rng):
    from jax.test_util import check_grads
    with jax.enable_x64(True):
        x, w = rng.standard_normal((5, 11)), rng.standard_normal(11)
        labels = rng.integers(0, 11, size=5).astype(np.int32)
        f = pfjax.fuse(lambda x, w: ln_ce_loss(x, w, w * 0.5, labels))
        check_grads(f, (x, w), order=2, modes=("fwd", "rev"))


def test_long_column_sum_is_as_accurate_as_xla(rng):
    x = (rng.random((200000, 32)) * 2 + 1).astype(np.float32)
    exact = x.astype(np.float64).sum(0)
    want = np.asarray(jax.jit(lambda x: jnp.sum(x, 0))(x), np.float64)
    got = np.asarray(pfjax.fuse(lambda x: jnp.sum(x * 1.0, 0))(x), np.float64)
    assert np.abs(got - exact).max() <= max(np.abs(want - exact).max(), 1e-7 * exact.max())


@pytest.mark.parametrize("rows", [40000, 40001])
def test_column_reduction_split_into_row_segments(rows, rng):
    # few columns, many rows: the rows are reduced in segments, combined in order
    x = randn(rng, rows, 24)
    f = lambda x: (jnp.sum(x * 2, 0), jnp.max(x, 0), jnp.min(x, 0) + jnp.mean(x, 0))
    text = str(pfjax.explain(f, x))
    assert "split=" in text
    assert_tree_close(pfjax.fuse(f)(x), jax.jit(f)(x), rtol=1e-5, atol=1e-4)
    # NaN propagates through the segments' combination (as numpy and lax.max define it;
    # XLA's own vectorised column max on CPU drops it at this size)
    x[rows - 3, 3] = np.nan
    got = np.asarray(pfjax.fuse(f)(x)[1])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(x.max(0)))


@pytest.mark.parametrize("shape", [(1, 200003), (3, 70001), (3, 5, 40000)])
def test_few_long_rows_split_into_segments(shape, rng):
    """Fewer rows than threads' worth: each row is reduced in segments (every reduction
    kind, per-row values before and after), combined in order by the finish step."""
    threads = pfjax.compile.target().groups
    x = randn(rng, *shape)
    w = randn(rng, *shape[:-1], 1)

    def f(x, w):
        return (jnp.sum(x * w, -1) + w[..., 0], jnp.max(x, -1), jnp.min(x * 2, -1),
                jnp.prod(jnp.where(x > 3.5, 2.0, 1.0), -1), jnp.all(x > -6, -1), jnp.any(x > 4.2, -1),
                jnp.sum((x * 100).astype(jnp.int32), -1), jnp.sqrt(jnp.mean(x * x, -1)))
    if threads > 1:  # one thread has no use for segments
        assert "split=" in str(pfjax.explain(f, x, w))
    one_kernel(f, x, w, tol=dict(rtol=1e-5, atol=1e-4))
    one_kernel(lambda x: jnp.sum(x * x), x, tol=dict(rtol=1e-5, atol=1e-3))
    x64 = x.astype(np.float64)
    want = (x64 * w).sum(-1) + w[..., 0]
    np.testing.assert_allclose(np.asarray(pfjax.fuse(f)(x, w)[0], np.float64), want, rtol=1e-6,
                               atol=1e-6 * np.abs(x64 * w).sum(-1).max())
    # a NaN in one segment reaches its row's max and min (XLA's own vectorised max on CPU
    # drops it at this size; numpy and lax.max define it to propagate)
    x.reshape(-1, shape[-1])[-1, shape[-1] // 2 + 7] = np.nan
    got = pfjax.fuse(f)(x, w)
    for k in (1, 2):
        np.testing.assert_array_equal(np.isnan(np.asarray(got[k])), np.isnan(x.max(-1)))


@pytest.mark.parametrize("shape", [(1, 200003), (3, 70001)])
def test_few_long_rows_run_their_loops_as_phases(shape, rng, monkeypatch):
    """Softmax-like kernels over few long rows: every loop runs over all segments of the
    rows as a phase, with the earlier phases' combined values (max, sums); results stored
    inside loops (the residual sum), after them (logsumexp) and per element."""
    threads = pfjax.compile.target().groups
    x, r = randn(rng, *shape), randn(rng, *shape)
    w, b = randn(rng, shape[-1]), randn(rng, shape[-1])
    tol = dict(rtol=1e-5, atol=1e-5)

    def residual_norm(x, r, w, b):
        s = x + r
        m = s.mean(-1, keepdims=True)
        v = ((s - m) ** 2).mean(-1, keepdims=True)
        return s, (s - m) * jax.lax.rsqrt(v + 1e-5) * w + b

    for f in (lambda x: jax.nn.softmax(x * 1.5), jax.nn.log_softmax,
              lambda x: (jax.nn.logsumexp(x, -1), jnp.max(x, -1))):
        if threads > 1:
            assert "phases" in open(pfjax.explain(f, x).groups[0].source_path).read()
        one_kernel(f, x, tol=tol)
    one_kernel(residual_norm, x, r, w, b, tol=dict(rtol=1e-4, atol=1e-4))
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(pfjax.fuse(jax.nn.softmax)(x), np.float64),
                               e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-12)
    # the last phase streams its stores; so do the exponentials waiting in the output for
    # it, vector by vector where one starts on a line (segments start anywhere)
    monkeypatch.setenv("PFJAX_NONTEMPORAL", "1")
    streamed = lambda x: jax.nn.softmax(x * 1.0)
    source = open(pfjax.explain(streamed, x).groups[0].source_path).read()
    assert "stream_copy" in source
    if threads > 1:
        assert "if (stream && reinterpret_cast<uintptr_t>(&out0[" in source
    for _ in range(2):  # the second call finds its output pages resident
        np.testing.assert_allclose(np.asarray(jax.jit(pfjax.fuse(streamed))(x), np.float64),
                                   e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-12)
    monkeypatch.delenv("PFJAX_NONTEMPORAL")
    x.reshape(-1, shape[-1])[-1, -5] = np.nan  # in the last segment of the last row
    got = np.asarray(pfjax.fuse(jax.nn.softmax)(x))
    np.testing.assert_array_equal(np.isnan(got).all(-1), np.isnan(x).any(-1))


@pytest.mark.parametrize("shape", [(301, 7), (5, 33, 9), (70, 1), (40, 15)])
def test_short_rows_are_laid_across_the_lanes(shape, rng):
    """Rows shorter than a vector: units go across the SIMD lanes (a column reduction
    whose accesses are staged through a block transpose); NaN rows, odd unit counts."""
    x = randn(rng, *shape)
    x.reshape(-1, shape[-1])[3, 0] = np.nan

    def f(x):
        m = jnp.max(x, -1, keepdims=True)
        e = jnp.exp(x - m)
        return e / e.sum(-1, keepdims=True), jnp.argmax(x, -1), jax.nn.logsumexp(x, -1)
    one_kernel(f, x, tol=dict(rtol=1e-5, atol=1e-6))
    if shape[-1] > 1:
        (group,) = pfjax.explain(f, x).groups
        assert "stage_transpose" in open(group.source_path).read()


def test_short_rows_bf16(rng):
    x = jnp.asarray(randn(rng, 100, 6), jnp.bfloat16)
    one_kernel(lambda x: jax.nn.softmax(x.astype(jnp.float32), -1).astype(jnp.bfloat16), x,
               tol=dict(rtol=1e-2, atol=1e-2))
