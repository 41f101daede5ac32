"""Short packed rows (2 to 16 floats) reduced inside the vector registers
(codegen/cpu_segments.py): XLA's answer for every reduction kind, NaN, ties and odd row
counts, per-row and per-position operands, grads; and the staged plan where the segment
plan does not hold."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import pfjax
from tests.test_e2e import randn
from tests.test_reductions import one_kernel

LENGTHS = [2, 3, 4, 7, 8, 12, 15, 16]
TOL = dict(rtol=1e-5, atol=1e-6)


def _source(f, *args) -> str:
    return "\n".join(open(g.source_path).read() for g in pfjax.explain(f, *args).groups)


def _with_specials(x):
    """NaN in row 1, +inf in row 2, a tie for the max in row 3, -inf in row 4."""
    x = np.array(x)
    rows, L = x.shape[-2], x.shape[-1]
    flat = x.reshape(-1, L)
    if len(flat) > 1:
        flat[1, L // 2] = np.nan
    if len(flat) > 2:
        flat[2, L - 1] = np.inf
    if len(flat) > 3 and L > 1:
        flat[3, 0] = flat[3, L - 1] = flat[3].max() + 1.0  # argmax: the first of the two
    if len(flat) > 4:
        flat[4, 0] = -np.inf
    return x


@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("rows", [1, 3, 513, 1030])
def test_softmax_argmax_and_reductions(L, rows, rng):
    """Rows under one vector, odd counts and counts across unit blocks (512 rows)."""
    x = _with_specials(randn(rng, rows, L))

    def f(x):
        return (jax.nn.softmax(x, -1), jnp.argmax(x, -1), jnp.argmin(x, -1),
                jax.nn.logsumexp(x, -1), jnp.sum(x * 0.5, -1), jnp.max(x, -1), jnp.min(x, -1))
    one_kernel(f, x, tol=TOL)
    src = _source(f, x)
    assert ("pfjax::seg::" in src) == ("stage_transpose" in src)  # wherever rows are staged
    if rows > 16 and L < 16:  # 16-wide rows are a vector each: row units
        assert "pfjax::seg::" in src
    finite = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
    got = np.asarray(pfjax.fuse(lambda x: jnp.sum(x, -1))(finite.astype(np.float32)))
    np.testing.assert_allclose(got, finite.sum(-1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("L", [2, 5, 8, 11])
def test_layernorm_with_per_position_weights_and_per_row_scale(L, rng):
    """Weights along the row (gathered once per unit) and a per-row operand (gathered
    across its row's lanes), with other kept dimensions in front."""
    x = randn(rng, 3, 37, L)
    w, b, s = randn(rng, L), randn(rng, L), randn(rng, 3, 37, 1)

    def f(x, w, b, s):
        y = x * s
        m = y.mean(-1, keepdims=True)
        v = ((y - m) ** 2).mean(-1, keepdims=True)
        return (y - m) * jax.lax.rsqrt(v + 1e-5) * w + b, m[..., 0]
    one_kernel(f, x, w, b, s, tol=dict(rtol=1e-4, atol=1e-5))
    src = _source(f, x, w, b, s)
    assert "pfjax::seg::positions" in src and "pfjax::seg::per_row" in src


@pytest.mark.parametrize("L", [7, 8])
def test_grads_and_vmap(L, rng):
    x, t = randn(rng, 45, L), randn(rng, 45, L)
    loss = pfjax.fuse(lambda x, t: jnp.sum(jax.nn.log_softmax(x, -1) * t))
    check_grads(loss, (x, t), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    xs = randn(rng, 3, 45, L)
    np.testing.assert_allclose(jax.vmap(pfjax.fuse(lambda x: jax.nn.softmax(x, -1)))(xs),
                               jax.nn.softmax(xs, -1), **TOL)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("L", [5, 8])
def test_half_precision_rows(dtype, L, rng):
    """Half-precision rows convert to float lanes at the load and round at the store;
    max and argmax of the halves themselves are exact."""
    x = jnp.asarray(_with_specials(randn(rng, 777, L)), dtype)

    def f(x):
        return (jax.nn.softmax(x.astype(jnp.float32), -1).astype(dtype),
                jnp.argmax(x, -1), jnp.max(x, -1))
    one_kernel(f, x, tol=dict(rtol=1e-2, atol=1e-3))
    assert "pfjax::seg::load_" in _source(f, x)


@pytest.mark.parametrize("case", ["gapped rows", "tanh", "prod", "int32 rows"])
def test_other_short_rows_stay_staged(case, rng):
    """Where the segment plan does not hold, the rows are staged across the lanes."""
    x = randn(rng, 300, 9 if case == "gapped rows" else 8)
    f = {"gapped rows": lambda x: jax.nn.softmax(x[:, 1:8], -1),
         "tanh": lambda x: jnp.tanh(x).sum(-1),
         "prod": lambda x: jnp.prod(x * 0.1 + 1.0, -1),
         "int32 rows": lambda x: jnp.sum(x * 3, -1)}[case]
    if case == "int32 rows":
        x = jnp.asarray(x * 100, jnp.int32)
    tol = TOL
    one_kernel(f, x, tol=tol)
    src = _source(f, x)
    assert "stage_transpose" in src and "pfjax::seg::" not in src


@pytest.mark.parametrize("L", [7, 8, 15])
def test_first_position_where_a_predicate_holds(L, rng):
    """argmax, argmin and the first position where a predicate holds (or a fill where it
    never does) come straight from the predicate's lane mask."""
    x = _with_specials(randn(rng, 700, L))
    x[5, 2] = 0.0  # the one row with a zero (the lanes past the row read as zeros)

    def f(x):
        pos = jax.lax.broadcasted_iota(jnp.int32, x.shape, 1)
        return (jnp.min(jnp.where(x > 1.0, pos, 1000), -1),
                jnp.min(jnp.where(x == 0.0, pos, 1000), -1), jnp.argmax(x, -1), jnp.argmin(x, -1))
    one_kernel(f, x, tol=TOL)
    assert "store_first" in _source(f, x)
