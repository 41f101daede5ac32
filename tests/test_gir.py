"""Unit tests of GIR: graph, views, printer, verifier, interpreter, targets, dtypes."""
from __future__ import annotations

import numpy as np
import pytest

from pfjax import gir
from pfjax.gir import DType, Op, View, contiguous_strides
from pfjax.gir.interp import numpy_dtype, run

F32, I32 = DType.F32, DType.I32


def _elementwise(space, in_dtypes, fn, out_dtypes=None, in_shapes=None, in_views=None):
    """Kernel over `space`: loads each input (contiguous, or the given view), applies
    fn(*values) -> value or list of values, stores each contiguously."""
    space = tuple(space)
    in_shapes = in_shapes or [space] * len(in_dtypes)
    bufs = [gir.buffer(k, "in", d, s) for k, (d, s) in enumerate(zip(in_dtypes, in_shapes))]
    views = in_views or [View(space, contiguous_strides(s)) for s in in_shapes]
    vals = [gir.load(b, v) for b, v in zip(bufs, views)]
    res = fn(*vals)
    res = res if isinstance(res, (list, tuple)) else [res]
    out_dtypes = out_dtypes or [r.dtype for r in res]
    outs = [gir.buffer(k, "out", d, space) for k, d in enumerate(out_dtypes)]
    stores = [gir.store(o, gir.cast(r, d), View(space, contiguous_strides(space)))
              for o, r, d in zip(outs, res, out_dtypes)]
    return gir.Kernel(gir.parallel(gir.Parallel(space), stores), tuple(bufs), tuple(outs))


# -- graph ---------------------------------------------------------------------------

def test_hash_consing_structural_equality_is_identity():
    b = gir.buffer(0, "in", F32, (4, 8))
    v = View((4, 8), (8, 1))
    x1, x2 = gir.load(b, v), gir.load(gir.buffer(0, "in", F32, (4, 8)), View((4, 8), (8, 1)))
    assert x1 is x2
    e1 = gir.alu("exp", F32, x1)
    e2 = gir.alu("exp", F32, x2)
    assert e1 is e2 and e1.key == e2.key
    c1, c2 = gir.const(2.0, F32), gir.const(2.0, F32)
    assert c1 is c2
    # different structure: different nodes
    assert gir.const(2.0, DType.F64) is not c1
    assert gir.const(3.0, F32) is not c1
    assert gir.alu("log", F32, x1) is not e1
    assert gir.load(b, View((4, 8), (8, 1), 1)) is not x1
    assert gir.alu("add", F32, e1, c1) is not gir.alu("add", F32, c1, e1)


def test_keys_are_stable_sha256_hex():
    b = gir.buffer(0, "in", F32, (16,))
    n = gir.alu("mul", F32, gir.load(b, View((16,), (1,))), gir.const(0.5, F32))
    key = n.key
    assert len(key) == 64 and int(key, 16) >= 0
    # rebuilt from scratch after dropping the original: same key
    del n
    n2 = gir.alu("mul", F32, gir.load(gir.buffer(0, "in", F32, (16,)), View((16,), (1,))),
                 gir.const(0.5, F32))
    assert n2.key == key
    k1 = _elementwise((16,), [F32], lambda x: gir.alu("exp", F32, x))
    k2 = _elementwise((16,), [F32], lambda x: gir.alu("exp", F32, x))
    assert k1.name == k2.name and k1.name.startswith("pfjax_")
    k3 = _elementwise((16,), [F32], lambda x: gir.alu("log", F32, x))
    assert k3.name != k1.name


def test_nodes_are_immutable():
    n = gir.const(1.0, F32)
    for field in ("op", "dtype", "src", "arg", "level", "key", "other"):
        with pytest.raises(AttributeError):
            setattr(n, field, None)
    assert n.arg == 1.0 and n.dtype is F32


def test_replace_returns_interned_node_and_keeps_original():
    b = gir.buffer(0, "in", F32, (8,))
    x = gir.load(b, View((8,), (1,)))
    e = gir.alu("exp", F32, x)
    l = e.replace(arg="log")
    assert l is gir.alu("log", F32, x)
    assert e.arg == "exp"
    assert e.replace() is e
    assert e.replace(dtype=DType.F64).dtype is DType.F64
    assert e.replace(arg="log").replace(arg="exp") is e


def test_toposort_sources_before_users_and_each_node_once():
    k = _elementwise((8,), [F32, F32], lambda a, b: [
        gir.alu("add", F32, gir.alu("exp", F32, a), gir.alu("mul", F32, a, b)),
        gir.alu("exp", F32, a)])
    order = gir.toposort(k.root)
    assert order[-1] is k.root
    pos = {id(n): i for i, n in enumerate(order)}
    assert len(pos) == len(order)  # no duplicates
    for n in order:
        for s in n.src:
            assert pos[id(s)] < pos[id(n)]
    # the shared exp appears once
    assert sum(1 for n in order if n.op is Op.ALU and n.arg == "exp") == 1
    # deterministic
    assert [n.key for n in gir.toposort(k.root)] == [n.key for n in order]


def test_toposort_deep_chain_no_recursion_limit():
    b = gir.buffer(0, "in", F32, (4,))
    x = gir.load(b, View((4,), (1,)))
    for i in range(5000):
        x = gir.alu("add", F32, x, gir.const(float(i % 7), F32))
    order = gir.toposort(x)
    assert order[-1] is x and len(order) > 5000


def test_rewrite_replaces_bottom_up(rng):
    k = _elementwise((32,), [F32], lambda x: gir.alu("tanh", F32, gir.alu("exp", F32, x)))

    def swap(n):
        if n.op is Op.ALU and n.arg == "exp":
            return gir.alu("sin", F32, *n.src)
        return None

    root = gir.rewrite(k.root, swap)
    args = {n.arg for n in gir.toposort(root) if n.op is Op.ALU}
    assert args == {"sin", "tanh"}
    # the tanh above was rebuilt over the new source
    x = rng.standard_normal(32).astype(np.float32)
    (out,) = run(k.with_root(root), [x])
    np.testing.assert_allclose(out, np.tanh(np.sin(x)), rtol=1e-6)
    # identity rewrite returns the same root
    assert gir.rewrite(k.root, lambda n: None) is k.root


def test_rewrite_visits_each_distinct_node_once():
    k = _elementwise((8,), [F32], lambda x: gir.alu("mul", F32, gir.alu("exp", F32, x),
                                                     gir.alu("exp", F32, x)))
    seen = []
    gir.rewrite(k.root, lambda n: seen.append(n.key) or None)
    assert len(seen) == len(set(seen)) == len(gir.toposort(k.root))


# -- views ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape,expected", [
    ((), ()), ((7,), (1,)), ((4, 8), (8, 1)), ((2, 3, 5), (15, 5, 1)),
    ((4, 1, 3), (3, 0, 1)), ((1,), (0,)), ((3, 1), (1, 0)),
])
def test_contiguous_strides(shape, expected):
    assert contiguous_strides(shape) == expected


def test_view_properties():
    v = View((4, 8), (8, 1))
    assert v.is_contiguous and v.offset == 0
    assert not View((4, 8), (0, 1)).is_contiguous
    assert not View((4, 8), (1, 4)).is_contiguous
    assert str(View((4, 8), (8, 1), 3)) == "[4,8] strides(8,1)+3"
    assert View((4, 8), (8, 1)) == View((4, 8), (8, 1), 0)
    assert hash(View((2,), (1,))) == hash(View((2,), (1,)))
    with pytest.raises(AttributeError):
        v.offset = 1  # frozen


# -- printer -------------------------------------------------------------------------

def test_printer_shows_ops_levels_views_dtypes():
    k = _elementwise((4, 8), [F32, F32], lambda a, b: gir.select(
        gir.alu("gt", DType.BOOL, a, gir.const(0.0, F32)),
        [gir.alu("mul", F32, a, b), gir.cast(gir.cast(a, DType.BF16), F32)]),
        in_shapes=[(4, 8), (8,)], in_views=[View((4, 8), (8, 1)), View((4, 8), (0, 1))])
    gir.verify(k)
    text = gir.format_kernel(k)
    assert text.startswith(f"kernel {k.name}")
    assert "parallel space=(4,8)" in text
    for word in ("buffer float32[4,8] @global", "buffer float32[8] @global",
                 "load.global.reg", "store.reg.global", "gt ", "mul ", "select ", "cast ",
                 "const 0.0", "@reg", ": bfloat16", ": bool",
                 "[4,8] strides(0,1)+0", "[4,8] strides(8,1)+0", "%in0", "%in1", "%out0"):
        assert word in text, (word, text)


def test_printer_shows_schedule_fields():
    k = _elementwise((64,), [F32], lambda x: gir.alu("neg", F32, x))
    root = k.root.replace(arg=gir.Parallel((64,), chunk=64, vector=8, nontemporal=True))
    text = gir.format_kernel(k.with_root(root))
    assert "chunk=64" in text and "vector=8" in text and "nontemporal" in text


# -- verifier ------------------------------------------------------------------------

def test_verify_accepts_good_kernels():
    gir.verify(_elementwise((4, 8), [F32, F32], lambda a, b: gir.alu("add", F32, a, b),
                            in_shapes=[(4, 8), (1, 8)],
                            in_views=[View((4, 8), (8, 1)), View((4, 8), (0, 1))]))
    gir.verify(_elementwise((0, 8), [F32], lambda a: gir.alu("exp", F32, a)))
    gir.verify(_elementwise((8,), [F32], lambda a: gir.alu("mul", F32, a, a),
                            in_views=[View((8,), (-1,), 7)]))


def test_verify_accepts_lowered_kernels():
    import jax
    import jax.numpy as jnp
    from pfjax.frontend import lower_group, partition, trace
    prog, _ = trace(lambda x, b: jax.nn.gelu(x + b) * 2,
                    [jax.ShapeDtypeStruct((8, 16), jnp.float32), jax.ShapeDtypeStruct((16,), jnp.float32)])
    for g in partition(prog).groups:
        gir.verify(lower_group(g))


def test_verify_rejects_out_of_bounds_view():
    with pytest.raises(gir.GirError, match="leaves buffer"):
        gir.verify(_elementwise((4, 8), [F32], lambda a: a, in_shapes=[(4, 8)],
                                in_views=[View((4, 8), (8, 1), 1)]))
    with pytest.raises(gir.GirError, match="leaves buffer"):
        gir.verify(_elementwise((4, 8), [F32], lambda a: a, in_shapes=[(8,)],
                                in_views=[View((4, 8), (1, 1))]))
    with pytest.raises(gir.GirError, match="leaves buffer"):
        gir.verify(_elementwise((8,), [F32], lambda a: a, in_views=[View((8,), (1,), -1)]))


def test_verify_rejects_out_of_bounds_negative_stride():
    # elements 8, 7, ..., 1 of an 8-element buffer: element 8 is out of bounds
    with pytest.raises(gir.GirError):
        gir.verify(_elementwise((8,), [F32], lambda a: a, in_views=[View((8,), (-1,), 8)]))


def test_verify_rejects_view_not_covering_space():
    with pytest.raises(gir.GirError, match="does not cover"):
        gir.verify(_elementwise((4, 8), [F32], lambda a: a, in_views=[View((32,), (1,))]))


def test_verify_rejects_wrong_arity():
    with pytest.raises(gir.GirError, match="operands"):
        gir.verify(_elementwise((8,), [F32], lambda a: gir.alu("add", F32, a)))
    with pytest.raises(gir.GirError, match="operands"):
        gir.verify(_elementwise((8,), [F32], lambda a: gir.alu("exp", F32, a, a)))
    with pytest.raises(gir.GirError, match="select"):
        gir.verify(_elementwise((8,), [DType.BOOL, F32], lambda w, a: gir.select(w, [a])))


def test_verify_rejects_store_dtype_mismatch():
    space = (8,)
    b = gir.buffer(0, "in", F32, space)
    o = gir.buffer(0, "out", I32, space)
    st = gir.store(o, gir.load(b, View(space, (1,))), View(space, (1,)))
    k = gir.Kernel(gir.parallel(gir.Parallel(space), [st]), (b,), (o,))
    with pytest.raises(gir.GirError, match="store of float32 into int32"):
        gir.verify(k)


def test_verify_rejects_bad_roots():
    k = _elementwise((8,), [F32], lambda a: gir.alu("exp", F32, a))
    with pytest.raises(gir.GirError, match="root must be parallel"):
        gir.verify(gir.Kernel(k.root.src[0], k.inputs, k.outputs))
    bad = gir.parallel(gir.Parallel((8,)), [gir.alu("exp", F32, gir.const(1.0, F32))])
    with pytest.raises(gir.GirError, match="must be stores"):
        gir.verify(gir.Kernel(bad, (), ()))


# -- interpreter ---------------------------------------------------------------------

def test_interp_broadcast_load_stride0(rng):
    x = rng.standard_normal((6, 10)).astype(np.float32)
    row = rng.standard_normal(10).astype(np.float32)
    col = rng.standard_normal(6).astype(np.float32)
    k = _elementwise((6, 10), [F32, F32, F32],
                     lambda a, r, c: gir.alu("sub", F32, gir.alu("mul", F32, a, r), c),
                     in_shapes=[(6, 10), (10,), (6, 1)],
                     in_views=[View((6, 10), (10, 1)), View((6, 10), (0, 1)), View((6, 10), (1, 0))])
    gir.verify(k)
    (out,) = run(k, [x, row, col[:, None]])
    np.testing.assert_array_equal(out, x * row - col[:, None])
    assert out.dtype == np.float32 and out.shape == (6, 10)


def test_interp_transposed_and_offset_views(rng):
    x = rng.standard_normal((5, 7)).astype(np.float32)
    k = _elementwise((7, 5), [F32], lambda a: gir.alu("neg", F32, a),
                     in_shapes=[(5, 7)], in_views=[View((7, 5), (1, 7))])
    (out,) = run(k, [x])
    np.testing.assert_array_equal(out, -x.T)
    y = rng.standard_normal(12).astype(np.float32)
    k = _elementwise((5,), [F32], lambda a: a, in_shapes=[(12,)], in_views=[View((5,), (2,), 2)])
    np.testing.assert_array_equal(run(k, [y])[0], y[2:12:2])
    k = _elementwise((12,), [F32], lambda a: a, in_shapes=[(12,)], in_views=[View((12,), (-1,), 11)])
    np.testing.assert_array_equal(run(k, [y])[0], y[::-1])


def test_interp_select_bool_and_index(rng):
    a = rng.standard_normal(64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    k = _elementwise((64,), [F32, F32], lambda x, y: gir.select(
        gir.alu("lt", DType.BOOL, x, y), [x, y]))  # case0 when x >= y
    np.testing.assert_array_equal(run(k, [a, b])[0], np.where(a < b, b, a))
    w = rng.integers(0, 3, 64).astype(np.int32)
    k = _elementwise((64,), [I32, F32, F32], lambda s, x, y: gir.select(
        s, [x, y, gir.alu("add", F32, x, y)]))
    np.testing.assert_array_equal(run(k, [w, a, b])[0], np.choose(w, [a, b, a + b]))


def _bf16_reference(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even) with ml_dtypes, as JAX does."""
    import ml_dtypes
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def test_interp_cast_bf16_rounding(rng):
    x = rng.standard_normal(4096).astype(np.float32) * 100
    # ties: exactly half way between bf16 values, both parities
    ties = (np.arange(1, 64, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3.3895e38, 1e-40], np.float32)
    x = np.concatenate([x, ties, -ties, special])
    k = _elementwise(x.shape, [F32], lambda a: gir.cast(a, DType.BF16), out_dtypes=[DType.BF16])
    (out,) = run(k, [x])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, _bf16_reference(x))
    # cast bf16 -> f32 -> bf16 is idempotent
    k2 = _elementwise(x.shape, [F32], lambda a: gir.cast(gir.cast(gir.cast(a, DType.BF16), F32),
                                                          DType.BF16), out_dtypes=[DType.BF16])
    np.testing.assert_array_equal(run(k2, [x])[0], _bf16_reference(x))


def test_interp_f16_store_rounds(rng):
    x = rng.standard_normal(256).astype(np.float32) * 1000
    k = _elementwise(x.shape, [F32], lambda a: gir.alu("mul", F32, a, gir.const(3.0, F32)),
                     out_dtypes=[DType.F16])
    (out,) = run(k, [x])
    np.testing.assert_array_equal(out.astype(np.float32), (x * 3).astype(np.float16).astype(np.float32))


def test_interp_cast_float_to_int_saturates():
    x = np.array([np.nan, 3.7, -3.7, 0.5, -0.5, 100.0, -1e6, 1e6], np.float32)
    k = _elementwise(x.shape, [F32], lambda a: gir.cast(a, DType.I8), out_dtypes=[DType.I8])
    np.testing.assert_array_equal(run(k, [x])[0], [0, 3, -3, 0, 0, 100, -128, 127])
    k = _elementwise(x.shape, [F32], lambda a: gir.cast(a, DType.U8), out_dtypes=[DType.U8])
    np.testing.assert_array_equal(run(k, [x])[0], [0, 3, 0, 0, 0, 100, 0, 255])
    x = np.array([np.nan, 3.7, -3.7, -np.inf, -3e9, 2147483520.0], np.float32)
    k = _elementwise(x.shape, [F32], lambda a: gir.cast(a, I32), out_dtypes=[I32])
    np.testing.assert_array_equal(run(k, [x])[0], [0, 3, -3, -2**31, -2**31, 2147483520])


def test_interp_cast_float_to_int32_saturates_high():
    x = np.array([np.inf, 3e9, 2147483648.0], np.float32)
    k = _elementwise(x.shape, [F32], lambda a: gir.cast(a, I32), out_dtypes=[I32])
    np.testing.assert_array_equal(run(k, [x])[0], [2**31 - 1] * 3)


def test_interp_int_ops(rng):
    a = rng.integers(-1000, 1000, 200).astype(np.int32)
    b = rng.integers(-50, 50, 200).astype(np.int32)
    b[:5] = 0
    a[:5] = rng.integers(1, 100, 5)

    def fn(x, y):
        return [gir.alu("div", I32, x, y), gir.alu("rem", I32, x, y),
                gir.alu("and", I32, x, y), gir.alu("xor", I32, x, y), gir.alu("not", I32, x),
                gir.alu("max", I32, x, y), gir.alu("abs", I32, x),
                gir.alu("add", I32, gir.alu("mul", I32, x, y), gir.const(7, I32))]

    outs = run(_elementwise((200,), [I32, I32], fn), [a, b])
    nz = b != 0
    # truncating division (C / XLA), x / 0 = -1, x % 0 = x
    q = np.where(nz, np.trunc(a / np.where(nz, b, 1)).astype(np.int32), -1)
    r = np.where(nz, np.fmod(a, np.where(nz, b, 1)), a)
    expected = [q, r, a & b, a ^ b, ~a, np.maximum(a, b), np.abs(a), a * b + 7]
    for got, want in zip(outs, expected):
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


def test_interp_uint8_wraps(rng):
    a = rng.integers(0, 256, 100).astype(np.uint8)
    b = rng.integers(0, 256, 100).astype(np.uint8)
    k = _elementwise((100,), [DType.U8, DType.U8], lambda x, y: [
        gir.alu("add", DType.U8, x, y), gir.alu("sub", DType.U8, x, y)])
    s, d = run(k, [a, b])
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_array_equal(d, a - b)


def test_interp_bool_logic(rng):
    a = rng.random(50) < 0.5
    b = rng.random(50) < 0.5
    B = DType.BOOL
    k = _elementwise((50,), [B, B], lambda x, y: [gir.alu("and", B, x, y), gir.alu("or", B, x, y),
                                                  gir.alu("xor", B, x, y), gir.alu("not", B, x)])
    outs = run(k, [a, b])
    for got, want in zip(outs, [a & b, a | b, a ^ b, ~a]):
        assert got.dtype == np.bool_
        np.testing.assert_array_equal(got, want)


def test_interp_float_math_matches_numpy(rng):
    x = (rng.random(300).astype(np.float32) + 0.1) * 3
    k = _elementwise((300,), [F32], lambda a: [
        gir.alu(name, F32, a) for name in ("exp", "log", "sqrt", "rsqrt", "tanh", "logistic",
                                           "erf", "floor", "round_even")])
    outs = run(k, [x])
    import math
    want = [np.exp(x), np.log(x), np.sqrt(x), 1 / np.sqrt(x), np.tanh(x), 1 / (1 + np.exp(-x)),
            np.array([math.erf(v) for v in x], np.float32), np.floor(x), np.rint(x)]
    for got, w in zip(outs, want):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, w, rtol=2e-6)


def test_interp_multiple_outputs_and_const(rng):
    x = rng.standard_normal((3, 4)).astype(np.float64)
    F64 = DType.F64
    k = _elementwise((3, 4), [F64], lambda a: [gir.alu("add", F64, a, gir.const(0.25, F64)),
                                               gir.alu("is_finite", DType.BOOL, a)])
    s, fin = run(k, [x])
    np.testing.assert_array_equal(s, x + 0.25)
    assert s.dtype == np.float64 and fin.dtype == np.bool_ and fin.all()


def test_interp_empty_space():
    k = _elementwise((0, 4), [F32], lambda a: gir.alu("exp", F32, a))
    (out,) = run(k, [np.zeros((0, 4), np.float32)])
    assert out.shape == (0, 4)


def test_numpy_dtype_mapping():
    assert numpy_dtype(DType.BF16) is np.float32
    assert numpy_dtype(DType.F16) is np.float16
    assert numpy_dtype(DType.BOOL) is np.bool_
    assert numpy_dtype(DType.U8) is np.uint8


# -- ops, target, dtypes -------------------------------------------------------------

def test_alu_table():
    assert gir.alu_op("add").arity == 2 and gir.alu_op("exp").arity == 1
    assert gir.alu_op("exp").transcendental and not gir.alu_op("add").transcendental
    assert gir.alu_op("lt").predicate and not gir.alu_op("max").predicate
    with pytest.raises(KeyError, match="no ALU operation"):
        gir.alu_op("frobnicate")
    assert set(gir.ALU_OPS) >= {"add", "sub", "mul", "div", "exp", "log", "select" if False else "max"}


def test_cpu_target_from_machine_info():
    info = {"num_cores": 8, "simd_bytes": 64, "l2_bytes": 2 << 20, "isa": ["avx512f", "avx2"],
            "dram_gbps": 100.0}
    t = gir.cpu_target(info)
    assert t.backend == "cpu" and t.name == "cpu-avx512"
    assert t.groups == 8 and t.lanes == 16 and t.vector_bytes == 64
    assert t.isa == ("avx2", "avx512f")
    assert t.level(gir.GLOBAL).bandwidth_gbps == 100.0
    assert t.level(gir.LOCAL).capacity_bytes == 1 << 20
    assert t.level(gir.REG).scope == "unit"
    assert [lv.name for lv in t.levels] == [gir.GLOBAL, gir.LOCAL, gir.REG]
    with pytest.raises(KeyError):
        t.level("sram")
    t2 = gir.cpu_target({"num_cores": 4, "simd_bytes": 32})
    # AVX2 writes the same 16-lane vectors (pfjax::vf16 as two registers)
    assert t2.name == "cpu-avx2" and t2.lanes == 16 and t2.groups == 4
    assert t2.key != t.key
    t3 = gir.cpu_target({})
    assert t3.name == "cpu-sse" and t3.groups == 1 and t3.lanes == 4
    assert gir.cpu_target(dict(info)).key == t.key


def test_cpu_target_from_this_machine():
    import warnings
    from pfjax.machine import machine_info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = gir.cpu_target(machine_info())
    assert t.groups >= 1 and t.lanes >= 4


@pytest.mark.parametrize("d,size,flt,intg,signed,boolean,compute", [
    (DType.F64, 8, True, False, False, False, DType.F64),
    (DType.F32, 4, True, False, False, False, DType.F32),
    (DType.F16, 2, True, False, False, False, DType.F32),
    (DType.BF16, 2, True, False, False, False, DType.F32),
    (DType.I32, 4, False, True, True, False, DType.I32),
    (DType.I8, 1, False, True, True, False, DType.I8),
    (DType.U8, 1, False, True, False, False, DType.U8),
    (DType.U64, 8, False, True, False, False, DType.U64),
    (DType.BOOL, 1, False, False, False, True, DType.BOOL),
])
def test_dtype_properties(d, size, flt, intg, signed, boolean, compute):
    assert d.itemsize == size
    assert d.is_float is flt and d.is_int is intg and d.is_signed is signed and d.is_bool is boolean
    assert d.compute is compute
    assert gir.dtype_from_name(str(d)) is d
    assert repr(d) == str(d)
    if d is not DType.BF16:
        assert np.dtype(str(d)).itemsize == size


def test_dtype_from_name_unknown():
    with pytest.raises(TypeError, match="no element type"):
        gir.dtype_from_name("complex64")
    assert gir.dtype_from_name("bfloat16") is DType.BF16
