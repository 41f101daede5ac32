// pfjax/math.h -- branch-free, vectorizable float32 math for pfjax generated kernels.
//
// Every function is `static inline __attribute__((always_inline))`, uses float only
// (no double), has no `if` (ternary selects only) and calls no libm function other
// than ones GCC lowers to single instructions with -march=native -fno-math-errno
// (sqrtf, fabsf, rintf, fmaf; floorf/truncf are avoided because GCC only
// vectorizes them under -fno-trapping-math).  Designed for loops such as
//   #pragma omp simd simdlen(16)
//   for (int64_t j = 0; j < n; ++j) out[j] = pfjax::math::tanh_f32(in[j]);
// compiled with  g++ -O3 -march=native -std=c++17 -fopenmp-simd -fno-math-errno -fwrapv
// (no -ffast-math).  tests/test_math_header.py checks that a loop over every
// float function below is reported vectorized by -fopt-info-vec.  idiv/irem are
// branch-free and never trap, but x86 has no SIMD integer division, so loops
// calling them stay scalar.
// Needs FMA hardware (-march=native on x86-64-v3 or newer) to be fast: without it
// GCC emits calls to the (exact, but slow and scalar) libm fmaf.
//
// Accuracy: max error in float32 ulps, i.e. ulp distance between the result and the
// float64 reference rounded to float32 (1 = at most one float away from the correctly
// rounded result), measured by
// tests/test_math_header.py (dense sweeps + random samples; float32-denormal results
// are counted in denormal ulps) on x86-64 AVX-512 with g++ 12.  The test asserts these.
//   exp_f32         1 ulp   (x in [-104, 89], incl. denormal results; overflow -> inf)
//   exp2_f32        1 ulp   (incl. denormal results)
//   expm1_f32       1 ulp
//   log_f32         1 ulp   (all positive floats incl. denormals)
//   log2_f32        1 ulp
//   log10_f32       1 ulp
//   log1p_f32       1 ulp
//   tanh_f32        1 ulp
//   logistic_f32    2 ulp   (logistic(-100) = 3.7e-44 denormal, logistic(100) = 1)
//   erf_f32         1 ulp
//   erfc_f32        4 ulp   (max relative error 2.6e-7 where the result is a normal float;
//                            erfc(x) -> 0 / denormal for x > 9.2, erfc(-x) = 2 - erfc(x))
//   sin_f32/cos_f32 2 ulp   (|x| <= 1e5; 3-part Cody-Waite reduction with FMA;
//                            accuracy degrades gradually beyond that, inf -> NaN)
//   pow_f32         1 ulp   (x in [2e-9, 5e8] with |y| <= 60, x in [0.9, 1.1] with
//                            |y| <= 500, negative x with integer y; normal or denormal
//                            results; double-float log2/exp2 inside)
//   cbrt_f32        1 ulp   (all floats)
//   rsqrt_f32       exactly 1.0f / sqrtf(x) (two correctly rounded operations)
// Algorithms: range reduction + Cephes-style minimax polynomials (exp, log, tanh,
// sin/cos); erf: odd polynomial on |x| < 1, else 1 - erfc; erfc: exp(-x^2) (with x^2
// split exactly) times a fitted polynomial for erfcx on [0.5, 2] and in 1/x^2 on [2, 10.2].
// Special values follow IEEE-754 / numpy (NaN in -> NaN out, signed zeros, infinities,
// pow special cases).  The routines assume the default rounding mode (round to nearest)
// and no FTZ/DAZ; under FTZ/DAZ denormal inputs/results are flushed and the functions
// are not accurate for them (e.g. log of a denormal).
//
// Storage conversions: bf16_to_f32, f32_to_bf16 (round-to-nearest-even, NaN -> quiet NaN),
// f16_to_f32, f32_to_f16 (IEEE binary16, RNE, denormals, overflow -> inf, NaN -> quiet NaN),
// exact on all inputs (checked on all 65536 half patterns and on random/edge floats).
// Integer helpers with XLA semantics: idiv (x/0 = -1 signed, all-ones unsigned;
// INT_MIN/-1 = INT_MIN), irem (x%0 = x; INT_MIN % -1 = 0).
#ifndef PFJAX_MATH_H_
#define PFJAX_MATH_H_

#include <cstdint>
#include <cmath>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
// The same functions run in CUDA kernels (pfjax/cuda_kernel.cuh): identical results on
// both backends.
#define PFJAX_MATH_INLINE static __host__ __device__ __forceinline__
#if defined(__CUDA_ARCH__)
#define PFJAX_BIT_CAST(T, x) pfjax_device_bit_cast<T>(x)
template <typename T, typename F>
__device__ __forceinline__ T pfjax_device_bit_cast(F x) {
  static_assert(sizeof(T) == 4 && sizeof(F) == 4, "32-bit casts only");
  if constexpr (std::is_same<T, float>::value) return __uint_as_float(static_cast<unsigned>(x));
  else return static_cast<T>(__float_as_uint(x));
}
#else
#define PFJAX_BIT_CAST(T, x) __builtin_bit_cast(T, x)
#endif
#else
#define PFJAX_MATH_INLINE static inline __attribute__((always_inline))
#define PFJAX_BIT_CAST(T, x) __builtin_bit_cast(T, x)
#endif

namespace pfjax {
namespace math {
namespace detail {

PFJAX_MATH_INLINE uint32_t f2u(float x) { return PFJAX_BIT_CAST(uint32_t, x); }
PFJAX_MATH_INLINE float u2f(uint32_t u) { return PFJAX_BIT_CAST(float, u); }
PFJAX_MATH_INLINE int32_t f2i_bits(float x) { return PFJAX_BIT_CAST(int32_t, x); }

// 2^n for n in [-126, 127].
PFJAX_MATH_INLINE float pow2i(int32_t n) { return u2f((uint32_t)(n + 127) << 23); }

// floor / trunc via rintf: GCC only vectorizes floorf/truncf with -fno-trapping-math.
PFJAX_MATH_INLINE float floor_(float x) {
  float r = rintf(x);
  uint32_t m = (uint32_t)((int32_t)f2u(x - r) >> 31);  // all ones if r > x
  return r - u2f(0x3f800000u & m);
}
PFJAX_MATH_INLINE float trunc_(float x) {
  float r = rintf(x);
  uint32_t m = (uint32_t)((int32_t)f2u(fabsf(x) - fabsf(r)) >> 31);  // |r| > |x|
  float t = r - u2f((0x3f800000u & m) | (f2u(x) & 0x80000000u));
  return u2f((f2u(t) & 0x7fffffffu) | (f2u(x) & 0x80000000u));
}

PFJAX_MATH_INLINE float quiet_nan() { return u2f(0x7fc00000u); }
PFJAX_MATH_INLINE float inf() { return u2f(0x7f800000u); }
PFJAX_MATH_INLINE bool isnan_(float x) { return x != x; }
PFJAX_MATH_INLINE float copysign_(float mag, float sgn) {
  return u2f((f2u(mag) & 0x7fffffffu) | (f2u(sgn) & 0x80000000u));
}
// c ? a : b computed with bit masks.  Used where a plain ternary would let GCC sink
// the computation of the unused operand into a branch (which then cannot be
// if-converted under -ftrapping-math, so the loop would not vectorize).
PFJAX_MATH_INLINE float blend_(bool c, float a, float b) {
  uint32_t m = 0u - (uint32_t)c;
  return u2f((f2u(a) & m) | (f2u(b) & ~m));
}

// Result of log-type functions for inputs x <= 0, +inf, NaN given the usual result y:
// log(+-0) = -inf, log(x < 0) = NaN, log(+inf) = +inf, log(NaN) = NaN.
// (Integer classification: comparing x against several float constants lets GCC
// thread the selects into branches, which blocks vectorization.)
PFJAX_MATH_INLINE float log_special(float x, float y) {
  uint32_t u = f2u(x);
  bool special = (u - 1u) >= 0x7f7fffffu;  // +-0, negative, +inf, NaN
  float s = (u << 1) == 0u ? u2f(0xff800000u) : (u > 0x7f800000u ? u2f(u | 0x7fc00000u) : x);
  return blend_(special, s, y);
}
PFJAX_MATH_INLINE float xorsign_(float v, float sgn) {
  return u2f(f2u(v) ^ (f2u(sgn) & 0x80000000u));
}

// exp(r) - 1 for |r| <= ln2/2 (Cephes expf polynomial), accurate relative to the result.
PFJAX_MATH_INLINE float expm1_reduced(float r) {
  float p = 1.9875691500E-4f;
  p = fmaf(p, r, 1.3981999507E-3f);
  p = fmaf(p, r, 8.3334519073E-3f);
  p = fmaf(p, r, 4.1665795894E-2f);
  p = fmaf(p, r, 1.6666665459E-1f);
  p = fmaf(p, r, 5.0000001201E-1f);
  return fmaf(r * r, p, r);
}

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;          // 9 significant bits
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kLn2F = 0.693147182f;           // float(ln 2)
constexpr float kLn2FLo = -1.90465432e-09f;     // ln 2 - kLn2F

// x * 2^n for n in [-252, 254] with a single rounding (also for denormal results).
PFJAX_MATH_INLINE float scale2(float x, int32_t n) {
  int32_t n1 = n >> 1;
  int32_t n2 = n - n1;
  return x * pow2i(n1) * pow2i(n2);
}

// Splits a positive finite float (normal or denormal) as x = 2^e * m, m in [sqrt(1/2), sqrt(2)),
// returns f = m - 1 (exact) and e as float.
PFJAX_MATH_INLINE void log_split(float x, float& f, float& ef) {
  // Masks come from arithmetic shifts rather than bool selects: GCC turns selects of
  // constants into branches/PHIs and then conditional multiplies, which it does not
  // vectorize.
  uint32_t b0 = f2u(x) & 0x7fffffffu;
  uint32_t den = (uint32_t)((int32_t)(b0 - 0x00800000u) >> 31);  // all ones if |x| < 2^-126
  float scale = u2f(0x3f800000u + (den & (23u << 23)));          // 2^23 or 1
  uint32_t b = f2u(x * scale);
  int32_t e = (int32_t)(b >> 23) - 127 - (int32_t)(den & 23u);   // unbiased exponent
  float m = u2f((b & 0x007fffffu) | 0x3f800000u);                // [1, 2)
  // m > sqrt(2): use m/2 and e+1
  uint32_t big = (uint32_t)((int32_t)(0x3fb504f3u - ((b & 0x007fffffu) | 0x3f800000u)) >> 31);
  f = fmaf(m, u2f(0x3f800000u - (big & (1u << 23))), -1.0f);     // exact
  ef = (float)(e + (int32_t)(big & 1u));
}

// log(1+f) - f for f in [sqrt(1/2)-1, sqrt(2)-1] (Cephes logf polynomial).
PFJAX_MATH_INLINE float log1p_tail(float f) {
  float z = f * f;
  float p = 7.0376836292E-2f;
  p = fmaf(p, f, -1.1514610310E-1f);
  p = fmaf(p, f, 1.1676998740E-1f);
  p = fmaf(p, f, -1.2420140846E-1f);
  p = fmaf(p, f, 1.4249322787E-1f);
  p = fmaf(p, f, -1.6668057665E-1f);
  p = fmaf(p, f, 2.0000714765E-1f);
  p = fmaf(p, f, -2.4999993993E-1f);
  p = fmaf(p, f, 3.3333331174E-1f);
  return fmaf(f * z, p, -0.5f * z);
}

// erf(x) for 0 <= x <= 1: x + x*P(x^2).
PFJAX_MATH_INLINE float erf_small(float ax) {
  float z = ax * ax;
  float p = 7.806903e-05f;
  p = fmaf(p, z, -0.0007997853f);
  p = fmaf(p, z, 0.005187162f);
  p = fmaf(p, z, -0.026853347f);
  p = fmaf(p, z, 0.11283579f);
  p = fmaf(p, z, -0.37612626f);
  p = fmaf(p, z, 0.12837917f);
  return fmaf(ax, p, ax);
}

PFJAX_MATH_INLINE float exp_impl(float x);

// erfc(x) for x >= 0.5 (x may be +inf; NaN not allowed).
PFJAX_MATH_INLINE float erfc_large(float ax) {
  float x = ax > 10.5f ? 10.5f : ax;
  // erfcx(x) on [0.5, 2]: polynomial in (x - 1.25).
  float s = x - 1.25f;
  float g1 = -2.4024459e-05f;
  g1 = fmaf(g1, s, 7.55022993e-05f);
  g1 = fmaf(g1, s, -0.000156646667f);
  g1 = fmaf(g1, s, 0.00045164788f);
  g1 = fmaf(g1, s, -0.00132790918f);
  g1 = fmaf(g1, s, 0.0035626376f);
  g1 = fmaf(g1, s, -0.00908144377f);
  g1 = fmaf(g1, s, 0.0220096279f);
  g1 = fmaf(g1, s, -0.0502182543f);
  g1 = fmaf(g1, s, 0.106795684f);
  g1 = fmaf(g1, s, -0.208821878f);
  g1 = fmaf(g1, s, 0.367822915f);
  // x * erfcx(x) on [2, 10.2]: polynomial in 1/x^2.
  float u = 1.0f / x;
  float v = u * u;
  float h = 30.7513847f;
  h = fmaf(h, v, -41.4921303f);
  h = fmaf(h, v, 25.732645f);
  h = fmaf(h, v, -10.243969f);
  h = fmaf(h, v, 3.25260925f);
  h = fmaf(h, v, -1.03743422f);
  h = fmaf(h, v, 0.422606975f);
  h = fmaf(h, v, -0.282087952f);
  h = fmaf(h, v, 0.564189553f);
  float g2 = h / x;
  float g = x < 2.0f ? g1 : g2;
  // exp(-x^2) with x^2 = x2h + x2l exactly.
  float x2h = x * x;
  float x2l = fmaf(x, x, -x2h);
  float gc = fmaf(-g, x2l, g);
  return exp_impl(-x2h) * gc;
}

// exp for any non-NaN x (NaN handled by callers).
PFJAX_MATH_INLINE float exp_impl(float x) {
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  float n = rintf(xc * kLog2e);
  float r = fmaf(-n, kLn2Hi, xc);
  r = fmaf(-n, kLn2Lo, r);
  float y = expm1_reduced(r) + 1.0f;
  return scale2(y, (int32_t)n);
}

// Double-float log2 of a positive finite float: returns hi + lo.
PFJAX_MATH_INLINE void log2_df(float x, float& hi, float& lo) {
  float f, ef;
  log_split(x, f, ef);
  // log(1+f) = 2*atanh(s), s = f / (2 + f)
  float d = 2.0f + f;
  float dl = (2.0f - d) + f;
  float s = f / d;
  float rem = fmaf(-s, d, f);
  rem = fmaf(-s, dl, rem);
  float sl = rem / d;
  float z = s * s;
  float p = 0.15384615f;  // 2/13
  p = fmaf(p, z, 0.18181818f);
  p = fmaf(p, z, 0.22222222f);
  p = fmaf(p, z, 0.28571429f);
  p = fmaf(p, z, 0.4f);
  p = fmaf(p, z, 0.66666669f);
  float tail = fmaf(2.0f, sl, s * z * p);
  float lh = 2.0f * s;
  // ln(m) ~ lh + tail ; multiply by log2(e) = L + Ll
  const float L = 1.44269502f, Ll = 1.92596299e-08f;
  float ph = lh * L;
  float pl = fmaf(lh, L, -ph) + fmaf(lh, Ll, tail * L);
  // add exponent
  float h = ef + ph;
  float l = ((ef - h) + ph) + pl;
  hi = h + l;
  lo = l - (hi - h);
}

// 2^(th + tl) for |th| <= 200, |tl| <= 2^-10.
PFJAX_MATH_INLINE float exp2_df(float th, float tl) {
  float n = rintf(th);
  float r = (th - n) + tl;
  float uh = r * kLn2F;
  float ul = fmaf(r, kLn2F, -uh) + r * kLn2FLo;
  float e = expm1_reduced(uh);
  float y = (e + fmaf(e, ul, ul)) + 1.0f;  // exp(uh)*(1+ul) = 1 + e + ul*(1+e)
  return scale2(y, (int32_t)n);
}

}  // namespace detail

// ---------------------------------------------------------------- exponentials
PFJAX_MATH_INLINE float exp_f32(float x) {
  float y = detail::exp_impl(x != x ? 0.0f : x);
  return x != x ? x : y;
}

PFJAX_MATH_INLINE float exp2_f32(float x) {
  float xc = !(x >= -160.0f) ? -160.0f : x;
  xc = xc > 130.0f ? 130.0f : xc;
  float y = detail::exp2_df(xc, 0.0f);
  return x != x ? x : y;
}

PFJAX_MATH_INLINE float expm1_f32(float x) {
  float xc = !(x >= -20.0f) ? -20.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  float n = rintf(xc * detail::kLog2e);
  float r = fmaf(-n, detail::kLn2Hi, xc);
  r = fmaf(-n, detail::kLn2Lo, r);
  float em = detail::expm1_reduced(r);
  float t = detail::pow2i((int32_t)n - 1);  // 2^(n-1), n in [-29, 128]
  float y = fmaf(em, t, t - 0.5f) * 2.0f;    // 2^n * (em + 1) - 1
  return (x != x || x == 0.0f) ? x : y;
}

// ---------------------------------------------------------------- logarithms
PFJAX_MATH_INLINE float log_f32(float x) {
  float f, ef;
  detail::log_split(x, f, ef);  // garbage for x <= 0, inf, NaN: replaced below
  float lo = detail::log1p_tail(f);
  float y = fmaf(ef, detail::kLn2Hi, f + fmaf(ef, detail::kLn2Lo, lo));
  return detail::log_special(x, y);
}

PFJAX_MATH_INLINE float log2_f32(float x) {
  float f, ef;
  detail::log_split(x, f, ef);  // garbage for x <= 0, inf, NaN: replaced below
  float lo = detail::log1p_tail(f);
  const float L = 1.44269502f, Ll = 1.92596299e-08f;
  float t = f * L;
  float rest = fmaf(f, L, -t) + fmaf(f, Ll, lo * L);
  float h = ef + t;
  float l = ((ef - h) + t) + rest;
  float y = h + l;
  return detail::log_special(x, y);
}

PFJAX_MATH_INLINE float log10_f32(float x) {
  float f, ef;
  detail::log_split(x, f, ef);  // garbage for x <= 0, inf, NaN: replaced below
  float lo = detail::log1p_tail(f);
  const float L = 0.434294492f, Ll = -1.01030501e-08f;   // log10(e)
  const float G = 0.301025391f, Gl = 4.60503898e-06f;    // log10(2), G has 12 bits
  float t = f * L;
  float rest = fmaf(f, L, -t) + fmaf(f, Ll, fmaf(lo, L, ef * Gl));
  float eg = ef * G;  // exact
  float h = eg + t;
  float l = (eg - h) + t;
  l = (fabsf(eg) >= fabsf(t) ? l : (t - h) + eg) + rest;
  float y = h + l;
  return detail::log_special(x, y);
}

PFJAX_MATH_INLINE float log1p_f32(float x) {
  // Inputs are not sanitized: for x <= -1, inf, NaN the arithmetic below produces
  // garbage (never UB) that the final selects replace.  (Selecting a constant input
  // here makes GCC thread the selects into branches and stop vectorizing.)
  float u = 1.0f + x;
  float d = u - 1.0f;
  float c = (x - d) / u;  // log(1+x) = log(u) + c to first order
  float f, ef;
  detail::log_split(u, f, ef);
  float lo = detail::log1p_tail(f);
  float y = fmaf(ef, detail::kLn2Hi, f + (fmaf(ef, detail::kLn2Lo, lo) + c));
  y = detail::log_special(u, y);  // x = -1 -> -inf, x < -1 -> NaN, inf, NaN
  return detail::blend_((detail::f2u(x) << 1) == 0u, x, y);  // log1p(+-0) = +-0
}

// ---------------------------------------------------------------- hyperbolic / sigmoid
PFJAX_MATH_INLINE float tanh_f32(float x) {
  float ax = fabsf(x);
  // |x| < 0.625: Cephes odd polynomial.
  float z = ax * ax;
  float p = -5.70498872745E-3f;
  p = fmaf(p, z, 2.06390887954E-2f);
  p = fmaf(p, z, -5.37397155531E-2f);
  p = fmaf(p, z, 1.33314422036E-1f);
  p = fmaf(p, z, -3.33332819422E-1f);
  float ys = fmaf(p * z, ax, ax);
  // |x| >= 0.625: 1 - 2 / (exp(2|x|) + 1)
  float a2 = ax > 20.0f ? 40.0f : ax + ax;  // also maps NaN -> NaN (handled below)
  float e = detail::exp_impl(a2 != a2 ? 0.0f : a2);
  float yl = 1.0f - 2.0f / (e + 1.0f);
  float y = ax < 0.625f ? ys : yl;
  y = detail::copysign_(y, x);
  return x != x ? x : y;
}

PFJAX_MATH_INLINE float logistic_f32(float x) {
  float ax = fabsf(x);
  float e = detail::exp_impl(-(ax != ax ? 0.0f : ax));  // exp(-|x|) in (0, 1]
  float d = 1.0f + e;
  float dl = (1.0f - d) + e;  // d + dl == 1 + e exactly
  float num = x >= 0.0f ? 1.0f : e;
  float q = num / d;
  // correct for the rounding of 1 + e: num/(d+dl) ~ q - q*dl/d
  q = fmaf(-q, dl / d, q);
  return x != x ? x : q;
}

// ---------------------------------------------------------------- error function
PFJAX_MATH_INLINE float erf_f32(float x) {
  float ax = fabsf(x);
  float axs = ax != ax ? 0.0f : ax;
  float ys = detail::erf_small(axs > 1.0f ? 1.0f : axs);
  float yl = 1.0f - detail::erfc_large(axs < 0.5f ? 0.5f : axs);
  float y = axs < 1.0f ? ys : yl;
  y = detail::copysign_(y, x);
  return x != x ? x : y;
}

PFJAX_MATH_INLINE float erfc_f32(float x) {
  float ax = fabsf(x);
  float axs = ax != ax ? 0.0f : ax;
  float es = detail::erf_small(axs > 1.0f ? 1.0f : axs);
  float ys = 1.0f - detail::copysign_(es, x);   // |x| < 0.5
  float ec = detail::erfc_large(axs < 0.5f ? 0.5f : axs);
  float yl = x < 0.0f ? 2.0f - ec : ec;
  float y = axs < 0.5f ? ys : yl;
  return x != x ? x : y;
}

// ---------------------------------------------------------------- trigonometric
namespace detail {
// Returns sin or cos of |x| (without the sign of x), quadrant offset q0 (0: sin, 1: cos).
PFJAX_MATH_INLINE float sincos_abs(float ax, int32_t q0) {
  float axs = ax <= 3.0e38f ? ax : 0.0f;  // inf/NaN -> 0, fixed by caller
  float j = rintf(axs * 0.636619772f);
  float r = fmaf(-j, 1.57079637f, axs);
  r = fmaf(-j, -4.37113883e-08f, r);
  r = fmaf(-j, -1.71512451e-15f, r);
  float qf = j - 4.0f * floor_(j * 0.25f);
  int32_t q = (int32_t)qf + q0;
  float z = r * r;
  float ps = -1.9515295891E-4f;
  ps = fmaf(ps, z, 8.3321608736E-3f);
  ps = fmaf(ps, z, -1.6666654611E-1f);
  float s = fmaf(ps * z, r, r);
  float pc = 2.443315711809948E-005f;
  pc = fmaf(pc, z, -1.388731625493765E-003f);
  pc = fmaf(pc, z, 4.166664568298827E-002f);
  float c = fmaf(pc * z, z, fmaf(-0.5f, z, 1.0f));
  float y = (q & 1) ? c : s;
  return u2f(f2u(y) ^ ((uint32_t)(q & 2) << 30));
}
}  // namespace detail

PFJAX_MATH_INLINE float sin_f32(float x) {
  float ax = fabsf(x);
  float y = detail::xorsign_(detail::sincos_abs(ax, 0), x);
  return ax <= 3.4028235e38f ? y : detail::quiet_nan();
}

PFJAX_MATH_INLINE float cos_f32(float x) {
  float ax = fabsf(x);
  float y = detail::sincos_abs(ax, 1);
  return ax <= 3.4028235e38f ? y : detail::quiet_nan();
}

// ---------------------------------------------------------------- pow / roots
PFJAX_MATH_INLINE float pow_f32(float x, float y) {
  // Generic path: |x|^y = 2^(y * log2|x|) in double-float arithmetic.  It runs on
  // unsanitized inputs (finite garbage for x = 0, inf, NaN; NaN/huge products are
  // clamped) and all special cases are merged with one final select; classification
  // uses integer compares on the bit patterns.  (Chains of float-compare selects make
  // GCC thread/sink code into branches that cannot be if-converted.)
  float ax = fabsf(x);
  uint32_t ux = detail::f2u(x), uy = detail::f2u(y);
  uint32_t uax = ux & 0x7fffffffu, uay = uy & 0x7fffffffu;
  float lh, ll;
  detail::log2_df(ax, lh, ll);
  float th = y * lh;
  float tl = fmaf(y, lh, -th) + y * ll;
  bool clamp = !(fabsf(th) <= 200.0f);
  float thc = clamp ? (th > 0.0f ? 200.0f : -200.0f) : th;
  float tlc = clamp ? 0.0f : tl;
  float r = detail::exp2_df(thc, tlc);
  // integer / odd-integer classification of y (inf counts as an even integer)
  bool y_int = rintf(y) == y;
  float yh = y * 0.5f;
  bool y_odd = y_int & (rintf(yh) != yh);
  uint32_t neg_res = (ux & 0x80000000u) & (0u - (uint32_t)y_odd);  // sign of the result
  r = detail::u2f(detail::f2u(r) ^ neg_res);
  // special cases, in priority order
  bool s_one = (uay == 0u) | (ux == 0x3f800000u);                 // y = +-0 or x = 1
  bool s_nan = (uax > 0x7f800000u) | (uay > 0x7f800000u);         // NaN in
  bool s_yinf = uay == 0x7f800000u;                               // y = +-inf
  bool s_xzi = (uax == 0u) | (uax == 0x7f800000u);                // x = +-0, +-inf
  bool s_neg = ((int32_t)ux < 0) & !y_int;                             // x < 0, y not integer
  bool y_pos = (int32_t)uy > 0;
  uint32_t yi = uax == 0x3f800000u ? 0x3f800000u
                : (((uax < 0x3f800000u) == y_pos) ? 0u : 0x7f800000u);
  uint32_t zi = (((uax == 0x7f800000u) == y_pos) ? 0x7f800000u : 0u) | neg_res;
  uint32_t sv = s_one ? 0x3f800000u
                : (s_nan ? 0x7fc00000u : (s_yinf ? yi : (s_xzi ? zi : 0x7fc00000u)));
  bool special = s_one | s_nan | s_yinf | s_xzi | s_neg;
  return special ? detail::u2f(sv) : r;
}

PFJAX_MATH_INLINE float cbrt_f32(float x) {
  float ax = fabsf(x);
  uint32_t uax = detail::f2u(ax);
  bool ok = (uax - 1u) < 0x7f7fffffu;  // finite, nonzero
  uint32_t den = (uint32_t)((int32_t)(uax - 0x00800000u) >> 31);
  float scale = detail::u2f(0x3f800000u + (den & (24u << 23)));  // 2^24 for denormals
  uint32_t b = detail::f2u(ax * scale);  // finite garbage for 0, inf, NaN (replaced below)
  float e = (float)((int32_t)(b >> 23) - (int32_t)(detail::f2u(scale) >> 23));
  float q = detail::floor_((e + 0.5f) * 0.333333343f);
  float rem = e - 3.0f * q;  // 0, 1 or 2
  float m = detail::u2f((b & 0x007fffffu) | 0x3f800000u);
  float M = m * detail::u2f((uint32_t)(127 + (int32_t)rem) << 23);  // [1, 8)
  float g = -0.000306711394f;
  g = fmaf(g, M, 0.00723442015f);
  g = fmaf(g, M, -0.0687683872f);
  g = fmaf(g, M, 0.411695456f);
  g = fmaf(g, M, 0.656986554f);
#pragma GCC unroll 4
  for (int it = 0; it < 2; ++it) {
    float g2 = g * g;
    float res = fmaf(g2, g, -M);
    g = fmaf(-res, 1.0f / (3.0f * g2), g);
  }
  float y = detail::scale2(g, (int32_t)q);
  y = detail::copysign_(y, x);
  return detail::blend_(ok, y, x + x);  // +-0, +-inf, NaN pass through
}

PFJAX_MATH_INLINE float rsqrt_f32(float x) { return 1.0f / sqrtf(x); }

// ---------------------------------------------------------------- storage conversions
PFJAX_MATH_INLINE float bf16_to_f32(uint16_t h) { return detail::u2f((uint32_t)h << 16); }

PFJAX_MATH_INLINE uint16_t f32_to_bf16(float f) {
  uint32_t u = detail::f2u(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t nan = (u >> 16) | 0x0040u;
  bool is_nan = (u & 0x7fffffffu) > 0x7f800000u;
  return (uint16_t)(is_nan ? nan : rounded);
}

PFJAX_MATH_INLINE float f16_to_f32(uint16_t h) {
  uint32_t em = (uint32_t)(h & 0x7fffu) << 13;
  uint32_t exp = em & 0x0f800000u;
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t o = em + ((127u - 15u) << 23);
  // inf / NaN: push exponent to 255
  uint32_t o_infnan = o + ((128u - 16u) << 23);
  // zero / denormal: renormalize via float subtraction (exact, no denormals involved)
  float den = detail::u2f(o + (1u << 23)) - detail::u2f(113u << 23);
  uint32_t r = exp == 0x0f800000u ? o_infnan : o;
  r = exp == 0u ? detail::f2u(den) : r;
  return detail::u2f(r | sign);
}

PFJAX_MATH_INLINE uint16_t f32_to_f16(float f) {
  uint32_t u = detail::f2u(f);
  uint32_t sign = u & 0x80000000u;
  uint32_t a = u ^ sign;
  // overflow / inf / NaN
  uint32_t o_big = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  // result denormal (|f| < 2^-14): add magic to do the rounding in the FPU
  const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  float fa = detail::u2f(a);
  uint32_t o_den = detail::f2u(fa + detail::u2f(denorm_magic)) - denorm_magic;
  // normal
  uint32_t mant_odd = (a >> 13) & 1u;
  uint32_t o_norm = (a + (uint32_t)((15 - 127) * (1 << 23)) + 0xfffu + mant_odd) >> 13;
  uint32_t o = a >= (143u << 23) ? o_big : (a < (113u << 23) ? o_den : o_norm);
  return (uint16_t)(o | (sign >> 16));
}

// ---------------------------------------------------------------- integer helpers (XLA semantics)
template <typename T>
PFJAX_MATH_INLINE T idiv(T a, T b) {
  static_assert(std::is_integral<T>::value, "idiv needs an integer type");
  T sb = b == T(0) ? T(1) : b;
  if constexpr (std::is_signed<T>::value) {
    bool ovf = a == std::numeric_limits<T>::min() && b == T(-1);
    sb = ovf ? T(1) : sb;  // MIN / 1 == MIN
  }
  T q = (T)(a / sb);
  return b == T(0) ? (T)(~T(0)) : q;  // -1 (signed) or all ones (unsigned)
}

template <typename T>
PFJAX_MATH_INLINE T irem(T a, T b) {
  static_assert(std::is_integral<T>::value, "irem needs an integer type");
  T sb = b == T(0) ? T(1) : b;
  if constexpr (std::is_signed<T>::value) {
    bool ovf = a == std::numeric_limits<T>::min() && b == T(-1);
    sb = ovf ? T(1) : sb;  // MIN % 1 == 0
  }
  T r = (T)(a % sb);
  return b == T(0) ? a : r;
}

// ---------------------------------------------------------------- float helpers
PFJAX_MATH_INLINE float max_f32(float a, float b) {
  float m = a > b ? a : b;
  return (a != a || b != b) ? a + b : m;
}

PFJAX_MATH_INLINE float min_f32(float a, float b) {
  float m = a < b ? a : b;
  return (a != a || b != b) ? a + b : m;
}

PFJAX_MATH_INLINE float sign_f32(float x) {
  return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
}

PFJAX_MATH_INLINE float round_half_even_f32(float x) { return rintf(x); }

PFJAX_MATH_INLINE float round_half_away_f32(float x) {
  float t = detail::trunc_(x);
  float d = x - t;
  return fabsf(d) >= 0.5f ? t + detail::copysign_(1.0f, x) : t;
}

PFJAX_MATH_INLINE bool is_finite_f32(float x) {
  return (detail::f2u(x) & 0x7fffffffu) < 0x7f800000u;
}

}  // namespace math
}  // namespace pfjax

#endif  // PFJAX_MATH_H_
