"""Tests for csrc/include/pfjax/math.h (branch-free vectorizable float32 math).

A small C++ harness is compiled once per session with the same flags pfjax uses for
generated kernels and loaded with ctypes; results are compared with float64 numpy
references (error in float32 ulps against the reference rounded to float32).
"""
import ctypes
import math
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INCLUDE = os.path.join(REPO, "csrc", "include")
# As kernels are built (pfjax/build/toolchain.py): without -fno-trapping-math g++ does not
# if-convert the functions' selects for AVX2 (AVX-512's masked operations do not need it).
FLAGS = ["-O3", "-march=native", "-std=c++17", "-fopenmp-simd", "-fno-math-errno",
         "-fno-trapping-math", "-fwrapv", "-shared", "-fPIC"]

UNARY = ["exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "tanh", "logistic",
         "erf", "erfc", "sin", "cos", "cbrt", "rsqrt", "sign", "round_half_even",
         "round_half_away"]

HARNESS = r"""
#include <cstdint>
#include "pfjax/math.h"
namespace pm = pfjax::math;
#define UNARY(name) \
  extern "C" void h_##name(const float* x, float* y, int64_t n) { \
    _Pragma("omp simd simdlen(16)") \
    for (int64_t j = 0; j < n; ++j) y[j] = pm::name##_f32(x[j]); }
""" + "".join(f"UNARY({u})\n" for u in UNARY) + r"""
#define BINARY(name) \
  extern "C" void h_##name(const float* a, const float* b, float* y, int64_t n) { \
    _Pragma("omp simd simdlen(16)") \
    for (int64_t j = 0; j < n; ++j) y[j] = pm::name##_f32(a[j], b[j]); }
BINARY(pow)
BINARY(max)
BINARY(min)
extern "C" void h_is_finite(const float* x, uint8_t* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = pm::is_finite_f32(x[j]) ? 1 : 0; }
extern "C" void h_bf16_to_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = pm::bf16_to_f32(x[j]); }
extern "C" void h_f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = pm::f16_to_f32(x[j]); }
extern "C" void h_f32_to_bf16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = pm::f32_to_bf16(x[j]); }
extern "C" void h_f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) y[j] = pm::f32_to_f16(x[j]); }
#define INTOP(T, tag) \
  extern "C" void h_idiv_##tag(const T* a, const T* b, T* y, int64_t n) { \
    for (int64_t j = 0; j < n; ++j) y[j] = pm::idiv<T>(a[j], b[j]); } \
  extern "C" void h_irem_##tag(const T* a, const T* b, T* y, int64_t n) { \
    for (int64_t j = 0; j < n; ++j) y[j] = pm::irem<T>(a[j], b[j]); }
INTOP(int32_t, i32)
INTOP(uint32_t, u32)
INTOP(int8_t, i8)
INTOP(int64_t, i64)
"""

LIBM_NAMES = {"expf", "exp2f", "expm1f", "logf", "log2f", "log10f", "log1pf", "tanhf",
              "erff", "erfcf", "sinf", "cosf", "powf", "cbrtf", "exp", "log", "pow",
              "sin", "cos", "tanh", "erf", "erfc", "roundf", "fmaxf", "fminf", "fmodf",
              "floorf", "truncf", "ceilf", "floor", "trunc"}


def _gxx():
    return shutil.which("g++")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if _gxx() is None:
        pytest.skip("g++ not on PATH")
    d = tmp_path_factory.mktemp("pfjax_math")
    src = d / "harness.cpp"
    so = d / "harness.so"
    src.write_text(HARNESS)
    subprocess.run([_gxx(), *FLAGS, "-I", INCLUDE, str(src), "-o", str(so)],
                   check=True, capture_output=True, text=True)
    nm = shutil.which("nm")
    undefined = set()
    if nm is not None:
        out = subprocess.run([nm, "-u", "-D", str(so)], capture_output=True, text=True).stdout
        undefined = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    L = ctypes.CDLL(str(so))
    L._undefined = undefined
    return L


def _p(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def call1(lib, name, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    getattr(lib, "h_" + name)(_p(x), _p(y), ctypes.c_int64(x.size))
    return y


def call2(lib, name, a, b):
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    y = np.empty_like(a)
    getattr(lib, "h_" + name)(_p(a), _p(b), _p(y), ctypes.c_int64(a.size))
    return y


def callconv(lib, name, x, out_dtype):
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, out_dtype)
    getattr(lib, "h_" + name)(_p(x), _p(y), ctypes.c_int64(x.size))
    return y


def _ordered(f32):
    i = f32.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def ulp_err(got, ref64):
    """ulp distance between float32 results and float64 reference rounded to float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        ref32 = ref64.astype(np.float32)
    both_nan = np.isnan(got) & np.isnan(ref32)
    d = np.abs(_ordered(got) - _ordered(ref32))
    d = np.where(both_nan, 0, d)
    d = np.where(np.isnan(got) ^ np.isnan(ref32), 1 << 40, d)
    return d


def report(name, x, got, ref, limit):
    e = ulp_err(got, ref)
    k = int(np.argmax(e))
    msg = f"{name}: max {int(e[k])} ulp at x={x[k]!r} got={got[k]!r} ref={ref[k]!r}"
    print(msg)
    assert e[k] <= limit, msg
    return int(e[k])


RNG = np.random.default_rng(1234)


def rand_uniform(lo, hi, n):
    return RNG.uniform(lo, hi, n).astype(np.float32)


def rand_bits(lo, hi, n):
    """Random float32 whose bit patterns are uniform in [lo, hi] (positive floats)."""
    return RNG.integers(lo, hi, n, dtype=np.int64).astype(np.uint32).view(np.float32)


def dense(lo, hi, n):
    return np.linspace(lo, hi, n, dtype=np.float64).astype(np.float32)


def sample(lo, hi, n_dense=200_000, n_rand=100_000):
    return np.concatenate([dense(lo, hi, n_dense), rand_uniform(lo, hi, n_rand)])


MAX_POS = 0x7F7FFFFF
ALL_POS = (1, MAX_POS)

_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _logistic64(x):
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# name -> (inputs, reference fn, ulp limit)
def _cases():
    tiny = np.concatenate([rand_bits(0x30000000, 0x3F000000, 50_000)])
    tiny = np.concatenate([tiny, -tiny])
    all_pos = rand_bits(*ALL_POS, 200_000)
    return {
        "exp": (np.concatenate([sample(-104, 89), tiny]), np.exp, 1),
        "exp2": (np.concatenate([sample(-150, 128), tiny]), np.exp2, 1),
        "expm1": (np.concatenate([sample(-20, 89), sample(-1, 1, 100_000, 50_000), tiny]),
                  np.expm1, 1),
        "log": (np.concatenate([all_pos, sample(0.5, 2.0)]), np.log, 1),
        "log2": (np.concatenate([all_pos, sample(0.5, 2.0)]), np.log2, 1),
        "log10": (np.concatenate([all_pos, sample(0.5, 2.0)]), np.log10, 1),
        "log1p": (np.concatenate([sample(-0.999999, 3.0), rand_bits(*ALL_POS, 100_000),
                                  -rand_bits(1, 0x3F7FFFFF, 100_000), tiny]), np.log1p, 1),
        "tanh": (np.concatenate([sample(-10, 10), sample(-1, 1, 50_000, 50_000), tiny]),
                 np.tanh, 1),
        "logistic": (np.concatenate([sample(-110, 110), tiny]), _logistic64, 2),
        "erf": (np.concatenate([sample(-5, 5), tiny]), _erf, 1),
        "erfc": (np.concatenate([sample(-10, 10.1), tiny]), _erfc, 4),
        "sin": (np.concatenate([sample(-10, 10), rand_uniform(-1e5, 1e5, 200_000), tiny]),
                np.sin, 2),
        "cos": (np.concatenate([sample(-10, 10), rand_uniform(-1e5, 1e5, 200_000), tiny]),
                np.cos, 2),
        "cbrt": (np.concatenate([all_pos, -rand_bits(*ALL_POS, 50_000), sample(-8, 8)]),
                 np.cbrt, 1),
    }


CASES = None


@pytest.mark.parametrize("name", ["exp", "exp2", "expm1", "log", "log2", "log10", "log1p",
                                  "tanh", "logistic", "erf", "erfc", "sin", "cos", "cbrt"])
def test_accuracy(lib, name):
    global CASES
    if CASES is None:
        CASES = _cases()
    x, ref_fn, limit = CASES[name]
    got = call1(lib, name, x)
    with np.errstate(all="ignore"):
        ref = ref_fn(x.astype(np.float64))
    report(name, x, got, ref, limit)
    if name == "erfc":
        normal = ref >= np.finfo(np.float32).tiny
        rel = np.abs(got[normal].astype(np.float64) - ref[normal]) / ref[normal]
        assert rel.max() <= 3e-7, rel.max()


def test_pow_accuracy(lib):
    n = 300_000
    x = np.exp(RNG.uniform(-20.0, 20.0, n)).astype(np.float32)
    y = RNG.uniform(-60, 60, n).astype(np.float32)
    # large exponents close to 1, and integer exponents of negative bases
    x2 = RNG.uniform(0.9, 1.1, 50_000).astype(np.float32)
    y2 = RNG.uniform(-500, 500, 50_000).astype(np.float32)
    x3 = -RNG.uniform(0.01, 50, 50_000).astype(np.float32)
    y3 = RNG.integers(-20, 21, 50_000).astype(np.float32)
    x = np.concatenate([x, x2, x3])
    y = np.concatenate([y, y2, y3])
    with np.errstate(over="ignore", under="ignore"):
        ref = np.power(x.astype(np.float64), y.astype(np.float64))
    keep = (np.abs(ref) < 3e38) & (np.abs(ref) > 1e-44)  # incl. denormal results
    x, y, ref = x[keep], y[keep], ref[keep]
    got = call2(lib, "pow", x, y)
    e = ulp_err(got, ref)
    k = int(np.argmax(e))
    msg = f"pow: max {int(e[k])} ulp at x={x[k]!r} y={y[k]!r} got={got[k]!r} ref={ref[k]!r}"
    print(msg)
    assert e[k] <= 1, msg


def _check_special(lib, name, cases):
    x = np.array([c[0] for c in cases], np.float32)
    got = call1(lib, name, x)
    for xi, gi, (_, want) in zip(x, got, cases):
        want = np.float32(want)
        if np.isnan(want):
            assert np.isnan(gi), (name, xi, gi)
        else:
            assert gi == want and np.signbit(gi) == np.signbit(want), (name, xi, gi, want)


INF, NAN = np.inf, np.nan


def test_special_values(lib):
    S = {
        "exp": [(NAN, NAN), (INF, INF), (-INF, 0.0), (89.0, INF), (88.8, INF), (-0.0, 1.0),
                (0.0, 1.0), (-104.0, 0.0), (-200.0, 0.0)],
        "exp2": [(NAN, NAN), (INF, INF), (-INF, 0.0), (128.0, INF), (-149.0, 2.0**-149),
                 (10.0, 1024.0), (-0.0, 1.0), (-200.0, 0.0)],
        "expm1": [(NAN, NAN), (INF, INF), (-INF, -1.0), (-0.0, -0.0), (0.0, 0.0),
                  (100.0, INF), (-100.0, -1.0), (1e-30, 1e-30), (-1e-30, -1e-30)],
        "log": [(NAN, NAN), (0.0, -INF), (-0.0, -INF), (-1.0, NAN), (-INF, NAN), (INF, INF),
                (1.0, 0.0), (2.0**-149, math.log(2.0**-149))],
        "log2": [(NAN, NAN), (0.0, -INF), (-1.0, NAN), (INF, INF), (1.0, 0.0),
                 (2.0**-149, -149.0), (1024.0, 10.0), (0.5, -1.0)],
        "log10": [(NAN, NAN), (0.0, -INF), (-1.0, NAN), (INF, INF), (1.0, 0.0), (100.0, 2.0)],
        "log1p": [(NAN, NAN), (-1.0, -INF), (-2.0, NAN), (-INF, NAN), (INF, INF),
                  (-0.0, -0.0), (0.0, 0.0), (1e-30, 1e-30), (-1e-30, -1e-30),
                  (2.0**-149, 2.0**-149)],
        "tanh": [(NAN, NAN), (INF, 1.0), (-INF, -1.0), (-0.0, -0.0), (0.0, 0.0),
                 (20.0, 1.0), (-20.0, -1.0), (1e-30, 1e-30), (-1e-30, -1e-30)],
        "logistic": [(NAN, NAN), (INF, 1.0), (-INF, 0.0), (100.0, 1.0), (0.0, 0.5),
                     (-100.0, np.float32(math.exp(-100.0)))],
        "erf": [(NAN, NAN), (INF, 1.0), (-INF, -1.0), (-0.0, -0.0), (0.0, 0.0),
                (10.0, 1.0), (-10.0, -1.0)],
        "erfc": [(NAN, NAN), (INF, 0.0), (-INF, 2.0), (0.0, 1.0), (-0.0, 1.0), (-10.0, 2.0),
                 (11.0, 0.0), (100.0, 0.0)],
        "sin": [(NAN, NAN), (INF, NAN), (-INF, NAN), (-0.0, -0.0), (0.0, 0.0),
                (1e-30, 1e-30), (-1e-30, -1e-30)],
        "cos": [(NAN, NAN), (INF, NAN), (-INF, NAN), (-0.0, 1.0), (0.0, 1.0)],
        "cbrt": [(NAN, NAN), (INF, INF), (-INF, -INF), (-0.0, -0.0), (0.0, 0.0),
                 (27.0, 3.0), (-8.0, -2.0), (2.0**-149, np.cbrt(2.0**-149))],
        "rsqrt": [(NAN, NAN), (0.0, INF), (-0.0, -INF), (-1.0, NAN), (INF, 0.0), (4.0, 0.5)],
        "sign": [(NAN, NAN), (0.0, 0.0), (-0.0, -0.0), (3.0, 1.0), (-INF, -1.0), (1e-45, 1.0)],
        "round_half_even": [(0.5, 0.0), (1.5, 2.0), (2.5, 2.0), (-0.5, -0.0), (-2.5, -2.0),
                            (NAN, NAN), (INF, INF), (1e30, 1e30)],
        "round_half_away": [(0.5, 1.0), (1.5, 2.0), (2.5, 3.0), (-0.5, -1.0), (-2.5, -3.0),
                            (-0.4, -0.0), (0.49999997, 0.0), (NAN, NAN), (-INF, -INF),
                            (8388609.0, 8388609.0), (1e30, 1e30)],
    }
    for name, cases in S.items():
        _check_special(lib, name, cases)
    # exp in the denormal-result range
    x = dense(-103.9, -87.4, 20_000)
    got = call1(lib, "exp", x)
    assert ulp_err(got, np.exp(x.astype(np.float64))).max() <= 1
    # logistic tail
    x = dense(-103.9, -80.0, 20_000)
    got = call1(lib, "logistic", x)
    assert ulp_err(got, _logistic64(x.astype(np.float64))).max() <= 2
    # erfc(5) relative accuracy, erfc(-x) = 2 - erfc(x)
    got = call1(lib, "erfc", np.array([5.0, 9.0, -3.0, 10.0], np.float32))
    assert abs(got[0] / math.erfc(5.0) - 1) < 1e-6
    assert abs(got[1] / math.erfc(9.0) - 1) < 1e-6
    assert got[2] == np.float32(2 - math.erfc(3.0))
    assert got[3] < 1e-44
    # rsqrt is exactly 1/sqrt
    x = rand_bits(*ALL_POS, 100_000)
    got = call1(lib, "rsqrt", x)
    want = np.float32(1) / np.sqrt(x)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_pow_special(lib):
    cases = [
        (NAN, 0.0, 1.0), (NAN, -0.0, 1.0), (1.0, NAN, 1.0), (1.0, INF, 1.0), (1.0, -INF, 1.0),
        (-1.0, INF, 1.0), (-1.0, -INF, 1.0), (2.0, NAN, NAN), (NAN, 2.0, NAN),
        (-2.0, 3.0, -8.0), (-2.0, 2.0, 4.0), (-2.0, -1.0, -0.5), (-2.0, 0.5, NAN),
        (-INF, 0.5, INF), (0.0, -1.0, INF), (-0.0, -1.0, -INF), (-0.0, -2.0, INF),
        (0.0, -0.5, INF), (-0.0, 3.0, -0.0), (-0.0, 2.0, 0.0), (0.0, 0.5, 0.0),
        (0.0, INF, 0.0), (0.0, -INF, INF), (0.5, INF, 0.0), (0.5, -INF, INF), (2.0, INF, INF),
        (2.0, -INF, 0.0), (-0.5, INF, 0.0), (-2.0, -INF, 0.0), (INF, 2.0, INF),
        (INF, -2.0, 0.0), (-INF, 3.0, -INF), (-INF, 2.0, INF), (-INF, -3.0, -0.0),
        (-INF, -2.0, 0.0), (INF, INF, INF), (INF, -INF, 0.0), (2.0, 200.0, INF),
        (2.0, -200.0, 0.0), (2.0, -149.0, 2.0**-149), (2.0, 10.0, 1024.0), (3.0, 2.0, 9.0),
        (-3.0, 1e30, INF), (-0.5, 1e30, 0.0), (10.0, 38.0, np.float32(1e38)),
        (2.0, 0.5, np.float32(math.sqrt(2.0))), (4.0, -0.5, 0.5),
    ]
    x = np.array([c[0] for c in cases], np.float32)
    y = np.array([c[1] for c in cases], np.float32)
    got = call2(lib, "pow", x, y)
    for (xi, yi, want), gi in zip(cases, got):
        want = np.float32(want)
        if np.isnan(want):
            assert np.isnan(gi), (xi, yi, gi)
        else:
            assert gi == want and np.signbit(gi) == np.signbit(want), (xi, yi, gi, want)


def test_bf16_f16_conversions(lib):
    import ml_dtypes

    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    for name, dt in (("bf16_to_f32", ml_dtypes.bfloat16), ("f16_to_f32", np.float16)):
        got = callconv(lib, name, bits, np.float32)
        want = bits.view(dt).astype(np.float32)
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan), name
        assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32)), name

    # round trips f16/bf16 -> f32 -> f16/bf16 are exact (NaN -> NaN)
    for to, back, dt in (("bf16_to_f32", "f32_to_bf16", ml_dtypes.bfloat16),
                         ("f16_to_f32", "f32_to_f16", np.float16)):
        f = callconv(lib, to, bits, np.float32)
        rt = callconv(lib, back, f, np.uint16)
        nan = np.isnan(bits.view(dt).astype(np.float32))
        assert np.array_equal(rt[~nan], bits[~nan]), back
        assert np.all(np.isnan(rt[nan].view(dt).astype(np.float32))), back

    # f32 -> bf16 / f16 rounding on random + edge floats
    rnd = RNG.integers(0, 1 << 32, 400_000, dtype=np.uint64).astype(np.uint32)
    edge = []
    for base in range(0, 1 << 16, 97):  # exact halfway / near-halfway points for bf16
        for low in (0x7FFF, 0x8000, 0x8001, 0x0000, 0xFFFF):
            edge.append((base << 16) | low)
    for h in range(0, 1 << 16, 13):  # halfway points for f16, incl. denormals
        f = np.array([h], np.uint16).view(np.float16).astype(np.float32)
        u = int(f.view(np.uint32)[0])
        edge += [(u + k) & 0xFFFFFFFF for k in (0, 0x1000, 0xFFF, 0x1001, -1)]
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65519.996, 65520.0,
                         1e10, -1e10, 6e-8, 2.9e-8, 3e-8, 5.96e-8, 1e-45, 3.4028235e38,
                         3.3961776e38, 3.3961777e38],
                        np.float32).view(np.uint32)
    allu = np.concatenate([rnd, np.array(edge, np.uint64).astype(np.uint32), specials])
    x = allu.view(np.float32)
    nan = np.isnan(x)
    for name, dt in (("f32_to_bf16", ml_dtypes.bfloat16), ("f32_to_f16", np.float16)):
        got = callconv(lib, name, x, np.uint16)
        with np.errstate(over="ignore", invalid="ignore"):
            want = x.astype(dt).view(np.uint16)
        assert np.array_equal(got[~nan], want[~nan]), name
        gotf = got[nan].view(dt).astype(np.float32)
        assert np.all(np.isnan(gotf)), name
        qbit = 0x0040 if dt is ml_dtypes.bfloat16 else 0x0200
        assert np.all(got[nan] & qbit), name  # quiet NaN


def _idiv_ref(a, b, bits, signed):
    a = a.astype(object)
    b = b.astype(object)
    out = []
    for ai, bi in zip(a, b):
        if bi == 0:
            out.append(-1 if signed else (1 << bits) - 1)
        else:
            q = abs(ai) // abs(bi)
            q = q if (ai >= 0) == (bi > 0) else -q
            if signed and q >= (1 << (bits - 1)):
                q -= 1 << bits
            out.append(q)
    return out


def _irem_ref(a, b):
    out = []
    for ai, bi in zip(a.astype(object), b.astype(object)):
        if bi == 0:
            out.append(ai)
        else:
            r = abs(ai) % abs(bi)
            out.append(r if ai >= 0 else -r)
    return out


@pytest.mark.parametrize("tag,dt,bits,signed", [("i32", np.int32, 32, True),
                                                ("u32", np.uint32, 32, False),
                                                ("i8", np.int8, 8, True),
                                                ("i64", np.int64, 64, True)])
def test_integer_div_rem(lib, tag, dt, bits, signed):
    info = np.iinfo(dt)
    edge = [0, 1, 2, 3, 7, info.max, info.max - 1, info.min, info.min + 1]
    if signed:
        edge += [-1, -2, -3, -7]
    ea, eb = np.meshgrid(np.array(edge, dt), np.array(edge, dt))
    ra = RNG.integers(info.min, info.max, 3000, dtype=np.int64, endpoint=True)
    rb = RNG.integers(-50 if signed else 0, 50, 3000, dtype=np.int64)
    a = np.concatenate([ea.ravel(), ra.astype(dt)]).astype(dt)
    b = np.concatenate([eb.ravel(), rb.astype(dt)]).astype(dt)
    for op, ref in (("idiv", _idiv_ref(a, b, bits, signed)), ("irem", _irem_ref(a, b))):
        y = np.empty_like(a)
        getattr(lib, f"h_{op}_{tag}")(_p(a), _p(b), _p(y), ctypes.c_int64(a.size))
        want = np.array([int(v) for v in ref], dtype=object)
        assert [int(v) for v in y] == list(want), op


def test_float_helpers(lib):
    vals = np.array([NAN, -INF, -2.0, -0.0, 0.0, 1.0, 3.0, INF], np.float32)
    a, b = [v.ravel() for v in np.meshgrid(vals, vals)]
    for name, fn in (("max", np.maximum), ("min", np.minimum)):
        got = call2(lib, name, a, b)
        want = fn(a, b)
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan), name
        assert np.all(got[~nan] == want[~nan]), name
    x = np.concatenate([rand_uniform(-100, 100, 10_000), dense(-4, 4, 257),
                        np.array([0.5, -0.5, 1.5, -1.5, 2.5, 0.49999997, 8388607.5,
                                  -8388607.5, 1e20, NAN, INF, -INF], np.float32)])
    x64 = x.astype(np.float64)
    got = call1(lib, "round_half_even", x)
    assert np.array_equal(got, np.rint(x), equal_nan=True)
    got = call1(lib, "round_half_away", x)
    want = (np.sign(x64) * np.floor(np.abs(x64) + 0.5)).astype(np.float32)
    assert np.array_equal(got, want, equal_nan=True)
    got = call1(lib, "sign", x)
    assert np.array_equal(got, np.sign(x), equal_nan=True)
    fin = np.empty(x.shape, np.uint8)
    lib.h_is_finite(_p(x), _p(fin), ctypes.c_int64(x.size))
    assert np.array_equal(fin.astype(bool), np.isfinite(x))
    edge = np.array([3.4028235e38, 1e-45, INF, -INF, NAN], np.float32)
    fin = np.empty(edge.shape, np.uint8)
    lib.h_is_finite(_p(edge), _p(fin), ctypes.c_int64(edge.size))
    assert list(fin) == [1, 1, 0, 0, 0]


def test_no_libm_calls(lib):
    bad = set(lib._undefined) & LIBM_NAMES
    assert not bad, f"math.h functions call into libm: {sorted(bad)}"


VEC_FUNCS = ["exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "tanh", "logistic",
             "erf", "erfc", "sin", "cos", "cbrt", "rsqrt", "sign", "round_half_even",
             "round_half_away", "pow", "max", "min", "is_finite", "bf16_to_f32",
             "f32_to_bf16", "f16_to_f32", "f32_to_f16"]


def test_loops_vectorize(tmp_path):
    if _gxx() is None:
        pytest.skip("g++ not on PATH")
    lines = ["#include <cstdint>", '#include "pfjax/math.h"', "namespace pm = pfjax::math;"]
    loop_line = {}
    for f in VEC_FUNCS:
        if f in ("pow", "max", "min"):
            sig = f"void v_{f}(const float* __restrict a, const float* __restrict b, float* __restrict y, int64_t n) {{"
            body = f"y[j] = pm::{f}_f32(a[j], b[j]) * 0.5f;"
        elif f == "is_finite":
            sig = "void v_is_finite(const float* __restrict a, float* __restrict y, int64_t n) {"
            body = "y[j] = pm::is_finite_f32(a[j]) ? a[j] : 0.0f;"
        elif f in ("bf16_to_f32", "f16_to_f32"):
            sig = f"void v_{f}(const uint16_t* __restrict a, float* __restrict y, int64_t n) {{"
            body = f"y[j] = pm::{f}(a[j]) * 0.5f;"
        elif f in ("f32_to_bf16", "f32_to_f16"):
            sig = f"void v_{f}(const float* __restrict a, uint16_t* __restrict y, int64_t n) {{"
            body = f"y[j] = pm::{f}(a[j] * 0.5f);"
        else:
            sig = f"void v_{f}(const float* __restrict a, float* __restrict y, int64_t n) {{"
            body = f"float x = a[j]; y[j] = pm::{f}_f32(x) * 0.5f;"
        lines.append(sig)
        lines.append("#pragma omp simd simdlen(16)")
        loop_line[f] = len(lines) + 1
        lines.append(f"for (int64_t j = 0; j < n; ++j) {{ {body} }}")
        lines.append("}")
    src = tmp_path / "vec.cpp"
    src.write_text("\n".join(lines) + "\n")
    flags = [f for f in FLAGS if f not in ("-shared",)]
    r = subprocess.run([_gxx(), *flags, "-c", "-I", INCLUDE, "-fopt-info-vec-optimized",
                        "-fopt-info-vec-missed", str(src), "-o", str(tmp_path / "vec.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    vectorized = set()
    for m in re.finditer(r"vec\.cpp:(\d+):\d+: optimized: loop vectorized", r.stderr):
        vectorized.add(int(m.group(1)))
    missing = [f for f, ln in loop_line.items() if ln not in vectorized]
    assert not missing, f"loops not vectorized: {missing}"
