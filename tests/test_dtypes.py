"""Per-dtype chains and conversions: pfjax equals `jax.jit` of the same function."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import pfjax

KERNEL_CALL = re.compile(r"custom_call @pfjax_\w+")
I32 = np.iinfo(np.int32)


def num_kernel_calls(f, *args) -> int:
    return len(KERNEL_CALL.findall(jax.jit(pfjax.fuse(f)).lower(*args).as_text()))


def compare(f, *args, rtol=0.0, atol=0.0, fused_expected=True):
    """Leaves of pfjax.fuse(f)(*args) vs jax.jit(f)(*args): same dtype and shape; exact for
    integers and bools, NaN where the reference has NaN, close within rtol/atol otherwise."""
    want = jax.tree_util.tree_leaves(jax.jit(f)(*args))
    fused = pfjax.fuse(f)
    for got in (jax.tree_util.tree_leaves(fused(*args)),
                jax.tree_util.tree_leaves(jax.jit(fused)(*args))):
        assert len(got) == len(want)
        for k, (g, w) in enumerate(zip(got, want)):
            g, w = np.asarray(g), np.asarray(w)
            assert g.dtype == w.dtype and g.shape == w.shape, (k, g.dtype, w.dtype, g.shape, w.shape)
            if jnp.issubdtype(w.dtype, jnp.inexact):
                g64, w64 = g.astype(np.float64), w.astype(np.float64)
                np.testing.assert_array_equal(np.isnan(g64), np.isnan(w64), err_msg=f"output {k}")
                np.testing.assert_allclose(g64, w64, rtol=rtol, atol=atol, equal_nan=True,
                                           err_msg=f"output {k}")
            else:
                np.testing.assert_array_equal(g, w, err_msg=f"output {k}")
    if fused_expected:
        assert num_kernel_calls(f, *args) >= 1


# ---- floating chains ---------------------------------------------------------------------

def float_chain(x, y):
    a = jnp.tanh(x) * y + 1.0
    b = jnp.exp(-jnp.abs(x)) / (jnp.abs(y) + 1.0)
    c = jax.nn.gelu(x) - jax.nn.sigmoid(y)
    d = jnp.where(x > y, jnp.sqrt(jnp.abs(x)), jnp.log(jnp.abs(y) + 1.0))
    return a, b, c, d, jnp.maximum(x, y) * x ** 2, x > y


FLOAT_TOL = {
    np.float32: dict(rtol=2e-6, atol=1e-6),
    jnp.bfloat16: dict(rtol=1e-2, atol=1e-2),
    np.float16: dict(rtol=2e-3, atol=2e-3),
}


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16, np.float16],
                         ids=["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape", [(7, 13), (1000,)])
def test_float_chain(dtype, shape, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal(shape).astype(dtype)
    compare(float_chain, x, y, **FLOAT_TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16], ids=["bfloat16", "float16"])
def test_low_precision_special_values(dtype):
    info = ml_dtypes.finfo(dtype)
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, float(info.max), float(info.min),
                  float(info.tiny), 3.0], np.float32).astype(dtype)
    y = np.full_like(x, 2)
    f = lambda x, y: (x * y, x + y, -x, jnp.maximum(x, y), x / y, jnp.exp(x))  # noqa: E731
    compare(f, x, y, **FLOAT_TOL[dtype])
    got, want = pfjax.fuse(f)(x, y), jax.jit(f)(x, y)
    np.testing.assert_array_equal(np.signbit(np.asarray(got[2], np.float32)),
                                  np.signbit(np.asarray(want[2], np.float32)))


def test_mixed_precision_chain(rng):
    x = rng.standard_normal((7, 13)).astype(jnp.bfloat16)
    s = rng.standard_normal((13,)).astype(np.float32)

    def f(x, s):
        h = x.astype(jnp.float32) * s
        return jax.nn.silu(h).astype(jnp.bfloat16), (h * 2.0).astype(np.float16)

    compare(f, x, s, rtol=1e-2, atol=2e-3)


def _x64_context():
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    pytest.skip("jax.enable_x64 is not available")


def test_float64_chain(rng):
    with _x64_context():
        x = rng.standard_normal((7, 13))
        y = rng.standard_normal((7, 13))
        assert jnp.asarray(x).dtype == jnp.float64
        compare(float_chain, x, y, rtol=1e-12, atol=1e-13)

        def conv(x):
            return x.astype(jnp.float32), (x * 1e10).astype(jnp.int64), (x * 3.0).astype(jnp.int32)

        compare(conv, x, rtol=0, atol=0)


# ---- integer and bool chains ---------------------------------------------------------------

def int_chain(x, y):
    return (x * y + 3 - x, jnp.maximum(x, y), jnp.minimum(x, -y), -x, jnp.abs(x), x > y, x == y,
            x << 2, x >> 1, x & y, x | y, x ^ y, ~x, jnp.where(x < y, x, y * 2), x ** 2)


def test_int32_chain(rng):
    x = rng.integers(-1000, 1000, (7, 13), dtype=np.int32)
    y = rng.integers(-1000, 1000, (7, 13), dtype=np.int32)
    compare(int_chain, x, y)


def test_int32_overflow_wraps(rng):
    x = rng.integers(I32.max // 2, I32.max, (1000,), dtype=np.int32)
    y = rng.integers(2, 1000, (1000,), dtype=np.int32)
    compare(lambda x, y: (x + x, x * y, -x - y * 3, x ** 3), x, y)


def test_uint8_chain(rng):
    x = rng.integers(0, 256, (7, 13), dtype=np.uint8)
    y = rng.integers(0, 256, (7, 13), dtype=np.uint8)
    compare(lambda x, y: (x + y, x * y, x - y, jnp.maximum(x, y), jnp.minimum(x, y), x > y,
                          x // (y | 1), x % (y | 1), x >> 1, x & y, x ^ y, jnp.where(x > 128, x, y)),
            x, y)


def test_bool_chain(rng):
    x = rng.random((7, 13)) > 0.5
    y = rng.random((7, 13)) > 0.5
    z = rng.standard_normal((7, 13)).astype(np.float32)
    compare(lambda x, y, z: (x & y, x | ~y, x ^ y, jnp.where(x, y, ~y), x == y, x != y,
                             jnp.where(x & ~y, z, -z), (z > 0) | x),
            x, y, z, rtol=0, atol=0)


INT_EDGE_X = np.array([I32.min, I32.min, I32.min, 7, -7, 7, -7, 0, 5, -5, I32.max, I32.max, 1, -1],
                      np.int32)
INT_EDGE_Y = np.array([-1, 0, 1, 2, 2, -2, -2, 0, 0, 0, -1, 0, I32.min, I32.min], np.int32)


def int_div_fn(x, y):
    return (jax.lax.div(x, y), jax.lax.rem(x, y), x // y, x % y, jnp.abs(x), -x,
            jax.lax.sign(x), x * y)


def test_int_division_edge_cases():
    compare(int_div_fn, INT_EDGE_X, INT_EDGE_Y)


def test_int_division_random(rng):
    x = rng.integers(-10_000, 10_000, (7, 13), dtype=np.int32)
    y = rng.integers(-20, 20, (7, 13), dtype=np.int32)  # includes zeros
    compare(int_div_fn, x, y)


def test_uint8_division_by_zero(rng):
    x = rng.integers(0, 256, (1000,), dtype=np.uint8)
    y = rng.integers(0, 4, (1000,), dtype=np.uint8)
    compare(lambda x, y: (jax.lax.div(x, y), jax.lax.rem(x, y), x + y), x, y)


# ---- conversions ---------------------------------------------------------------------------

F2I = np.array([np.nan, np.inf, -np.inf, 3e9, -3e9, 2.1e9, -2.2e9, 300.7, -1.5, 255.9, 256.0,
                -0.9, -0.0, 1e20, 2.5, -2.5, 127.5, -128.5, 65535.9, 0.5], np.float32)


def to_all(x):
    return (x.astype(jnp.int32), x.astype(jnp.uint8), x.astype(jnp.int8), x.astype(jnp.uint32),
            x.astype(jnp.int16), x.astype(jnp.bool_), x.astype(jnp.bfloat16), x.astype(jnp.float16),
            x.astype(jnp.float32) * 2.0)


def test_float_to_int_saturation_and_nan():
    compare(lambda x: to_all(x * 1.0 + 0.0), F2I)


def test_float_to_int_random(rng):
    x = (rng.standard_normal((7, 13)) * 1e3).astype(np.float32)
    compare(lambda x: to_all(jnp.tanh(x) * x), x, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16], ids=["bfloat16", "float16"])
def test_low_precision_to_int(dtype):
    with np.errstate(over="ignore"):
        x = F2I.astype(dtype)  # values beyond the type's range become +-inf
    compare(lambda x: to_all(-x), x, **FLOAT_TOL[dtype])


def test_int_to_float_and_narrowing(rng):
    x = np.concatenate([INT_EDGE_X, rng.integers(-100_000, 100_000, 50, dtype=np.int32)])
    compare(lambda x: ((x * 3).astype(jnp.float32), x.astype(jnp.uint8), x.astype(jnp.int8),
                       x.astype(jnp.bool_), x.astype(jnp.bfloat16), x.astype(jnp.float16),
                       (x.astype(jnp.float32) + 0.5).astype(jnp.int32)), x)


def test_uint8_bool_to_float(rng):
    u = rng.integers(0, 256, (3, 1, 129), dtype=np.uint8)
    b = rng.random((3, 1, 129)) > 0.5
    compare(lambda u, b: (u.astype(jnp.float32) / 255.0 - b, u.astype(jnp.int32) * 3 - 7,
                          b.astype(jnp.uint8) + u, b.astype(jnp.bfloat16) * 2),
            u, b, rtol=1e-6, atol=1e-6)


# ---- half-precision vector loops -----------------------------------------------------------

def _half_specials(dtype, n, rng):
    """n random values of dtype with NaN, +-inf, -0, the largest, the smallest normal and
    subnormal ones, and values that round, in both the whole vectors and the remainder."""
    info = ml_dtypes.finfo(dtype)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    specials = [np.nan, np.inf, -np.inf, -0.0, float(info.max), -float(info.max),
                float(info.tiny), float(info.smallest_subnormal), -float(info.smallest_subnormal) * 3]
    for k, v in enumerate(specials):
        x[(k * 37) % (n - 8)] = v  # spread over the vector part
        x[n - 1 - k % 7] = v if k < 7 else x[n - 1 - k % 7]  # and the remainder
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("stream", ["0", "1"])
def test_half_loops_run_over_vectors_and_convert_exactly(monkeypatch, rng, dtype, stream):
    """bf16 / f16 loops of whole vectors (pfjax::load_bf16, store_f16, round_bf16, ...):
    conversions and exact operations equal XLA bit for bit, on rows whose output blocks are
    64-byte aligned and rows whose are not (streamed stores then go through the tile)."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", stream)
    x = _half_specials(dtype, 5 * 1001, rng).reshape(5, 1001)
    y = _half_specials(dtype, 1001, rng)
    z = rng.standard_normal((5, 1001)).astype(np.float32) * 1e3
    # exact ties for both roundings (to bf16: low 16 bits 0x8000; to f16: low 13 bits
    # 0x1000), above even and odd mantissas, and NaNs whose payload sits in the low bits
    bits = z.view(np.uint32).ravel()
    bits[:64:2] = (bits[:64:2] & ~np.uint32(0xFFFF)) | np.uint32(0x8000)
    bits[1:64:2] = (bits[1:64:2] & ~np.uint32(0x1FFF)) | np.uint32(0x1000)
    bits[64:68] = [0x7F800001, 0xFF800001, 0x7F808000, 0x7FC00001]
    bits[-40:] = bits[:40]  # in the remainder too
    other = np.float16 if dtype is jnp.bfloat16 else jnp.bfloat16

    def f(x, y, z):
        # (the conversions read their inputs beside other work: pfjax leaves a lone
        # conversion to XLA)
        return (-x, x.astype(jnp.float32) * 2.0, z.astype(dtype), z * 2.0, x.astype(other),
                jnp.where(x > y, x, y) * 1.0, jnp.abs(y) + x * 0.0,
                z.astype(dtype).astype(jnp.float32) * 3.0)  # rounded in registers

    want = jax.jit(f)(x, y, z)
    got = pfjax.fuse(f)(x, y, z)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        g_bits = np.asarray(g).view(np.uint16 if g.dtype.itemsize == 2 else np.uint32)
        w_bits = np.asarray(w).view(g_bits.dtype)
        nan = np.isnan(np.asarray(w, np.float32))
        np.testing.assert_array_equal(np.isnan(np.asarray(g, np.float32)), nan)
        np.testing.assert_array_equal(g_bits[~nan], w_bits[~nan])
    sources = [open(g.source_path).read() for g in pfjax.explain(f, x, y, z).groups]
    name = "bf16" if dtype is jnp.bfloat16 else "f16"
    assert any(f"pfjax::load_{name}(" in s and f"pfjax::store_{name}(" in s for s in sources)
    assert any("pfjax::round_" in s for s in sources)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, np.float16], ids=["bfloat16", "float16"])
def test_half_vector_loops_with_calls_and_reductions(rng, dtype):
    """tanh-GELU (a logistic), SiLU (a logistic) and a layernorm over a bf16 / f16 input:
    vector loops with calls and float32 accumulators, within one rounding of XLA."""
    x = _half_specials(dtype, 3 * 2003, rng).reshape(3, 2003)
    x = np.where(np.isfinite(x.astype(np.float32)), x, np.asarray(1.5, dtype))
    b = (rng.standard_normal(2003)).astype(dtype)

    def layernorm(x):
        h = x.astype(jnp.float32)
        m = h.mean(-1, keepdims=True)
        v = ((h - m) ** 2).mean(-1, keepdims=True)
        return ((h - m) * jax.lax.rsqrt(v + 1e-5)).astype(dtype)

    tol = FLOAT_TOL[dtype]
    compare(lambda x, b: jax.nn.gelu(x + b, approximate=True), x, b, **tol)
    compare(lambda x, b: jax.nn.silu(x) * b, x, b, **tol)
    compare(layernorm, x, **tol)
    # reductions of the half type itself (float32 accumulators in both loop forms)
    compare(lambda x: jax.nn.softmax(x, axis=-1), x, **tol)
    compare(lambda x: (jnp.max(x, axis=-1), jnp.min(x * 2, axis=-1)), x)
    plain = rng.standard_normal((3, 2003)).astype(dtype)  # (a sum of +-max cancels)
    compare(lambda x: jnp.sum(x, axis=-1, dtype=jnp.float32) * 2, plain, rtol=1e-5, atol=1e-4)
    source = open(pfjax.explain(lambda x, b: jax.nn.gelu(x + b, approximate=True), x, b)
                  .groups[0].source_path).read()
    assert "pfjax::math::one_plus_exp2(v" in source and "pfjax::load_" in source
    source = open(pfjax.explain(lambda x: jax.nn.softmax(x, axis=-1), x)
                  .groups[0].source_path).read()
    assert "pfjax::acc_max(" in source and "pfjax::math::exp_v(v" in source
