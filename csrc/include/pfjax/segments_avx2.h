// pfjax/segments_avx2.h -- segments.h's short-row API on AVX2 machines, where pfjax::vf16
// is two 8-lane halves (vec_avx2.h). Included by segments.h only.
//
// The same layout and the same butterflies (lanes 8, 4, 2, 1 apart, in that order, so a
// segment's lanes end with the same bits as on AVX-512). Masks stay 16-bit lane masks in
// the generated code (__mmask16 is a plain integer type); loads and stores turn them into
// vector masks for vmaskmovps, which reads nothing and writes nothing in the lanes left
// out. Half-precision rows and per-row operands go lane by lane through a small buffer:
// they are rare, and the staged plan they replace also went element by element.
#pragma once

#define PFJAX_SEGMENTS 1
namespace pfjax {

// 16 int32 lanes: argmax / argmin positions (selected, then reduced by min).
struct vi16 {
  __m256i a, b;  // lanes 0-7, 8-15
  vi16() = default;
  vi16(__m256i lo, __m256i hi) : a(lo), b(hi) {}
  vi16(int32_t s) : a(_mm256_set1_epi32(s)), b(a) {}  // NOLINT: a uniform operand, broadcast
};
PFJAX_VF16_INLINE __m256i blend_i32(__m256 c, __m256i x, __m256i y) {
  return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(y), _mm256_castsi256_ps(x), c));
}
PFJAX_VF16_INLINE vi16 select_i32(vb16 c, vi16 x, vi16 y) {
  return {blend_i32(c.a, x.a, y.a), blend_i32(c.b, x.b, y.b)};
}

namespace seg {

// ---------------------------------------------------------------- lane masks
// 8 bits of a lane mask as a vector mask (all ones where the bit is set)
PFJAX_VF16_INLINE __m256i lanes8(unsigned bits) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit);
}
PFJAX_VF16_INLINE __m128i lanes4(unsigned bits) {
  const __m128i bit = _mm_setr_epi32(1, 2, 4, 8);
  return _mm_cmpeq_epi32(_mm_and_si128(_mm_set1_epi32(static_cast<int>(bits)), bit), bit);
}
// A predicate's lanes as a 16-bit mask, and back.
PFJAX_VF16_INLINE __mmask16 bits(vb16 p) {
  return static_cast<__mmask16>(_mm256_movemask_ps(p.a) | _mm256_movemask_ps(p.b) << 8);
}
PFJAX_VF16_INLINE vb16 of_bits(unsigned m) {
  return {_mm256_castsi256_ps(lanes8(m & 0xFF)), _mm256_castsi256_ps(lanes8((m >> 8) & 0xFF))};
}

// ---------------------------------------------------------------- butterflies
// Lanes `d` apart swapped (d = 1, 2, 4 inside a half, 8: the halves)
template <int D>
PFJAX_VF16_INLINE __m256 swap8(__m256 v) {
  if constexpr (D == 1) return _mm256_permute_ps(v, 0xB1);
  else if constexpr (D == 2) return _mm256_permute_ps(v, 0x4E);
  else return _mm256_permute2f128_ps(v, v, 0x01);
}
template <int D>
PFJAX_VF16_INLINE vf16 swap(vf16 v) {
  if constexpr (D == 8) return {v.b, v.a};
  else return {swap8<D>(v.a), swap8<D>(v.b)};
}
template <int D>
PFJAX_VF16_INLINE vi16 swap(vi16 v) {
  if constexpr (D == 8) {
    return {v.b, v.a};
  } else {
    return {_mm256_castps_si256(swap8<D>(_mm256_castsi256_ps(v.a))),
            _mm256_castps_si256(swap8<D>(_mm256_castsi256_ps(v.b)))};
  }
}
template <int L, typename T, typename F>
PFJAX_VF16_INLINE T butterfly(T v, F combine) {
  if constexpr (L >= 16) v = combine(v, swap<8>(v));
  if constexpr (L >= 8) v = combine(v, swap<4>(v));
  if constexpr (L >= 4) v = combine(v, swap<2>(v));
  if constexpr (L >= 2) v = combine(v, swap<1>(v));
  return v;
}
// v with the lanes past W set to `identity` (the reduction's own).
template <int L, int W>
PFJAX_VF16_INLINE vf16 pad(vf16 v, vf16 identity) {
  if constexpr (W == L) return v;
  else return pfjax::select(of_bits(row_lanes<L, W>()), v, identity);
}
template <int L, int W>
PFJAX_VF16_INLINE vi16 pad(vi16 v, vi16 identity) {
  if constexpr (W == L) return v;
  else return select_i32(of_bits(row_lanes<L, W>()), v, identity);
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 sum(vf16 v) {
  return butterfly<L>(pad<L, W>(v, vf16(0.0f)),
                      [](vf16 x, vf16 y) __attribute__((always_inline)) { return x + y; });
}
// Every lane of a segment with a lane of `m` set.
template <int L>
PFJAX_VF16_INLINE unsigned spread(unsigned m) {
  unsigned out = 0;
  for (int q = 0; q < 16 / L; ++q)
    if ((m >> (q * L)) & ((1u << L) - 1)) out |= ((1u << L) - 1) << (q * L);
  return out;
}
// max / min with XLA's NaN propagation: the butterfly runs the plain instruction and the
// rare rows with a NaN are set after it (as segments.h).
template <int L, int W, bool Max>
PFJAX_VF16_INLINE vf16 extreme(vf16 v) {
  v = pad<L, W>(v, vf16(Max ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity()));
  const unsigned nan = bits(pfjax::compare<_CMP_UNORD_Q>(v, v));
  vf16 r = butterfly<L>(v, [](vf16 x, vf16 y) __attribute__((always_inline)) {
    return Max ? vf16(_mm256_max_ps(x.a, y.a), _mm256_max_ps(x.b, y.b))
               : vf16(_mm256_min_ps(x.a, y.a), _mm256_min_ps(x.b, y.b));
  });
  if (__builtin_expect(nan != 0, 0))
    r = pfjax::select(of_bits(spread<L>(nan)), vf16(std::numeric_limits<float>::quiet_NaN()), r);
  return r;
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 max(vf16 v) { return extreme<L, W, true>(v); }
template <int L, int W>
PFJAX_VF16_INLINE vf16 min(vf16 v) { return extreme<L, W, false>(v); }
template <int L, int W>
PFJAX_VF16_INLINE vi16 max(vi16 v) {
  return butterfly<L>(pad<L, W>(v, vi16(std::numeric_limits<int32_t>::min())), [](vi16 x, vi16 y)
      __attribute__((always_inline)) { return vi16(_mm256_max_epi32(x.a, y.a), _mm256_max_epi32(x.b, y.b)); });
}
template <int L, int W>
PFJAX_VF16_INLINE vi16 min(vi16 v) {
  return butterfly<L>(pad<L, W>(v, vi16(std::numeric_limits<int32_t>::max())), [](vi16 x, vi16 y)
      __attribute__((always_inline)) { return vi16(_mm256_min_epi32(x.a, y.a), _mm256_min_epi32(x.b, y.b)); });
}

// ---------------------------------------------------------------- rows and positions
// Each lane's position in its row (0 .. L-1)
template <int L>
PFJAX_VF16_INLINE vi16 position() {
  const __m256i k = _mm256_set1_epi32(L - 1);
  return {_mm256_and_si256(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), k),
          _mm256_and_si256(_mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15), k)};
}

// Segment q of a vector (16 / L of them) from / to p + q * stride, only the lanes of
// `live`: the whole vector where the segments are contiguous, else a half or a quarter at
// a time (segments of 2 lanes, rows a stride apart: lane by lane).
template <int L>
PFJAX_VF16_INLINE vf16 load_segments(const float* p, int64_t stride, unsigned live) {
  if (live == 0xFFFFu && (L == 16 || stride == L)) return vf16::load(p);
  if constexpr (L == 16) {
    return {_mm256_maskload_ps(p, lanes8(live & 0xFF)), _mm256_maskload_ps(p + 8, lanes8(live >> 8))};
  } else if constexpr (L == 8) {
    return {_mm256_maskload_ps(p, lanes8(live & 0xFF)),
            _mm256_maskload_ps(p + stride, lanes8(live >> 8))};
  } else if constexpr (L == 4) {
    const auto quarter = [&](int q) __attribute__((always_inline)) {
      return _mm_maskload_ps(p + q * stride, lanes4((live >> (4 * q)) & 0xF));
    };
    return {_mm256_set_m128(quarter(1), quarter(0)), _mm256_set_m128(quarter(3), quarter(2))};
  } else {
    alignas(32) float lane[16] = {};
    for (int i = 0; i < 16; ++i)
      if (live >> i & 1) lane[i] = p[(i / L) * stride + i % L];
    return vf16::load(lane);
  }
}
template <int L>
PFJAX_VF16_INLINE void store_segments(float* p, int64_t stride, vf16 v, unsigned live) {
  if (live == 0xFFFFu && (L == 16 || stride == L)) return v.store(p);
  if constexpr (L == 16) {
    _mm256_maskstore_ps(p, lanes8(live & 0xFF), v.a);
    _mm256_maskstore_ps(p + 8, lanes8(live >> 8), v.b);
  } else if constexpr (L == 8) {
    _mm256_maskstore_ps(p, lanes8(live & 0xFF), v.a);
    _mm256_maskstore_ps(p + stride, lanes8(live >> 8), v.b);
  } else if constexpr (L == 4) {
    const __m128 part[4] = {_mm256_castps256_ps128(v.a), _mm256_extractf128_ps(v.a, 1),
                            _mm256_castps256_ps128(v.b), _mm256_extractf128_ps(v.b, 1)};
    for (int q = 0; q < 4; ++q) _mm_maskstore_ps(p + q * stride, lanes4((live >> (4 * q)) & 0xF), part[q]);
  } else {
    alignas(32) float lane[16];
    v.store(lane);
    for (int i = 0; i < 16; ++i)
      if (live >> i & 1) p[(i / L) * stride + i % L] = lane[i];
  }
}
// The first `rows` packed rows from p, into the `live` lanes (the others read as 0; only
// the rows' own elements are read). Half-precision rows convert to float lanes.
template <int L, int W>
PFJAX_VF16_INLINE vf16 load(const float* p, __mmask16 live, int64_t) {
  return load_segments<L>(p, W, live);
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 load_halves(const uint16_t* p, __mmask16 live, bool bf16) {
  alignas(32) uint16_t lane[16] = {};
  for (int i = 0; i < 16; ++i)
    if (live >> i & 1) lane[i] = p[(i / L) * W + i % L];
  return bf16 ? pfjax::load_bf16(lane) : pfjax::load_f16(lane);
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 load_f16(const uint16_t* p, __mmask16 live, int64_t) {
  return load_halves<L, W>(p, live, false);
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 load_bf16(const uint16_t* p, __mmask16 live, int64_t) {
  return load_halves<L, W>(p, live, true);
}
template <int L, int W>
PFJAX_VF16_INLINE void store(float* p, vf16 v, __mmask16 live, int64_t) {
  store_segments<L>(p, W, v, live);
}
template <int L, int W>
PFJAX_VF16_INLINE void store_halves(uint16_t* p, __m256i h, __mmask16 live) {
  alignas(32) uint16_t lane[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane), h);
  for (int i = 0; i < 16; ++i)
    if (live >> i & 1) p[(i / L) * W + i % L] = lane[i];
}
template <int L, int W>
PFJAX_VF16_INLINE void store_f16(uint16_t* p, vf16 v, __mmask16 live, int64_t) {
  store_halves<L, W>(p, f16_bits(v), live);
}
template <int L, int W>
PFJAX_VF16_INLINE void store_bf16(uint16_t* p, vf16 v, __mmask16 live, int64_t) {
  store_halves<L, W>(p, bf16_bits(v), live);
}
// Rows `stride` elements apart (a slice of wider rows, the rows of a transposed view).
template <int L, int W>
PFJAX_VF16_INLINE vf16 load_strided(const float* p, int64_t stride, __mmask16 live) {
  return load_segments<L>(p, stride, live);
}
template <int L, int W>
PFJAX_VF16_INLINE void store_strided(float* p, int64_t stride, vf16 v, __mmask16 live) {
  store_segments<L>(p, stride, v, live);
}
// int32 lanes compared (a position against a row index: a causal mask from iotas).
template <int Cmp>
PFJAX_VF16_INLINE vb16 compare(vi16 x, vi16 y) {
  const auto half = [](__m256i a, __m256i b) __attribute__((always_inline)) {
    __m256i r;
    bool negate = false;
    if constexpr (Cmp == _MM_CMPINT_EQ) r = _mm256_cmpeq_epi32(a, b);
    else if constexpr (Cmp == _MM_CMPINT_NE) r = _mm256_cmpeq_epi32(a, b), negate = true;
    else if constexpr (Cmp == _MM_CMPINT_LT) r = _mm256_cmpgt_epi32(b, a);
    else if constexpr (Cmp == _MM_CMPINT_LE) r = _mm256_cmpgt_epi32(a, b), negate = true;
    else if constexpr (Cmp == _MM_CMPINT_NLT) r = _mm256_cmpgt_epi32(b, a), negate = true;
    else r = _mm256_cmpgt_epi32(a, b);  // _MM_CMPINT_NLE
    if (negate) r = _mm256_xor_si256(r, _mm256_set1_epi32(-1));
    return _mm256_castsi256_ps(r);
  };
  return {half(x.a, y.a), half(x.b, y.b)};
}
// A per-position operand (a weight along the row), element k at p[k * stride], in every row.
template <int L, int W>
PFJAX_VF16_INLINE vf16 positions(const float* p, int64_t stride) {
  alignas(32) float lane[16] = {};
  for (int i = 0; i < 16; ++i)
    if (i % L < W) lane[i] = p[(i % L) * stride];
  return vf16::load(lane);
}
// A per-row operand, row r's at p[r * stride], across the row's lanes (live rows only).
template <int L>
PFJAX_VF16_INLINE vf16 per_row(const float* p, int64_t stride, __mmask16 live) {
  alignas(32) float lane[16];
  for (int q = 0; q < 16 / L; ++q) {
    const float x = (live >> (q * L)) & 1 ? p[q * stride] : 0.0f;
    for (int k = 0; k < L; ++k) lane[q * L + k] = x;
  }
  return vf16::load(lane);
}
// One value per row (lane 0 of its segment) to p[0 .. rows), rows <= 16 / L.
template <int L>
PFJAX_VF16_INLINE void store_rows(float* p, vf16 v, int64_t rows) {
  alignas(32) float lane[16];
  v.store(lane);
  const int64_t n = rows < 16 / L ? rows : 16 / L;
  for (int64_t q = 0; q < n; ++q) p[q] = lane[q * L];
}
template <int L>
PFJAX_VF16_INLINE void store_rows(int32_t* p, vi16 v, int64_t rows) {
  alignas(32) int32_t lane[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane), v.a);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane + 8), v.b);
  const int64_t n = rows < 16 / L ? rows : 16 / L;
  for (int64_t q = 0; q < n; ++q) p[q] = lane[q * L];
}
template <int L>
PFJAX_VF16_INLINE void store_rows_halves(uint16_t* p, __m256i h, int64_t rows) {
  alignas(32) uint16_t lane[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane), h);
  const int64_t n = rows < 16 / L ? rows : 16 / L;
  for (int64_t q = 0; q < n; ++q) p[q] = lane[q * L];
}
template <int L>
PFJAX_VF16_INLINE void store_rows_f16(uint16_t* p, vf16 v, int64_t rows) {
  store_rows_halves<L>(p, f16_bits(v), rows);
}
template <int L>
PFJAX_VF16_INLINE void store_rows_bf16(uint16_t* p, vf16 v, int64_t rows) {
  store_rows_halves<L>(p, bf16_bits(v), rows);
}

}  // namespace seg
}  // namespace pfjax
