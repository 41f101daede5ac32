"""Property-based: random elementwise programs give what `jax.jit` gives."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pfjax

# ops: name -> (arity, function). Every op is total on float32 (NaN/Inf allowed).
UNARY = {
    "neg": lambda a: -a,
    "abs": jnp.abs,
    "exp": lambda a: jnp.exp(jnp.clip(a, -30.0, 30.0)),
    "log_abs1": lambda a: jnp.log(jnp.abs(a) + 1.0),
    "tanh": jnp.tanh,
    "logistic": jax.nn.sigmoid,
    "sqrt_abs": lambda a: jnp.sqrt(jnp.abs(a)),
    "pow2": lambda a: a ** 2,
    "pow3": lambda a: a ** 3,
    "pow_neg1": lambda a: (jnp.abs(a) + 1.0) ** -1,
    "pow_neg2": lambda a: (jnp.abs(a) + 0.5) ** -2,
}
BINARY = {
    "add": jnp.add,
    "sub": jnp.subtract,
    "mul": jnp.multiply,
    "div": lambda a, b: a / (jnp.abs(b) + 0.5),
    "max": jnp.maximum,
    "min": jnp.minimum,
    "where_gt": lambda a, b: jnp.where(a > b, a, b * 0.5),
    "where_le": lambda a, b: jnp.where(a <= 0.25, b, -a),
    "where_ne": lambda a, b: jnp.where(a != b, a - b, 1.0),
}
# exp/tanh/logistic/log/sqrt differ by a few ulp between implementations; chains of them
# compound this, so the tolerance is relative to the chain length.
TRANSCENDENTAL = {"exp", "log_abs1", "tanh", "logistic", "sqrt_abs", "div", "pow_neg1",
                  "pow_neg2"}


@st.composite
def programs(draw):
    """(shapes of the inputs, list of instructions).

    An instruction is (op, operand indices, extra): operands index the value list, which
    starts with the inputs; a binary op may take a scalar literal (index None, extra the
    literal) as its second operand.
    """
    rows = draw(st.sampled_from([1, 3, 7]))
    cols = draw(st.sampled_from([1, 5, 13, 129]))
    full = (rows, cols)
    n_in = draw(st.integers(1, 3))
    # the first input is full-shaped; others may be broadcast operands (1, C) or (C,)
    shapes = [full] + [draw(st.sampled_from([full, (1, cols), (cols,), ()])) for _ in range(n_in - 1)]
    n_ops = draw(st.integers(2, 10))
    instrs = []
    n_vals = n_in
    for _ in range(n_ops):
        if draw(st.booleans()):
            op = draw(st.sampled_from(sorted(UNARY)))
            instrs.append((op, (draw(st.integers(0, n_vals - 1)),), None))
        else:
            op = draw(st.sampled_from(sorted(BINARY)))
            a = draw(st.integers(0, n_vals - 1))
            if draw(st.integers(0, 3)) == 0:
                lit = draw(st.sampled_from([0.5, -1.0, 2.0, 3.25, 0.0, -0.125]))
                instrs.append((op, (a, None), lit))
            else:
                instrs.append((op, (a, draw(st.integers(0, n_vals - 1))), None))
        n_vals += 1
    return shapes, instrs


def build(n_inputs, instrs):
    """The program as a function. Every computed value that no later op reads is an output,
    so there is no dead code (see test_dead_value_sharing_an_input for why that matters)."""
    used = {i for _, operands, _ in instrs for i in operands if i is not None}
    leaves = [n_inputs + k for k in range(len(instrs)) if n_inputs + k not in used]

    def f(*inputs):
        vals = list(inputs)
        for op, operands, lit in instrs:
            if op in UNARY:
                vals.append(UNARY[op](vals[operands[0]]))
            else:
                a = vals[operands[0]]
                b = lit if operands[1] is None else vals[operands[1]]
                vals.append(BINARY[op](a, b))
        return tuple(vals[i] for i in leaves)
    return f


def describe(shapes, instrs):
    return f"shapes={shapes}\n" + "\n".join(
        f"  v{k}: {op}{operands}{'' if lit is None else f' lit={lit}'}"
        for k, (op, operands, lit) in enumerate(instrs, start=len(shapes)))


def assert_close_nan_aware(got, want, rtol, atol, msg):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, msg
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=msg)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=msg)


SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32)


def random_inputs(shapes, seed, specials):
    """float32 inputs of the given shapes, with a few NaN / inf / signed zeros if specials."""
    rng = np.random.default_rng(seed)
    inputs = []
    for s in shapes:
        x = (rng.standard_normal(s) * 2.0).astype(np.float32)
        if specials and x.size > 1:
            flat = x.reshape(-1)
            idx = rng.choice(flat.size, size=min(3, flat.size), replace=False)
            flat[idx] = rng.choice(SPECIALS, size=idx.size)
        inputs.append(x)
    return inputs


# derandomize: CI sees the same 25 programs every run (a failure is reproducible, never
# flaky); run with a larger max_examples and derandomize=False locally to hunt further.
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(prog=programs(), seed=st.integers(0, 2**31 - 1), specials=st.booleans())
def test_random_elementwise_programs(prog, seed, specials):
    shapes, instrs = prog
    inputs = random_inputs(shapes, seed, specials)
    f = build(len(shapes), instrs)
    msg = describe(shapes, instrs)
    want = jax.jit(f)(*inputs)
    got = pfjax.fuse(f)(*inputs)
    n_trans = sum(op in TRANSCENDENTAL for op, _, _ in instrs)
    rtol = 1e-6 if n_trans == 0 else 2e-6 * (1 + n_trans)
    # absolute tolerance scaled by the largest finite magnitude (cancellation in add/sub)
    for g, w in zip(got, want):
        finite = np.abs(np.asarray(w)[np.isfinite(w)])
        scale = float(finite.max()) if finite.size else 1.0
        assert_close_nan_aware(g, w, rtol, 1e-6 * max(1.0, scale) * (1 + n_trans), msg)


def test_dead_value_sharing_an_input(rng):
    x, y = (rng.standard_normal((7, 129)).astype(np.float32) for _ in range(2))

    def with_dead_binary(x, y):
        dead = x + y  # noqa: F841
        return x - 1.0

    def with_dead_unary(x, y):
        dead = x * 2.0  # noqa: F841
        return x - 1.0

    for f in (with_dead_binary, with_dead_unary):
        np.testing.assert_allclose(pfjax.fuse(f)(x, y), x - 1.0, rtol=1e-6, atol=1e-6)


def test_broadcast_chain_beside_full_chain(rng):
    x = rng.standard_normal((7, 13)).astype(np.float32)
    y = rng.standard_normal((13,)).astype(np.float32)

    def f(x, y):
        return x * 2.0, y * jnp.exp(y) + x

    got, want = pfjax.fuse(f)(x, y), jax.jit(f)(x, y)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-6)


# Half precision: pfjax computes a bf16 / f16 chain in float32 and rounds once, at its
# store (README, Accuracy), so the oracle is the float32 program on the same inputs with
# its outputs rounded to the half type. Roundings of float32 results a few ulp apart can
# land one half ulp apart, and an op pfjax leaves to XLA (a lone scalar op) rounds its
# intermediates as XLA does: a few eps of the half type, relative. (Bitwise conversions
# are tests/test_dtypes.py's; this catches wrong lanes, loads and stores.)
@pytest.mark.parametrize("half", ["bfloat16", "float16"])
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(prog=programs(), seed=st.integers(0, 2**31 - 1), specials=st.booleans())
def test_random_half_precision_programs(prog, seed, specials, half):
    shapes, instrs = prog
    dtype = jnp.dtype(half)
    inputs = [x.astype(dtype) for x in random_inputs(shapes, seed, specials)]
    f = build(len(shapes), instrs)
    msg = describe(shapes, instrs) + f"\n  dtype={half}"
    want = [np.asarray(w.astype(dtype)) for w in
            jax.jit(f)(*[jnp.asarray(x, jnp.float32) for x in inputs])]
    got = pfjax.fuse(f)(*inputs)
    eps = float(jnp.finfo(dtype).eps)
    for g, w in zip(got, want):
        assert np.asarray(g).dtype == dtype, msg
        g32, w32 = np.asarray(g, np.float32), np.asarray(w, np.float32)
        finite = np.abs(w32[np.isfinite(w32)])
        scale = float(finite.max()) if finite.size else 1.0
        # absolute: cancellation of intermediates XLA rounded to the half type
        assert_close_nan_aware(g32, w32, 4 * eps, 4 * eps * max(1.0, scale), msg)
