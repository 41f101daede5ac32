"""Loop forms of the CPU codegen: a row unit's last loop run one unit late inside the loop
before it (codegen/cpu_deferred), the scalar remainders' inline math (vector.scalar_tail),
the dead remainder left out where every block is whole vectors, and column loops over
pfjax::vf16. Each also built without AVX-512, where the scalar loops do the work."""
from __future__ import annotations

import ctypes
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pfjax

from kernel_abi import aligned, build_for, build_without_avx512, needs_x86_gxx

DEFERRED = "runs with the next unit's loop"


def _special_rows(x):
    """A NaN row, a row with +inf, one with -inf and one of equal values."""
    x = x.copy()
    if x.shape[0] >= 4:
        x[0, x.shape[1] // 2] = np.nan
        x[1, 3] = np.inf
        x[2, :7] = -np.inf
        x[3] = 0.25
    return x


def _sources(f, *args):
    return [Path(g.source_path).read_text() for g in pfjax.explain(f, *args).groups]


@pytest.mark.parametrize("stream", ["0", "1"])
@pytest.mark.parametrize("rows, cols", [(1, 4096), (130, 256), (7, 300), (257, 1000)])
def test_softmax_last_loop_a_unit_late(monkeypatch, rng, stream, rows, cols):
    """Softmax's store loop runs with the next row's exponentials: every row, the first and
    last of each chunk (130 and 257 rows span several) and a call of one row, matches XLA
    with the stores streamed or not, over whole vectors (256) and rows with a remainder."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", stream)
    x = _special_rows(rng.standard_normal((rows, cols)).astype(np.float32) * 3)

    def f(x):
        return jax.nn.softmax(x, axis=-1)

    got = jax.jit(pfjax.fuse(f))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(f)(x)), rtol=2e-6, atol=1e-7)
    (src,) = _sources(f, x)
    assert DEFERRED in src


@pytest.mark.parametrize("stream", ["0", "1"])
@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("cols", [1000, 512])
def test_half_softmax_late_loop_over_vectors(monkeypatch, rng, stream, dtype, cols):
    """Half softmax: the exponentials wait in a float32 tile and meet the half sum in the
    late loop's division; that loop runs over pfjax::vf16 (float lanes, one rounding at the
    store; inside the exponentials' steps where the rows are whole vectors, 512) and
    matches XLA (which rounds the exponentials to the half type first)."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", stream)
    x = _special_rows(rng.standard_normal((37, cols)).astype(np.float32) * 3).astype(dtype)

    def f(x):
        return jax.nn.softmax(x, axis=-1)

    got = np.asarray(jax.jit(pfjax.fuse(f))(x), np.float32)
    want = np.asarray(jax.jit(f)(x), np.float32)
    tol = 1e-2 if dtype is jnp.bfloat16 else 2e-3
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 1e-2)
    (src,) = _sources(f, x)
    name = "bf16" if dtype is jnp.bfloat16 else "f16"
    late = src.split(DEFERRED)[1]
    assert "pfjax::vf16::load(&tile0_p[" in late and f"pfjax::store_{name}(" in late
    assert ("if (late) {" in src) == (cols % 16 == 0)


def test_two_late_stores_read_the_input_and_the_tile(rng):
    """Softmax and log-softmax of one row from one kernel: the late loop reads the tile of
    the previous row (swapped per row), the previous row of the input (its carried index)
    and two carried per-row values."""
    x = _special_rows(rng.standard_normal((203, 515)).astype(np.float32) * 4)

    def f(x):
        m = jnp.max(x, -1, keepdims=True)
        e = jnp.exp(x - m)
        s = jnp.sum(e, -1, keepdims=True)
        return e / s, x - m - jnp.log(s)

    got = jax.jit(pfjax.fuse(f))(x)
    want = jax.jit(f)(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-6, atol=2e-6)
    assert any(DEFERRED in s for s in _sources(f, x))


@pytest.mark.parametrize("stream", ["0", "1"])
def test_deferred_loop_over_several_kept_dims_and_per_row_inputs(monkeypatch, rng, stream):
    """(B, H, S) rows: the previous row's indices are carried for every kept dimension
    (the chunks' ends fall inside H), and a per-row input read by the late loop (a
    scale per (B, H)) is carried with the row; under vmap too."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", stream)
    x = _special_rows(rng.standard_normal((5 * 7, 320)).astype(np.float32) * 3)
    x = x.reshape(5, 7, 320)
    scale = rng.standard_normal((5, 7)).astype(np.float32)

    def f(x, scale):
        return jax.nn.softmax(x, -1) * scale[..., None]

    got = jax.jit(pfjax.fuse(f))(x, scale)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(f)(x, scale)),
                               rtol=2e-6, atol=1e-7)
    assert any(DEFERRED in src for src in _sources(f, x, scale))
    batched = jax.vmap(pfjax.fuse(f))(x, scale)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(jax.vmap(f)(x, scale)),
                               rtol=2e-6, atol=1e-7)


def test_grad_through_a_deferred_softmax(rng):
    x = rng.standard_normal((9, 384)).astype(np.float32)
    t = rng.standard_normal((9, 384)).astype(np.float32)

    def loss(x):
        return jnp.sum(jax.nn.softmax(x * 1.5, -1) * t)

    got = jax.jit(jax.grad(pfjax.fuse(loss)))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(jax.grad(loss))(x)),
                               rtol=1e-5, atol=1e-6)
    from jax.test_util import check_grads
    check_grads(pfjax.fuse(loss), (x,), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_no_deferral_without_arithmetic_to_hide_behind(rng):
    """Layernorm's loops are light: its store loop stays in its unit."""
    x = rng.standard_normal((8, 512)).astype(np.float32)

    def f(x):
        m = x.mean(-1, keepdims=True)
        return (x - m) * jax.lax.rsqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-5)

    assert not any(DEFERRED in s for s in _sources(f, x))


@pytest.mark.parametrize("n", [37, 300])
def test_scalar_remainders_call_inline_math(rng, n):
    """After a vf16 loop the remainder calls exp_tail / logistic_tail (inline), never the
    vector-ABI functions, and its elements (the last n % 16 of each row) match XLA at
    exp's and logistic's ends too."""
    x = rng.standard_normal((5, n)).astype(np.float32) * 3
    x[:, -3:] = [np.nan, -100.0, 88.9]
    x[1, -5:-3] = [np.inf, -np.inf]

    def f(x):
        return jnp.exp(x) * 0.5 + jax.nn.sigmoid(x), jax.nn.gelu(x, approximate=True)

    got = jax.jit(pfjax.fuse(f))(x)
    for g, w in zip(got, jax.jit(f)(x)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=4e-6, atol=1e-6)
    for src in _sources(f, x):
        if "pfjax::vf16" not in src:
            continue
        scalar = src[src.index("#endif"):]  # after the first vf16 loop
        assert "exp_tail(" in scalar or "logistic_tail(" in scalar
        assert "math::exp_v(float" not in scalar


def test_whole_vector_rows_leave_the_dead_remainder_to_builds_without_vf16(rng):
    x = rng.standard_normal((4, 512)).astype(np.float32)
    (src,) = _sources(lambda x: jax.nn.softmax(x, -1), x)
    assert "#if !PFJAX_VF16" in src


def _run_units(info, x, out_size, ranges, stream):
    xin, out = aligned(x.size), aligned(out_size)
    xin[:] = x.reshape(-1)
    ins = (ctypes.c_void_p * 1)(xin.ctypes.data)
    outs = (ctypes.c_void_p * 1)(out.ctypes.data)
    for lo, hi in ranges:
        info.body(ins, outs, lo, hi, stream)
    return out


@needs_x86_gxx
@pytest.mark.parametrize("stream", [0, 1])
def test_deferred_softmax_built_without_avx512(tmp_path, rng, stream):
    """The same kernel source built for AVX2 (no vf16 loops): the scalar loops, the dead
    remainder's `#if !PFJAX_VF16` branch among them, compute the answer alone."""
    x = rng.standard_normal((70, 512)).astype(np.float32) * 3
    f = lambda x: jax.nn.softmax(x, -1)  # noqa: E731
    (group,) = pfjax.explain(f, x).groups
    info = build_without_avx512(Path(group.source_path), tmp_path / "avx2.so")
    out = _run_units(info, x, x.size, [(0, 1), (1, 33), (33, 70)], stream)
    np.testing.assert_allclose(out.reshape(x.shape), np.asarray(jax.jit(f)(x)), rtol=2e-6, atol=1e-7)


def _column_programs():
    return [
        ("softmax over axis 0", lambda x: jax.nn.softmax(x, axis=0)),
        ("log-softmax over axis 0", lambda x: jax.nn.log_softmax(x, axis=0)),
        ("exp mean over axis 0", lambda x: jnp.exp(x).mean(0)),
        ("logsumexp over axis 0", lambda x: jax.nn.logsumexp(x, axis=0)),
        # (NaN kept out: XLA's column max may drop it, pfjax's propagates it)
        ("max and min of exps over axis 0",
         lambda x: jnp.exp(jnp.nan_to_num(x)).max(0) - jnp.exp(-jnp.nan_to_num(x)).min(0)),
    ]


@pytest.mark.parametrize("which", range(5))
def test_column_loops_over_vf16(rng, which):
    """Column loops with an exp / log in them run over 16-column vectors: blocked sums,
    NaN-propagating max and min, per-column values loaded from their arrays; NaN, +-inf
    and -0 / +0 columns match XLA."""
    title, f = _column_programs()[which]
    x = rng.standard_normal((300, 128)).astype(np.float32) * 3
    x[17, 5], x[3, 6], x[:, 7] = np.nan, np.inf, -np.inf
    x[:, 8] = 0.0
    x[::2, 8] = -0.0
    x[:, 9] = rng.standard_normal(300).astype(np.float32) - 200.0  # exps underflow
    got = jax.jit(pfjax.fuse(f))(x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(jax.jit(f)(x))):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=3e-6, atol=1e-6,
                                   err_msg=title)
        assert np.array_equal(np.signbit(np.asarray(g)[np.asarray(w) == 0]),
                              np.signbit(np.asarray(w)[np.asarray(w) == 0])), title
    sources = _sources(f, x)
    assert any("for (int64_t j = 0; j < cn; j += 16)" in s for s in sources), title


@needs_x86_gxx
def test_column_softmax_built_without_avx512(tmp_path, rng):
    x = rng.standard_normal((300, 128)).astype(np.float32) * 3
    x[5, 3] = np.nan
    f = lambda x: jax.nn.softmax(x, axis=0)  # noqa: E731
    (group,) = pfjax.explain(f, x).groups
    source = Path(group.source_path)
    assert "j += 16" in source.read_text()
    info = build_without_avx512(source, tmp_path / "avx2.so")
    out = _run_units(info, x, x.size, [(0, 1), (1, info.total)], 0)
    np.testing.assert_allclose(out.reshape(x.shape), np.asarray(jax.jit(f)(x)), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("stream", ["0", "1"])
def test_softmax_stores_inside_the_exponential_steps(monkeypatch, rng, stream):
    """Rows of whole vectors: the previous row's stores run inside the vf16 steps of the
    exponentials (the block form stays for builds without vf16), exp(x - max) folds the
    subtraction (exp_minus_max), and rows with masked (-1e9), -inf, +inf and NaN entries,
    a row of one huge value and rows 3e5 apart match XLA, chunks' first rows included."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", stream)
    x = _special_rows(rng.standard_normal((67, 512)).astype(np.float32) * 4)
    x[5, rng.random(512) < 0.3] = -1e9
    x[6, :] = -1e9
    x[7, :] += 3e5
    x[8, 100] = 2e5
    x[9, ::3] = x[9].max() - 90.0  # denormal exponentials

    def f(x):
        return jax.nn.softmax(x, axis=-1)

    got = jax.jit(pfjax.fuse(f))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(f)(x)), rtol=2e-6, atol=1e-7)
    (src,) = _sources(f, x)
    assert "if (late) {" in src and "exp_minus_max(" in src
    block_form = src.index("the previous unit's last loop, over this block")
    assert src[:block_form].rstrip().splitlines()[-2].strip() == "#if !PFJAX_VF16"


@needs_x86_gxx
@pytest.mark.parametrize("which", ["exp_minus_max", "one_plus_exp2"])
def test_vf16_calls_compile_for_avx512(tmp_path, rng, which):
    """vec.h's AVX-512 forms of softmax's exp_minus_max and GELU's one_plus_exp2 compile
    on any x86 machine, so an AVX2-only host cannot break them unseen; they run wherever
    the machine has AVX-512 (the tests above, test_fastmath)."""
    x = rng.standard_normal((8, 512)).astype(np.float32)
    f = {"exp_minus_max": lambda x: jax.nn.softmax(x, axis=-1),
         "one_plus_exp2": lambda x: jax.nn.gelu(x, approximate=True)}[which]
    (group,) = pfjax.explain(f, x).groups
    assert f"pfjax::math::{which}(" in Path(group.source_path).read_text()
    build_for(Path(group.source_path), tmp_path / "avx512.so", "x86-64-v4")


@pytest.mark.parametrize("shift", ["min", "mean", "other max"])
def test_exp_of_other_shifts_keeps_the_plain_exp(rng, shift):
    """exp(x - m) folds only where m is at least the row max of the same x: x - min(x)
    (up to 88 here) and x - mean(x) are positive, the max of another array bounds nothing."""
    x = rng.standard_normal((16, 256)).astype(np.float32) * 12
    y = rng.standard_normal((16, 256)).astype(np.float32)

    def f(x, y):
        m = {"min": x.min(-1, keepdims=True), "mean": x.mean(-1, keepdims=True),
             "other max": y.max(-1, keepdims=True)}[shift]
        e = jnp.exp(x - m)
        return e / e.sum(-1, keepdims=True)

    got = jax.jit(pfjax.fuse(f))(x, y)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(f)(x, y)), rtol=4e-6, atol=1e-7)
    assert not any("exp_minus_max(" in s for s in _sources(f, x, y))
