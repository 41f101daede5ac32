"""Passes, schedule and CPU codegen: semantics kept, dims collapsed, source compiles
and vectorises."""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pfjax
from pfjax import gir
from pfjax.codegen.cpu import emit_kernel
from pfjax.frontend import lower_group, partition, trace
from pfjax.gir import DType, Op, View
from pfjax.passes import run_passes
from pfjax.passes.collapse import collapse_dims
from pfjax.passes.simplify import simplify
from pfjax.schedule import Schedule, apply, choose

from kernel_abi import kernel_info

warnings.filterwarnings("ignore", category=RuntimeWarning, module="pfjax")


def _kernels(f, *shapes_dtypes):
    avals = [jax.ShapeDtypeStruct(s, d) for s, d in shapes_dtypes]
    prog, _ = trace(f, avals)
    part = partition(prog)
    assert part.groups, part.left_out
    return [lower_group(g) for g in part.groups]


def _random_inputs(kernel, rng):
    out = []
    for b in kernel.inputs:
        shape = b.arg.shape
        if b.dtype.is_float:
            x = rng.standard_normal(shape).astype(np.float32)
            if b.dtype is DType.BF16:
                import ml_dtypes
                x = x.astype(ml_dtypes.bfloat16).astype(np.float32)
            out.append(x.astype(gir.interp.numpy_dtype(b.dtype)))
        elif b.dtype.is_bool:
            out.append(rng.random(shape) < 0.5)
        else:
            info = np.iinfo(gir.interp.numpy_dtype(b.dtype))
            out.append(rng.integers(max(info.min, -100), min(info.max, 100), shape,
                                    dtype=gir.interp.numpy_dtype(b.dtype)))
    return out


PROGRAMS = {
    "bias_row": (lambda x, b: jnp.tanh(x + b) * 2, [((8, 16), jnp.float32), ((16,), jnp.float32)]),
    "bias_col": (lambda x, c: jnp.exp(x * c) - c, [((8, 16), jnp.float32), ((8, 1), jnp.float32)]),
    "dim0_bcast": (lambda x, c: jnp.sin(x) + c[:, None, None],
                   [((4, 3, 5), jnp.float32), ((4,), jnp.float32)]),
    "middle_bcast": (lambda x, c: jnp.sin(x) * c,
                     [((4, 3, 5), jnp.float32), ((1, 3, 1), jnp.float32)]),
    "size1_dims": (lambda x, y: jnp.exp(x) + y * 3, [((4, 1, 8, 1), jnp.float32), ((4, 1, 8, 1), jnp.float32)]),
    "scalar_input": (lambda x, s: jnp.exp(x * s) + s, [((6, 7), jnp.float32), ((), jnp.float32)]),
    "gelu": (lambda x: jax.nn.gelu(x), [((4, 8, 16), jnp.float32)]),
    "adam": (lambda p, g, m, v: (p - 1e-3 * (0.9 * m + 0.1 * g) / (jnp.sqrt(jnp.abs(v)) + 1e-8),
                                 0.9 * m + 0.1 * g),
             [((32, 8), jnp.float32)] * 4),
    "where_int": (lambda x, i: jnp.where(i > 3, x * 2, jnp.exp(x)).astype(jnp.int32) + i,
                  [((16, 4), jnp.float32), ((16, 4), jnp.int32)]),
    "consts": (lambda x: jnp.exp(x) * (2.0 * 3.0) + jnp.float32(1) / 4, [((64,), jnp.float32)]),
    "head_reshuffle": (lambda x, b: jnp.transpose(x, (0, 2, 1, 3)) * 0.5 + b,
                       [((2, 6, 3, 8), jnp.float32), ((6, 8), jnp.float32)]),
}


def test_moments_pass_keeps_semantics_within_rounding(rng):
    from pfjax.passes.moments import one_pass_moments
    [kernel] = _kernels(lambda x: (jnp.mean(x, 0), jnp.var(x, 0)), ((20000, 24), jnp.float32))
    after = one_pass_moments(kernel, gir.cpu_target({}))
    assert gir.loop_nest(after).num_loops == 1 and gir.loop_nest(kernel).num_loops == 2
    gir.verify(after)
    xs = _random_inputs(kernel, rng)
    for b, a in zip(gir.interp.run(kernel, xs), gir.interp.run(after, xs)):
        np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_run_passes_keeps_semantics(name, rng):
    f, sig = PROGRAMS[name]
    for kernel in _kernels(f, *sig):
        trace_list = []
        after = run_passes(kernel, debug=True, trace=trace_list)
        assert [n for n, _ in trace_list] == [
            "simplify", "logistic", "logistic_products", "input_order", "collapse_dims",
            "reciprocal", "moments", "reuse"]
        gir.verify(after)
        assert after.parallel.size == kernel.parallel.size
        # tanh -> logistic -> exp and a division change the rounding (a few ulp); every
        # other pass is exact
        gates = lambda k: {n.arg for n in gir.toposort(k.root) if n.op is gir.Op.ALU} & {
            "tanh", "logistic"}
        rewritten = gates(after) != gates(kernel)
        xs = _random_inputs(kernel, rng)
        before_out = gir.interp.run(kernel, xs)
        after_out = gir.interp.run(after, xs)
        for b, a in zip(before_out, after_out):
            assert a.shape == b.shape and a.dtype == b.dtype
            if rewritten:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
            else:
                np.testing.assert_array_equal(a, b)


def test_collapse_contiguous_space():
    [k] = _kernels(lambda x, y: jnp.exp(x) * y, ((4, 8, 16), jnp.float32), ((4, 8, 16), jnp.float32))
    out = collapse_dims(k)
    assert out.parallel.space == (512,)
    for n in gir.toposort(out.root):
        if n.op in (Op.LOAD, Op.STORE):
            assert n.arg.view == View((512,), (1,), 0)


def test_collapse_keeps_bias_dims(rng):
    [k] = _kernels(lambda x, b: jnp.exp(x + b), ((6, 16), jnp.float32), ((16,), jnp.float32))
    out = collapse_dims(k)
    assert out.parallel.space == (6, 16)
    xs = _random_inputs(k, rng)
    np.testing.assert_array_equal(gir.interp.run(out, xs)[0], gir.interp.run(k, xs)[0])


def test_collapse_merges_leading_dims_with_bias(rng):
    # (2, 3, 16) + (16,): the two leading dims merge, the bias dim stays apart
    [k] = _kernels(lambda x, b: jnp.exp(x + b), ((2, 3, 16), jnp.float32), ((16,), jnp.float32))
    out = collapse_dims(k)
    assert out.parallel.space == (6, 16)
    xs = _random_inputs(k, rng)
    np.testing.assert_array_equal(gir.interp.run(out, xs)[0], gir.interp.run(k, xs)[0])


def test_collapse_drops_size1_dims():
    [k] = _kernels(lambda x: jnp.exp(x) * 2, ((1, 8, 1, 4), jnp.float32))
    assert collapse_dims(k).parallel.space == (32,)


def test_simplify_folds_constants():
    b = gir.buffer(0, "in", DType.F32, (8,))
    x = gir.load(b, View((8,), (1,)))
    c = gir.alu("mul", DType.F32, gir.const(2.0, DType.F32), gir.const(3.0, DType.F32))
    c = gir.alu("add", DType.F32, c, gir.cast(gir.const(1, DType.I32), DType.F32))
    o = gir.buffer(0, "out", DType.F32, (8,))
    k = gir.Kernel(gir.parallel(gir.Parallel((8,)), [gir.store(o, gir.alu("mul", DType.F32, x, c),
                                                                View((8,), (1,)))]), (b,), (o,))
    out = simplify(k)
    consts = [n for n in gir.toposort(out.root) if n.op is Op.CONST]
    assert [n.arg for n in consts] == [7.0]
    assert sum(n.op is Op.ALU for n in gir.toposort(out.root)) == 1
    assert not any(n.op is Op.CAST for n in gir.toposort(out.root))


def test_simplify_keeps_float_to_int_const_cast():
    c = gir.cast(gir.const(float("nan"), DType.F32), DType.I32)
    o = gir.buffer(0, "out", DType.I32, (4,))
    k = gir.Kernel(gir.parallel(gir.Parallel((4,)), [gir.store(o, c, View((4,), (1,)))]), (), (o,))
    out = simplify(k)
    assert any(n.op is Op.CAST for n in gir.toposort(out.root))
    np.testing.assert_array_equal(gir.interp.run(out, [])[0], [0, 0, 0, 0])


@pytest.mark.parametrize("cases,negated", [((False, True), False), ((True, False), True)])
def test_simplify_selects_between_bool_constants(cases, negated, rng):
    """select(c, False, True) is c and select(c, True, False) is not c: the same bits."""
    b = gir.buffer(0, "in", DType.F32, (64,))
    c = gir.alu("gt", DType.BOOL, gir.load(b, View((64,), (1,))), gir.const(0.0, DType.F32))
    sel = gir.select(c, [gir.const(cases[0], DType.BOOL), gir.const(cases[1], DType.BOOL)])
    o = gir.buffer(0, "out", DType.BOOL, (64,))
    k = gir.Kernel(gir.parallel(gir.Parallel((64,)), [gir.store(o, sel, View((64,), (1,)))]),
                   (b,), (o,))
    out = simplify(k)
    nodes = gir.toposort(out.root)
    assert not any(n.op is Op.SELECT for n in nodes)
    assert any(n.op is Op.ALU and n.arg == "not" for n in nodes) == negated
    x = rng.standard_normal(64).astype(np.float32)
    np.testing.assert_array_equal(gir.interp.run(out, [x])[0], gir.interp.run(k, [x])[0])


def test_simplify_from_jax_constants():
    [k] = _kernels(lambda x: jnp.exp(x) * (jnp.float32(2) * jnp.float32(3)), ((32,), jnp.float32))
    after = simplify(k)
    assert len([n for n in gir.toposort(after.root) if n.op is Op.ALU]) <= \
        len([n for n in gir.toposort(k.root) if n.op is Op.ALU])


# -- schedule ------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 7, 64, 100, 1000, 4096, 100_003, 1 << 22])
@pytest.mark.parametrize("cores", [1, 8, 64])
def test_schedule_choose_chunk(size, cores):
    [k] = _kernels(lambda x: jnp.exp(x) * 2, ((size,), jnp.float32))
    k = run_passes(k)
    tgt = gir.cpu_target({"num_cores": cores, "simd_bytes": 32})
    s = choose(k, tgt)
    assert 1 <= s.chunk <= size
    assert s.chunk % 64 == 0 or s.chunk == size
    assert s.vector == tgt.lanes
    applied = apply(k, s)
    assert applied.parallel.chunk == s.chunk and applied.parallel.vector == s.vector
    assert applied.parallel.space == k.parallel.space
    gir.verify(applied)


def test_schedule_json_roundtrip():
    s = Schedule(vector=16, chunk=4096, nontemporal=True)
    text = s.to_json()
    assert Schedule.from_json(text) == s
    assert text == Schedule.from_json(text).to_json()
    assert '"chunk": 4096' in text


# -- codegen -------------------------------------------------------------------------

def _ready(kernel, target=None):
    k = run_passes(kernel)
    tgt = target or gir.cpu_target({"num_cores": 4, "simd_bytes": 32})
    return apply(k, choose(k, tgt))


def test_emit_kernel_text():
    [k] = _kernels(lambda x, b: jnp.tanh(x + b), ((8, 16), jnp.float32), ((16,), jnp.float32))
    k = _ready(k)
    src = emit_kernel(k)
    assert "#pragma omp simd" in src
    assert "PFJAX_EXPORT_KERNEL" in src and k.name in src
    assert '#include "pfjax/kernel.h"' in src
    assert emit_kernel(k) == src  # deterministic


def _toolchain():
    if shutil.which("g++") is None:
        pytest.skip("g++ not installed")
    from pfjax.build import ToolchainMissing, find_toolchain
    try:
        return find_toolchain(jax.ffi.include_dir())
    except ToolchainMissing as err:
        pytest.skip(str(err))


def _storage(dtype, x):
    """numpy array of the kernel's storage type for a value of `dtype`."""
    if dtype is DType.BF16:
        import ml_dtypes
        return np.ascontiguousarray(np.asarray(x, np.float32).astype(ml_dtypes.bfloat16))
    if dtype is DType.BOOL:
        return np.ascontiguousarray(np.asarray(x, np.bool_))
    return np.ascontiguousarray(np.asarray(x, gir.interp.numpy_dtype(dtype)))


def _run_compiled(kernel, lib_path, xs, split=3):
    """Call the compiled body over the iteration space in `split` uneven ranges."""
    lib = ctypes.CDLL(str(lib_path))
    info = kernel_info(lib, kernel.name)
    assert info.num_in == len(kernel.inputs) and info.num_out == len(kernel.outputs)
    assert info.total == kernel.parallel.size
    ins = [_storage(b.dtype, x) for b, x in zip(kernel.inputs, xs)]
    outs = []
    for b in kernel.outputs:
        if b.dtype is DType.BF16:
            import ml_dtypes
            outs.append(np.zeros(b.arg.shape, ml_dtypes.bfloat16))
        else:
            outs.append(np.zeros(b.arg.shape, gir.interp.numpy_dtype(b.dtype)))
    in_ptrs = (ctypes.c_void_p * max(1, len(ins)))(*[a.ctypes.data for a in ins])
    out_ptrs = (ctypes.c_void_p * len(outs))(*[a.ctypes.data for a in outs])
    total = info.total
    cuts = sorted({0, total, *(total * k // split + k for k in range(1, split))} & set(range(total + 1)))
    for lo, hi in zip(cuts, cuts[1:]):
        info.body(in_ptrs, out_ptrs, lo, hi, 0)
    return outs


DTYPE_PROGRAMS = {
    "float32": (lambda x, y: jnp.exp(x) * y + 1, jnp.float32),
    "float64": (lambda x, y: jnp.exp(x) * y + 1, jnp.float64),
    "bfloat16": (lambda x, y: jnp.tanh(x) * y + x, jnp.bfloat16),
    "float16": (lambda x, y: x * y + x, jnp.float16),
    "int32": (lambda x, y: jnp.maximum(x * 3, y) - y, jnp.int32),
    "uint8": (lambda x, y: (x + y) * 3 - x, jnp.uint8),
    "bool": (lambda x, y: (x & ~y) | (y ^ x), jnp.bool_),
}


@pytest.mark.parametrize("name", sorted(DTYPE_PROGRAMS))
def test_compile_every_dtype_matches_interpreter(name, rng):
    toolchain = _toolchain()
    from pfjax.build import build
    f, dt = DTYPE_PROGRAMS[name]
    with jax.enable_x64(True) if dt == jnp.float64 else _null():
        ks = _kernels(f, ((5, 67), dt), ((5, 67), dt))
    for kernel in ks:
        k = _ready(kernel)
        src = emit_kernel(k)
        lib = build(src, toolchain, "test")
        assert lib.exists()
        xs = _random_inputs(k, rng)
        want = gir.interp.run(k, xs)
        got = _run_compiled(k, lib, xs)
        for g, w in zip(got, want):
            g = np.asarray(g).astype(w.dtype)
            if np.issubdtype(w.dtype, np.floating):
                tol = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-6}.get(np.dtype(w.dtype), 1e-2)
                if "bfloat16" in name:
                    tol = 2 ** -7
                np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
            else:
                np.testing.assert_array_equal(g, w)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_compile_broadcast_and_convert_matches_interpreter(rng):
    toolchain = _toolchain()
    from pfjax.build import build
    f = lambda x, b, c: ((x + b) * c).astype(jnp.int32)  # noqa: E731
    ks = _kernels(f, ((6, 40), jnp.float32), ((40,), jnp.float32), ((6, 1), jnp.float32))
    for kernel in ks:
        k = _ready(kernel)
        lib = build(emit_kernel(k), toolchain, "test")
        xs = [x * 50 for x in _random_inputs(k, rng)]
        xs[0].reshape(-1)[:3] = [np.nan, -np.inf, -3e9]
        for g, w in zip(_run_compiled(k, lib, xs, split=5), gir.interp.run(k, xs)):
            np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("f", [
    lambda x, y: x * y + jnp.sqrt(jnp.abs(x)),
    # a saturating float -> int32 conversion, then integer selects (floor division)
    lambda x, y: (x * 100).astype(jnp.int32) // 7 + (y > 0).astype(jnp.int32)],
    ids=["float32", "to_int32_floor_div"])
def test_elementwise_loop_is_vectorized(tmp_path, f):
    toolchain = _toolchain()
    [k] = _kernels(f, ((64, 256), jnp.float32), ((64, 256), jnp.float32))
    k = _ready(k)
    src = emit_kernel(k)
    cc = tmp_path / "kernel.cc"
    cc.write_text(src)
    cmd = toolchain.command(str(cc), str(tmp_path / "kernel.so")) + ["-fopt-info-vec-optimized"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = src.splitlines()
    loop_line = next(i + 1 for i, line in enumerate(lines) if line.strip().startswith("for (int64_t j"))
    reported = [int(m.group(1)) for m in re.finditer(r"kernel\.cc:(\d+):\d+: optimized: loop vectorized",
                                                     proc.stdout + proc.stderr)]
    # gcc names the loop header or the first statement of its body
    loop_end = next(i + 1 for i, line in enumerate(lines) if "begin += n" in line)
    assert any(loop_line <= r < loop_end for r in reported), \
        (loop_line, loop_end, proc.stdout + proc.stderr)


def test_compiled_float_to_int32_saturates(rng):
    toolchain = _toolchain()
    from pfjax.build import build
    [kernel] = _kernels(lambda x: (x * 2).astype(jnp.int32), ((70,), jnp.float32))
    k = _ready(kernel)
    lib = build(emit_kernel(k), toolchain, "test")
    x = (rng.standard_normal(70) * 100).astype(np.float32)
    x[:5] = [np.nan, np.inf, -np.inf, 3e9, -3e9]
    (got,) = _run_compiled(k, lib, [x])
    want = np.asarray(jax.jit(lambda x: (x * 2).astype(jnp.int32))(x))
    np.testing.assert_array_equal(got, want)
    assert got[0] == 0 and got[1] == 2**31 - 1


def test_tanh_gelu_runs_as_a_division_and_matches_float64(rng):
    x = np.concatenate([rng.standard_normal(4000) * 4,
                        [-np.inf, np.inf, np.nan, -100.0, 100.0, -9.0, 0.0, -0.0, 1e-30, -1e-30]]
                       ).astype(np.float32)
    f = lambda x: jax.nn.gelu(x, approximate=True)
    (group,) = pfjax.explain(f, x).groups
    ops = {n.arg for n in gir.toposort(group.kernel.root) if n.op is gir.Op.ALU}
    # x * logistic(2z) -> x / (1 + exp(-2z)) = x / (1 + 2^(-2 log2(e) z)), and z's cubic
    # c (x + k x^3) as x (c + c k x^2)
    assert {"one_plus_exp2", "div"} <= ops and not ops & {"logistic", "tanh", "exp"}
    (arg,) = [n.src[0] for n in gir.toposort(group.kernel.root) if n.arg == "one_plus_exp2"]
    x_node, inner = arg.src
    assert arg.arg == "mul" and inner.arg == "add"
    assert sum(n.op is gir.Op.ALU and n.arg == "mul" for n in gir.toposort(arg)) == 3
    got = np.asarray(pfjax.fuse(f)(x))
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # 0.5 (1 + tanh z) = 1 / (1 + e^-2z)
        want = x64 / (1 + np.exp(-2 * np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    want[x64 == -np.inf] = np.nan  # -inf * 0, as in XLA
    # rtol: z itself is rounded in float32, and exp(-2z) magnifies that by |2z| (< 100 here)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-35)
    assert np.signbit(got[-3]) and np.signbit(got[-1])  # -0 and -1e-30 keep their sign
    np.testing.assert_allclose(got, np.asarray(jax.jit(f)(x)), rtol=1e-5, atol=1e-6)


def test_gelu_cubic_kept_where_it_is_also_stored(rng):
    """x + k x^3 is factored only where nothing else reads it: stored too, the plain
    product by the folded constant stays."""
    x = (rng.standard_normal(512) * 3).astype(np.float32)

    def f(x):
        inner = x + 0.044715 * x ** 3
        return x * jax.nn.sigmoid(1.5957691 * inner), inner

    (group,) = pfjax.explain(f, x).groups
    (arg,) = [n.src[0] for n in gir.toposort(group.kernel.root) if n.arg == "one_plus_exp2"]
    assert any(s.op is gir.Op.CONST for s in arg.src)  # e * c', e the stored cubic
    got = pfjax.fuse(f)(x)
    for g, w in zip(got, jax.jit(f)(x)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-6, atol=1e-6)


def _tanh_gate_kernel(z_of_x, extra_use=False):
    """0.5 * (1 + tanh(z(x))) over 256 floats, optionally also storing z."""
    space = (256,)
    x_buf = gir.buffer(0, "in", DType.F32, space)
    x = gir.load(x_buf, View(space, (1,)))
    z = z_of_x(x)
    gate = gir.alu("mul", DType.F32, gir.const(0.5, DType.F32),
                   gir.alu("add", DType.F32, gir.const(1.0, DType.F32),
                           gir.alu("tanh", DType.F32, z)))
    values = [gate, z] if extra_use else [gate]
    outs = [gir.buffer(k, "out", DType.F32, space) for k in range(len(values))]
    stores = [gir.store(o, v, View(space, (1,))) for o, v in zip(outs, values)]
    return gir.Kernel(gir.parallel(gir.Parallel(space), stores), (x_buf,), tuple(outs))


@pytest.mark.parametrize("const_first", [True, False])
def test_tanh_to_logistic_folds_the_doubling_into_a_constant_factor(rng, const_first):
    """logistic(2 * (c * x)) becomes logistic((2c) * x): one multiplication fewer, and
    bit-identical, since doubling commutes with rounding (except where c * x is subnormal,
    where the logistic is 0.5 either way)."""
    from pfjax.passes.logistic import tanh_to_logistic
    c = gir.const(np.float32(0.7978846), DType.F32)
    scaled = lambda x: gir.alu("mul", DType.F32, *((c, x) if const_first else (x, c)))
    folded = tanh_to_logistic(_tanh_gate_kernel(scaled))
    (logistic,) = [n for n in gir.toposort(folded.root) if n.op is Op.ALU and n.arg == "logistic"]
    arg = logistic.src[0]
    assert arg.op is Op.ALU and arg.arg == "mul"
    consts = [float(s.arg) for s in arg.src if s.op is Op.CONST]
    assert consts == [2 * float(np.float32(0.7978846))]
    # the unfolded form, spelled out: logistic((c * x) * 2)
    x_node = gir.load(folded.inputs[0], View((256,), (1,)))
    spelled = gir.alu("logistic", DType.F32, gir.alu("mul", DType.F32, scaled(x_node),
                                                      gir.const(2.0, DType.F32)))
    x = np.concatenate([rng.standard_normal(250) * 3, [1e-40, -1e-40, 3e38, np.inf, np.nan, 0]]
                       ).astype(np.float32)
    def run(value):
        out = gir.buffer(0, "out", DType.F32, (256,))
        store = gir.store(out, value, View((256,), (1,)))
        kernel = gir.Kernel(gir.parallel(gir.Parallel((256,)), [store]), folded.inputs, (out,))
        return gir.interp.run(kernel, [x])[0]
    two_z = run(arg)
    with np.errstate(over="ignore"):
        want = (np.float32(0.7978846) * x) * np.float32(2)
    normal = ~(np.abs(np.float32(0.7978846) * x) < np.finfo(np.float32).tiny)
    assert normal.sum() == 250 + 4 - 1  # all but the two subnormal products and 0
    np.testing.assert_array_equal(two_z[normal], want[normal])
    np.testing.assert_allclose(two_z[~normal], want[~normal], rtol=1e-4, atol=0)
    np.testing.assert_array_equal(gir.interp.run(folded, [x])[0], run(spelled))


def test_tanh_to_logistic_keeps_a_shared_factor():
    """z = c * x also stored elsewhere: 2z stays a multiplication of z (no second product)."""
    from pfjax.passes.logistic import tanh_to_logistic
    c = gir.const(np.float32(0.5), DType.F32)
    k = tanh_to_logistic(_tanh_gate_kernel(lambda x: gir.alu("mul", DType.F32, x, c), True))
    (logistic,) = [n for n in gir.toposort(k.root) if n.op is Op.ALU and n.arg == "logistic"]
    assert [float(s.arg) for s in logistic.src[0].src if s.op is Op.CONST] == [2.0]


def _gated_kernel(y_of_x, extra_use=False):
    """x * logistic(y(x)) over 256 floats, optionally also storing the logistic."""
    space = (256,)
    x_buf = gir.buffer(0, "in", DType.F32, space)
    x = gir.load(x_buf, View(space, (1,)))
    gate = gir.alu("logistic", DType.F32, y_of_x(x))
    values = [gir.alu("mul", DType.F32, gate, x)] + ([gate] if extra_use else [])
    outs = [gir.buffer(k, "out", DType.F32, space) for k in range(len(values))]
    stores = [gir.store(o, v, View(space, (1,))) for o, v in zip(outs, values)]
    return gir.Kernel(gir.parallel(gir.Parallel(space), stores), (x_buf,), tuple(outs))


def _specials(rng):
    return np.concatenate([rng.standard_normal(240) * 30,
                           [np.inf, -np.inf, np.nan, 100, -100, 88.5, -88.5, 87.2, -87.2, 0.0,
                            -0.0, 1e-30, -1e-30, 1e-40, 3e38, -3e38]]).astype(np.float32)


@pytest.mark.parametrize("const_first", [True, False])
def test_logistic_product_becomes_a_division(rng, const_first):
    """x * logistic(c * x) -> x / (1 + 2^((-c log2(e)) * x)): the negation and log2(e) fold
    into the constant, and the ends agree with the product (x / inf = 0 where logistic = 0;
    NaN at -inf * 0)."""
    from pfjax.passes.logistic import logistic_products_to_divisions
    c = gir.const(np.float32(1.702), DType.F32)
    kernel = _gated_kernel(lambda x: gir.alu("mul", DType.F32, *((c, x) if const_first else (x, c))))
    rewritten = logistic_products_to_divisions(kernel)
    nodes = [n for n in gir.toposort(rewritten.root) if n.op is Op.ALU]
    ops = [n.arg for n in nodes]
    assert "logistic" not in ops and "neg" not in ops and {"one_plus_exp2", "div"} <= set(ops)
    (scaled,) = [n.src[0] for n in nodes if n.arg == "one_plus_exp2"]
    c2 = np.float32(-float(np.float32(1.702)) * np.log2(np.e))
    assert [np.float32(s.arg) for s in scaled.src if s.op is Op.CONST] == [c2]
    x = _specials(rng)
    got = gir.interp.run(rewritten, [x])[0]
    with np.errstate(over="ignore", invalid="ignore"):
        minus_y = (c2 * x).astype(np.float64)  # the argument as rounded
        want = x.astype(np.float64) / (1 + np.exp2(minus_y))
    want[np.isneginf(x)] = np.nan  # -inf * logistic(-inf) = -inf * 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-36)
    np.testing.assert_array_equal(np.signbit(got[~np.isnan(got)]), np.signbit(want[~np.isnan(got)]))


def test_logistic_product_kept_where_the_logistic_is_also_stored():
    from pfjax.passes.logistic import logistic_products_to_divisions
    kernel = _gated_kernel(lambda x: x, extra_use=True)
    ops = [n.arg for n in gir.toposort(logistic_products_to_divisions(kernel).root)
           if n.op is Op.ALU]
    assert "logistic" in ops and "div" not in ops


def test_silu_runs_as_a_division_and_matches_xla(rng):
    """jax.nn.silu (x * logistic(x)), forward and backward, with the ends of the range."""
    x = _specials(rng)
    f = lambda x: jax.nn.silu(x) * 1.5
    (group,) = pfjax.explain(f, x).groups
    ops = {n.arg for n in gir.toposort(group.kernel.root) if n.op is gir.Op.ALU}
    assert {"exp", "div", "neg"} <= ops and "logistic" not in ops
    got, want = np.asarray(pfjax.fuse(f)(x)), np.asarray(jax.jit(f)(x))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-35)  # XLA flushes below -88
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(x) & (np.abs(x) < 50)
    g = jax.grad(lambda x: jnp.sum(jax.nn.silu(x) * x))
    np.testing.assert_allclose(np.asarray(pfjax.fuse(g)(x[finite])),
                               np.asarray(jax.jit(g)(x[finite])), rtol=2e-5, atol=1e-6)


def test_tanh_kept_where_the_backward_reuses_it(rng):
    x = rng.standard_normal((64, 33)).astype(np.float32)
    g = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=True) * x))
    for group in pfjax.explain(g, x).groups:
        ops = [n.arg for n in gir.toposort(group.kernel.root) if n.op is gir.Op.ALU]
        assert not ("logistic" in ops and "tanh" in ops), ops
    np.testing.assert_allclose(np.asarray(pfjax.fuse(g)(x)), np.asarray(jax.jit(g)(x)),
                               rtol=2e-5, atol=2e-5)


def test_vector_loops_with_calls_prefetch_their_streamed_rows(rng):
    """A loop with an exp prefetches the input that moves with the rows, not the bias row
    every row reads again; a loop without a call leaves prefetching to the hardware."""
    x = rng.standard_normal((64, 256)).astype(np.float32)
    b = rng.standard_normal(256).astype(np.float32)
    for f, prefetches in ((lambda x, b: jax.nn.gelu(x + b), True), (lambda x, b: x * 2 + b, False)):
        (group,) = pfjax.explain(f, x, b).groups
        source = open(group.source_path).read()
        lines = [line for line in source.splitlines() if "__builtin_prefetch" in line]
        # the row pointers: name -> whether it moves with the row index
        moving = dict(re.findall(r"(p\d+) = in\d+ \+ 0( \+ i0 \* \d+)?", source))
        if prefetches:
            names = {re.search(r"&(p\d+)\[", line).group(1) for line in lines}
            assert names and all(moving[n] for n in names) and len(moving) == 2, (names, moving)
        else:
            assert not lines
        np.testing.assert_allclose(np.asarray(pfjax.fuse(f)(x, b)), np.asarray(jax.jit(f)(x, b)),
                                   rtol=2e-6, atol=1e-6)
