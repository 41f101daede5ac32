// pfjax/vec_avx2.h -- pfjax::vf16 on AVX2 + FMA + F16C machines: two 8-lane halves.
//
// The code generator writes one vector form, 16 float lanes (vec.h). Without AVX-512 the
// 16 lanes are two __m256 registers, and every operation is done on both halves; the
// generated text is the same. (Without it, such loops were `omp simd` loops calling the
// scalar exp_f32 inline: the tanh-GELU kernel ran at 0.81x of XLA on a Zen 3 machine.)
// Included by vec.h only; segments.h's short-row API on these halves is segments_avx2.h.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <initializer_list>

namespace pfjax {

#define PFJAX_VF16_INLINE static inline __attribute__((always_inline))

struct vf16 {
  __m256 a, b;  // lanes 0-7, 8-15
  vf16() = default;
  vf16(__m256 lo, __m256 hi) : a(lo), b(hi) {}
  vf16(float s) : a(_mm256_set1_ps(s)), b(a) {}  // NOLINT: a uniform operand, broadcast
  static vf16 load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  void store(float* p) const { _mm256_storeu_ps(p, a); _mm256_storeu_ps(p + 8, b); }
  void stream(float* p) const { _mm256_stream_ps(p, a); _mm256_stream_ps(p + 8, b); }
};

// ---------------------------------------------------------------- half precision
#define PFJAX_HALF_INLINE static inline __attribute__((always_inline))
// Half loads read each 8-element half with its own 128-bit load: one 256-bit load split by
// vextracti128 ran 3.2x slower (bf16) and 2.5x (f16) in a loop of three loads and an FMA.
// bf16: the load broadcasts to both 128-bit lanes (a load-port operation), one vpshufb
// puts elements 0-3 and 4-7 into the high halves of the 32-bit lanes.
PFJAX_HALF_INLINE __m256 bf16x8_to_ps(const uint16_t* p) {
  const __m256i h = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i spread = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
                                          -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
  return _mm256_castsi256_ps(_mm256_shuffle_epi8(h, spread));
}
PFJAX_HALF_INLINE vf16 load_f16(const uint16_t* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
}
PFJAX_HALF_INLINE vf16 load_bf16(const uint16_t* p) { return {bf16x8_to_ps(p), bf16x8_to_ps(p + 8)}; }
PFJAX_HALF_INLINE __m256i f16_bits(vf16 x) {
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  return _mm256_set_m128i(_mm256_cvtps_ph(x.b, kNearest), _mm256_cvtps_ph(x.a, kNearest));
}
// math.h's f32_to_bf16 on 8 lanes, as 32-bit lanes holding the 16 bits
PFJAX_HALF_INLINE __m256i bf16_lanes(__m256 x) {
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(u, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x0040));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, quiet, nan);
}
PFJAX_HALF_INLINE __m256i bf16_bits(vf16 x) {
  // packus interleaves 128-bit lanes: (a0-3, b0-3, a4-7, b4-7), put back in order
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_lanes(x.a), bf16_lanes(x.b)), 0xD8);
}
PFJAX_HALF_INLINE vf16 round_f16(vf16 x) {
  const __m256i h = f16_bits(x);
  return {_mm256_cvtph_ps(_mm256_castsi256_si128(h)), _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1))};
}
PFJAX_HALF_INLINE vf16 round_bf16(vf16 x) {
  return {_mm256_castsi256_ps(_mm256_slli_epi32(bf16_lanes(x.a), 16)),
          _mm256_castsi256_ps(_mm256_slli_epi32(bf16_lanes(x.b), 16))};
}

// ---------------------------------------------------------------- predicates
// 16 lane predicates as float masks (all ones / all zeros per lane).
struct vb16 {
  __m256 a, b;
  vb16() = default;
  vb16(__m256 lo, __m256 hi) : a(lo), b(hi) {}
  vb16(bool c) : a(_mm256_castsi256_ps(_mm256_set1_epi32(c ? -1 : 0))), b(a) {}  // NOLINT
  // bool arrays hold a byte per element, true where it is not 0
  static vb16 load(const uint8_t* p) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m256i zero = _mm256_setzero_si256();
    const __m256i lo = _mm256_cvtepu8_epi32(bytes), hi = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
    const __m256i ones = _mm256_set1_epi32(-1);
    return {_mm256_castsi256_ps(_mm256_xor_si256(_mm256_cmpeq_epi32(lo, zero), ones)),
            _mm256_castsi256_ps(_mm256_xor_si256(_mm256_cmpeq_epi32(hi, zero), ones))};
  }
};
PFJAX_VF16_INLINE vb16 operator!(vb16 x) {
  const __m256 ones = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  return {_mm256_xor_ps(x.a, ones), _mm256_xor_ps(x.b, ones)};
}
PFJAX_VF16_INLINE vb16 operator&&(vb16 x, vb16 y) { return {_mm256_and_ps(x.a, y.a), _mm256_and_ps(x.b, y.b)}; }
PFJAX_VF16_INLINE vb16 operator||(vb16 x, vb16 y) { return {_mm256_or_ps(x.a, y.a), _mm256_or_ps(x.b, y.b)}; }
PFJAX_VF16_INLINE vb16 operator!=(vb16 x, vb16 y) { return {_mm256_xor_ps(x.a, y.a), _mm256_xor_ps(x.b, y.b)}; }
PFJAX_VF16_INLINE vb16 operator==(vb16 x, vb16 y) { return !(x != y); }
// Float compares with C++'s NaN rules: only != holds for a NaN operand.
template <int P>
PFJAX_VF16_INLINE vb16 compare(vf16 x, vf16 y) {
  return {_mm256_cmp_ps(x.a, y.a, P), _mm256_cmp_ps(x.b, y.b, P)};
}
PFJAX_VF16_INLINE vb16 operator==(vf16 x, vf16 y) { return compare<_CMP_EQ_OQ>(x, y); }
PFJAX_VF16_INLINE vb16 operator!=(vf16 x, vf16 y) { return compare<_CMP_NEQ_UQ>(x, y); }
PFJAX_VF16_INLINE vb16 operator<(vf16 x, vf16 y) { return compare<_CMP_LT_OQ>(x, y); }
PFJAX_VF16_INLINE vb16 operator<=(vf16 x, vf16 y) { return compare<_CMP_LE_OQ>(x, y); }
PFJAX_VF16_INLINE vb16 operator>(vf16 x, vf16 y) { return compare<_CMP_GT_OQ>(x, y); }
PFJAX_VF16_INLINE vb16 operator>=(vf16 x, vf16 y) { return compare<_CMP_GE_OQ>(x, y); }
// c ? x : y lane-wise
PFJAX_VF16_INLINE vf16 select(vb16 c, vf16 x, vf16 y) {
  return {_mm256_blendv_ps(y.a, x.a, c.a), _mm256_blendv_ps(y.b, x.b, c.b)};
}

// ---------------------------------------------------------------- arithmetic
PFJAX_VF16_INLINE __m256 abs8(__m256 x) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
}
PFJAX_VF16_INLINE vf16 sqrt(vf16 x) { return {_mm256_sqrt_ps(x.a), _mm256_sqrt_ps(x.b)}; }
PFJAX_VF16_INLINE vf16 abs(vf16 x) { return {abs8(x.a), abs8(x.b)}; }
PFJAX_VF16_INLINE vf16 operator+(vf16 x, vf16 y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
PFJAX_VF16_INLINE vf16 operator-(vf16 x, vf16 y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
PFJAX_VF16_INLINE vf16 operator*(vf16 x, vf16 y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
PFJAX_VF16_INLINE vf16 operator/(vf16 x, vf16 y) { return {_mm256_div_ps(x.a, y.a), _mm256_div_ps(x.b, y.b)}; }
PFJAX_VF16_INLINE vf16 operator-(vf16 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  return {_mm256_xor_ps(x.a, sign), _mm256_xor_ps(x.b, sign)};
}
PFJAX_VF16_INLINE vf16 operator+(vf16 x, float y) { return x + vf16(y); }
PFJAX_VF16_INLINE vf16 operator+(float x, vf16 y) { return vf16(x) + y; }
PFJAX_VF16_INLINE vf16 operator-(vf16 x, float y) { return x - vf16(y); }
PFJAX_VF16_INLINE vf16 operator-(float x, vf16 y) { return vf16(x) - y; }
PFJAX_VF16_INLINE vf16 operator*(vf16 x, float y) { return x * vf16(y); }
PFJAX_VF16_INLINE vf16 operator*(float x, vf16 y) { return vf16(x) * y; }
PFJAX_VF16_INLINE vf16 operator/(vf16 x, float y) { return x / vf16(y); }
PFJAX_VF16_INLINE vf16 operator/(float x, vf16 y) { return vf16(x) / y; }

// NaN-propagating max / min on 8 lanes (math.h's max_f32: a NaN operand gives x + y)
PFJAX_VF16_INLINE __m256 nan_or8(__m256 x, __m256 y, __m256 m) {
  return _mm256_blendv_ps(m, _mm256_add_ps(x, y), _mm256_cmp_ps(x, y, _CMP_UNORD_Q));
}

// Reductions of a vector accumulator (the scalar remainder loop continues from these).
#define PFJAX_REDUCE8(OP, x)                                                       \
  __m128 r = _mm_##OP##_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1)); \
  r = _mm_##OP##_ps(r, _mm_movehl_ps(r, r));                                        \
  return _mm_cvtss_f32(_mm_##OP##_ps(r, _mm_movehdup_ps(r)))
PFJAX_VF16_INLINE float reduce_sum(vf16 x) { PFJAX_REDUCE8(add, _mm256_add_ps(x.a, x.b)); }
PFJAX_VF16_INLINE float reduce_max(vf16 x) { PFJAX_REDUCE8(max, _mm256_max_ps(x.a, x.b)); }
PFJAX_VF16_INLINE float reduce_min(vf16 x) { PFJAX_REDUCE8(min, _mm256_min_ps(x.a, x.b)); }
#undef PFJAX_REDUCE8
// acc = v > acc ? v : acc lane-wise (a NaN v keeps acc: the NaN flag records it)
PFJAX_VF16_INLINE vf16 acc_max(vf16 acc, vf16 v) { return {_mm256_max_ps(v.a, acc.a), _mm256_max_ps(v.b, acc.b)}; }
PFJAX_VF16_INLINE vf16 acc_min(vf16 acc, vf16 v) { return {_mm256_min_ps(v.a, acc.a), _mm256_min_ps(v.b, acc.b)}; }
PFJAX_VF16_INLINE int any_nan(vf16 v) {
  return _mm256_movemask_ps(_mm256_cmp_ps(v.a, v.b, _CMP_UNORD_Q)) != 0;
}

// ---------------------------------------------------------------- transcendentals
namespace math {
namespace avx2 {

// math.h's log_split and log1p_tail: x = 2^e (1 + f), f in [sqrt(1/2) - 1, sqrt(2) - 1),
// lo = log(1 + f) - f; denormals are scaled by 2^23 first.
PFJAX_VF16_INLINE void log_parts(__m256 x, __m256& e, __m256& f, __m256& lo) {
  const __m256i mant = _mm256_set1_epi32(0x007fffff), one_bits = _mm256_set1_epi32(0x3f800000);
  const __m256i b0 = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fffffff));
  const __m256i den = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x00800000), b0);
  const __m256 scaled = _mm256_mul_ps(x, _mm256_blendv_ps(_mm256_set1_ps(1.0f), _mm256_set1_ps(8388608.0f),
                                                          _mm256_castsi256_ps(den)));
  const __m256i b = _mm256_castps_si256(scaled);
  const __m256i ei = _mm256_sub_epi32(_mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(127)),
                                      _mm256_and_si256(den, _mm256_set1_epi32(23)));
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(b, mant), one_bits));  // [1, 2)
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421354f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_add_ps(_mm256_cvtepi32_ps(ei), _mm256_and_ps(big, _mm256_set1_ps(1.0f)));
  f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));  // exact
  const __m256 z = _mm256_mul_ps(f, f);
  __m256 p = _mm256_set1_ps(7.0376836292E-2f);
  for (float c : {-1.1514610310E-1f, 1.1676998740E-1f, -1.2420140846E-1f, 1.4249322787E-1f,
                  -1.6668057665E-1f, 2.0000714765E-1f, -2.4999993993E-1f, 3.3333331174E-1f})
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
  lo = _mm256_fmadd_ps(_mm256_mul_ps(f, z), p, _mm256_mul_ps(_mm256_set1_ps(-0.5f), z));
}
// y where x is positive and finite; else +-0 -> -inf, negative and NaN -> NaN, +inf -> +inf
PFJAX_VF16_INLINE __m256 log_special(__m256 x, __m256 y) {
  const __m256 inf = _mm256_set1_ps(INFINITY);
  const __m256 normal = _mm256_and_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ),
                                      _mm256_cmp_ps(x, inf, _CMP_LT_OQ));
  if (__builtin_expect(_mm256_movemask_ps(normal) == 0xFF, 1)) return y;
  __m256 s = _mm256_or_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)));
  s = _mm256_blendv_ps(s, x, _mm256_cmp_ps(x, inf, _CMP_EQ_OQ));
  s = _mm256_blendv_ps(s, _mm256_set1_ps(-INFINITY), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));
  return _mm256_blendv_ps(s, y, normal);
}
PFJAX_VF16_INLINE __m256 log8(__m256 x) {
  __m256 e, f, lo;
  log_parts(x, e, f, lo);
  const __m256 y = _mm256_fmadd_ps(e, _mm256_set1_ps(detail::kLn2Hi),
      _mm256_add_ps(f, _mm256_fmadd_ps(e, _mm256_set1_ps(detail::kLn2Lo), lo)));
  return log_special(x, y);
}
PFJAX_VF16_INLINE __m256 log1p8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 u = _mm256_add_ps(one, x);
  const __m256 c = _mm256_div_ps(_mm256_sub_ps(x, _mm256_sub_ps(u, one)), u);  // log(1+x) = log(u) + c
  __m256 e, f, lo;
  log_parts(u, e, f, lo);
  __m256 y = _mm256_fmadd_ps(e, _mm256_set1_ps(detail::kLn2Hi),
      _mm256_add_ps(f, _mm256_add_ps(_mm256_fmadd_ps(e, _mm256_set1_ps(detail::kLn2Lo), lo), c)));
  y = log_special(u, y);  // x = -1 -> -inf, x < -1 -> NaN, inf, NaN
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ));  // +-0
}
// fastmath.h's erfc_fast (the same fit of erfc(z) exp(z^2) in t = 1 / (1 + z/2)) on both
// halves of a vf16 at once. Each step is written for the two halves side by side: the
// chain is long (a division, the polynomial, exp) and the out-of-order window does not
// reach from one half's chain into the other's when they come one after the other.
// z is clamped at 9.2, where erfc is already below FLT_MIN, so that exp's argument stays
// above -87 and its table form (fastmath_avx2.h) needs no clamps: relative error 5.3e-7
// for results >= 1e-37 over every float (the previous form, with the degree-6 exp and the
// clamps: 5.5e-7), 1.3x faster.
#define PFJAX_BOTH _Pragma("GCC unroll 2") for (int k = 0; k < 2; ++k)
PFJAX_VF16_INLINE void erfc_halves(__m256 (&x)[2]) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 ax[2], z[2], t[2], t2[2], t4[2], p[2], hi[2], lo[2], b[2], sh[2], n[2], r[2], q[2], s[2];
  PFJAX_BOTH ax[k] = abs8(x[k]);
  PFJAX_BOTH z[k] = _mm256_min_ps(_mm256_set1_ps(9.2f), ax[k]);  // NaN stays
  PFJAX_BOTH t[k] = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.5f), z[k], one));
  // the polynomial by Estrin's scheme (pairs, then t^2, t^4, t^8): 4 FMAs deep, not 9
  const auto pair = [&t](int k, float c1, float c0) {
    return _mm256_fmadd_ps(_mm256_set1_ps(c1), t[k], _mm256_set1_ps(c0));
  };
  PFJAX_BOTH t2[k] = _mm256_mul_ps(t[k], t[k]);
  PFJAX_BOTH t4[k] = _mm256_mul_ps(t2[k], t2[k]);
  PFJAX_BOTH {
    const __m256 low = _mm256_fmadd_ps(pair(k, 0.09678418f, 0.37409196f), t2[k], pair(k, 1.00002368f, -1.26551223f));
    const __m256 mid = _mm256_fmadd_ps(pair(k, 1.48851587f, -1.13520398f), t2[k], pair(k, 0.27886807f, -0.18628806f));
    p[k] = _mm256_fmadd_ps(pair(k, 0.17087277f, -0.82215223f), _mm256_mul_ps(t4[k], t4[k]),
                           _mm256_fmadd_ps(mid, t4[k], low));
  }
  // exp(-z^2 + p) = exp(-hi + b), z^2 = hi + lo exactly and b = p - lo: z^2 is never
  // rounded as a whole, and the range reduction subtracts n ln2 / 8 from -hi alone
  PFJAX_BOTH hi[k] = _mm256_mul_ps(z[k], z[k]);
  PFJAX_BOTH lo[k] = _mm256_fmsub_ps(z[k], z[k], hi[k]);
  PFJAX_BOTH b[k] = _mm256_sub_ps(p[k], lo[k]);
  // n = round((b - hi) 8 / ln2) by the shifter, which keeps n's bits for the table scale
  PFJAX_BOTH sh[k] = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(b[k], hi[k]), _mm256_set1_ps(kPfjaxExpTableN)),
                                   _mm256_set1_ps(kPfjaxShifter));
  PFJAX_BOTH n[k] = _mm256_sub_ps(sh[k], _mm256_set1_ps(kPfjaxShifter));
  PFJAX_BOTH r[k] = _mm256_fnmadd_ps(n[k], _mm256_set1_ps(kPfjaxLn2HiOver8), _mm256_sub_ps(_mm256_setzero_ps(), hi[k]));
  PFJAX_BOTH r[k] = _mm256_add_ps(_mm256_fnmadd_ps(n[k], _mm256_set1_ps(kPfjaxLn2LoOver8), r[k]), b[k]);
  PFJAX_BOTH s[k] = _mm256_mul_ps(t[k], pfjax_exp_table_shifted_scale8(sh[k]));  // t 2^(n/8), normal
  PFJAX_BOTH q[k] = pfjax_exp_table_poly8(r[k]);
  PFJAX_BOTH {
    __m256 e = _mm256_fmadd_ps(q[k], s[k], s[k]);
    e = _mm256_andnot_ps(_mm256_cmp_ps(ax[k], _mm256_set1_ps(9.2f), _CMP_GT_OQ), e);
    x[k] = _mm256_blendv_ps(e, _mm256_sub_ps(_mm256_set1_ps(2.0f), e),
                            _mm256_cmp_ps(x[k], _mm256_setzero_ps(), _CMP_LT_OQ));
  }
}
#undef PFJAX_BOTH

}  // namespace avx2

PFJAX_VF16_INLINE vf16 exp_v(vf16 x) { return {pfjax_exp8(x.a), pfjax_exp8(x.b)}; }
PFJAX_VF16_INLINE vf16 logistic_v(vf16 x) { return {pfjax_logistic8(x.a), pfjax_logistic8(x.b)}; }
// fastmath.h's one_plus_exp2 on both halves: x clamped to [-125, 128] (NaN passes
// min/max as their second operand), 2^x = 2^f 2^n as (2 2^f) 2^(n - 1), so that n = 128
// with f < 0 stays finite and 2^(n - 1) normal. n + 126 comes from a shifter's low
// mantissa bits, which shift straight into the exponent field, and the polynomial for
// 2 2^f on [-1/2, 1/2] (exp's, coefficients times 2 ln2^k) ends in one FMA with 1: 13
// operations against 17 with round / convert / add and an exp(f ln 2) (1.26 ulp; 24%
// faster alone; tanh-GELU 1024 x 4096 on one Zen 3 core 2.44 -> 2.00 ms, C driver)
PFJAX_VF16_INLINE __m256 one_plus_exp2_8(__m256 x) {
  const __m256 z = _mm256_max_ps(_mm256_set1_ps(-125.0f), _mm256_min_ps(_mm256_set1_ps(128.0f), x));
  const __m256 shifter = _mm256_set1_ps(0x1.8p23f + 126.0f);
  const __m256 t = _mm256_add_ps(z, shifter);  // rounds z to an integer n: t = shifter + n
  const __m256 f = _mm256_sub_ps(z, _mm256_sub_ps(t, shifter));
  const __m256 half_scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t), 23));
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(3.06423084e-4f), f, _mm256_set1_ps(2.67803227e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.92370526e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.11007251e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(4.80452955e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.38629436f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.0f));
  return _mm256_fmadd_ps(p, half_scale, _mm256_set1_ps(1.0f));
}
PFJAX_VF16_INLINE vf16 one_plus_exp2(vf16 x) { return {one_plus_exp2_8(x.a), one_plus_exp2_8(x.b)}; }
// exp(x - m) where m is at least every x of the row (or NaN): fastmath_avx2.h's shifted
// form on both halves, one range test for the 16 lanes (min passes a NaN of the second
// half on; one of the first gives NaN from the core, as it must). Lanes far below
// (x - m < -104: a masked attention score) are 0; other lanes out of the form's range,
// or a huge m, take exp_v(x - m). The row's constants depend on m alone: in a loop they
// are computed once, before it.
PFJAX_VF16_INLINE vf16 exp_minus_max(vf16 x, float m) {
  const PfjaxExpShift row = pfjax_exp_shift_row8(m);
  __m256 ka, kb;
  const __m256 ya = pfjax_exp_shifted8(x.a, row, &ka);
  const __m256 yb = pfjax_exp_shifted8(x.b, row, &kb);
  if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_min_ps(ka, kb), row.lowest, _CMP_GE_OQ)) == 0xFF, 1))
    return {ya, yb};
  const bool small_m = __builtin_fabsf(m) <= kPfjaxShiftedLargest;
  const __m256 under_a = _mm256_cmp_ps(ka, row.lowest, _CMP_LT_OQ), under_b = _mm256_cmp_ps(kb, row.lowest, _CMP_LT_OQ);
  const int near_a = _mm256_movemask_ps(under_a) & ~_mm256_movemask_ps(_mm256_cmp_ps(ka, row.far, _CMP_LT_OQ));
  const int near_b = _mm256_movemask_ps(under_b) & ~_mm256_movemask_ps(_mm256_cmp_ps(kb, row.far, _CMP_LT_OQ));
  if (small_m && (near_a | near_b) == 0) return {_mm256_andnot_ps(under_a, ya), _mm256_andnot_ps(under_b, yb)};
  return exp_v(x - m);
}
PFJAX_VF16_INLINE vf16 log_f32(vf16 x) { return {avx2::log8(x.a), avx2::log8(x.b)}; }
PFJAX_VF16_INLINE vf16 log1p_f32(vf16 x) { return {avx2::log1p8(x.a), avx2::log1p8(x.b)}; }
PFJAX_VF16_INLINE vf16 erfc_fast(vf16 x) {
  __m256 h[2] = {x.a, x.b};
  avx2::erfc_halves(h);
  return {h[0], h[1]};
}
PFJAX_VF16_INLINE vf16 max_f32(vf16 x, vf16 y) {
  return {nan_or8(x.a, y.a, _mm256_max_ps(x.a, y.a)), nan_or8(x.b, y.b, _mm256_max_ps(x.b, y.b))};
}
PFJAX_VF16_INLINE vf16 min_f32(vf16 x, vf16 y) {
  return {nan_or8(x.a, y.a, _mm256_min_ps(x.a, y.a)), nan_or8(x.b, y.b, _mm256_min_ps(x.b, y.b))};
}
PFJAX_VF16_INLINE vf16 max_f32(vf16 x, float y) { return max_f32(x, vf16(y)); }
PFJAX_VF16_INLINE vf16 max_f32(float x, vf16 y) { return max_f32(vf16(x), y); }
PFJAX_VF16_INLINE vf16 min_f32(vf16 x, float y) { return min_f32(x, vf16(y)); }
PFJAX_VF16_INLINE vf16 min_f32(float x, vf16 y) { return min_f32(vf16(x), y); }
// x - x is 0 exactly for finite x, NaN for inf and NaN
PFJAX_VF16_INLINE vb16 is_finite_f32(vf16 x) { return compare<_CMP_EQ_OQ>(x - x, vf16(0.0f)); }
// exactly 1 / sqrt(x), two correctly rounded operations (as the scalar rsqrt_f32)
PFJAX_VF16_INLINE vf16 rsqrt_f32(vf16 x) { return vf16(1.0f) / sqrt(x); }
}  // namespace math

}  // namespace pfjax
