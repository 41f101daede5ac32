// pfjax/fastmath_avx2.h -- exp and logistic through the vector-function ABI on AVX2 + FMA
// machines without AVX-512 (fastmath.h includes it outside its namespaces).
//
// As fastmath.h's AVX-512 forms: in a `#pragma omp simd` loop GCC calls these on whole
// 8-lane vectors (twice per step of a simdlen(16) loop) and the scalar function on the
// remainder; pfjax::vf16's AVX2 form (vec_avx2.h) inlines the same code, so both give the
// same bits. AVX2 has no vscalefps: 2^n is built from the exponent bits, exact for n in
// [-126, 127], and the rare lanes outside (denormal or huge results) take exp_f32.
#pragma once

#include <immintrin.h>

#define PFJAX_AVX2_INLINE static inline __attribute__((always_inline))

// fastmath.h's exp polynomial (pfjax_exp_poly16) on 8 lanes
PFJAX_AVX2_INLINE __m256 pfjax_exp_poly8(__m256 r) {
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(1.38146128e-3f), r, _mm256_set1_ps(8.36871006e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16683890e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66665211e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.99999940e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  return _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
}
// 2^n for integral float n in [-126, 127]
PFJAX_AVX2_INLINE __m256 pfjax_pow2_8(__m256 n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
// exp(x) for x in [log(FLT_MIN), 127.5 ln 2]: results are normal floats, and 2^n is exact
// (fastmath.h's pfjax_exp_core16 with the scaling by exponent arithmetic).
PFJAX_AVX2_INLINE __m256 pfjax_exp_core8(__m256 x) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  return _mm256_mul_ps(pfjax_exp_poly8(r), pfjax_pow2_8(n));
}
// exp_core8 where every lane is in its range, else the clamps and the rare lanes below.
PFJAX_AVX2_INLINE __m256 pfjax_exp8_edges(__m256 x) {
  // NaN survives the clamp (min/max return their second operand when it is NaN) and
  // the polynomial. Lanes below FLT_MIN's log are 0; those with denormal results, and
  // those above the clamp (finite up to 88.72, then inf), are rare: exp_f32 takes them.
  // lo: log(FLT_MIN); hi: below 127.5 ln 2, so that n <= 127
  const __m256 lo = _mm256_set1_ps(-87.3365402f), hi = _mm256_set1_ps(88.3762589f);
  const __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  __m256 y = _mm256_andnot_ps(tiny, pfjax_exp_core8(_mm256_max_ps(lo, _mm256_min_ps(hi, x))));
  const __m256 slow = _mm256_or_ps(_mm256_cmp_ps(x, hi, _CMP_GT_OQ),
                                   _mm256_and_ps(tiny, _mm256_cmp_ps(x, _mm256_set1_ps(-104.0f), _CMP_GE_OQ)));
  const int lanes = _mm256_movemask_ps(slow);
  if (__builtin_expect(lanes != 0, 0)) {
    alignas(32) float xs[8], ys[8];
    _mm256_store_ps(xs, x);
    _mm256_store_ps(ys, y);
    for (int i = 0; i < 8; ++i)
      if (lanes >> i & 1) ys[i] = pfjax::math::exp_f32(xs[i]);
    y = _mm256_load_ps(ys);
  }
  return y;
}
// The table form of exp, in pieces that erfc (vec_avx2.h) shares: with n = round(8 x / ln2)
// and r = x - n ln2 / 8 (|r| <= ln2 / 16), exp(x) = 2^(n >> 3) * 2^(j/8) * (1 + q(r)),
// j = n & 7; the scale 2^(n >> 3) 2^(j/8) is built from n's bits (below), exact while it is
// a normal float.
constexpr float kPfjaxExpTableN = 11.541560327111707f;  // 8 / ln 2
constexpr float kPfjaxLn2HiOver8 = 0.693359375f / 8, kPfjaxLn2LoOver8 = -2.12194440e-4f / 8;
// exp(r) - 1 = r + r^2 (1/2 + c3 r + c4 r^2), fitted for relative error on [-ln2/16, ln2/16]
constexpr float kPfjaxExpTableC3 = 0.16668026f, kPfjaxExpTableC4 = 0.04166043f;
PFJAX_AVX2_INLINE __m256 pfjax_exp_table_poly8(__m256 r) {
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kPfjaxExpTableC4), r, _mm256_set1_ps(kPfjaxExpTableC3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  return _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
}
// 2^(n >> 3) 2^(j/8) from a shifter: s = t + 1.5 2^23 rounds t to the nearest integer n
// (ties to even) and holds n in its low mantissa bits while |t| < 2^22. vpermps reads the
// low three as the index j, and shifted left by 20 they add n >> 3 to the exponent once each
// entry 2^(j/8) has its own j << 20 taken off: a permute, a shift and an integer add, where
// round, convert, shift right, shift left and add were (the same bits on every float but
// NaN payloads; softmax 1024 x 4096 on Zen 3, C driver, 1.26 -> 1.19 ms).
constexpr float kPfjaxShifter = 0x1.8p23f;
// entries: each 2^(j/8)'s bits (or any scale in [0.5, 2) of them) less j << 20
PFJAX_AVX2_INLINE __m256 pfjax_exp_scale_from8(__m256i entries, __m256 s) {
  const __m256i si = _mm256_castps_si256(s);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_permutevar8x32_epi32(entries, si), _mm256_slli_epi32(si, 20)));
}
PFJAX_AVX2_INLINE __m256 pfjax_exp_table_shifted_scale8(__m256 s) {
  const __m256i entries = _mm256_set_epi32(
      __builtin_bit_cast(int, 1.8340081f) - (7 << 20), __builtin_bit_cast(int, 1.6817929f) - (6 << 20),
      __builtin_bit_cast(int, 1.5422108f) - (5 << 20), __builtin_bit_cast(int, 1.4142135f) - (4 << 20),
      __builtin_bit_cast(int, 1.2968396f) - (3 << 20), __builtin_bit_cast(int, 1.1892071f) - (2 << 20),
      __builtin_bit_cast(int, 1.0905077f) - (1 << 20), __builtin_bit_cast(int, 1.0f));
  return pfjax_exp_scale_from8(entries, s);
}
// exp(x) for x in [-86.6, 127.5 ln 2] (n in [-1000, 1020], so that 2^(n >> 3) is a normal
// scale): 0.89 ulp over the range (checked on every float). Shorter and with fewer
// multiplies than exp_core8's degree-6 form: a softmax exponent loop 1.15x faster on Zen 3.
PFJAX_AVX2_INLINE __m256 pfjax_exp_table8(__m256 x) {
  // one rounding of x N + shifter: n = round(x N) (any n works: r comes from n exactly)
  const __m256 s = _mm256_fmadd_ps(x, _mm256_set1_ps(kPfjaxExpTableN), _mm256_set1_ps(kPfjaxShifter));
  const __m256 n = _mm256_sub_ps(s, _mm256_set1_ps(kPfjaxShifter));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kPfjaxLn2HiOver8), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kPfjaxLn2LoOver8), r);
  const __m256 scale = pfjax_exp_table_shifted_scale8(s);
  return _mm256_fmadd_ps(pfjax_exp_table_poly8(r), scale, scale);
}
// exp(x - m) for x <= m (softmax's x - max(x)) by an integer shift. With N = 8/ln2 and
// K = round(m N), x N - K = n + f (n an integer, |f| <= 1/2), and
// exp(x - m) = 2^(n >> 3) T_j 2^(f/8), j = n & 7, with the row's own table
// T_j = 2^(j/8) 2^((K - m N)/8) (K - m N within 1/2: T_j in [0.95, 1.92)). Per vector:
// s = x N + (shifter - K) rounds x N - K to n in s's low bits, k = s - (shifter - K) is
// n + K exactly, and f = x N - k in one rounding: three operations where the split
// m N = mhi + mlo took five (t = x N - mhi, n, t - n, - mlo), and f no longer carries t's
// rounding (|x - m| 2^-24). Three vector constants fewer, too: the previous form's loop
// kept its accumulators on the stack. Softmax's exponent loop on Zen 3 5-9% faster.
// The error left is 8/ln2's own float rounding, 1.3e-8 |x - m| relative (XLA's
// exp(x - m) has the rounding of x - m instead). Valid for |m| <= kPfjaxShiftedLargest
// (|K| < 2^22, so that s's low bits hold n); k is returned for the range test (n >= the
// row's `lowest` - K keeps results normal); NaN lanes give NaN.
struct PfjaxExpShift {
  __m256 c;           // shifter - K
  __m256i entries;    // T_j's bits less j << 20 (for pfjax_exp_scale_from8)
  __m256 lowest;      // K + kPfjaxShiftedLowest: k at least this keeps the result normal (NaN: m out of range)
  __m256 far;         // K - 104 N: k below it, x - m < -104 (a masked score: 0)
};
constexpr float kPfjaxShiftedLowest = -86.6f * kPfjaxExpTableN, kPfjaxShiftedLargest = 1e4f;
PFJAX_AVX2_INLINE PfjaxExpShift pfjax_exp_shift_row8(float m) {
  const float hi = m * kPfjaxExpTableN;
  const float lo = __builtin_fmaf(m, kPfjaxExpTableN, -hi);  // m N = hi + lo exactly
  const float k = __builtin_nearbyintf(hi);                  // exact below 2^22
  // 2^(d/8) for |d| <= 1/2 + 2^-7: Taylor to degree 5 in double (error below 1e-12)
  const double u = ((static_cast<double>(k) - hi) - lo) * 0.086643397569993164;  // d ln2 / 8
  const double c0 = 1.0 + u * (1.0 + u * (0.5 + u * (1.0 / 6 + u * (1.0 / 24 + u * (1.0 / 120)))));
  const __m256d scale = _mm256_set1_pd(c0);
  const __m128 t_lo = _mm256_cvtpd_ps(_mm256_mul_pd(
      _mm256_set_pd(1.2968395546510096, 1.1892071150027210, 1.0905077326652577, 1.0), scale));
  const __m128 t_hi = _mm256_cvtpd_ps(_mm256_mul_pd(
      _mm256_set_pd(1.8340080864093424, 1.6817928305074290, 1.5422108254079407, 1.4142135623730951), scale));
  const __m256i table = _mm256_castps_si256(_mm256_set_m128(t_hi, t_lo));
  // a NaN or huge m fails every lane's range test (NaN `lowest`): one test per vector
  const bool small_m = __builtin_fabsf(m) <= kPfjaxShiftedLargest;
  return {_mm256_set1_ps(kPfjaxShifter - k),
          _mm256_sub_epi32(table, _mm256_set_epi32(7 << 20, 6 << 20, 5 << 20, 4 << 20, 3 << 20, 2 << 20, 1 << 20, 0)),
          _mm256_set1_ps(small_m ? k + kPfjaxShiftedLowest : __builtin_nanf("")),
          _mm256_set1_ps(k - 104.0f * kPfjaxExpTableN)};
}
PFJAX_AVX2_INLINE __m256 pfjax_exp_shifted8(__m256 x, const PfjaxExpShift& row, __m256* k_out) {
  const __m256 n8 = _mm256_set1_ps(kPfjaxExpTableN);
  const __m256 s = _mm256_fmadd_ps(x, n8, row.c);
  const __m256 k = _mm256_sub_ps(s, row.c);
  const __m256 f = _mm256_fmsub_ps(x, n8, k);
  // 2^(f/8) - 1: the table form's quartic with its coefficients scaled by ln2/8
  constexpr float c = 0.0866433975699931636f;  // ln2 / 8
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kPfjaxExpTableC4 * c * c * c * c), f,
                             _mm256_set1_ps(kPfjaxExpTableC3 * c * c * c));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f * c * c));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
  *k_out = k;
  const __m256 scale = pfjax_exp_scale_from8(row.entries, s);
  return _mm256_fmadd_ps(_mm256_mul_ps(p, f), scale, scale);
}
PFJAX_AVX2_INLINE __m256 pfjax_exp8(__m256 x) {
  // One range test instead of the clamps (NaN fails it), taken after the table form so
  // that the test does not hold up the long dependency chain.
  const __m256 in = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-86.6f), _CMP_GE_OQ),
                                  _mm256_cmp_ps(x, _mm256_set1_ps(88.3762589f), _CMP_LE_OQ));
  const __m256 y = pfjax_exp_table8(x);
  if (__builtin_expect(_mm256_movemask_ps(in) == 0xFF, 1)) return y;
  // masked softmax: whole vectors of -inf (or far below) are common there, and are 0
  if (_mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-104.0f), _CMP_LT_OQ)) == 0xFF)
    return _mm256_setzero_ps();
  return pfjax_exp8_edges(x);
}
// 1 / (1 + exp(-x)); -x clamped to [-86.5, 87] keeps exp in the table form's range (below
// -86.5, 1 + exp rounds to 1 anyway); 0 below x = -87 (as XLA: x * logistic(x) at -inf is
// then NaN), NaN propagates (the table form keeps it).
PFJAX_AVX2_INLINE __m256 pfjax_logistic8(__m256 x) {
  const __m256 t = _mm256_min_ps(_mm256_set1_ps(87.0f),
                                 _mm256_max_ps(_mm256_set1_ps(-86.5f), _mm256_sub_ps(_mm256_setzero_ps(), x)));
  const __m256 y = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(pfjax_exp_table8(t), _mm256_set1_ps(1.0f)));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ), y);
}

#pragma omp declare simd simdlen(8) notinbranch
extern "C" __attribute__((const, nothrow)) float pfjax_exp_v(float x);
#pragma omp declare simd simdlen(8) notinbranch
extern "C" __attribute__((const, nothrow)) float pfjax_logistic_v(float x);
// Defined here under the ABI's names (weak: every kernel library has its own copy); the
// scalar logistic, for the remainder, is at the end of fastmath.h.
#define PFJAX_VECTOR_ABI __attribute__((weak, visibility("hidden")))
extern "C" PFJAX_VECTOR_ABI float pfjax_exp_v_scalar(float x) asm("pfjax_exp_v");
extern "C" PFJAX_VECTOR_ABI float pfjax_exp_v_scalar(float x) { return pfjax::math::exp_f32(x); }
extern "C" PFJAX_VECTOR_ABI __m256 pfjax_exp_v8(__m256 x) asm("_ZGVdN8v_pfjax_exp_v");
extern "C" PFJAX_VECTOR_ABI __m256 pfjax_exp_v8(__m256 x) { return pfjax_exp8(x); }
extern "C" PFJAX_VECTOR_ABI float pfjax_logistic_v_scalar(float x) asm("pfjax_logistic_v");
extern "C" PFJAX_VECTOR_ABI __m256 pfjax_logistic_v8(__m256 x) asm("_ZGVdN8v_pfjax_logistic_v");
extern "C" PFJAX_VECTOR_ABI __m256 pfjax_logistic_v8(__m256 x) { return pfjax_logistic8(x); }
