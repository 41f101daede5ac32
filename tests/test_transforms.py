"""JAX transformations of fused functions: grad, jvp/vjp, vmap and their compositions."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import pfjax

KERNEL_CALL = re.compile(r"custom_call @pfjax_\w+")
TRANS = dict(rtol=2e-6, atol=1e-6)
GRAD = dict(rtol=1e-5, atol=1e-5)


def num_kernel_calls(f, *args) -> int:
    return len(KERNEL_CALL.findall(jax.jit(f).lower(*args).as_text()))


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def assert_tree_close(got, want, **tol):
    gl, gt = jax.tree_util.tree_flatten(got)
    wl, wt = jax.tree_util.tree_flatten(want)
    assert gt == wt
    for g, w in zip(gl, wl):
        assert np.shape(g) == np.shape(w)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), **tol)


def gelu_tanh(x, b):
    return jax.nn.gelu(x + b, approximate=True)


def gelu_erf(x, b):
    return jax.nn.gelu(x + b, approximate=False)


def swiglu(a, b):
    return jax.nn.silu(a) * b


def adam_like(p, g, m, v):
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    return p - 1e-2 * m / (jnp.sqrt(v) + 1e-3), m, v


def chain(x, y):
    h = jnp.tanh(x * y) + jnp.exp(-x * x) * 0.5
    return jnp.where(x > 0.0, h * y, jax.nn.sigmoid(h)) + x ** 3 - 1.0 / (y * y + 1.0)


def adam_inputs(rng, shape):
    p, g, m = (randn(rng, *shape) for _ in range(3))
    return p, g, m, np.abs(randn(rng, *shape)) + 0.5


FUNCS = {
    "gelu_tanh": (gelu_tanh, lambda rng: (randn(rng, 3, 5), randn(rng, 5))),
    "gelu_erf": (gelu_erf, lambda rng: (randn(rng, 3, 5), randn(rng, 5))),
    "swiglu": (swiglu, lambda rng: (randn(rng, 3, 5), randn(rng, 3, 5))),
    "adam": (adam_like, lambda rng: adam_inputs(rng, (3, 5))),
    "chain": (chain, lambda rng: (randn(rng, 3, 5), randn(rng, 3, 5))),
}


def scalar_loss(f):
    def loss(*args):
        return sum(jnp.sum(jnp.sin(o)) for o in jax.tree_util.tree_leaves(f(*args)))
    return loss


# ---- grad --------------------------------------------------------------------------------

def _grad_args(name, rng, dtype):
    args = FUNCS[name][1](rng)
    if name == "chain":  # keep x away from the where() switching point, x == 0
        args = (np.where(np.abs(args[0]) < 0.2, args[0] + 0.5, args[0]), args[1])
    return tuple(np.asarray(a, dtype) for a in args)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_check_grads_order1_float32(name, rng):
    f = pfjax.fuse(FUNCS[name][0])
    check_grads(f, _grad_args(name, rng, np.float32), order=1, modes=("fwd", "rev"),
                atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_check_grads_order2_float64(name, rng):
    # second-order finite differences are too noisy in float32; float64 keeps them exact-ish
    with jax.enable_x64(True):
        f = pfjax.fuse(FUNCS[name][0])
        args = _grad_args(name, rng, np.float64)
        check_grads(f, args, order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)
        assert num_kernel_calls(f, *args) >= 1


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_grad_matches_jit(name, rng):
    f, make = FUNCS[name]
    args = make(rng)
    argnums = tuple(range(len(args)))
    want = jax.jit(jax.value_and_grad(scalar_loss(f), argnums=argnums))(*args)
    fused = pfjax.fuse(f)
    got = jax.value_and_grad(scalar_loss(fused), argnums=argnums)(*args)
    assert_tree_close(got, want, **GRAD)
    got = jax.jit(jax.value_and_grad(scalar_loss(fused), argnums=argnums))(*args)
    assert_tree_close(got, want, **GRAD)


def test_grad_of_fused_inside_larger_function(rng):
    x, w, b = randn(rng, 7, 13), randn(rng, 13, 5), randn(rng, 5)
    fused = pfjax.fuse(gelu_erf)

    def loss(fn, x, w, b):
        return jnp.mean(fn(x, 0.5) @ w * fn(b, 1.0)[None, :])

    want = jax.jit(jax.grad(loss, argnums=(1, 2, 3)), static_argnums=0)(gelu_erf, x, w, b)
    got = jax.grad(loss, argnums=(1, 2, 3))(fused, x, w, b)
    assert_tree_close(got, want, **GRAD)


def test_fuse_of_a_transformed_fused_function(rng):
    """fuse(jax.grad(fuse(f))) is the gradient (jax.grad's wrapper carries the inner
    Fused's attributes, which must not replace the outer one's function), and the inner
    groups are planned again with their surroundings: the backward is one group."""
    x, b = randn(rng, 7, 13), randn(rng, 13)
    loss = lambda x, b: jnp.sum(gelu_tanh(x, b) ** 2)
    g = jax.grad(pfjax.fuse(loss))
    outer = pfjax.fuse(g)
    assert outer.__name__ == g.__name__
    want = jax.jit(jax.grad(loss))(x, b)
    assert_tree_close(outer(x, b), want, **GRAD)
    assert_tree_close(jax.jit(outer)(x, b), want, **GRAD)
    report = pfjax.explain(g, x, b)
    assert [tuple(v.aval.shape) for v in report.plan.program.outvars] == [x.shape]
    assert len(report.groups) == 1 and not report.left_out, report


def test_jvp_and_vjp(rng):
    x, y = randn(rng, 7, 13), randn(rng, 7, 13)
    tx, ty = randn(rng, 7, 13), randn(rng, 7, 13)
    fused = pfjax.fuse(chain)
    assert_tree_close(jax.jvp(fused, (x, y), (tx, ty)), jax.jit(lambda *a: jax.jvp(chain, a[:2], a[2:]))(x, y, tx, ty), **GRAD)
    out, pull = jax.vjp(fused, x, y)
    want_out, want_pull = jax.vjp(chain, x, y)
    np.testing.assert_allclose(out, want_out, **TRANS)
    assert_tree_close(pull(tx), want_pull(tx), **GRAD)


def test_hessian_and_checkpoint(rng):
    x, b = randn(rng, 5), randn(rng, 5)
    fused = pfjax.fuse(gelu_tanh)
    h = jax.hessian(lambda x: jnp.sum(fused(x, b)))(x)
    np.testing.assert_allclose(h, jax.hessian(lambda x: jnp.sum(gelu_tanh(x, b)))(x), **GRAD)
    g = jax.grad(lambda x: jnp.sum(jax.checkpoint(fused)(x, b) ** 2))(x)
    np.testing.assert_allclose(g, jax.grad(lambda x: jnp.sum(gelu_tanh(x, b) ** 2))(x), **GRAD)


def test_grad_keeps_primal_fused_under_jit(rng):
    """The forward pass of a value_and_grad still has the fused group (primal output)."""
    x, b = randn(rng, 7, 13), randn(rng, 13)
    fused = pfjax.fuse(gelu_tanh)
    # plain forward: fused
    assert num_kernel_calls(fused, x, b) >= 1


def test_grad_stays_fused(rng):
    x, b = randn(rng, 7, 13), randn(rng, 13)
    fused = pfjax.fuse(gelu_tanh)
    # The backward (transposed tangent) chain is a kernel that recomputes the GELU from x
    # and b (no residual is saved for an elementwise chain), so grad needs no forward
    # kernel; value_and_grad runs the primal one as well.
    assert num_kernel_calls(jax.grad(lambda x, b: jnp.sum(fused(x, b))), x, b) >= 1
    assert num_kernel_calls(jax.value_and_grad(lambda x, b: jnp.sum(fused(x, b))), x, b) >= 2
    want = jax.grad(lambda x, b: jnp.sum(gelu_tanh(x, b)), argnums=(0, 1))(x, b)
    got = jax.jit(jax.grad(lambda x, b: jnp.sum(fused(x, b)), argnums=(0, 1)))(x, b)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **TRANS)


def test_jvp_stays_fused(rng):
    x, b = randn(rng, 7, 13), randn(rng, 13)
    fused = pfjax.fuse(gelu_tanh)
    assert num_kernel_calls(lambda x, b: jax.jvp(fused, (x, b), (x, b)), x, b) >= 2


# ---- vmap --------------------------------------------------------------------------------

def test_vmap_all_batched(rng):
    x, y = randn(rng, 4, 7, 13), randn(rng, 4, 7, 13)
    fused = pfjax.fuse(swiglu)
    want = jax.jit(jax.vmap(swiglu))(x, y)
    np.testing.assert_allclose(jax.vmap(fused)(x, y), want, **TRANS)
    np.testing.assert_allclose(jax.jit(jax.vmap(fused))(x, y), want, **TRANS)
    assert num_kernel_calls(jax.vmap(fused), x, y) >= 1


@pytest.mark.parametrize("in_axes,out_axes", [((0, None), 0), ((1, None), 1), ((None, 0), 0),
                                              ((2, 0), 1)])
def test_vmap_some_arguments(in_axes, out_axes, rng):
    n = 3
    x_shape = [7, 13]
    if in_axes[0] is not None:
        x_shape.insert(in_axes[0], n)
    b_shape = [13] if in_axes[1] is None else [n, 13]
    x, b = randn(rng, *x_shape), randn(rng, *b_shape)
    fused = pfjax.fuse(gelu_erf)
    want = jax.jit(jax.vmap(gelu_erf, in_axes=in_axes, out_axes=out_axes))(x, b)
    vf = jax.vmap(fused, in_axes=in_axes, out_axes=out_axes)
    np.testing.assert_allclose(vf(x, b), want, **TRANS)
    np.testing.assert_allclose(jax.jit(vf)(x, b), want, **TRANS)
    assert num_kernel_calls(vf, x, b) >= 1


def test_vmap_multiple_outputs_and_pytrees(rng):
    p, g, m, v = adam_inputs(rng, (5, 7, 13))
    fused = pfjax.fuse(adam_like)
    want = jax.jit(jax.vmap(adam_like, in_axes=(0, 0, 0, 0), out_axes=(0, 1, 2)))(p, g, m, v)
    vf = jax.vmap(fused, in_axes=(0, 0, 0, 0), out_axes=(0, 1, 2))
    assert_tree_close(vf(p, g, m, v), want, **TRANS)
    assert num_kernel_calls(vf, p, g, m, v) >= 1


def test_vmap_inside_jit_with_fused_inside(rng):
    x, b = randn(rng, 4, 7, 13), randn(rng, 13)
    fused = pfjax.fuse(gelu_tanh)

    @jax.jit
    def outer(x, b):
        return jax.vmap(lambda xi: fused(xi, b) * 2.0)(x)

    np.testing.assert_allclose(outer(x, b), 2.0 * jax.jit(gelu_tanh)(x, b), **TRANS)


def test_nested_vmap(rng):
    x, y = randn(rng, 2, 3, 7, 13), randn(rng, 3, 7, 13)
    fused = pfjax.fuse(chain)
    vf = jax.vmap(jax.vmap(fused, in_axes=(0, 0)), in_axes=(0, None))
    want = jax.jit(jax.vmap(jax.vmap(chain, in_axes=(0, 0)), in_axes=(0, None)))(x, y)
    np.testing.assert_allclose(vf(x, y), want, **TRANS)
    assert num_kernel_calls(vf, x, y) >= 1


def test_vmap_of_grad(rng):
    x, b = randn(rng, 4, 13), randn(rng, 13)
    fused = pfjax.fuse(gelu_erf)
    per_example = jax.vmap(jax.grad(lambda xi, b: jnp.sum(fused(xi, b) ** 2)), in_axes=(0, None))
    want = jax.jit(jax.vmap(jax.grad(lambda xi, b: jnp.sum(gelu_erf(xi, b) ** 2)), in_axes=(0, None)))(x, b)
    np.testing.assert_allclose(per_example(x, b), want, **GRAD)
    np.testing.assert_allclose(jax.jit(per_example)(x, b), want, **GRAD)


def test_grad_of_vmap(rng):
    x, b = randn(rng, 4, 13), randn(rng, 13)
    fused = pfjax.fuse(swiglu)
    loss = lambda fn: lambda x, b: jnp.sum(jax.vmap(fn, in_axes=(0, None))(x, b))  # noqa: E731
    want = jax.jit(jax.grad(loss(swiglu), argnums=(0, 1)))(x, b)
    assert_tree_close(jax.grad(loss(fused), argnums=(0, 1))(x, b), want, **GRAD)
