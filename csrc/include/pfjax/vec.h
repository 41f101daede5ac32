// pfjax/vec.h -- explicit 16-lane float vectors for the loops that call exp, logistic,
// erfc or log, reduce, stream their stores or read and write half-precision floats.
//
// In a `#pragma omp simd` loop g++ reaches the AVX-512 exp through the vector-function ABI:
// a call per vector, with every live vector register spilled around it and the constants
// reloaded inside (measured: 1.7 ms per 4M exps on one Zen 4 core, against 0.96 ms with
// the same instructions inlined). The code generator writes such loops a second time over
// `pfjax::vf16`, whose operators and math overloads mirror the scalar spellings of
// codegen/ctypes_table.py, so the same expression text compiles for both. The scalar
// `omp simd` loop then only runs the remainder of fewer than 16 elements.
#pragma once

#include "pfjax/fastmath.h"

#if defined(__AVX512F__) && !defined(__CUDACC__)
#define PFJAX_VF16 1
#include <immintrin.h>

#include <cstdint>
#include <initializer_list>

namespace pfjax {

struct vf16 {
  __m512 v;
  vf16() = default;
  vf16(__m512 x) : v(x) {}                      // NOLINT: implicit, as a scalar would be
  vf16(float s) : v(_mm512_set1_ps(s)) {}       // NOLINT: a uniform operand, broadcast
  static vf16 load(const float* p) { return _mm512_loadu_ps(p); }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void stream(float* p) const { _mm512_stream_ps(p, v); }  // p 64-byte aligned
};

// Half-precision storage (uint16_t arrays) in vf16 loops, which compute in float like the
// scalar loops. f16 converts in hardware (F16C's vcvtph2ps / vcvtps2ph: exact, rounding to
// nearest even, as XLA's own conversion); bf16 is the upper half of a float, rounded to
// nearest even as math.h's f32_to_bf16 (a NaN stays a quiet NaN).
#define PFJAX_HALF_INLINE static inline __attribute__((always_inline))
PFJAX_HALF_INLINE vf16 from_f16_bits(__m256i h) { return _mm512_cvtph_ps(h); }
PFJAX_HALF_INLINE vf16 from_bf16_bits(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
PFJAX_HALF_INLINE vf16 load_f16(const uint16_t* p) {
  return from_f16_bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
PFJAX_HALF_INLINE vf16 load_bf16(const uint16_t* p) {
  return from_bf16_bits(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
PFJAX_HALF_INLINE __m256i f16_bits(vf16 x) {
  return _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
PFJAX_HALF_INLINE __m256i bf16_bits(vf16 x) {
#if defined(__AVX512BF16__)
  // vcvtneps2bf16 rounds to nearest even and quiets NaNs as below, in one instruction,
  // but takes denormal inputs as zero: vectors with one take the integer path. (Found by
  // their bits: float compares would see them as zero too in the caller's DAZ mode.)
  const __m512i bits = _mm512_castps_si512(x.v);
  const __mmask16 denormal = _mm512_mask_test_epi32_mask(
      _mm512_testn_epi32_mask(bits, _mm512_set1_epi32(0x7f800000)), bits, _mm512_set1_epi32(0x007fffff));
  if (__builtin_expect(denormal == 0, 1)) return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x.v));
#endif
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x0040));
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}
// A float value rounded to the half type and back (a cast to f16 / bf16 in registers).
PFJAX_HALF_INLINE vf16 round_f16(vf16 x) { return _mm512_cvtph_ps(f16_bits(x)); }
PFJAX_HALF_INLINE vf16 round_bf16(vf16 x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16_bits(x)), 16));
}

// 16 lane predicates: a bool value of a vf16 loop (a compare, a bool input), which only
// selects between float lanes. A uniform bool converts to all lanes.
struct vb16 {
  __mmask16 m;
  vb16() = default;
  vb16(bool b) : m(b ? 0xFFFF : 0) {}           // NOLINT: a uniform operand, broadcast
  static vb16 of(__mmask16 x) { vb16 r; r.m = x; return r; }
  // bool arrays hold a byte per element, true where it is not 0
  static vb16 load(const uint8_t* p) {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return of(_mm512_test_epi32_mask(b, b));
  }
};

#define PFJAX_VF16_INLINE static inline __attribute__((always_inline))
PFJAX_VF16_INLINE vb16 operator!(vb16 a) { return vb16::of(static_cast<__mmask16>(~a.m)); }
PFJAX_VF16_INLINE vb16 operator&&(vb16 a, vb16 b) { return vb16::of(a.m & b.m); }
PFJAX_VF16_INLINE vb16 operator||(vb16 a, vb16 b) { return vb16::of(a.m | b.m); }
PFJAX_VF16_INLINE vb16 operator!=(vb16 a, vb16 b) { return vb16::of(a.m ^ b.m); }
PFJAX_VF16_INLINE vb16 operator==(vb16 a, vb16 b) { return vb16::of(static_cast<__mmask16>(~(a.m ^ b.m))); }
// Float compares with C++'s NaN rules: only != holds for a NaN operand.
PFJAX_VF16_INLINE vb16 operator==(vf16 a, vf16 b) { return vb16::of(_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ)); }
PFJAX_VF16_INLINE vb16 operator!=(vf16 a, vf16 b) { return vb16::of(_mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_UQ)); }
PFJAX_VF16_INLINE vb16 operator<(vf16 a, vf16 b) { return vb16::of(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)); }
PFJAX_VF16_INLINE vb16 operator<=(vf16 a, vf16 b) { return vb16::of(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LE_OQ)); }
PFJAX_VF16_INLINE vb16 operator>(vf16 a, vf16 b) { return vb16::of(_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)); }
PFJAX_VF16_INLINE vb16 operator>=(vf16 a, vf16 b) { return vb16::of(_mm512_cmp_ps_mask(a.v, b.v, _CMP_GE_OQ)); }
// std::sqrt and std::fabs, lane-wise
PFJAX_VF16_INLINE vf16 sqrt(vf16 x) { return _mm512_sqrt_ps(x.v); }
PFJAX_VF16_INLINE vf16 abs(vf16 x) { return _mm512_abs_ps(x.v); }
// c ? a : b lane-wise (the scalar form's conditional cannot be overloaded)
PFJAX_VF16_INLINE vf16 select(vb16 c, vf16 a, vf16 b) { return _mm512_mask_blend_ps(c.m, b.v, a.v); }
PFJAX_VF16_INLINE vf16 operator+(vf16 a, vf16 b) { return _mm512_add_ps(a.v, b.v); }
PFJAX_VF16_INLINE vf16 operator-(vf16 a, vf16 b) { return _mm512_sub_ps(a.v, b.v); }
PFJAX_VF16_INLINE vf16 operator*(vf16 a, vf16 b) { return _mm512_mul_ps(a.v, b.v); }
PFJAX_VF16_INLINE vf16 operator/(vf16 a, vf16 b) { return _mm512_div_ps(a.v, b.v); }
PFJAX_VF16_INLINE vf16 operator-(vf16 a) {
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN)));
}
// Uniform operands on either side (a per-row value, a constant) broadcast.
PFJAX_VF16_INLINE vf16 operator+(vf16 a, float b) { return a + vf16(b); }
PFJAX_VF16_INLINE vf16 operator+(float a, vf16 b) { return vf16(a) + b; }
PFJAX_VF16_INLINE vf16 operator-(vf16 a, float b) { return a - vf16(b); }
PFJAX_VF16_INLINE vf16 operator-(float a, vf16 b) { return vf16(a) - b; }
PFJAX_VF16_INLINE vf16 operator*(vf16 a, float b) { return a * vf16(b); }
PFJAX_VF16_INLINE vf16 operator*(float a, vf16 b) { return vf16(a) * b; }
PFJAX_VF16_INLINE vf16 operator/(vf16 a, float b) { return a / vf16(b); }
PFJAX_VF16_INLINE vf16 operator/(float a, vf16 b) { return vf16(a) / b; }

// Lane-wise NaN-propagating max / min (math.h's max_f32 / min_f32: a NaN operand gives
// a + b, itself NaN).
PFJAX_VF16_INLINE vf16 nan_or(vf16 a, vf16 b, __m512 m) {
  const __mmask16 nan = _mm512_cmp_ps_mask(a.v, b.v, _CMP_UNORD_Q);
  return _mm512_mask_add_ps(m, nan, a.v, b.v);
}

// Reductions of a vector accumulator (the scalar remainder loop continues from these).
PFJAX_VF16_INLINE float reduce_sum(vf16 a) { return _mm512_reduce_add_ps(a.v); }
PFJAX_VF16_INLINE float reduce_max(vf16 a) { return _mm512_reduce_max_ps(a.v); }
PFJAX_VF16_INLINE float reduce_min(vf16 a) { return _mm512_reduce_min_ps(a.v); }
// acc = v > acc ? v : acc lane-wise (a NaN v keeps acc: the NaN flag records it)
PFJAX_VF16_INLINE vf16 acc_max(vf16 acc, vf16 v) { return _mm512_max_ps(v.v, acc.v); }
PFJAX_VF16_INLINE vf16 acc_min(vf16 acc, vf16 v) { return _mm512_min_ps(v.v, acc.v); }
PFJAX_VF16_INLINE int any_nan(vf16 v) { return _mm512_cmp_ps_mask(v.v, v.v, _CMP_UNORD_Q) != 0; }

namespace math {
PFJAX_VF16_INLINE vf16 exp_v(vf16 x) { return pfjax_exp16(x.v); }
// exp(x - m), m at least every x of the row (softmax's shift by the max): the shifted
// form where every lane's result is normal or x - m < -104 (a masked score, 0); vectors
// with a lane in [-104, -86.6) (denormal results), NaN, or an infinite or huge m
// (|m| > 1e4, where mlo leaves the cubic's reach) take exp_v(x - m).
PFJAX_VF16_INLINE vf16 exp_minus_max(vf16 x, float m) {
  __m512 kc[4];
  __m512 mhi = pfjax_exp_shift_constants16(m, kc);
  // a NaN mhi fails every lane's range test: one test per vector instead of two
  if (!(__builtin_fabsf(m) <= 1e4f)) mhi = _mm512_set1_ps(__builtin_nanf(""));
  __mmask16 in;
  const __m512 y = pfjax_exp_shifted16(x.v, mhi, kc, &in);
  if (__builtin_expect(in == 0xFFFF, 1)) return y;
  const __mmask16 far = _mm512_cmp_ps_mask(_mm512_fmsub_ps(x.v, _mm512_set1_ps(1.44269502f), mhi),
                                           _mm512_set1_ps(-104.0f * 1.44269504f), _CMP_LT_OQ);
  if (static_cast<__mmask16>(in | far) == 0xFFFF) return y;
  return exp_v(x - m);
}
PFJAX_VF16_INLINE vf16 logistic_v(vf16 x) { return pfjax_logistic16(x.v); }
// fastmath.h's one_plus_exp2: 9 operations where 1 + exp_v(c x) takes 16, the clamp
// replacing exp_v's test for denormal results (NaN passes min/max as their second operand)
PFJAX_VF16_INLINE vf16 one_plus_exp2(vf16 x) {
  const __m512 z = _mm512_max_ps(_mm512_set1_ps(-126.0f), _mm512_min_ps(_mm512_set1_ps(128.0f), x.v));
  const __m512 n = _mm512_roundscale_ps(z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 y = _mm512_scalef_ps(pfjax_exp2_poly16(_mm512_sub_ps(z, n)), n);
  return _mm512_add_ps(_mm512_set1_ps(1.0f), y);
}
PFJAX_VF16_INLINE vf16 max_f32(vf16 a, vf16 b) { return nan_or(a, b, _mm512_max_ps(a.v, b.v)); }
PFJAX_VF16_INLINE vf16 min_f32(vf16 a, vf16 b) { return nan_or(a, b, _mm512_min_ps(a.v, b.v)); }
PFJAX_VF16_INLINE vf16 max_f32(vf16 a, float b) { return max_f32(a, vf16(b)); }
PFJAX_VF16_INLINE vf16 max_f32(float a, vf16 b) { return max_f32(vf16(a), b); }
PFJAX_VF16_INLINE vf16 min_f32(vf16 a, float b) { return min_f32(a, vf16(b)); }
PFJAX_VF16_INLINE vf16 min_f32(float a, vf16 b) { return min_f32(vf16(a), b); }
// math.h's log_f32 and log1p_f32, lane for lane and to the same bits: AVX-512's getexp /
// getmant split x = 2^e * m (denormals too) where the scalar form needs shifts, masks and
// a rescale. For positive finite x: e, f = m - 1 (m in [sqrt(1/2), sqrt(2))) and
// lo = log(1 + f) - f.
PFJAX_VF16_INLINE void log_parts(__m512 x, __m512& e, __m512& f, __m512& lo) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);  // [1, 2)
  e = _mm512_getexp_ps(x);
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421354f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_ps(e, big, e, one);
  f = _mm512_sub_ps(m, one);  // exact
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 p = _mm512_set1_ps(7.0376836292E-2f);
  for (float c : {-1.1514610310E-1f, 1.1676998740E-1f, -1.2420140846E-1f, 1.4249322787E-1f,
                  -1.6668057665E-1f, 2.0000714765E-1f, -2.4999993993E-1f, 3.3333331174E-1f})
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  lo = _mm512_fmadd_ps(_mm512_mul_ps(f, z), p, _mm512_mul_ps(_mm512_set1_ps(-0.5f), z));
}
// y where x is positive and finite; else log's special values of x: +-0 -> -inf, negative
// and NaN -> NaN, +inf -> +inf (math.h's log_special)
PFJAX_VF16_INLINE __m512 log_special(__m512 x, __m512 y) {
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ) &
                           _mm512_cmp_ps_mask(x, _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
  if (__builtin_expect(normal == 0xFFFF, 1)) return y;
  __m512 s = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fc00000)));
  s = _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(x, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ), x);
  s = _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_EQ_OQ),
                         _mm512_set1_ps(-INFINITY));
  return _mm512_mask_mov_ps(y, static_cast<__mmask16>(~normal), s);
}
PFJAX_VF16_INLINE vf16 log_f32(vf16 xv) {
  __m512 e, f, lo;
  log_parts(xv.v, e, f, lo);
  const __m512 y = _mm512_fmadd_ps(e, _mm512_set1_ps(detail::kLn2Hi),
      _mm512_add_ps(f, _mm512_fmadd_ps(e, _mm512_set1_ps(detail::kLn2Lo), lo)));
  return log_special(xv.v, y);
}
PFJAX_VF16_INLINE vf16 log1p_f32(vf16 xv) {
  const __m512 x = xv.v, one = _mm512_set1_ps(1.0f);
  const __m512 u = _mm512_add_ps(one, x);
  const __m512 c = _mm512_div_ps(_mm512_sub_ps(x, _mm512_sub_ps(u, one)), u);  // log(1+x) = log(u) + c
  __m512 e, f, lo;
  log_parts(u, e, f, lo);
  __m512 y = _mm512_fmadd_ps(e, _mm512_set1_ps(detail::kLn2Hi),
      _mm512_add_ps(f, _mm512_add_ps(_mm512_fmadd_ps(e, _mm512_set1_ps(detail::kLn2Lo), lo), c)));
  y = log_special(u, y);  // x = -1 -> -inf, x < -1 -> NaN, inf, NaN
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_EQ_OQ), x);  // +-0
}
// fastmath.h's erfc_fast, lane for lane (the scalar form's clamps and selects become
// min/max and masked moves; scalef replaces the exponent arithmetic, equal in the normal
// range exp_lean_sum keeps to).
PFJAX_VF16_INLINE vf16 erfc_fast(vf16 xv) {
  const __m512 x = xv.v, one = _mm512_set1_ps(1.0f);
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 z = _mm512_min_ps(_mm512_set1_ps(10.0f), ax);  // NaN stays
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(0.5f), z, one));
  __m512 p = _mm512_set1_ps(0.17087277f);
  for (float c : {-0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f, -0.18628806f,
                  0.09678418f, 0.37409196f, 1.00002368f, -1.26551223f})
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(c));
  const __m512 hi = _mm512_mul_ps(z, z);
  const __m512 lo = _mm512_fmsub_ps(z, z, hi);
  // exp_lean_sum(-hi, p - lo): arguments below -87.3 clamp to it (the result is then
  // zeroed beyond z = 9.2 anyway)
  const __m512 a = _mm512_sub_ps(_mm512_setzero_ps(), hi), b = _mm512_sub_ps(p, lo);
  const __mmask16 below = _mm512_cmp_ps_mask(_mm512_add_ps(a, b), _mm512_set1_ps(-87.3f), _CMP_LT_OQ);
  const __m512 ac = _mm512_mask_mov_ps(a, below, _mm512_set1_ps(-87.3f));
  const __m512 bc = _mm512_mask_mov_ps(b, below, _mm512_setzero_ps());
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_add_ps(ac, bc), _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), ac);
  r = _mm512_add_ps(_mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r), bc);
  __m512 e = _mm512_mul_ps(t, _mm512_scalef_ps(pfjax_exp_poly16(r), n));
  e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(ax, _mm512_set1_ps(9.2f), _CMP_GT_OQ), _mm512_setzero_ps());
  return _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ),
                            _mm512_sub_ps(_mm512_set1_ps(2.0f), e));
}
// x - x is 0 exactly for finite x, NaN for inf and NaN
PFJAX_VF16_INLINE vb16 is_finite_f32(vf16 x) {
  return vb16::of(_mm512_cmp_ps_mask(_mm512_sub_ps(x.v, x.v), _mm512_setzero_ps(), _CMP_EQ_OQ));
}
// exactly 1 / sqrt(x), two correctly rounded operations (as the scalar rsqrt_f32)
PFJAX_VF16_INLINE vf16 rsqrt_f32(vf16 x) { return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_sqrt_ps(x.v)); }
}  // namespace math

}  // namespace pfjax
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(__CUDACC__)
// Without AVX-512: the same 16 lanes as two AVX2 registers.
#define PFJAX_VF16 1
#include "pfjax/vec_avx2.h"
#endif

#if PFJAX_VF16
namespace pfjax {
// Stores of 16 half-precision values, from either form's f16_bits / bf16_bits.
PFJAX_HALF_INLINE void store_f16(vf16 x, uint16_t* p) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), f16_bits(x));
}
PFJAX_HALF_INLINE void store_bf16(vf16 x, uint16_t* p) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), bf16_bits(x));
}
// non-temporal: p 32-byte aligned
PFJAX_HALF_INLINE void stream_f16(vf16 x, uint16_t* p) {
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), f16_bits(x));
}
PFJAX_HALF_INLINE void stream_bf16(vf16 x, uint16_t* p) {
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), bf16_bits(x));
}
}  // namespace pfjax
#endif
