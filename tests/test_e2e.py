"""End-to-end: fused functions give what `jax.jit` of the original gives, and do fuse."""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pfjax
from pfjax.api import explain  # see test_explain_is_still_callable_after_use

KERNEL_CALL = re.compile(r"custom_call @pfjax_\w+")

ARITH = dict(rtol=1e-6, atol=1e-6)
TRANS = dict(rtol=2e-6, atol=1e-6)


def num_kernel_calls(f, *args, **kwargs) -> int:
    """pfjax custom calls in the lowered HLO of jax.jit(pfjax.fuse(f))."""
    fused = f if isinstance(f, pfjax.api.Fused) else pfjax.fuse(f)
    return len(KERNEL_CALL.findall(jax.jit(fused).lower(*args, **kwargs).as_text()))


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def assert_tree_close(got, want, **tol):
    gl, gt = jax.tree_util.tree_flatten(got)
    wl, wt = jax.tree_util.tree_flatten(want)
    assert gt == wt, (gt, wt)
    for g, w in zip(gl, wl):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, **tol)


def check(f, *args, tol=TRANS, min_kernels=1, **kwargs):
    """pfjax.fuse(f) eagerly and under jax.jit equal jax.jit(f); it lowers to kernels."""
    want = jax.jit(f)(*args, **kwargs)
    fused = pfjax.fuse(f)
    assert_tree_close(fused(*args, **kwargs), want, **tol)
    assert_tree_close(jax.jit(fused)(*args, **kwargs), want, **tol)
    if min_kernels:
        assert num_kernel_calls(fused, *args, **kwargs) >= min_kernels
    return fused


# ---- workloads ---------------------------------------------------------------------------

def bias_gelu_tanh(x, b):
    return jax.nn.gelu(x + b, approximate=True)


def bias_gelu_erf(x, b):
    return jax.nn.gelu(x + b, approximate=False)


def swiglu(a, b):
    return jax.nn.silu(a) * b


def adam(p, g, m, v, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * m / (jnp.sqrt(v) + eps)
    return p, m, v


def softplus_chain(x):
    return jnp.logaddexp(x, 0.0) * 0.5 + jax.nn.softplus(-x)


def mish(x):
    return x * jnp.tanh(jax.nn.softplus(x))


def where_select(x, y):
    return jnp.where(x > y, x * 2.0, y - 1.0) + jnp.where(x < 0, -x, 0.5)


def clip_chain(x):
    return jnp.clip(x * 3.0, -1.0, 2.0) + jax.nn.relu6(x)


def int_pows(x):
    y = x * 0.5 + 2.0  # keep away from 0 for the negative powers
    return x ** 2 + x ** 3 - y ** -1 + y ** -2 * 0.25 + x ** 5


def cmp_where(x, y):
    a = jnp.where(x >= y, x, y)
    b = jnp.where((x != y) & (x <= 0.5), 1.0, -1.0)
    return a * b + jnp.where(x == x, 0.0, 1.0)


def multi_out(x, y):
    s = x + y
    return jnp.exp(-s * s), jnp.maximum(x, y), (x * y > 0), s


WORKLOADS = [
    ("gelu_tanh", bias_gelu_tanh, [(7, 13), (13,)]),
    ("gelu_erf", bias_gelu_erf, [(7, 13), (13,)]),
    ("swiglu", swiglu, [(3, 1, 129), (3, 1, 129)]),
    ("softplus", softplus_chain, [(1000,)]),
    ("mish", mish, [(7, 13)]),
    ("where", where_select, [(7, 13), (7, 13)]),
    ("clip", clip_chain, [(1000,)]),
    ("int_pow", int_pows, [(7, 13)]),
    ("cmp_where", cmp_where, [(7, 13), (1, 13)]),
    ("multi_out", multi_out, [(3, 1, 129), (3, 1, 129)]),
]


@pytest.mark.parametrize("name,f,shapes", WORKLOADS, ids=[w[0] for w in WORKLOADS])
def test_workload(name, f, shapes, rng):
    args = [randn(rng, *s) for s in shapes]
    check(f, *args)


def test_adam(rng):
    p, g, m = (randn(rng, 7, 13) for _ in range(3))
    v = np.abs(randn(rng, 7, 13)) + 0.1
    check(adam, p, g, m, v)


def test_explicit_options_spelling(rng):
    x, b = randn(rng, 7, 13), randn(rng, 13)
    want = jax.jit(bias_gelu_tanh)(x, b)
    for fused in (pfjax.fuse(jit=False)(bias_gelu_tanh), pfjax.fuse(jit=True)(bias_gelu_tanh)):
        np.testing.assert_allclose(fused(x, b), want, **TRANS)


def test_decorator_forms(rng):
    @pfjax.fuse
    def f(x):
        return jnp.tanh(x) * 2.0 + 1.0

    @pfjax.fuse(jit=False)
    def g(x):
        return jnp.tanh(x) * 2.0 + 1.0

    x = randn(rng, 1000)
    want = jnp.tanh(x) * 2.0 + 1.0
    np.testing.assert_allclose(f(x), want, **TRANS)
    np.testing.assert_allclose(g(x), want, **TRANS)
    assert f.__name__ == "f"


# ---- pytrees, kwargs, scalars, static arguments ------------------------------------------

def tree_fn(params, batch):
    h = params["w"] * batch[0] + params["b"]
    return {"act": jnp.tanh(h), "aux": (h * h, batch[1] - 1.0)}


def test_pytrees_in_and_out(rng):
    params = {"w": randn(rng, 7, 13), "b": randn(rng, 13)}
    batch = (randn(rng, 7, 13), randn(rng, 7, 13))
    check(tree_fn, params, batch)


def kw_fn(x, *, scale, shift=1.0):
    return jnp.exp(x * scale) - shift


def test_keyword_arguments(rng):
    x = randn(rng, 7, 13)
    check(kw_fn, x, scale=randn(rng, 13))
    check(kw_fn, x, scale=randn(rng, 7, 13), shift=randn(rng, 7, 1))


def scalar_fn(x, s, t):
    return jnp.tanh(x * s + t) - s


def test_python_scalar_arguments(rng):
    x = randn(rng, 7, 13)
    check(scalar_fn, x, 0.75, -1.5)
    check(scalar_fn, x, 3, 2.5)
    # a fresh scalar value with the same signature reuses the plan and is not baked in
    fused = pfjax.fuse(scalar_fn)
    for s in (0.25, -2.0, 7.0):
        np.testing.assert_allclose(fused(x, s, 1.0), jax.jit(scalar_fn)(x, s, 1.0), **TRANS)
    assert len(fused._cache) == 1


def static_fn(x, n, mode):
    y = x ** n
    return jnp.tanh(y) if mode == "tanh" else jnp.maximum(y, 0.0)


@pytest.mark.parametrize("n,mode", [(2, "tanh"), (3, "relu"), (-1, "tanh")])
def test_static_argnums(n, mode, rng):
    x = randn(rng, 7, 13) + 3.0
    fused = pfjax.fuse(static_fn, static_argnums=(1, 2))
    want = jax.jit(static_fn, static_argnums=(1, 2))(x, n, mode)
    np.testing.assert_allclose(fused(x, n, mode), want, **TRANS)
    np.testing.assert_allclose(jax.jit(fused, static_argnums=(1, 2))(x, n, mode), want, **TRANS)
    assert num_kernel_calls(pfjax.fuse(lambda x: fused(x, n, mode)), x) >= 1


def test_static_argnums_int(rng):
    x = randn(rng, 1000)
    fused = pfjax.fuse(lambda x, n: jnp.exp(x) * n + x, static_argnums=1)
    np.testing.assert_allclose(fused(x, 3), jnp.exp(x) * 3 + x, **TRANS)


def test_non_array_argument_is_a_clear_error():
    with pytest.raises(TypeError, match="static_argnums"):
        pfjax.fuse(lambda x, s: x)(np.ones(3, np.float32), "tanh")


# ---- matmul between chains ---------------------------------------------------------------

def mlp_fn(x, w, b):
    h = jnp.tanh(x * 2.0 + 1.0) * x
    y = h @ w
    return jax.nn.gelu(y + b) * 3.0 - y


def test_matmul_between_fusable_chains(rng):
    x, w, b = randn(rng, 7, 13), randn(rng, 13, 5), randn(rng, 5)
    check(mlp_fn, x, w, b, tol=dict(rtol=2e-5, atol=2e-5), min_kernels=2)
    rep = explain(mlp_fn, x, w, b)
    assert rep.num_kernels >= 2
    assert any(name == "dot_general" for name, _ in rep.left_out)
    text = jax.jit(pfjax.fuse(mlp_fn)).lower(x, w, b).as_text()
    assert "dot_general" in text or "stablehlo.dot" in text


# ---- inside jit, re-tracing, plan cache --------------------------------------------------

def test_inside_jit_composes_with_other_ops(rng):
    x, b = randn(rng, 7, 13), randn(rng, 13)
    fused = pfjax.fuse(bias_gelu_erf)

    @jax.jit
    def outer(x, b):
        return jnp.sum(fused(x, b) ** 2, axis=0) + fused(x * 0.5, b)[0]

    def ref(x, b):
        return jnp.sum(bias_gelu_erf(x, b) ** 2, axis=0) + bias_gelu_erf(x * 0.5, b)[0]

    np.testing.assert_allclose(outer(x, b), jax.jit(ref)(x, b), rtol=1e-5, atol=1e-5)


def test_retrace_per_signature(rng):
    fused = pfjax.fuse(mish)
    shapes = [(7, 13), (1000,), (3, 1, 129), (7, 13)]
    for s in shapes:
        x = randn(rng, *s)
        np.testing.assert_allclose(fused(x), jax.jit(mish)(x), **TRANS)
    assert len(fused._cache) == 3
    # a dtype change is a new signature too
    fused(randn(rng, 7, 13).astype(jnp.bfloat16))
    assert len(fused._cache) == 4


# ---- special values ----------------------------------------------------------------------

SPECIAL = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0, 3.5, -7.25, 1e30, -1e30,
                    np.finfo(np.float32).max, np.finfo(np.float32).min,
                    np.finfo(np.float32).tiny], np.float32)


def assert_same_floats(got, want, signbits=False, **tol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, equal_nan=True, **tol)
    if signbits:
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


def special_fn(x, y):
    return (x * 1.0, -x, x * y, jnp.maximum(x, y), jnp.minimum(x, -y), jnp.abs(x) * -1.0,
            jnp.exp(x), jnp.tanh(x), jnp.where(x > y, x, y), x / y)


def test_special_values(rng):
    x = SPECIAL
    y = randn(rng, x.size)
    got = pfjax.fuse(special_fn)(x, y)
    want = jax.jit(special_fn)(x, y)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_same_floats(g, w, signbits=k in (0, 1, 2, 5), rtol=2e-6, atol=0)
    assert num_kernel_calls(special_fn, x, y) >= 1


def test_special_values_cross_product():
    vals = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 2.0, -2.0], np.float32)
    x = np.repeat(vals, vals.size)
    y = np.tile(vals, vals.size)
    f = lambda x, y: (x + y, x - y, x * y, x / y, jnp.maximum(x, y), jnp.minimum(x, y),  # noqa: E731
                      (x < y), (x == y), (x != y))
    got, want = pfjax.fuse(f)(x, y), jax.jit(f)(x, y)
    for g, w in zip(got, want):
        assert_same_floats(g, w, rtol=0, atol=0)
    # products and quotients of signed zeros keep their sign in both
    for k in (2, 3):
        np.testing.assert_array_equal(np.signbit(got[k]), np.signbit(want[k]))


def test_denormals_follow_xla():
    x = np.array([1e-40, -1e-40, 1e-39, -5e-39, 1e-38, 2.0, np.finfo(np.float32).tiny], np.float32)
    y = np.ones_like(x)
    f = lambda x, y: (x * y, x * y * 0.5, jnp.maximum(x, -y) + x, -x * y)  # noqa: E731
    got, want = pfjax.fuse(f)(x, y), jax.jit(f)(x, y)
    for g, w in zip(got, want):
        assert_same_floats(g, w, rtol=0, atol=0)


def test_nan_propagation_through_chains(rng):
    x = randn(rng, 7, 13)
    x[::3, ::4] = np.nan
    x[1, 1] = np.inf
    x[2, 2] = -np.inf
    for f in (bias_gelu_tanh, bias_gelu_erf, swiglu):
        got, want = pfjax.fuse(f)(x, x[0]), jax.jit(f)(x, x[0])
        assert_same_floats(got, want, **TRANS)


# ---- shapes: empty, size-1, scalars ------------------------------------------------------

def test_empty_arrays():
    x = np.zeros((0, 5), np.float32)
    b = np.ones((5,), np.float32)
    for f in (bias_gelu_tanh, lambda x, b: (x * b, jnp.exp(x) > b)):
        got, want = pfjax.fuse(f)(x, b), jax.jit(f)(x, b)
        assert_tree_close(got, want)
        assert_tree_close(jax.jit(pfjax.fuse(f))(x, b), want)


@pytest.mark.parametrize("shape", [(1,), (1, 1), (1, 13), (7, 1), (3, 1, 129), (1, 1, 1, 5)])
def test_size_one_dims(shape, rng):
    x, y = randn(rng, *shape), randn(rng, *shape)
    check(swiglu, x, y)


def test_scalars_mixed_with_arrays(rng):
    x = randn(rng, 7, 13)
    s = np.float32(rng.standard_normal())
    zero_d = np.asarray(rng.standard_normal(), np.float32)
    f = lambda x, s, z: jnp.tanh(x * s) + z * x - s * z  # noqa: E731
    check(f, x, s, zero_d)
    # all-scalar function
    g = lambda s, z: jnp.exp(s) * z + s  # noqa: E731
    want = jax.jit(g)(s, zero_d)
    np.testing.assert_allclose(pfjax.fuse(g)(s, zero_d), want, **TRANS)


def test_broadcast_operands(rng):
    f = lambda x, r, c, s: (x * r + c) * s - jnp.exp(r * c)  # noqa: E731
    x, r, c = randn(rng, 7, 13), randn(rng, 13), randn(rng, 7, 1)
    check(f, x, r, c, 1.5)


# ---- explain -----------------------------------------------------------------------------

@pytest.mark.parametrize("f,read", [
    (lambda x: x[:, :64] * 2, 256 * 64),                    # a slice: only its part
    (lambda x: x[::2, 100:300].T + 1, 128 * 200),           # strided and transposed
    (lambda x: jnp.exp(x) + x[0], 256 * 1024),              # a row of x read again: x once
    (lambda x: jnp.concatenate([x[:, 512:], x[:, :512]], 1) * 3, 256 * 1024),
])
def test_explain_counts_the_bytes_a_kernel_reads(f, read, rng):
    """The fused figure counts the elements a kernel's loads can touch (never more than
    the whole input), not the whole of every input."""
    x = randn(rng, 256, 1024)
    (gp,) = explain(f, x).plan.groups
    out = sum(int(np.prod(o.shape)) for o in jax.tree.leaves(jax.eval_shape(f, x)))
    assert pfjax.compile.group_bytes(gp)[0] == (read + out) * 4


def test_explain_report(rng):
    x, w, b = randn(rng, 7, 13), randn(rng, 13, 5), randn(rng, 5)
    rep = explain(mlp_fn, x, w, b)
    text = str(rep)
    assert rep.num_kernels >= 2
    assert len(rep.groups) >= 2
    assert "group 0" in text and "group 1" in text
    assert "load.global.reg" in text
    assert "store" in text
    assert "bytes moved" in text and " B" in text
    assert "left to XLA" in text and "dot_general" in text
    reasons = dict(rep.left_out)
    assert reasons["dot_general"]  # a non-empty reason
    paths = re.findall(r"source: (\S+)", text)
    assert paths and all(os.path.exists(p) for p in paths)
    assert all(p.startswith(os.environ["PFJAX_CACHE_DIR"]) for p in paths)
    assert repr(rep) == text


def test_explain_is_still_callable_after_use(rng):
    x = randn(rng, 7, 13)
    pfjax.api.explain(mish, x)
    assert callable(pfjax.explain)
    assert pfjax.explain(mish, x).num_kernels >= 1


def test_explain_accepts_fused_and_kwargs(rng):
    x = randn(rng, 7, 13)
    rep = explain(pfjax.fuse(kw_fn), x, scale=randn(rng, 13))
    assert rep.num_kernels >= 1
    assert "exp" in str(rep)


def test_reshape_of_an_empty_array():
    z = np.zeros((0, 1, 3), np.float32)
    f = lambda z: jnp.sum(z, 1) + 1
    np.testing.assert_array_equal(pfjax.fuse(f)(z), jax.jit(f)(z))
    assert pfjax.fuse(f)(z).shape == (0, 3)
