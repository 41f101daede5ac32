"""Short packed rows (2 to 16 floats) reduced inside the vector registers
(codegen/cpu_segments.py): XLA's answer for every reduction kind, NaN, ties and odd row
counts, per-row and per-position operands, grads; and the staged plan where the segment
plan does not hold."""
from __future__ import annotations

import ctypes
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import pfjax
from tests.kernel_abi import aligned, build_for, build_without_avx512, needs_x86_gxx
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


@pytest.mark.parametrize("case", ["tanh", "prod", "int32 rows"])
def test_other_short_rows_stay_staged(case, rng):
    """Where the segment plan does not hold, the rows are staged across the lanes."""
    x = randn(rng, 300, 8)
    f = {"tanh": lambda x: jnp.tanh(x).sum(-1),
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


# ---- per-row tails and reductions over all rows (cross-entropy over short rows) --------

def _cross_entropy(x, labels):
    lp = jax.nn.log_softmax(x, -1)
    return -jnp.mean(jnp.take_along_axis(lp, labels[..., None], -1))


def _plans(plan, monkeypatch):
    """segments: the segment plan with its per-row tail; staged: the plan it replaces."""
    from pfjax.codegen import cpu_segments
    monkeypatch.setattr(cpu_segments, "ENABLED", plan == "segments")


@pytest.mark.parametrize("plan", ["segments", "staged"])
@pytest.mark.parametrize("L", [2, 3, 7, 8, 15])
@pytest.mark.parametrize("rows", [1, 513, 1030])
def test_cross_entropy_mean_over_short_rows(plan, L, rows, rng, monkeypatch):
    """Integer labels gathered per row, log per row, a mean over all rows: one kernel
    whose units add their rows up in order (the finish adds the units). Against XLA and a
    float64 reference."""
    _plans(plan, monkeypatch)
    x = randn(rng, rows, L) * 3
    labels = rng.integers(0, L, rows).astype(np.int32)
    one_kernel(_cross_entropy, x, labels, tol=dict(rtol=2e-6, atol=2e-6))
    x64 = x.astype(np.float64)
    lse = np.log(np.exp(x64 - x64.max(-1, keepdims=True)).sum(-1)) + x64.max(-1)
    want = np.mean(lse - x64[np.arange(rows), labels])
    np.testing.assert_allclose(float(pfjax.fuse(_cross_entropy)(x, labels)), want, rtol=2e-6)
    src = _source(_cross_entropy, x, labels)
    if rows > 16:  # rows laid across the lanes, not one row per unit
        # segments with a per-row tail only where few of their lanes pad the rows
        segments = plan == "segments" and L in (2, 3, 7, 8)
        assert "stage_transpose" in src and ("pfjax::seg::" in src) == segments


@pytest.mark.parametrize("rows, L", [(2048, 10), (4096, 12)])
def test_staged_rows_take_the_vf16_exponential(rows, L, rng):
    """Rows staged across the lanes (too wide for segments that pad few lanes) run their
    exponentials in the vf16 form, reading the stage a vector at a time, not through the
    vector-function ABI's spills; with NaN, inf and masked rows, against float64."""
    x = randn(rng, rows, L) * 3
    x[5, 2], x[9, :], x[11, 1] = np.nan, -np.inf, np.inf
    labels = rng.integers(0, L, rows).astype(np.int32)
    one_kernel(_cross_entropy, x, labels, tol=dict(rtol=2e-6, atol=2e-6))
    assert "pfjax::vf16::load(&stage0[" in _source(_cross_entropy, x, labels)
    ok = np.isfinite(x).all(-1)
    x64 = x[ok].astype(np.float64)
    lse = np.log(np.exp(x64 - x64.max(-1, keepdims=True)).sum(-1)) + x64.max(-1)
    want = np.mean(lse - x64[np.arange(len(x64)), labels[ok]])
    got = pfjax.fuse(_cross_entropy)(x[ok], labels[ok])
    np.testing.assert_allclose(float(got), want, rtol=2e-6)


@pytest.mark.parametrize("plan", ["segments", "staged"])
@pytest.mark.parametrize("L", [3, 8])
def test_per_row_losses_accuracy_and_a_max_over_rows(plan, L, rng, monkeypatch):
    """Per-row losses (labels out of range give NaN, negative ones count from the end),
    the accuracy from the argmax, the largest logsumexp and a sum of squares over all rows
    in one kernel, with other kept dimensions in front; NaN and inf rows."""
    _plans(plan, monkeypatch)
    x = _with_specials(randn(rng, 3, 173, L) * 2)
    labels = rng.integers(0, L, (3, 173)).astype(np.int32)
    labels[0, 7], labels[1, 9], labels[2, 11] = -1, L + 3, -L

    def f(x, labels):
        lp = jax.nn.log_softmax(x, -1)
        losses = -jnp.take_along_axis(lp, labels[..., None], -1)[..., 0]
        hit = (jnp.argmax(x, -1) == labels).astype(jnp.float32)
        lse = jax.nn.logsumexp(x, -1)
        return losses, jnp.mean(hit), jnp.max(jnp.where(jnp.isfinite(lse), lse, -1.0)), \
            jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0) ** 2)
    fused = one_kernel(f, x, labels, tol=dict(rtol=1e-5, atol=1e-5))
    losses = np.asarray(fused(x, labels)[0])
    assert np.isnan(losses[1, 9]) and np.isfinite(losses[0, 7]) and np.isfinite(losses[2, 11])
    assert ("pfjax::seg::" in _source(f, x, labels)) == (plan == "segments")


def test_cross_entropy_over_short_rows_grads_and_vmap(rng):
    x, labels = randn(rng, 300, 7), rng.integers(0, 7, 300).astype(np.int32)
    check_grads(lambda x: pfjax.fuse(_cross_entropy)(x, labels), (x,), order=1, modes=["rev"],
                atol=1e-2, rtol=1e-2)
    xs, ls = randn(rng, 3, 300, 7), rng.integers(0, 7, (3, 300)).astype(np.int32)
    np.testing.assert_allclose(jax.vmap(pfjax.fuse(_cross_entropy))(xs, ls),
                               jax.vmap(_cross_entropy)(xs, ls), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("W", [2, 3, 7, 12])
@pytest.mark.parametrize("batch", [37, 1100])
def test_masked_softmax_over_small_square_rows(W, batch, rng):
    """(B, W, W) rows under a causal mask from iotas (int32 lane compares): the W rows of a
    batch element sit W floats apart and the batch elements W * W, so the units step
    through the rows of a block of batch elements before the next block (each input line
    is read once), and the segment plan loads and stores rows W * W apart."""
    x = _with_specials(randn(rng, batch, W, W))

    def f(x):
        mask = jnp.tril(jnp.ones((W, W), bool))
        return jax.nn.softmax(jnp.where(mask, x, -1e9), -1), jnp.sum(x * 2.0, -1), \
            jnp.argmax(jnp.where(mask, x, -jnp.inf), -1)
    one_kernel(f, x, tol=TOL)
    src = _source(f, x)
    if batch > 16:
        # the kept index of the rows comes from the unit before the block of columns
        assert src.index(f"const int64_t i0 = r % {W}") < src.index("const int64_t c0 =")
        # (the per-row results, W apart, are stored after the pass: with 16-lane segments
        # that leaves the staged plan)
        segments = W <= 8
        assert ("pfjax::seg::load_strided" in src) == segments
        assert ("pfjax::seg::store_strided" in src) == segments
        assert ("pfjax::seg::compare<" in src) == segments


@pytest.mark.parametrize("cols,lo,hi", [(9, 1, 8), (5, 0, 2), (6, 2, 5), (17, 2, 14)])
def test_rows_sliced_from_wider_rows(cols, lo, hi, rng):
    """A slice of each row (a gap between the rows): loaded per row, or gathered for
    segments of 2 lanes."""
    x = _with_specials(randn(rng, 700, cols))
    f = lambda x: (jax.nn.softmax(x[:, lo:hi], -1), jnp.argmin(x[:, lo:hi], -1))
    one_kernel(f, x, tol=TOL)
    assert "pfjax::seg::load_strided" in _source(f, x)


def _run_body(info, inputs, outputs, ranges):
    """Call the kernel body over `ranges` of units with 64-byte-aligned copies."""
    ins = [aligned(a.nbytes // 4 + 1) for a in inputs]
    for buf, a in zip(ins, inputs):
        buf.view(np.uint8)[:a.nbytes] = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
    outs = [aligned(o.nbytes // 4 + 1) for o in outputs]
    in_ptrs = (ctypes.c_void_p * len(ins))(*(b.ctypes.data for b in ins))
    out_ptrs = (ctypes.c_void_p * len(outs))(*(b.ctypes.data for b in outs))
    for lo, hi in ranges:
        info.body(in_ptrs, out_ptrs, lo, hi, 0)
    return [b.view(np.uint8)[:o.nbytes].view(o.dtype).reshape(o.shape)
            for b, o in zip(outs, outputs)]


def _avx2_program(kind, L, rng):
    """(f, args, tolerance) of the segment-plan programs built for AVX2 below."""
    if kind == "float32":
        x = _with_specials(randn(rng, 3, 347, L))
        w, s = randn(rng, L), randn(rng, 3, 347, 1)

        def f(x, w, s):
            y = x * s
            return (jax.nn.softmax(y, -1) * w, jnp.argmax(x, -1), jnp.argmin(x, -1),
                    jnp.sum(y, -1), jnp.max(x, -1), jnp.min(x, -1))
        return f, (x, w, s), dict(rtol=1e-5, atol=1e-6)
    if kind == "bf16":
        x = jnp.asarray(_with_specials(randn(rng, 777, L)), jnp.bfloat16)

        def f(x):
            return (jax.nn.softmax(x.astype(jnp.float32), -1).astype(jnp.bfloat16),
                    jnp.argmax(x, -1), jnp.max(x, -1))
        return f, (x,), dict(rtol=1e-2, atol=1e-3)
    x = _with_specials(randn(rng, 700, L + 3))  # rows of L sliced from rows of L + 3
    return (lambda x: (jax.nn.softmax(x[:, 1:L + 1], -1), jnp.argmin(x[:, 1:L + 1], -1)),
            (x,), dict(rtol=1e-5, atol=1e-6))


@needs_x86_gxx
@pytest.mark.parametrize("kind,L", [(k, L) for k in ("float32", "bf16", "strided")
                                    for L in ([2, 3, 4, 7, 8, 12, 15] if k == "float32"
                                              else [2, 5, 8, 13])])
def test_segments_built_for_avx2(kind, L, tmp_path, rng):
    """The segment plan's kernel source built for AVX2 (segments_avx2.h: vf16 as two
    halves, lane masks through vmaskmovps), whatever the machine: the same answers as XLA
    for softmax, argmax / argmin with NaN and ties, sums, max / min, per-position weights
    and per-row scales, bf16 rows, rows sliced from wider ones, over odd row counts and
    units handed out unevenly. (Rows of 16 run a row a unit, not the segment plan.)"""
    f, args, tol = _avx2_program(kind, L, rng)
    (group,) = pfjax.explain(f, *args).groups
    source = Path(group.source_path)
    want_call = {"float32": "pfjax::seg::load<", "bf16": "pfjax::seg::load_bf16<",
                 "strided": "pfjax::seg::load_strided<"}[kind]
    assert want_call in source.read_text()
    info = build_without_avx512(source, tmp_path / "avx2.so")
    inputs = [np.asarray(a) for a in args]
    inputs = [inputs[i] for i in _operand_order(info, inputs)]
    want = [np.asarray(v) for v in jax.jit(f)(*args)]
    cuts = sorted({0, 1, info.total // 3, info.total})
    got = _run_body(info, inputs, want, list(zip(cuts, cuts[1:])))
    for g, v in zip(got, want):
        np.testing.assert_allclose(g.astype(np.float32), v.astype(np.float32), **tol)


@needs_x86_gxx
@pytest.mark.parametrize("kind", ["float32", "bf16", "strided"])
def test_segments_compile_for_avx512(kind, tmp_path, rng):
    """The same sources compile for AVX-512 (segments.h's own forms) on any x86 machine,
    so a change to the shared generated text cannot break the other ISA unseen; they
    run wherever the machine has AVX-512 (the tests above)."""
    f, args, _ = _avx2_program(kind, 7, rng)
    (group,) = pfjax.explain(f, *args).groups
    build_for(Path(group.source_path), tmp_path / "avx512.so", "x86-64-v4")


def _operand_order(info, inputs):
    """The kernel's operand order (pfjax orders inputs by size): indices into inputs."""
    sizes = [info.in_sizes[i] for i in range(info.num_in)]
    order, left = [], list(range(len(inputs)))
    for n in sizes:
        i = next(i for i in left if inputs[i].size == n)
        order.append(i)
        left.remove(i)
    return order
