// pfjax/segments.h -- short rows reduced inside the vector registers.
//
// Rows of W <= 16 float32 elements stored back to back fill a 16-lane vector with 16 / L
// whole rows, each in a segment of L lanes (L: W rounded up to a power of 2; where W < L,
// loads expand each row into its segment, stores compress it back, and the lanes past W
// take the reduction's identity). A reduction over the rows is a
// butterfly inside each segment (log2 L swaps of lanes L/2 ... 1 apart), which leaves
// the row's result in every lane of its segment: per-row values and per-element values
// are then vectors of the same layout, and a kernel runs in one pass over the block's
// vectors (codegen/cpu_segments.py), where the general plan transposes the rows across
// the lanes first.
#pragma once

#include "pfjax/vec.h"

#include <limits>
#include <type_traits>

#if PFJAX_VF16
// What both ISAs' forms below share: lane masks as 16-bit integers, in scalar code.
namespace pfjax {
namespace seg {

// The lanes of a vector that hold row elements: the first W of each segment.
template <int L, int W>
constexpr __mmask16 row_lanes() {
  unsigned m = 0;
  for (int lane = 0; lane < 16; ++lane) m |= unsigned(lane % L < W) << lane;
  return static_cast<__mmask16>(m);
}
// The row lanes of the first `rows` rows of a vector (rows >= 16 / L: all of them).
template <int L, int W>
PFJAX_VF16_INLINE __mmask16 live(int64_t rows) {
  const int64_t lanes = rows * L < 16 ? rows * L : 16;
  return static_cast<__mmask16>((0xFFFFu >> (16 - lanes)) & row_lanes<L, W>());
}
// The first n of 16 lanes
PFJAX_VF16_INLINE __mmask16 first(int64_t n) { return static_cast<__mmask16>(0xFFFFu >> (16 - n)); }
// Per row, the position of the first lane of `m` in the row's segment (or `none`): an
// argmax stored straight from the compare's lane mask.
template <int L, int W>
PFJAX_VF16_INLINE void store_first(int32_t* p, __mmask16 m, int32_t none, int64_t rows) {
  constexpr unsigned kRow = (1u << W) - 1;
  const int64_t n = rows < 16 / L ? rows : 16 / L;
  for (int64_t q = 0; q < 16 / L; ++q) {
    if (q >= n) break;
    const unsigned row = (static_cast<unsigned>(m) >> (q * L)) & kRow;
    p[q] = row ? static_cast<int32_t>(__builtin_ctz(row)) : none;
  }
}

}  // namespace seg
}  // namespace pfjax
#endif

// AVX-512 F with BW and VL (16-bit masked loads and stores) and DQ (mask <-> vector);
// on AVX2 machines, segments_avx2.h at the end.
#if PFJAX_VF16 && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define PFJAX_SEGMENTS 1
namespace pfjax {

// 16 int32 lanes: argmax / argmin positions (selected, then reduced by min).
struct vi16 {
  __m512i v;
  vi16() = default;
  vi16(__m512i x) : v(x) {}                    // NOLINT: implicit, as a scalar would be
  vi16(int32_t s) : v(_mm512_set1_epi32(s)) {} // NOLINT: a uniform operand, broadcast
};
PFJAX_VF16_INLINE vi16 select_i32(vb16 c, vi16 a, vi16 b) { return _mm512_mask_blend_epi32(c.m, b.v, a.v); }

namespace seg {

// A predicate's lanes as a 16-bit mask (segments_avx2.h builds it from two halves).
PFJAX_VF16_INLINE __mmask16 bits(vb16 p) { return p.m; }

// Lanes `d` apart swapped (d = 1, 2, 4, 8): inside 128-bit lanes, then whole ones.
template <int D>
PFJAX_VF16_INLINE __m512 swap(__m512 v) {
  if constexpr (D == 1) return _mm512_permute_ps(v, 0xB1);
  else if constexpr (D == 2) return _mm512_permute_ps(v, 0x4E);
  else if constexpr (D == 4) return _mm512_shuffle_f32x4(v, v, 0xB1);
  else return _mm512_shuffle_f32x4(v, v, 0x4E);
}
template <int D>
PFJAX_VF16_INLINE __m512i swap(__m512i v) {
  return _mm512_castps_si512(swap<D>(_mm512_castsi512_ps(v)));
}

// Butterflies: every lane of a segment ends with the same bits (the adds and NaN-
// propagating max / min combine the same pairs in the same order, only commuted).
template <int L, typename T, typename F>
PFJAX_VF16_INLINE T butterfly(T v, F combine) {
  if constexpr (L >= 16) v = combine(v, T(swap<8>(v.v)));
  if constexpr (L >= 8) v = combine(v, T(swap<4>(v.v)));
  if constexpr (L >= 4) v = combine(v, T(swap<2>(v.v)));
  if constexpr (L >= 2) v = combine(v, T(swap<1>(v.v)));
  return v;
}
// v with the lanes past W set to `identity` (the reduction's own).
template <int L, int W, typename T>
PFJAX_VF16_INLINE T pad(T v, T identity) {
  if constexpr (W == L) return v;
  else if constexpr (std::is_same_v<T, vf16>) return _mm512_mask_mov_ps(identity.v, row_lanes<L, W>(), v.v);
  else return _mm512_mask_mov_epi32(identity.v, row_lanes<L, W>(), v.v);
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 sum(vf16 v) {
  return butterfly<L>(pad<L, W>(v, vf16(0.0f)),
                      [](vf16 a, vf16 b) __attribute__((always_inline)) { return a + b; });
}
// Every lane of a segment with a lane of `m` set.
template <int L>
PFJAX_VF16_INLINE __mmask16 spread(__mmask16 m) {
  const vi16 any = butterfly<L>(vi16(_mm512_movm_epi32(m)), [](vi16 a, vi16 b)
      __attribute__((always_inline)) { return vi16(_mm512_or_si512(a.v, b.v)); });
  return _mm512_movepi32_mask(any.v);
}
// max / min with XLA's NaN propagation: a row with a NaN gives NaN. The butterfly runs
// the plain instruction (one op a step, where a NaN-propagating one takes three) and the
// rare rows with a NaN are set after it.
template <int L, int W, bool Max>
PFJAX_VF16_INLINE vf16 extreme(vf16 v) {
  v = pad<L, W>(v, vf16(Max ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::infinity()));
  const __mmask16 nan = _mm512_cmp_ps_mask(v.v, v.v, _CMP_UNORD_Q);
  vf16 r = butterfly<L>(v, [](vf16 a, vf16 b) __attribute__((always_inline)) {
    return vf16(Max ? _mm512_max_ps(a.v, b.v) : _mm512_min_ps(a.v, b.v));
  });
  if (__builtin_expect(nan != 0, 0))
    r = _mm512_mask_mov_ps(r.v, spread<L>(nan), _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
  return r;
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 max(vf16 v) { return extreme<L, W, true>(v); }
template <int L, int W>
PFJAX_VF16_INLINE vf16 min(vf16 v) { return extreme<L, W, false>(v); }
template <int L, int W>
PFJAX_VF16_INLINE vi16 max(vi16 v) {
  return butterfly<L>(pad<L, W>(v, vi16(std::numeric_limits<int32_t>::min())), [](vi16 a, vi16 b)
      __attribute__((always_inline)) { return vi16(_mm512_max_epi32(a.v, b.v)); });
}
template <int L, int W>
PFJAX_VF16_INLINE vi16 min(vi16 v) {
  return butterfly<L>(pad<L, W>(v, vi16(std::numeric_limits<int32_t>::max())), [](vi16 a, vi16 b)
      __attribute__((always_inline)) { return vi16(_mm512_min_epi32(a.v, b.v)); });
}

// Each lane's position in its row (0 .. L-1), and its row in the vector (0 .. 16/L-1).
template <int L>
PFJAX_VF16_INLINE vi16 position() {
  return _mm512_and_si512(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                          _mm512_set1_epi32(L - 1));
}
template <int L>
PFJAX_VF16_INLINE __m512i row_of_lane() {
  return _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                           __builtin_ctz(L));
}

// Lane permutations between packed rows of W (element e = row * W + k) and segments of L
// (lane = row * L + k): one vpermps each way, where vexpandps / vcompressps cost 1.7x the
// whole of an argmax over 7 on Zen 4. Lanes past W take some element (padded later).
template <int L, int W, bool ToSegments>
struct RowPermutation {
  alignas(64) int32_t index[16];
  constexpr RowPermutation() : index{} {
    for (int i = 0; i < 16; ++i)
      index[i] = ToSegments ? (i / L) * W + (i % L < W ? i % L : W - 1)
                            : (i < (16 / L) * W ? (i / W) * L + i % W : 0);
  }
};
template <int L, int W, bool ToSegments>
PFJAX_VF16_INLINE __m512i row_permutation() {
  static constexpr RowPermutation<L, W, ToSegments> p;
  return _mm512_load_si512(p.index);
}
// The elements of the first `rows` packed rows of a vector (as a mask of 16 lanes).
template <int L, int W>
PFJAX_VF16_INLINE __mmask16 packed(int64_t rows) { return first((rows < 16 / L ? rows : 16 / L) * W); }
// Packed rows to their segments' `live` lanes (the others 0), and back.
template <int L, int W>
PFJAX_VF16_INLINE vf16 to_segments(__m512 rows, __mmask16 live) {
  if constexpr (W == L) return _mm512_maskz_mov_ps(live, rows);
  else return _mm512_maskz_permutexvar_ps(live, row_permutation<L, W, true>(), rows);
}
template <int L, int W>
PFJAX_VF16_INLINE __m512 to_rows(vf16 v) {
  if constexpr (W == L) return v.v;
  else return _mm512_permutexvar_ps(row_permutation<L, W, false>(), v.v);
}
// The first `rows` packed rows from p, into the `live` lanes (the others read as 0; only
// the rows' own elements are read). Half-precision rows convert to float lanes.
template <int L, int W>
PFJAX_VF16_INLINE vf16 load(const float* p, __mmask16 live, int64_t rows) {
  if constexpr (W == L) return _mm512_maskz_loadu_ps(live, p);
  else return to_segments<L, W>(_mm512_maskz_loadu_ps(packed<L, W>(rows), p), live);
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 load_f16(const uint16_t* p, __mmask16 live, int64_t rows) {
  return to_segments<L, W>(from_f16_bits(_mm256_maskz_loadu_epi16(packed<L, W>(rows), p)).v, live);
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 load_bf16(const uint16_t* p, __mmask16 live, int64_t rows) {
  return to_segments<L, W>(from_bf16_bits(_mm256_maskz_loadu_epi16(packed<L, W>(rows), p)).v, live);
}
template <int L, int W>
PFJAX_VF16_INLINE void store(float* p, vf16 v, __mmask16 live, int64_t rows) {
  if constexpr (W == L) _mm512_mask_storeu_ps(p, live, v.v);
  else _mm512_mask_storeu_ps(p, packed<L, W>(rows), to_rows<L, W>(v));
}
template <int L, int W>
PFJAX_VF16_INLINE void store_f16(uint16_t* p, vf16 v, __mmask16, int64_t rows) {
  _mm256_mask_storeu_epi16(p, packed<L, W>(rows), f16_bits(to_rows<L, W>(v)));
}
template <int L, int W>
PFJAX_VF16_INLINE void store_bf16(uint16_t* p, vf16 v, __mmask16, int64_t rows) {
  _mm256_mask_storeu_epi16(p, packed<L, W>(rows), bf16_bits(to_rows<L, W>(v)));
}
// Rows `stride` elements apart (a slice of wider rows, the rows of a transposed view): row
// q of the vector from p + q * stride into its segment's `live` lanes (the others 0, not
// read), with one masked load per row for segments of 4 lanes or more.
template <int L>
PFJAX_VF16_INLINE __m512i strided_index(int64_t stride) {
  return _mm512_add_epi32(_mm512_mullo_epi32(row_of_lane<L>(), _mm512_set1_epi32(static_cast<int32_t>(stride))),
                          position<L>().v);
}
template <int L, int W>
PFJAX_VF16_INLINE vf16 load_strided(const float* p, int64_t stride, __mmask16 live) {
  if constexpr (L == 16) {
    return _mm512_maskz_loadu_ps(live, p);
  } else if constexpr (L == 8) {
    const __m256 lo = _mm256_maskz_loadu_ps(static_cast<__mmask8>(live), p);
    const __m256 hi = _mm256_maskz_loadu_ps(static_cast<__mmask8>(live >> 8), p + stride);
    return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
  } else if constexpr (L == 4) {
    __m512 v = _mm512_castps128_ps512(_mm_maskz_loadu_ps(live & 0xF, p));
    v = _mm512_insertf32x4(v, _mm_maskz_loadu_ps((live >> 4) & 0xF, p + stride), 1);
    v = _mm512_insertf32x4(v, _mm_maskz_loadu_ps((live >> 8) & 0xF, p + 2 * stride), 2);
    return _mm512_insertf32x4(v, _mm_maskz_loadu_ps((live >> 12) & 0xF, p + 3 * stride), 3);
  } else {
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, strided_index<L>(stride), p, 4);
  }
}
template <int L, int W>
PFJAX_VF16_INLINE void store_strided(float* p, int64_t stride, vf16 v, __mmask16 live) {
  if constexpr (L == 16) {
    _mm512_mask_storeu_ps(p, live, v.v);
  } else if constexpr (L == 8) {
    _mm256_mask_storeu_ps(p, static_cast<__mmask8>(live), _mm512_castps512_ps256(v.v));
    _mm256_mask_storeu_ps(p + stride, static_cast<__mmask8>(live >> 8), _mm512_extractf32x8_ps(v.v, 1));
  } else if constexpr (L == 4) {
    _mm_mask_storeu_ps(p, live & 0xF, _mm512_castps512_ps128(v.v));
    _mm_mask_storeu_ps(p + stride, (live >> 4) & 0xF, _mm512_extractf32x4_ps(v.v, 1));
    _mm_mask_storeu_ps(p + 2 * stride, (live >> 8) & 0xF, _mm512_extractf32x4_ps(v.v, 2));
    _mm_mask_storeu_ps(p + 3 * stride, (live >> 12) & 0xF, _mm512_extractf32x4_ps(v.v, 3));
  } else {
    _mm512_mask_i32scatter_ps(p, live, strided_index<L>(stride), v.v, 4);
  }
}
// int32 lanes compared (a position against a row index: a causal mask from iotas).
template <int Cmp>
PFJAX_VF16_INLINE vb16 compare(vi16 a, vi16 b) { return vb16::of(_mm512_cmp_epi32_mask(a.v, b.v, Cmp)); }
// A per-position operand (a weight along the row), element k at p[k * stride], in every row.
template <int L, int W>
PFJAX_VF16_INLINE vf16 positions(const float* p, int64_t stride) {
  const __m512i k = _mm512_mullo_epi32(position<L>().v, _mm512_set1_epi32(static_cast<int32_t>(stride)));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), row_lanes<L, W>(), k, p, 4);
}
// A per-row operand, row r's at p[r * stride], across the row's lanes (live rows only).
template <int L>
PFJAX_VF16_INLINE vf16 per_row(const float* p, int64_t stride, __mmask16 live) {
  const __m512i k = _mm512_mullo_epi32(row_of_lane<L>(), _mm512_set1_epi32(static_cast<int32_t>(stride)));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, k, p, 4);
}
// One value per row (lane 0 of its segment) to p[0 .. rows), rows <= 16 / L.
template <int L>
constexpr __mmask16 kFirstLanes = L == 16 ? 0x0001 : L == 8 ? 0x0101 : L == 4 ? 0x1111 : 0x5555;
template <int L>
PFJAX_VF16_INLINE void store_rows(float* p, vf16 v, int64_t rows) {
  const int64_t n = rows < 16 / L ? rows : 16 / L;
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1),
                        _mm512_maskz_compress_ps(kFirstLanes<L>, v.v));
}
template <int L>
PFJAX_VF16_INLINE void store_rows_f16(uint16_t* p, vf16 v, int64_t rows) {
  _mm256_mask_storeu_epi16(p, first(rows < 16 / L ? rows : 16 / L),
                           f16_bits(_mm512_maskz_compress_ps(kFirstLanes<L>, v.v)));
}
template <int L>
PFJAX_VF16_INLINE void store_rows_bf16(uint16_t* p, vf16 v, int64_t rows) {
  _mm256_mask_storeu_epi16(p, first(rows < 16 / L ? rows : 16 / L),
                           bf16_bits(_mm512_maskz_compress_ps(kFirstLanes<L>, v.v)));
}
template <int L>
PFJAX_VF16_INLINE void store_rows(int32_t* p, vi16 v, int64_t rows) {
  const int64_t n = rows < 16 / L ? rows : 16 / L;
  _mm512_mask_storeu_epi32(p, static_cast<__mmask16>((1u << n) - 1),
                           _mm512_maskz_compress_epi32(kFirstLanes<L>, v.v));
}

}  // namespace seg
}  // namespace pfjax
// AVX2 + FMA (vf16 as two 8-lane halves): the same API, in segments_avx2.h.
#elif PFJAX_VF16 && defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#include "pfjax/segments_avx2.h"
#endif
