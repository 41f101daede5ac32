// pfjax/kernel.h -- what every generated CPU kernel includes.
//
// Kernels do not include the XLA FFI headers (they cost ~2 s of compile time each):
// a kernel exports only a descriptor, and the single FFI handler in dispatch_impl.h
// (compiled once per cache) binds the call frame and runs the body on XLA's thread pool.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "pfjax/fastmath.h"
#include "pfjax/math.h"
#include "pfjax/vec.h"
#include "pfjax/segments.h"

namespace pfjax::rt {

// Body of a kernel: processes elements [begin, end) of the flattened iteration space;
// `stream` selects the non-temporal store path (when the kernel has one).
// `out` holds the results, then the kernel's scratch (when it asks for some).
using BodyFn = void (*)(void* const* in, void* const* out, int64_t begin, int64_t end,
                        int32_t stream);
// Runs once on the calling thread after every unit is done: combines what the units left
// in the scratch (a reduction over the parallel units, in unit order) into the results.
using FinishFn = void (*)(void* const* in, void* const* out);

struct KernelInfo {
  int32_t abi_version;  // kAbiVersion of the header the kernel was built with
  BodyFn body;
  int64_t num_in, num_out;
  const int64_t* in_sizes;   // element counts the kernel was built for
  const int64_t* out_sizes;
  int64_t total;  // elements of the iteration space
  int64_t chunk;  // elements per parallel task
  int32_t can_stream;  // 0: no non-temporal store path; 1: used where the output is resident; 2: always
  FinishFn finish;     // nullptr when there is nothing to combine
  int64_t scratch_bytes;
  // Phases after the first (a row reduction split into segments runs each of its loops
  // over all units, then that loop's finish, before the next loop starts).
  int32_t num_phases;  // 1 + the later ones
  const BodyFn* later_bodies;
  const FinishFn* later_finishes;  // entries may be nullptr
};

constexpr int32_t kAbiVersion = 4;

// Float to integer with XLA's semantics: NaN -> 0, out of range saturates.
template <typename I, typename F>
static inline __attribute__((always_inline)) I f2i(F x) {
  if constexpr (sizeof(I) <= 4) {
    // Clamped in double, where both bounds are exact: the conversion is then in range
    // and no integer select follows a float compare (which kept g++ from vectorizing a
    // loop that also selects between integers: x.astype(int32) // 7 ran 10x slower).
    constexpr double lo = static_cast<double>(std::numeric_limits<I>::min());
    constexpr double hi = static_cast<double>(std::numeric_limits<I>::max());
    const double d = static_cast<double>(x);
    const double c = d != d ? 0.0 : (d < lo ? lo : (d > hi ? hi : d));
    return static_cast<I>(c);
  } else {
    constexpr F lo = static_cast<F>(std::numeric_limits<I>::min());
    constexpr F hi = static_cast<F>(std::numeric_limits<I>::max());
    const F c = x != x ? F(0) : (x < lo ? lo : x);
    return c >= hi ? std::numeric_limits<I>::max() : static_cast<I>(c);
  }
}

// Copy a tile from the local level to global memory with non-temporal (streaming)
// stores: a large output then costs one write instead of a read-for-ownership plus a
// write. Callers issue stream_fence() before the kernel returns.
template <typename T>
static inline void stream_copy(T* __restrict dst, const T* __restrict src, int64_t n) {
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  int64_t bytes = n * static_cast<int64_t>(sizeof(T));
#if defined(__AVX512F__) || defined(__AVX__) || defined(__SSE2__)
#if defined(__AVX512F__)
  constexpr int64_t kVec = 64;
#elif defined(__AVX__)
  constexpr int64_t kVec = 32;
#else
  constexpr int64_t kVec = 16;
#endif
  const int64_t head = std::min<int64_t>(bytes, (kVec - (reinterpret_cast<uintptr_t>(d) % kVec)) % kVec);
  std::memcpy(d, s, head);
  d += head; s += head; bytes -= head;
  for (; bytes >= kVec; bytes -= kVec, d += kVec, s += kVec) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(d), _mm512_loadu_si512(s));
#elif defined(__AVX__)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
#else
    _mm_stream_si128(reinterpret_cast<__m128i*>(d), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
#endif
  }
#endif
  std::memcpy(d, s, bytes);
}

// Per-task scratch at the local level (tiles of a reduction kernel): one allocation per
// body call, reused by every unit of the task, 64-byte aligned for vector access.
template <typename T>
struct Scratch {
  T* data;
  explicit Scratch(int64_t n)
      : data(static_cast<T*>(std::aligned_alloc(
            64, static_cast<size_t>((std::max<int64_t>(n, 1) * sizeof(T) + 63) / 64 * 64)))) {}
  ~Scratch() { std::free(data); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

#if defined(__AVX512F__)
// Transpose in registers of a block of up to 16 x 16 4-byte elements: dst row c
// (c < row_len) gets element c of each of the `rows` source rows. Only the block is read
// and written (masked loads and stores: short rows packed back to back, up to a buffer's
// end). Unpacks of 32- and 64-bit pairs, then two 128-bit lane shuffles.
static inline __attribute__((always_inline)) void transpose_block_b32(
    void* dst, int64_t dst_stride, const void* src, int64_t src_stride, int row_len, int rows) {
  const float* s = static_cast<const float*>(src);
  float* d = static_cast<float*>(dst);
  const __mmask16 in_row = static_cast<__mmask16>((1u << row_len) - 1);
  const __mmask16 out_row = static_cast<__mmask16>((1u << rows) - 1);
  __m512 r[16], t[16], u[16], o[16];
  const bool full = row_len == 16 && rows == 16;  // constant where inlined: no masks
  for (int k = 0; k < 16; ++k)
    r[k] = full ? _mm512_loadu_ps(s + k * src_stride)
                : k < rows ? _mm512_maskz_loadu_ps(in_row, s + k * src_stride) : _mm512_setzero_ps();
  for (int k = 0; k < 16; k += 2) {
    t[k] = _mm512_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm512_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int k = 0; k < 16; k += 4) {  // u[k + c]: column 4L + c of rows k..k+3 in lane L
    const __m512d a = _mm512_castps_pd(t[k]), b = _mm512_castps_pd(t[k + 2]);
    const __m512d c = _mm512_castps_pd(t[k + 1]), e = _mm512_castps_pd(t[k + 3]);
    u[k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    u[k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    u[k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, e));
    u[k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, e));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[c + 4], 0x88);
    const __m512 v4 = _mm512_shuffle_f32x4(u[c], u[c + 4], 0xdd);
    const __m512 v8 = _mm512_shuffle_f32x4(u[c + 8], u[c + 12], 0x88);
    const __m512 v12 = _mm512_shuffle_f32x4(u[c + 8], u[c + 12], 0xdd);
    o[c] = _mm512_shuffle_f32x4(v0, v8, 0x88);
    o[c + 8] = _mm512_shuffle_f32x4(v0, v8, 0xdd);
    o[c + 4] = _mm512_shuffle_f32x4(v4, v12, 0x88);
    o[c + 12] = _mm512_shuffle_f32x4(v4, v12, 0xdd);
  }
  for (int c = 0; c < row_len; ++c) {
    if (full) _mm512_storeu_ps(d + c * dst_stride, o[c]);
    else _mm512_mask_storeu_ps(d + c * dst_stride, out_row, o[c]);
  }
}

static inline void transpose16x16_b32(void* dst, int64_t dst_stride, const void* src,
                                      int64_t src_stride) {
  transpose_block_b32(dst, dst_stride, src, src_stride, 16, 16);
}
#elif defined(__AVX2__)
// Transpose in registers of a block of 8 x 8 4-byte elements (dst row c gets element c
// of each source row): unpacks of 32-bit pairs, shuffles of 64-bit pairs, then 128-bit
// lane swaps. Without it a transposed stage was a scalar copy: transpose + bias + GELU
// ran 2.5x slower than the same GELU without the transpose on an AVX2 machine.
static inline __attribute__((always_inline)) void transpose8x8_b32(
    void* dst, int64_t dst_stride, const void* src, int64_t src_stride) {
  const float* s = static_cast<const float*>(src);
  float* d = static_cast<float*>(dst);
  __m256 r[8], t[8], u[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(s + k * src_stride);
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {  // u[k + c]: columns c and c + 4 of rows k..k+3
    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    _mm256_storeu_ps(d + c * dst_stride, _mm256_permute2f128_ps(u[c], u[c + 4], 0x20));
    _mm256_storeu_ps(d + (c + 4) * dst_stride, _mm256_permute2f128_ps(u[c], u[c + 4], 0x31));
  }
}
#endif

#if defined(__SSE2__)
// The same for 8 x 8 2-byte elements (bf16, f16) in 128-bit registers: unpacks of 16-, 32-
// and then 64-bit pairs. Without it half-precision stages were a scalar copy: a bf16
// x.T * 2 at 2048 x 4096 took 6.4-8.1 ms through jax.jit, 2.6-2.8 with it (Zen 3 VM).
static inline __attribute__((always_inline)) void transpose8x8_b16(
    void* dst, int64_t dst_stride, const void* src, int64_t src_stride) {
  const uint16_t* s = static_cast<const uint16_t*>(src);
  uint16_t* d = static_cast<uint16_t*>(dst);
  __m128i r[8], a[8], b[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k * src_stride));
  for (int k = 0; k < 8; k += 2) {  // a[k]: columns 0-3 of rows k, k+1 interleaved; a[k+1]: 4-7
    a[k] = _mm_unpacklo_epi16(r[k], r[k + 1]);
    a[k + 1] = _mm_unpackhi_epi16(r[k], r[k + 1]);
  }
  for (int h = 0; h < 8; h += 4)  // b[h + c]: columns 2c, 2c + 1 of rows h..h+3
    for (int c = 0; c < 2; ++c) {
      b[h + 2 * c] = _mm_unpacklo_epi32(a[h + c], a[h + c + 2]);
      b[h + 2 * c + 1] = _mm_unpackhi_epi32(a[h + c], a[h + c + 2]);
    }
  for (int c = 0; c < 4; ++c) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + 2 * c * dst_stride), _mm_unpacklo_epi64(b[c], b[c + 4]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (2 * c + 1) * dst_stride), _mm_unpackhi_epi64(b[c], b[c + 4]));
  }
}
#endif

// stage_transpose's rows up to the last multiple of 8 in whole 8 x 8 register blocks, 8
// source rows at a time across the block (each source line's pieces are transposed one
// after the other: the rows' lines share L1 sets at 4 KiB strides), the columns past the
// last whole block element by element; returns the rows done.
template <typename T, typename Block>
static inline int64_t stage_transpose_8x8(T* __restrict dst, int64_t dst_stride,
                                          const T* __restrict src, int64_t src_stride,
                                          int64_t cols, int64_t rows, Block block) {
  const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
  for (int64_t jj = 0; jj < cols8; jj += 8)
    for (int64_t tt = 0; tt < rows8; tt += 8)
      block(dst + tt * dst_stride + jj, dst_stride, src + jj * src_stride + tt, src_stride);
  for (int64_t tt = 0; tt < rows8; ++tt)
    for (int64_t jj = cols8; jj < cols; ++jj) dst[tt * dst_stride + jj] = src[jj * src_stride + tt];
  return rows8;
}

// Stage a transposed block at the local level: dst[tt * dst_stride + jj] =
// src[jj * src_stride + tt] for jj < cols, tt < rows. Each source line is read once,
// whole; 4-byte elements go through registers in blocks of up to 16 x 16 (for reductions
// over rows shorter than 16, masked: a scalar copy of 7-element rows cost 2.5x the kernel's
// reduction loops), 2-byte ones in blocks of 8 x 8.
template <typename T>
static inline void stage_transpose(T* __restrict dst, int64_t dst_stride,
                                   const T* __restrict src, int64_t src_stride, int64_t cols,
                                   int64_t rows) {
  int64_t t0 = 0;
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    // blocks of 16 x 16 in registers; the edges (short rows: everything) masked
    for (; t0 < rows; t0 += 16) {
      const int row_len = static_cast<int>(std::min<int64_t>(16, rows - t0));
      int64_t jj = 0;
      if (row_len == 16)
        for (; jj + 16 <= cols; jj += 16)
          transpose16x16_b32(dst + t0 * dst_stride + jj, dst_stride, src + jj * src_stride + t0,
                             src_stride);
      for (; jj < cols; jj += 16)
        transpose_block_b32(dst + t0 * dst_stride + jj, dst_stride, src + jj * src_stride + t0,
                            src_stride, row_len, static_cast<int>(std::min<int64_t>(16, cols - jj)));
    }
  }
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4)
    t0 = stage_transpose_8x8(dst, dst_stride, src, src_stride, cols, rows,
                             [](auto... a) { transpose8x8_b32(a...); });
#endif
#if defined(__SSE2__)
  if constexpr (sizeof(T) == 2)
    t0 = stage_transpose_8x8(dst, dst_stride, src, src_stride, cols, rows,
                             [](auto... a) { transpose8x8_b16(a...); });
#endif
  for (int64_t jj = 0; jj < cols; ++jj)
    for (int64_t tt = t0; tt < rows; ++tt) dst[tt * dst_stride + jj] = src[jj * src_stride + tt];
}

// The next strip's source lines (`cols` source rows of `rows` elements, `stride` apart)
// prefetched into L2 a few at a time, one step per row of the current strip's row loop:
// the strip's reads then find them there instead of waiting on 16 short streams (each
// source row is read 2 KiB at a time, too short for the hardware prefetchers to ramp up).
struct StripPrefetch {
  const char* next = nullptr;
  int64_t stride_bytes = 0, lines = 0, line = 0, left = 0, per_step = 1;
  template <typename T>
  void start(const T* src, int64_t stride, int64_t rows, int64_t cols) {
    next = cols > 0 && rows > 0 ? reinterpret_cast<const char*>(src) : nullptr;
    stride_bytes = stride * static_cast<int64_t>(sizeof(T));
    lines = (rows * static_cast<int64_t>(sizeof(T)) + 63) / 64;
    line = 0;
    left = cols;
    per_step = rows > 0 ? (lines * cols + rows - 1) / rows : 1;
  }
  void step() {
    for (int64_t k = 0; k < per_step && next; ++k) {
      __builtin_prefetch(next + line * 64, 0, 2);
      if (++line == lines) {
        line = 0;
        next = --left > 0 ? next + stride_bytes : nullptr;
      }
    }
  }
};

// Elements from p up to the next 64-byte line (0 where p starts one): where a row's
// streamed vectors can leave registers straight out once a short head is peeled off.
template <typename T>
static inline int64_t to_line(const T* p) {
  return static_cast<int64_t>((64 - reinterpret_cast<uintptr_t>(p) % 64) % 64) / static_cast<int64_t>(sizeof(T));
}

// Prefetch [p, p + bytes) into the caches (past a buffer's end it does nothing).
static inline void prefetch_range(const void* p, int64_t bytes) {
  for (int64_t q = 0; q < bytes; q += 64) __builtin_prefetch(static_cast<const char*>(p) + q, 0, 3);
}

static inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace pfjax::rt

#define PFJAX_EXPORT_PHASED_KERNEL(NAME, BODY, NUM_IN, IN_SIZES, NUM_OUT, OUT_SIZES, TOTAL,   \
                                   CHUNK, CAN_STREAM, FINISH, SCRATCH_BYTES, NUM_PHASES,      \
                                   LATER_BODIES, LATER_FINISHES)                              \
  extern "C" __attribute__((visibility("default"))) const pfjax::rt::KernelInfo*            \
  NAME##_info() {                                                                            \
    static const pfjax::rt::KernelInfo info{                                                 \
        pfjax::rt::kAbiVersion, BODY, NUM_IN, NUM_OUT, IN_SIZES, OUT_SIZES, TOTAL, CHUNK,    \
        CAN_STREAM, FINISH, SCRATCH_BYTES, NUM_PHASES, LATER_BODIES, LATER_FINISHES};        \
    return &info;                                                                            \
  }

#define PFJAX_EXPORT_KERNEL(NAME, BODY, NUM_IN, IN_SIZES, NUM_OUT, OUT_SIZES, TOTAL, CHUNK, \
                            CAN_STREAM, FINISH, SCRATCH_BYTES)                             \
  PFJAX_EXPORT_PHASED_KERNEL(NAME, BODY, NUM_IN, IN_SIZES, NUM_OUT, OUT_SIZES, TOTAL, CHUNK, \
                             CAN_STREAM, FINISH, SCRATCH_BYTES, 1, nullptr, nullptr)
