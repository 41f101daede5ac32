// pfjax/fastmath.h -- the transcendentals generated kernels use by default.
//
// Same accuracy class as XLA's CPU approximations (measured against float64 references by
// tests/test_fastmath.py; XLA's own figures, measured the same way on jax 0.10.2, in
// brackets), at a fraction of the cost of the correctly-rounded-ish versions in math.h:
//   tanh_fast      <= 4 ulp  [XLA: 4]   rational 13/6 on x clamped to +-7.9 (as Eigen/XLA)
//   erfc_fast      relative error <= 5.3e-7 for results >= 1e-37, 0 beyond x = 9.2
//                  [XLA: 4e-6]; Chebyshev fit of erfc(x)exp(x^2) in 1/(1+x/2)
//   logistic_fast  <= 3 ulp  [XLA: 2]   1 / (1 + exp(-x)); results below 1e-38 not exact
//   erf_fast       <= 6 ulp  [XLA: 5]   rational 5/5 in x^2 on x clamped to +-3.92
// All are branch-free and vectorize in `#pragma omp simd` loops. math.h's erf_f32 (1 ulp)
// costs four times as much.
#pragma once

#include "pfjax/math.h"

#if defined(__AVX512F__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

namespace pfjax {
namespace math {

// exp for arguments whose results are normal floats: x is clamped to [-87.3, 88.3], so
// the far tails come out as ~2^-126 and ~2^127 instead of 0 / denormals and inf. About
// half the instructions of exp_f32 (no denormal scaling, no special-value selects: NaN
// propagates through the polynomial). Used inside erfc_fast and logistic_fast, whose
// results there are 0 / 1 up to < 1e-38.
PFJAX_MATH_INLINE float exp_lean_sum(float a, float b) {
  // exp(a + b) where a may be large and exactly known and b is small: the range reduction
  // subtracts n*ln2 from a alone (Cody-Waite), so a + b is never rounded as a whole.
  const float s = a + b;
  const bool below = s < -87.3f, above = s > 88.3f;  // clamp to normal-range results
  const float ac = below ? -87.3f : (above ? 88.3f : a);
  const float bc = below || above ? 0.0f : b;
  const float n = rintf((ac + bc) * detail::kLog2e);
  float r = fmaf(n, -detail::kLn2Hi, ac);
  r = fmaf(n, -detail::kLn2Lo, r) + bc;
  const float y = detail::expm1_reduced(r) + 1.0f;
  const int32_t e = static_cast<int32_t>(n != n ? 0.0f : n);
  return y * PFJAX_BIT_CAST(float, static_cast<uint32_t>(e + 127) << 23);
}

PFJAX_MATH_INLINE float exp_lean(float x) { return exp_lean_sum(x, 0.0f); }

// exp through the vector-function ABI: in a `#pragma omp simd simdlen(16)` loop GCC calls
// the AVX-512 variant below on whole vectors (`vscalefps` scales by 2^n with correct
// overflow, underflow and denormal results in one instruction, so it needs about half the
// work of exp_f32), and the scalar exp_f32 on the remainder. <= 2 ulp, like exp_f32
// special values: NaN propagates, +inf -> inf, -inf -> 0. With AVX2 and FMA only, the
// variants of fastmath_avx2.h; with neither, exp_f32.
#if defined(__AVX512F__) && !defined(__CUDACC__)
}  // namespace math
}  // namespace pfjax
#pragma omp declare simd simdlen(16) notinbranch
extern "C" __attribute__((const, nothrow)) float pfjax_exp_v(float x);
// Defined here under the ABI's names (weak: every kernel library has its own copy).
#define PFJAX_VECTOR_ABI __attribute__((weak, visibility("hidden")))
extern "C" PFJAX_VECTOR_ABI float pfjax_exp_v_scalar(float x) asm("pfjax_exp_v");
extern "C" PFJAX_VECTOR_ABI float pfjax_exp_v_scalar(float x) { return pfjax::math::exp_f32(x); }
extern "C" PFJAX_VECTOR_ABI __m512 pfjax_exp_v16(__m512 x) asm("_ZGVeN16v_pfjax_exp_v");
// exp(r) for |r| <= ln2/2 + rounding: a degree-6 polynomial fitted for relative error
// (3e-9 before rounding), evaluated by Horner's rule down to 1 + r * (1 + r * ...): six
// FMAs, against eight operations for the classic 1 + r + r^2 * P5(r) (measured: exp
// 0.95 -> 0.84 ms per 4M on one Zen 4 core, largest error 1.00 -> 0.88 ulp).
static inline __attribute__((always_inline)) __m512 pfjax_exp_poly16(__m512 r) {
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.38146128e-3f), r, _mm512_set1_ps(8.36871006e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16683890e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66665211e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.99999940e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
}
static inline __attribute__((always_inline)) __m512 pfjax_exp_core16(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  return _mm512_scalef_ps(pfjax_exp_poly16(r), n);
}
static inline __attribute__((always_inline)) __m512 pfjax_exp16(__m512 x) {
  // Results below FLT_MIN are computed apart: producing a denormal (or an underflow) costs
  // a microcode assist per instruction, which a masked softmax's exp(-1e9) would pay on
  // every vector. min/max return their second operand when it is NaN: NaN survives.
  const __m512 lo = _mm512_set1_ps(-87.3365402f);  // log(FLT_MIN)
  __m512 y = pfjax_exp_core16(_mm512_max_ps(lo, _mm512_min_ps(_mm512_set1_ps(89.0f), x)));
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  if (__builtin_expect(tiny != 0, 0)) {
    const __mmask16 denormal = tiny & _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_GE_OQ);
    y = _mm512_mask_mov_ps(y, tiny, _mm512_setzero_ps());
    if (denormal)
      y = _mm512_mask_mov_ps(y, denormal, pfjax_exp_core16(_mm512_max_ps(_mm512_set1_ps(-104.0f), x)));
  }
  return y;
}
extern "C" PFJAX_VECTOR_ABI __m512 pfjax_exp_v16(__m512 x) { return pfjax_exp16(x); }
// exp(x - m) for x <= m (softmax's x - max(x)), the subtraction and the range reduction
// in one fused multiply-subtract: t = x log2(e) - mhi with m log2(e) = mhi + mlo, n = t
// rounded to a sixteenth by the shifter (whose low 4 mantissa bits then index 2^(j/16)),
// f = t - n exact, and exp(x - m) = 2^floor(n) 2^(j/16) (1 + q), 1 + q = 2^f 2^-mlo: the
// row's constant 2^-mlo is folded into the cubic's coefficients (kc), so the vector work
// is 12 operations, the range test included, against 15 for exp16(x - m). The price is t's rounding, |x - m| 2^-24
// relative, and float log2(e)'s 1.3e-8 |x - m|, as the AVX2 form. Lanes with t below the
// range are 0 (vscalefps with a zeroing mask: no underflow assists for -1e9 scores); `*in`
// says which lanes were in range (none where mhi is NaN).
constexpr float kPfjaxShiftedLowest16 = -86.6f * 1.44269504f;  // results stay normal
static inline __attribute__((always_inline)) __m512 pfjax_exp_shifted16(
    __m512 x, __m512 mhi, const __m512 kc[4], __mmask16* in) {
  const __m512 shifter = _mm512_set1_ps(0x1.8p19f);  // ulp 1/16
  const __m512 t = _mm512_fmsub_ps(x, _mm512_set1_ps(1.44269502f), mhi);
  const __m512 s = _mm512_add_ps(t, shifter);
  const __m512 f = _mm512_sub_ps(t, _mm512_sub_ps(s, shifter));  // |f| <= 1/32
  __m512 q = _mm512_fmadd_ps(kc[3], f, kc[2]);
  q = _mm512_fmadd_ps(q, f, kc[1]);
  q = _mm512_fmadd_ps(q, f, kc[0]);
  const __m512 table = _mm512_setr_ps(
      1.000000000e+00f, 1.044273734e+00f, 1.090507746e+00f, 1.138788581e+00f, 1.189207077e+00f,
      1.241857767e+00f, 1.296839595e+00f, 1.354255557e+00f, 1.414213538e+00f, 1.476826191e+00f,
      1.542210817e+00f, 1.610490322e+00f, 1.681792855e+00f, 1.756252170e+00f, 1.834008098e+00f,
      1.915206552e+00f);
  const __m512 entry = _mm512_permutexvar_ps(_mm512_castps_si512(s), table);
  *in = _mm512_cmp_ps_mask(t, _mm512_set1_ps(kPfjaxShiftedLowest16), _CMP_GE_OQ);
  return _mm512_maskz_scalef_ps(*in, _mm512_fmadd_ps(q, entry, entry), _mm512_sub_ps(s, shifter));
}
// The per-row constants of pfjax_exp_shifted16: mhi, and q = 2^-mlo (1 + f ln2 + ...) - 1
// as kc[0] + f (kc[1] + f (kc[2] + f kc[3])) (2^f's Taylor cubic, error (f ln2)^4 / 24
// <= 1e-8 at |f| = 1/32; q is small, so its roundings barely reach the result).
static inline __attribute__((always_inline)) __m512 pfjax_exp_shift_constants16(float m, __m512 kc[4]) {
  const float hi = m * 1.44269502f;
  const float a = __builtin_fmaf(m, 1.44269502f, -hi) * 0.693147181f;  // mlo ln2, <= 2^-11
  const float em1 = __builtin_fmaf(a, 0.5f, -1.0f) * a;                 // e^-a - 1
  const float k = 1.0f + em1;
  kc[0] = _mm512_set1_ps(em1);
  kc[1] = _mm512_set1_ps(k * 0.693147181f);
  kc[2] = _mm512_set1_ps(k * 0.240226507f);
  kc[3] = _mm512_set1_ps(k * 0.0555041087f);
  return _mm512_set1_ps(hi);
}
// 2^f for |f| <= 1/2: pfjax_exp_poly16's coefficients times ln2^k (exp(f ln2) without
// the multiplication).
static inline __attribute__((always_inline)) __m512 pfjax_exp2_poly16(__m512 f) {
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.532115421e-04f), f, _mm512_set1_ps(1.339016133e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618526325e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550362542e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264774e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471825e-01f));
  return _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
}
// logistic through the same ABI: 1 / (1 + exp(-x)) with the reciprocal from vrcp14ps and
// one Newton step (three pipelined instructions instead of a division). -x is clamped to
// +-87 so that 1 + exp(-x) and its reciprocal stay normal; below x = -87 the result is 0
// (as logistic_fast: results below 1.7e-38 are not exact). NaN propagates through min/max.
#pragma omp declare simd simdlen(16) notinbranch
extern "C" __attribute__((const, nothrow)) float pfjax_logistic_v(float x);
extern "C" PFJAX_VECTOR_ABI float pfjax_logistic_v_scalar(float x) asm("pfjax_logistic_v");
extern "C" PFJAX_VECTOR_ABI __m512 pfjax_logistic_v16(__m512 x) asm("_ZGVeN16v_pfjax_logistic_v");
static inline __attribute__((always_inline)) __m512 pfjax_logistic16(__m512 x) {
  const __m512 t = _mm512_min_ps(_mm512_set1_ps(87.0f),
                                 _mm512_max_ps(_mm512_set1_ps(-87.0f), _mm512_sub_ps(_mm512_setzero_ps(), x)));
  const __m512 d = _mm512_add_ps(pfjax_exp_core16(t), _mm512_set1_ps(1.0f));
  const __m512 r = _mm512_rcp14_ps(d);
  const __m512 y = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
  // 0 (not the clamp's floor) below -87, as XLA: x * logistic(x) at -inf is then NaN
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ),
                            _mm512_setzero_ps());
}
extern "C" PFJAX_VECTOR_ABI __m512 pfjax_logistic_v16(__m512 x) { return pfjax_logistic16(x); }
namespace pfjax {
namespace math {
PFJAX_MATH_INLINE float exp_v(float x) { return pfjax_exp_v(x); }
PFJAX_MATH_INLINE float logistic_v(float x) { return pfjax_logistic_v(x); }
#elif defined(__AVX2__) && defined(__FMA__) && !defined(__CUDACC__)
}  // namespace math
}  // namespace pfjax
#include "pfjax/fastmath_avx2.h"
namespace pfjax {
namespace math {
PFJAX_MATH_INLINE float exp_v(float x) { return pfjax_exp_v(x); }
PFJAX_MATH_INLINE float logistic_v(float x) { return pfjax_logistic_v(x); }
#define PFJAX_AVX2_VECTOR_ABI 1
#else
PFJAX_MATH_INLINE float exp_v(float x) { return exp_f32(x); }
#endif

PFJAX_MATH_INLINE float tanh_fast(float x) {
  const float c = 7.90531110763549805f;  // tanh rounds to +-1 beyond this
  float xc = x > c ? c : (x < -c ? -c : x);
  const float x2 = xc * xc;
  float p = -2.76076847742355e-16f;
  p = fmaf(p, x2, 2.00018790482477e-13f);
  p = fmaf(p, x2, -8.60467152213735e-11f);
  p = fmaf(p, x2, 5.12229709037114e-08f);
  p = fmaf(p, x2, 1.48572235717979e-05f);
  p = fmaf(p, x2, 6.37261928875436e-04f);
  p = fmaf(p, x2, 4.89352455891786e-03f);
  p = p * xc;
  float q = 1.19825839466702e-06f;
  q = fmaf(q, x2, 1.18534705686654e-04f);
  q = fmaf(q, x2, 2.26843463243900e-03f);
  q = fmaf(q, x2, 4.89352518554385e-03f);
  const float r = p / q;
  // tiny |x| (and +-0, keeping the sign) returns x; NaN propagates through the compares
  const float ax = fabsf(x);
  const float saturated = ax > 9.0f ? copysignf(1.0f, x) : r;  // tanh rounds to +-1 here
  return ax < 0.0004f ? x : (x != x ? x : saturated);
}

PFJAX_MATH_INLINE float erf_fast(float x) {
  // x * P(x^2) / Q(x^2) on x clamped to +-3.92 (erf rounds to +-1 beyond), a rational
  // fit of our own (degrees 5/5, relative error 2e-8 in exact arithmetic; the float
  // evaluation brings it to <= 6 ulp). A quarter of erf_f32's cost, which made exact
  // GELU compute-bound; the clamp keeps NaN (compares are false) and the sign of -0.
  const float c = 3.92f;
  const float xc = x > c ? c : (x < -c ? -c : x);
  const float t = xc * xc;
  float p = 2.0430434233e-06f;
  p = fmaf(p, t, 2.8527629911e-04f);
  p = fmaf(p, t, 3.7916102447e-03f);
  p = fmaf(p, t, 5.2829883993e-02f);
  p = fmaf(p, t, 1.9103874266e-01f);
  p = fmaf(p, t, 1.1283791065e+00f);
  float q = 3.8038560888e-05f;
  q = fmaf(q, t, 1.1684455676e-03f);
  q = fmaf(q, t, 1.5022007748e-02f);
  q = fmaf(q, t, 1.1436809600e-01f);
  q = fmaf(q, t, 5.0263637304e-01f);
  q = fmaf(q, t, 1.0f);
  return xc * p / q;
}

PFJAX_MATH_INLINE float erfc_fast(float x) {
  const float ax = fabsf(x);
  const float z = ax > 10.0f ? 10.0f : ax;  // erfc(10) ~ 2e-45: keeps inf out of z*z
  const float t = 1.0f / fmaf(0.5f, z, 1.0f);
  float p = 0.17087277f;
  p = fmaf(p, t, -0.82215223f);
  p = fmaf(p, t, 1.48851587f);
  p = fmaf(p, t, -1.13520398f);
  p = fmaf(p, t, 0.27886807f);
  p = fmaf(p, t, -0.18628806f);
  p = fmaf(p, t, 0.09678418f);
  p = fmaf(p, t, 0.37409196f);
  p = fmaf(p, t, 1.00002368f);
  p = fmaf(p, t, -1.26551223f);
  // exp(-z^2 + p) with z^2 = hi + lo split exactly and -hi kept apart from the small
  // rest, so the large exponent argument is never rounded. Results below the normal
  // range (z > 9.2) flush to 0.
  const float hi = z * z;
  const float lo = fmaf(z, z, -hi);
  const float r = ax > 9.2f ? 0.0f : t * exp_lean_sum(-hi, p - lo);
  return x < 0.0f ? 2.0f - r : r;  // NaN propagates through r
}

PFJAX_MATH_INLINE float logistic_fast(float x) {
  const float r = 1.0f / (1.0f + exp_lean(-x));
  return x < -88.0f ? 0.0f : r;  // the clamped exp would leave ~4e-39 here
}

#if defined(__CUDACC__)
// On the GPU CUDA's own expf (2 ulp) is short and light on registers: exp_lean's clamps
// and selects made the transposed tanh-GELU kernel spill at its 32-register bound.
PFJAX_MATH_INLINE float logistic_v(float x) { return x < -88.0f ? 0.0f : 1.0f / (1.0f + expf(-x)); }
#elif !defined(__AVX512F__) && !defined(PFJAX_AVX2_VECTOR_ABI)
PFJAX_MATH_INLINE float logistic_v(float x) { return logistic_fast(x); }
#endif

// The scalar remainder of a vf16 loop (codegen's vector.scalar_tail): exp_v's and
// logistic_v's scalar twins, inline. A call left anywhere in a kernel's function (the
// vector ABI's, in a remainder that may never run) slowed the vf16 loop itself: the
// tanh-GELU kernel 1.06-1.09x faster without one.
PFJAX_MATH_INLINE float exp_tail(float x) { return exp_f32(x); }
PFJAX_MATH_INLINE float logistic_tail(float x) { return logistic_fast(x); }
// exp(x - m) where m is at least every x of the row (codegen: softmax's shift by the max);
// explicit-vector loops have shorter forms (vec.h, vec_avx2.h)
PFJAX_MATH_INLINE float exp_minus_max(float x, float m) { return exp_v(x - m); }
PFJAX_MATH_INLINE float exp_minus_max_tail(float x, float m) { return exp_tail(x - m); }
// 1 + 2^x: the denominator of x / (1 + exp(-y)) where y's constant factor has taken
// log2(e) (passes/logistic.py). Results of 2^x below FLT_MIN vanish when added to 1, so
// the vector forms clamp x to [-126, 128] or so (2^128 is inf) instead of computing them.
#if defined(__CUDACC__)
PFJAX_MATH_INLINE float one_plus_exp2(float x) { return 1.0f + exp2f(x); }
#else
PFJAX_MATH_INLINE float one_plus_exp2(float x) { return 1.0f + exp2_f32(x); }
#endif

}  // namespace math
}  // namespace pfjax

#if (defined(__AVX512F__) || defined(PFJAX_AVX2_VECTOR_ABI)) && !defined(__CUDACC__)
// The remainder of a logistic_v loop (fewer than a vector) runs this.
extern "C" PFJAX_VECTOR_ABI float pfjax_logistic_v_scalar(float x) {
  return pfjax::math::logistic_fast(x);
}
#endif
