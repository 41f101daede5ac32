"""Data movement fused with computation: transposes, slices, concatenation, padding,
reversal, dynamic slices, iota and reshapes, in any order, up to rank 6; one kernel each,
XLA's answer."""
from __future__ import annotations

import ctypes
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import pfjax
from pfjax.compile import plan
from pfjax.frontend import lower_group
from pfjax import gir
from pfjax.schedule import decisions
from tests.kernel_abi import aligned, build_for, kernel_info, needs_x86_gxx
from tests.test_e2e import assert_tree_close, num_kernel_calls, randn
from tests.test_reductions import one_kernel as reductions_one_kernel

TOL = dict(rtol=2e-5, atol=2e-5)
# What XLA would run for the group if it were not fused.
LEFT_OVER = re.compile(r"= \S+ (reduce|fusion|concatenate|pad|slice|transpose|reverse|"
                       r"dynamic-slice|dynamic-update-slice|iota)\(")


def one_kernel(f, *args, tol=TOL):
    return reductions_one_kernel(f, *args, tol=tol, left_over=LEFT_OVER)


# ---- each primitive, fused with elementwise work on both sides ----------------------

def rope(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


CASES = {
    "transpose": lambda x: jnp.tanh(jnp.transpose(x * 2.0, (2, 0, 1))) + 1.0,
    "transpose_middle": lambda x: jnp.swapaxes(jnp.exp(x), 0, 1) * 3.0,
    "slice": lambda x: jnp.sin(x)[1:, ::2, 3:-2] * 3.0,
    "slice_strided": lambda x: (x + 1.0)[::-2, 1::3, ::5] * 2.0,
    "rev": lambda x: jnp.flip(jnp.cos(x), (0, 2)) + x,
    "concat_last": lambda x: jnp.concatenate([jnp.exp(x), -x, x * x], axis=-1) + 1.0,
    "concat_first": lambda x: jnp.concatenate([x[:2] * 2.0, jnp.sin(x)], axis=0) - 1.0,
    "pad": lambda x: jnp.pad(jnp.sin(x), ((1, 2), (0, 1), (3, 0))) + 1.0,
    "pad_value": lambda x: jnp.pad(x * 2.0, ((0, 0), (2, 2), (1, 1)), constant_values=-7.5) * 3.0,
    "pad_negative_interior": lambda x: lax.pad(jnp.sin(x), 3.0, ((1, -1, 1), (-2, 0, 2), (0, 0, 0))) + 1.0,
    "iota": lambda x: x * jnp.arange(x.shape[-1], dtype=jnp.float32) + jnp.arange(x.shape[0])[:, None, None],
    "expand_dims": lambda x: jnp.expand_dims(jnp.exp(x), (1, 3)) * 2.0 + x[:, None, :, None],
    "squeeze_reshape": lambda x: jnp.reshape(jnp.tanh(x), (x.shape[0] * x.shape[1], x.shape[2])) * 2.0,
    "tile": lambda x: jnp.tile(jnp.exp(x) * 2.0, (2, 1, 3)) + 1.0,
    "roll": lambda x: jnp.roll(x * 2.0, 5, axis=2) + x,
    "stack": lambda x: jnp.stack([x * 2.0, jnp.exp(x)], axis=1) + 1.0,
    "transpose_then_slice_then_concat": lambda x: jnp.concatenate(
        [jnp.transpose(x, (1, 0, 2))[:, :, :4] * 2.0, jnp.transpose(jnp.exp(x), (1, 0, 2))[:, :, 4:]], -1) + 1.0,
}


@pytest.mark.parametrize("case", CASES)
def test_movement_fused_with_computation(case, rng):
    x = randn(rng, 5, 6, 17)
    one_kernel(CASES[case], x)


def test_rank6_transpose_slice_rev(rng):
    x = randn(rng, 2, 3, 4, 3, 5, 6)

    def f(x):
        y = jnp.transpose(jnp.exp(x * 0.5), (5, 3, 1, 0, 4, 2))[1:, ::2, :, :, ::-1, 1:3]
        return jnp.flip(y, 2) * 2.0 + 1.0
    one_kernel(f, x)


def test_concat_and_pad_write_each_element_once_with_nan_inf(rng):
    x = randn(rng, 7, 9)
    x[0, 0], x[1, 2], x[3, 4] = np.nan, np.inf, -np.inf

    def f(x):
        y = jnp.concatenate([x, jnp.exp(x), jnp.zeros((7, 0))], axis=1)
        return jnp.pad(y, ((1, 1), (0, 2)), constant_values=np.nan) * 2.0
    one_kernel(f, x)


def test_empty_pieces_and_results(rng):
    x = randn(rng, 4, 6)
    one_kernel(lambda x: jnp.concatenate([x[:, :0] * 2.0, jnp.exp(x)], 1) + 1.0, x)
    f = pfjax.fuse(lambda x: jnp.sin(x)[:, 3:3] * 2.0)
    assert f(x).shape == (4, 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.int32, jnp.bool_])
def test_movement_dtypes(dtype, rng):
    x = jnp.asarray(randn(rng, 6, 10) * 4).astype(dtype)
    if dtype == jnp.bool_:
        f = lambda x: jnp.logical_not(jnp.concatenate([x[:, ::-1], jnp.pad(x, ((0, 0), (1, 1)))], 1))
    else:
        f = lambda x: jnp.concatenate([jnp.flip(x, 1) * 2, jnp.pad(x + 1, ((0, 0), (1, 1)))], 1).T
    one_kernel(f, x, tol=dict(rtol=1e-2, atol=1e-2))


# ---- run-time offsets -------------------------------------------------------------------

@pytest.mark.parametrize("start", [(0, 0), (2, 3), (5, 9), (-3, 100)])  # last two clamp
def test_dynamic_slice_runtime_offsets(start, rng):
    x = randn(rng, 8, 12)

    def f(x, i, j):
        return jnp.exp(lax.dynamic_slice(x * 2.0, (i, j), (3, 4))) + 1.0
    one_kernel(f, x, jnp.int32(start[0]), jnp.int32(start[1]))


@pytest.mark.parametrize("start", [(0, 0), (2, 3), (7, -1)])
def test_dynamic_update_slice_runtime_offsets(start, rng):
    x, u = randn(rng, 8, 12), randn(rng, 3, 4)

    def f(x, u, i, j):
        return lax.dynamic_update_slice(x * 2.0, jnp.cos(u), (i, j)) + 1.0
    one_kernel(f, x, u, jnp.int32(start[0]), jnp.int32(start[1]))


def test_kv_cache_update_pattern(rng):
    cache, new = randn(rng, 2, 16, 4, 8), randn(rng, 2, 1, 4, 8)

    def f(cache, new, pos):
        return lax.dynamic_update_slice_in_dim(cache, new * 0.5, pos, axis=1) * 1.0
    one_kernel(f, cache, new, jnp.int32(5))


# ---- the workloads ---------------------------------------------------------------

def test_rope_as_users_write_it(rng):
    x = randn(rng, 2, 8, 4, 16)
    cos, sin = randn(rng, 8, 1, 16), randn(rng, 8, 1, 16)
    one_kernel(rope, x, cos, sin)


def test_head_reshuffle_with_scale(rng):
    x = randn(rng, 2, 8, 4, 16)
    one_kernel(lambda x: jnp.transpose(x, (0, 2, 1, 3)) * 0.125, x)


@pytest.mark.parametrize("perm,shape", [((0, 2, 1, 3), (3, 37, 5, 24)),
                                         ((2, 0, 3, 1, 4), (2, 3, 5, 7, 9)),
                                         ((1, 0, 2), (33, 20, 3))])
def test_outer_permutation_walks_the_input_in_order(perm, shape, rng):
    """A permutation of the outer dimensions (innermost kept) iterates in the input's
    order and scatters the writes; iotas, broadcast operands and odd extents follow it."""
    x = randn(rng, *shape)
    w = randn(rng, shape[perm[-2]], shape[-1])  # broadcast along all but the last two dims

    def f(x, w):
        t = jnp.transpose(x, perm)
        ramp = lax.broadcasted_iota(jnp.float32, t.shape, 1)
        return jnp.sin(t) * w + ramp

    one_kernel(f, x, w)
    (group,) = pfjax.explain(f, x, w).groups
    lead = next(n for n in gir.toposort(group.kernel.root)
                if n.op is gir.Op.LOAD and n.src[0].arg.shape == shape)
    outer = [s for s in lead.arg.view.strides[:-1] if s]
    assert outer == sorted(outer, reverse=True), gir.format_kernel(group.kernel)


def test_transpose_bias_activation(rng):
    x, b = randn(rng, 24, 40), randn(rng, 24)
    one_kernel(lambda x, b: jax.nn.gelu(x.T + b), x, b, tol=dict(rtol=1e-5, atol=1e-5))


def test_concat_of_elementwise_results(rng):
    a, b = randn(rng, 16, 8), randn(rng, 16, 8)
    one_kernel(lambda a, b: jnp.concatenate([a + b, a * b, jnp.tanh(a), jnp.maximum(a, b)], 1), a, b)


def test_pad_then_elementwise(rng):
    x = randn(rng, 12, 20)
    one_kernel(lambda x: jax.nn.relu(jnp.pad(x, ((2, 2), (3, 3))) * 2.0 - 0.5), x)


def test_mean_over_transposed_shifted_matrix(rng):
    x = randn(rng, 48, 33)
    one_kernel(lambda x: jnp.mean(jnp.transpose(x - 1.5), axis=0), x)


def test_softmax_over_concatenated_rows(rng):
    a, b = randn(rng, 6, 10), randn(rng, 6, 7)
    one_kernel(lambda a, b: jax.nn.softmax(jnp.concatenate([a, b * 2.0], 1), axis=-1), a, b)


# ---- transformations ---------------------------------------------------------------------

def test_rope_grad_and_vmap(rng):
    from jax.test_util import check_grads
    x = randn(rng, 2, 4, 2, 8)
    cos, sin = randn(rng, 4, 1, 8), randn(rng, 4, 1, 8)
    fused = pfjax.fuse(rope)
    check_grads(lambda x: fused(x, cos, sin), (x,), order=1, modes=("rev", "fwd"),
                              atol=2e-2, rtol=2e-2)
    xs = randn(rng, 3, 2, 4, 2, 8)
    got = jax.jit(jax.vmap(fused, in_axes=(0, None, None)))(xs, cos, sin)
    assert_tree_close(got, jax.vmap(rope, in_axes=(0, None, None))(xs, cos, sin), **TOL)
    g = jax.jit(jax.grad(lambda x: jnp.sum(fused(x, cos, sin) ** 2)))(x)
    assert_tree_close(g, jax.grad(lambda x: jnp.sum(rope(x, cos, sin) ** 2))(x), rtol=1e-4, atol=1e-4)


def test_pad_slice_grad(rng):
    x = randn(rng, 5, 7)

    def f(x):
        return jnp.sum(jnp.pad(jnp.sin(x), ((1, 0), (2, 1)))[::2] ** 2)
    got = jax.jit(jax.grad(pfjax.fuse(f)))(x)
    assert_tree_close(got, jax.grad(f)(x), rtol=1e-5, atol=1e-5)


# ---- GIR: movement is data movement, checked with the reference interpreter -------------

def test_interpreter_agrees_on_movement_kernels(rng):
    x = randn(rng, 5, 6, 17)
    for name in ("concat_last", "pad_negative_interior", "slice_strided", "rev", "transpose"):
        f = CASES[name]
        p = plan(f, [jax.core.ShapedArray(x.shape, jnp.float32)])
        (gp,) = p.groups
        kernel = lower_group(gp.group)
        gir.verify(kernel)
        (got,) = gir.interp.run(kernel, [x])
        np.testing.assert_allclose(got, np.asarray(jax.jit(f)(x)), rtol=2e-5, atol=2e-5)


def test_transpose_is_a_strided_view_and_concat_pieces_are_guarded(rng):
    x = randn(rng, 4, 6)
    p = plan(lambda x: jnp.concatenate([x.T * 2.0, jnp.exp(x.T)], 0),
             [jax.core.ShapedArray(x.shape, jnp.float32)])
    kernel = lower_group(p.groups[0].group)
    loads = [n for n in gir.toposort(kernel.root) if n.op is gir.Op.LOAD]
    assert {n.arg.view.strides for n in loads} == {(1, 6)}   # x read transposed, no copy
    assert all(gir.load_guard(n) is not None for n in loads)  # each piece read where selected


@pytest.mark.parametrize("mode", ["1", "0"])
def test_concat_pieces_with_streamed_stores(monkeypatch, rng, mode):
    """Each piece of a concatenation along the row gets its own loop, on both store paths;
    rows split over tasks start mid-piece (odd extents)."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", mode)
    a, b = randn(rng, 301, 517), randn(rng, 301, 250)

    def f(a, b):
        return jnp.concatenate([jnp.tanh(a), b * 2.0, jnp.pad(a[:, :3], ((0, 0), (1, 0)))], 1), a + 1.0
    fused = jax.jit(pfjax.fuse(f))
    want = jax.jit(f)(a, b)
    for _ in range(2):
        assert_tree_close(fused(a, b), want, **TOL)
    (group,) = pfjax.explain(f, a, b).groups
    assert "?" not in open(group.source_path).read().split("_body")[1].split("PFJAX_EXPORT")[0]


@pytest.mark.parametrize("mode", ["1", "0"])
@pytest.mark.parametrize("widths", [(1000, 24, 333), (64, 128, 16)])
def test_concat_pieces_run_whole_vectors(monkeypatch, rng, mode, widths):
    """Pieces with an exp or logistic in them run explicit-vector loops each, from their own
    start in the row (unaligned where a piece's width is not a multiple of 16): streamed
    straight out where aligned, through the tile where not; specials included."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", mode)
    wa, wb, wc = widths
    a, b, c = randn(rng, 67, wa), randn(rng, 67, wb), randn(rng, 67, wc)
    a[0, :4] = [np.nan, np.inf, -np.inf, 90.0]
    c[1, :3] = [np.nan, -np.inf, 1e30]

    def f(a, b, c):
        return jnp.concatenate([jax.nn.gelu(a), jnp.exp(b) * 2.0, jax.nn.sigmoid(c - 1.0)], 1)
    one_kernel(f, a, b, c)
    (group,) = pfjax.explain(f, a, b, c).groups
    body = open(group.source_path).read().split("_body")[1]
    assert body.count("const int64_t js") >= 3 and body.count("for (int64_t j = js; j < jv; j += 16)") >= 3


@pytest.mark.parametrize("shape,dtype", [((70, 45), np.float32), ((3, 50, 37), np.float32),
                                         ((2, 300, 33), jnp.bfloat16), ((600, 520), np.float32)])
def test_transpose_goes_through_a_stage_tile(shape, dtype, rng):
    """A transpose that would read strided along the row fills a tile at the local level a
    block of rows at a time (blocks never cross a batch boundary; odd extents)."""
    x = jnp.asarray(randn(rng, *shape)).astype(dtype)
    b = jnp.asarray(randn(rng, shape[-2])).astype(dtype)

    def f(x, b):
        return jnp.tanh(jnp.swapaxes(x, -1, -2) * 2.0 + b)
    one_kernel(f, x, b, tol=dict(rtol=1e-2, atol=1e-2) if dtype == jnp.bfloat16 else TOL)
    (group,) = pfjax.explain(f, x, b).groups
    assert group.schedule.block > 1
    assert "stage0[" in open(group.source_path).read()


@pytest.mark.parametrize("mode", ["1", "auto"])
def test_large_transpose_streams_full_row_blocks(monkeypatch, rng, mode):
    """A large transpose takes full-size row blocks (512 rows: not a divisor of its
    1100-row runs) and streams its stores: always with PFJAX_NONTEMPORAL=1, else where the
    output is resident."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", mode)
    x, b = randn(rng, 3, 1030, 1100), randn(rng, 1100)

    def f(x, b):
        return jnp.tanh(jnp.swapaxes(x, -1, -2) * 2.0 + b[:, None])
    fused = jax.jit(pfjax.fuse(f))
    want = jax.jit(f)(x, b)
    for _ in range(3):
        assert_tree_close(fused(x, b), want, **TOL)
    (group,) = pfjax.explain(f, x, b).groups
    strip = decisions.transpose_strip(pfjax.compile.target())  # 16 with AVX-512, 32 with AVX2
    assert (group.schedule.block, group.schedule.strip) == (decisions.TRANSPOSE_BLOCK_ROWS, strip)
    assert f"kBlockRows = 512, kStrip = {strip};" in open(group.source_path).read()
    assert group.schedule.nontemporal
    assert "stream_copy" in open(group.source_path).read()


@needs_x86_gxx
@pytest.mark.parametrize("march", ["native", "x86-64-v3"])
@pytest.mark.parametrize("shape, out_dtype, whole", [
    ((96, 200), np.float32, True),     # whole strips, rows 384 bytes apart
    ((80, 130), np.float32, True),     # a partial last strip where strips are 32 wide (AVX2)
    ((100, 70), np.float32, False),    # rows 400 bytes apart: one alignment not kept
    ((2, 64, 130), np.float32, True),  # a batch of transposes
    ((96, 70), "bfloat16", True),      # 2-byte stores, rows 192 bytes apart
])
def test_whole_strips_stream_straight_out(monkeypatch, tmp_path, rng, march, shape, out_dtype,
                                          whole):
    """Strips of whole vectors whose streamed rows are 64-byte aligned leave registers with
    non-temporal stores in a row loop of their own; a misaligned output, a partial strip or
    rows that do not keep one alignment take the general path. Called through the kernel's
    body with streaming on, for AVX2 and the native target, both give XLA's answer."""
    import ml_dtypes
    monkeypatch.setenv("PFJAX_NONTEMPORAL", "1")
    x, b = randn(rng, *shape), randn(rng, shape[-2])
    x.reshape(-1)[::97] = np.nan
    x.reshape(-1)[5::89] = np.inf
    dtype = ml_dtypes.bfloat16 if out_dtype == "bfloat16" else np.dtype(out_dtype)

    def f(x, b):
        return jax.nn.gelu(jnp.swapaxes(x, -1, -2) + b).astype(dtype)
    want = np.asarray(jax.jit(f)(x, b)).astype(np.float32)
    (group,) = pfjax.explain(f, x, b).groups
    assert group.schedule.block > 1 and group.schedule.nontemporal
    source = Path(group.source_path)
    assert ("continue;  // the next strip" in source.read_text()) == whole
    for got in _streamed_bodies(source, tmp_path, march, (x, b), want.size, dtype):
        np.testing.assert_allclose(got.reshape(want.shape), want,
                                   **(dict(rtol=1e-2, atol=1e-2) if dtype != np.float32 else TOL))


@needs_x86_gxx
@pytest.mark.parametrize("task_columns", [None, 45, 300 + 17])
def test_full_blocks_split_into_strip_tasks(monkeypatch, tmp_path, rng, task_columns):
    """Where every block of a transposed traversal is whole (2048 rows, 512 a block), a
    task takes a block's columns in turn and may end between strips, so the last tasks are
    shorter than a block. Tasks of the kernel's chunk, of 45 columns (ending inside a
    strip) and of 317 (crossing into the next block) cover every element once: XLA's
    answer through the kernel's body, streamed, aligned and misaligned."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", "1")
    x, b = randn(rng, 300, 2048), randn(rng, 300)
    x.reshape(-1)[::97] = np.nan
    x.reshape(-1)[5::89] = -np.inf

    def f(x, b):
        return jnp.tanh(x.T * 2.0 + b)
    want = np.asarray(jax.jit(f)(x, b))
    assert_tree_close(jax.jit(pfjax.fuse(f))(x, b), want, **TOL)
    (group,) = pfjax.explain(f, x, b).groups
    block, chunk = group.schedule.block, group.schedule.chunk
    assert block == decisions.TRANSPOSE_BLOCK_ROWS and chunk < block * 300
    assert chunk % (block * group.schedule.strip) == 0
    source = Path(group.source_path)
    assert "for (int64_t e = begin; e < end;) {" in source.read_text()
    task = block * task_columns if task_columns else None
    for got in _streamed_bodies(source, tmp_path, "native", (x, b), want.size, np.float32,
                                task=task):
        np.testing.assert_allclose(got.reshape(want.shape), want, **TOL)


def _streamed_bodies(source, tmp_path, march, args, size, dtype, task=None):
    """The kernel's output from its body called with streaming on, the source built for
    `march`, into a 64-byte aligned output and into one an element off (as float32). Tasks
    of `task` elements (default: the kernel's chunk)."""
    build_for(source, tmp_path / "k.so", march)
    name = re.search(r"PFJAX_EXPORT_KERNEL\((\w+),", source.read_text()).group(1)
    info = kernel_info(ctypes.CDLL(str(tmp_path / "k.so")), name)
    ins = (ctypes.c_void_p * len(args))(*[a.ctypes.data for a in args])
    itemsize = np.dtype(dtype).itemsize
    task = task or info.chunk
    for misaligned in (0, itemsize):  # bytes off a 64-byte boundary
        raw = aligned(size * itemsize // 4 + 32)
        out = raw.view(np.uint8)[misaligned:misaligned + size * itemsize].view(dtype)
        outs = (ctypes.c_void_p * 1)(out.ctypes.data)
        for begin in range(0, info.total, task):
            info.body(ins, outs, begin, min(begin + task, info.total), 1)
        yield out.astype(np.float32)


@needs_x86_gxx
@pytest.mark.parametrize("march", ["native", "x86-64-v3"])
@pytest.mark.parametrize("case", ["pad", "interior_pad", "concat"])
def test_pieces_stream_from_their_first_whole_line(monkeypatch, tmp_path, rng, march, case):
    """A piece of a padded or concatenated row that starts inside a 64-byte line leaves the
    elements before the next line to the scalar loop and streams its vectors straight out
    from there; a load guarded by a predicate of the row alone (padding rows, interior
    padding) reads whole vectors or none. Rows 1264 and 552 bytes long start at every
    alignment; tasks start mid-row. Through the kernel's body with streaming on, on aligned
    and misaligned outputs, for AVX2 and the native target: XLA's answer."""
    monkeypatch.setenv("PFJAX_NONTEMPORAL", "1")
    x, y = randn(rng, 37, 300), randn(rng, 37, 101)
    x.reshape(-1)[::97] = np.nan
    x.reshape(-1)[5::89] = -np.inf
    f, args = {
        "pad": (lambda x: jax.nn.relu(jnp.pad(x, ((1, 1), (8, 8))) * 2.0 - 0.5), (x,)),
        "interior_pad": (lambda x: lax.pad(x, 1.5, ((2, 1, 1), (5, -3, 0))) * 3.0, (x,)),
        "concat": (lambda x, y: jnp.concatenate([jnp.tanh(x[:, :37]), y * 2.0], 1), (x, y)),
    }[case]
    want = np.asarray(jax.jit(f)(*args))
    assert_tree_close(jax.jit(pfjax.fuse(f))(*args), want, **TOL)
    (group,) = pfjax.explain(f, *args).groups
    source = Path(group.source_path)
    assert "pfjax::rt::to_line(" in source.read_text()
    if case != "concat":
        assert "? pfjax::vf16::load(" in source.read_text()
    for got in _streamed_bodies(source, tmp_path, march, args, want.size, np.float32,
                                task=want.shape[-1] * 3 + 7):
        np.testing.assert_allclose(got.reshape(want.shape), want, **TOL)


@pytest.mark.parametrize("rows, cores, n_inputs, dtype, want", [
    (4096, 2, 1, "f32", 512), (3300, 2, 1, "f32", 512), (2047, 2, 1, "f32", 256),
    (1024, 2, 1, "f32", 256), (4096, 16, 1, "f32", 128), (300, 2, 1, "f32", 64),
    (40, 2, 1, "f32", 64), (4096, 2, 2, "f64", 512), (4096, 2, 3, "f64", 256),
    (4096, 2, 1, "avx2", 512), (2047, 2, 1, "avx2", 256), (40, 2, 1, "avx2", 64)])
def test_transpose_block_leaves_each_thread_two_blocks(rows, cores, n_inputs, dtype, want):
    """512-row blocks (strips of 16 columns with AVX-512, 64 for this bare transpose with
    AVX2), halved
    until every thread gets two of them and the stage tiles (rows x strip per transposed
    input) fit MAX_STAGE_BYTES; 64 at the least."""
    simd_bytes = 32 if dtype == "avx2" else 64
    dt = {"f32": gir.DType.F32, "avx2": gir.DType.F32, "f64": gir.DType.F64}[dtype]
    space = (rows, 64)
    inputs = [gir.buffer(k, "in", dt, space[::-1]) for k in range(n_inputs)]
    value = gir.load(inputs[0], gir.View(space, (1, rows)))  # x.T
    for b in inputs[1:]:
        value = gir.alu("add", dt, value, gir.load(b, gir.View(space, (1, rows))))
    out = gir.buffer(0, "out", dt, space)
    kernel = gir.Kernel(gir.parallel(gir.Parallel(space), [
        gir.store(out, value, gir.View(space, (64, 1)))]), tuple(inputs), (out,))
    target = gir.cpu_target({"num_cores": cores, "simd_bytes": simd_bytes})
    assert decisions.transpose_block(kernel, target) == want


def _transpose_kernel(dtype, n_inputs, op=None, simd_bytes=32):
    """out = op(x.T + y.T + ...) over (4096, 64) as GIR, and a 2-core target."""
    space = (4096, 64)
    inputs = [gir.buffer(k, "in", dtype, space[::-1]) for k in range(n_inputs)]
    value = gir.load(inputs[0], gir.View(space, (1, space[0])))
    for b in inputs[1:]:
        value = gir.alu("add", dtype, value, gir.load(b, gir.View(space, (1, space[0]))))
    if op is not None:
        value = gir.alu(op, dtype, value)
    out = gir.buffer(0, "out", dtype, space)
    kernel = gir.Kernel(gir.parallel(gir.Parallel(space), [
        gir.store(out, value, gir.View(space, (64, 1)))]), tuple(inputs), (out,))
    return kernel, gir.cpu_target({"num_cores": 2, "simd_bytes": simd_bytes})


@pytest.mark.parametrize("dtype, n_inputs, op, simd_bytes, strip", [
    (gir.DType.F32, 1, None, 32, 64),      # stores set the pace: the wide strip
    (gir.DType.F32, 1, "neg", 32, 64),
    (gir.DType.BF16, 2, None, 32, 64),     # two 2-byte stages of 64 KiB fit
    (gir.DType.F32, 1, "exp", 32, 32),     # arithmetic sets the pace
    (gir.DType.F32, 1, "tanh", 32, 32),
    (gir.DType.F32, 2, None, 32, 32),      # 64 would halve the blocks: shorter source runs
    (gir.DType.F64, 1, None, 32, 32),
    (gir.DType.F32, 1, None, 64, 16),      # AVX-512: 16 x 16 register transposes
])
def test_avx2_strip_is_wide_for_light_arithmetic(dtype, n_inputs, op, simd_bytes, strip):
    kernel, target = _transpose_kernel(dtype, n_inputs, op, simd_bytes)
    assert decisions.transpose_strip(target, kernel) == strip
    assert decisions.transpose_block(kernel, target) == decisions.TRANSPOSE_BLOCK_ROWS
    schedule = decisions.choose(kernel, target)
    assert (schedule.block, schedule.strip) == (decisions.TRANSPOSE_BLOCK_ROWS, strip)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_light_transpose_matches_xla_with_its_strips(rng, dtype):
    """A bare transpose + bias with the target's strip for light arithmetic (64 wide with
    AVX2) over odd extents: partial last strips, several blocks per batch, NaN and inf;
    bf16 through the 2-byte register transposes."""
    x = randn(rng, 3, 1030, 1100)
    x[0, 5, 7], x[1, 1029, 1099], x[2, 600, 64] = np.nan, np.inf, -np.inf
    x, b = jnp.asarray(x).astype(dtype), jnp.asarray(randn(rng, 1100)).astype(dtype)

    def f(x, b):
        return jnp.swapaxes(x, -1, -2) * 2.0 + b[:, None]
    one_kernel(f, x, b, tol=dict(rtol=1e-2, atol=1e-2) if dtype == jnp.bfloat16 else TOL)
    (group,) = pfjax.explain(f, x, b).groups
    light = 16 if pfjax.compile.target().vector_bytes >= 64 else 64
    assert (group.schedule.block, group.schedule.strip) == (decisions.TRANSPOSE_BLOCK_ROWS, light)
    assert f"kStrip = {light};" in open(group.source_path).read()


def test_causal_mask_from_iotas_is_computed_inline(rng):
    x = randn(rng, 4, 24, 24)

    def causal_softmax(x):
        s = x.shape[-1]
        mask = jnp.arange(s)[:, None] >= jnp.arange(s)[None, :]
        return jax.nn.softmax(jnp.where(mask, x * 0.125, -jnp.inf), axis=-1)
    one_kernel(causal_softmax, x)
    one_kernel(lambda x: jnp.tril(x) * 2.0 + jnp.triu(x, 1), x)


def test_split_pieces_fuse_into_their_consumers(rng):
    """jnp.split becomes one slice per piece; each piece is read by its consumer's kernel
    (no XLA slice left), even when a shared producer is computed once before."""
    x = randn(rng, 5, 6, 17)
    for f in (lambda x: tuple(jnp.exp(p) * 2.0 for p in jnp.split(x, [4, 9], axis=2)),
              lambda x: tuple(p * 2.0 for p in jnp.split(jnp.exp(x), [4, 9], axis=2))):
        want = jax.jit(f)(x)
        fused = pfjax.fuse(f)
        assert_tree_close(jax.jit(fused)(x), want, **TOL)
        hlo = jax.jit(fused).lower(x).compile().as_text()
        assert not LEFT_OVER.search(hlo), hlo
        assert num_kernel_calls(fused, x) == 3  # exp is computed by each piece's kernel


def test_bare_split_pieces_of_a_computation_are_kernels(rng):
    """Pieces of a split that only slice a computed value (no work of their own) are
    kernels computing their part of it, not slices left to XLA next to a full exp."""
    x = randn(rng, 64, 130)
    f = lambda x: jnp.split(jnp.exp(x) * 2.0, [64], axis=1)
    want = jax.jit(f)(x)
    fused = pfjax.fuse(f)
    assert_tree_close(jax.jit(fused)(x), want, **TOL)
    assert num_kernel_calls(fused, x) == 2
    hlo = jax.jit(fused).lower(x).compile().as_text()
    assert not LEFT_OVER.search(hlo), hlo


GRAD_CASES = {
    "rope": lambda x: rope(x, jnp.cos(x[:1] * 0.0 + 0.3), jnp.sin(x[:1] * 0.0 + 0.3)),
    "pad_slice": lambda x: jnp.pad(jnp.sin(x), ((1, 0), (0, 0), (2, 1)))[::2] * 2.0,
    "concat_transpose": lambda x: jnp.concatenate([jnp.swapaxes(x, 0, 2), jnp.swapaxes(jnp.tanh(x), 0, 2)], 1),
    "dynamic_slice": lambda x: jnp.exp(lax.dynamic_slice(x, (1, 0, 1), (2, 2, 3))),
    "rev_mean": lambda x: jnp.mean(jnp.flip(x * x, 2), axis=-1),
}


@pytest.mark.parametrize("case", GRAD_CASES)
def test_movement_check_grads_orders_1_and_2(case, rng):
    from jax.test_util import check_grads
    x = randn(rng, 3, 2, 4)
    fused = pfjax.fuse(GRAD_CASES[case])
    check_grads(fused, (x,), order=2, modes=("fwd", "rev"), atol=5e-2, rtol=5e-2, eps=1e-2)
