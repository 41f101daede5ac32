// Bandwidth probes of pfjax._native: STREAM-triad kernels per ISA (picked at run time),
// and kernels allocated once that the benchmark runs many times beside the workloads.
// Included by native.cc only (one translation unit, an anonymous namespace).
#pragma once

// ------------------------------------------------------------ triad kernels
//
// a[i] = b[i] + s * c[i] over [0, n). Arrays are 64-byte aligned; chunk
// boundaries are multiples of 16 floats, so every thread's range is aligned.

using TriadFn = void (*)(float *, const float *, const float *, float, size_t, bool);

void triad_generic(float *__restrict a, const float *__restrict b,
                   const float *__restrict c, float s, size_t n, bool) {
  for (size_t i = 0; i < n; ++i) a[i] = b[i] + s * c[i];
}

#if defined(PFJAX_X86)
__attribute__((target("avx512f")))
void triad_avx512(float *__restrict a, const float *__restrict b,
                  const float *__restrict c, float s, size_t n, bool nt) {
  const __m512 vs = _mm512_set1_ps(s);
  size_t i = 0;
  if (nt) {
    for (; i + 16 <= n; i += 16)
      _mm512_stream_ps(a + i, _mm512_fmadd_ps(vs, _mm512_load_ps(c + i), _mm512_load_ps(b + i)));
    _mm_sfence();
  } else {
    for (; i + 16 <= n; i += 16)
      _mm512_store_ps(a + i, _mm512_fmadd_ps(vs, _mm512_load_ps(c + i), _mm512_load_ps(b + i)));
  }
  for (; i < n; ++i) a[i] = b[i] + s * c[i];
}

__attribute__((target("avx2,fma")))
void triad_avx2(float *__restrict a, const float *__restrict b,
                const float *__restrict c, float s, size_t n, bool nt) {
  const __m256 vs = _mm256_set1_ps(s);
  size_t i = 0;
  if (nt) {
    for (; i + 8 <= n; i += 8)
      _mm256_stream_ps(a + i, _mm256_fmadd_ps(vs, _mm256_load_ps(c + i), _mm256_load_ps(b + i)));
    _mm_sfence();
  } else {
    for (; i + 8 <= n; i += 8)
      _mm256_store_ps(a + i, _mm256_fmadd_ps(vs, _mm256_load_ps(c + i), _mm256_load_ps(b + i)));
  }
  for (; i < n; ++i) a[i] = b[i] + s * c[i];
}

void triad_sse2(float *__restrict a, const float *__restrict b,
                const float *__restrict c, float s, size_t n, bool nt) {
  const __m128 vs = _mm_set1_ps(s);
  size_t i = 0;
  if (nt) {
    for (; i + 4 <= n; i += 4)
      _mm_stream_ps(a + i, _mm_add_ps(_mm_load_ps(b + i), _mm_mul_ps(vs, _mm_load_ps(c + i))));
    _mm_sfence();
  } else {
    for (; i + 4 <= n; i += 4)
      _mm_store_ps(a + i, _mm_add_ps(_mm_load_ps(b + i), _mm_mul_ps(vs, _mm_load_ps(c + i))));
  }
  for (; i < n; ++i) a[i] = b[i] + s * c[i];
}
#endif

TriadFn pick_triad() {
#if defined(PFJAX_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return triad_avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return triad_avx2;
  return triad_sse2;
#else
  return triad_generic;
#endif
}

// Sense-reversing spin barrier (yields, so oversubscription stays usable).
class SpinBarrier {
 public:
  explicit SpinBarrier(unsigned n) : n_(n), waiting_(0), phase_(0) {}
  void wait() {
    unsigned phase = phase_.load(std::memory_order_acquire);
    if (waiting_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      waiting_.store(0, std::memory_order_relaxed);
      phase_.fetch_add(1, std::memory_order_acq_rel);
    } else {
      unsigned spins = 0;
      while (phase_.load(std::memory_order_acquire) == phase) {
        if (++spins > 256) std::this_thread::yield();
      }
    }
  }

 private:
  const unsigned n_;
  std::atomic<unsigned> waiting_;
  std::atomic<unsigned> phase_;
};

struct AlignedFree {
  void operator()(float *p) const { std::free(p); }
};

float *alloc_floats(size_t n) {
  size_t bytes = ((n * sizeof(float) + 4095) / 4096) * 4096;  // page multiple
  void *p = std::aligned_alloc(4096, bytes ? bytes : 4096);
  if (!p) throw std::bad_alloc();
  return static_cast<float *>(p);
}

// Runs fn(t) on `nthreads` threads (the caller is thread 0), all starting together;
// returns the seconds from the common start to the last finish (thread start-up is
// outside the timed part).
template <class Fn>
double RunTogether(unsigned nthreads, Fn fn) {
  SpinBarrier barrier(nthreads);
  using clock = std::chrono::steady_clock;
  clock::time_point t0, t1;
  auto worker = [&](unsigned t) {
    barrier.wait();
    if (t == 0) t0 = clock::now();
    barrier.wait();
    fn(t);
    barrier.wait();
    if (t == 0) t1 = clock::now();
  };
  std::vector<std::thread> pool;
  pool.reserve(nthreads - 1);
  for (unsigned t = 1; t < nthreads; ++t) pool.emplace_back(worker, t);
  worker(0);
  for (auto &th : pool) th.join();
  return std::chrono::duration<double>(t1 - t0).count();
}

unsigned ThreadCount(int threads) {
  if (threads < 0) throw std::invalid_argument("threads must be >= 0");
  unsigned n = threads ? unsigned(threads) : std::thread::hardware_concurrency();
  return n ? n : 1;
}

// [lo, hi) of n floats for part t of parts, boundaries on 64-byte lines.
inline std::pair<size_t, size_t> Part(size_t n, size_t t, size_t parts) {
  constexpr size_t kLine = 16;
  const size_t lines = (n + kLine - 1) / kLine;
  return {std::min(n, lines * t / parts * kLine), std::min(n, lines * (t + 1) / parts * kLine)};
}

// A STREAM triad a = b + s*c over arrays allocated (and first touched by their owning
// thread) once, so that it can run many times.
class Triad {
 public:
  Triad(int64_t bytes_per_array, int threads, bool nontemporal) : nontemporal_(nontemporal) {
    if (bytes_per_array < 64)
      throw std::invalid_argument("bytes_per_array must be at least 64");
    n_ = size_t(bytes_per_array) / sizeof(float);
    nthreads_ = unsigned(std::min<size_t>(ThreadCount(threads), (n_ + 15) / 16));
    a_.reset(alloc_floats(n_));
    b_.reset(alloc_floats(n_));
    c_.reset(alloc_floats(n_));
    triad_ = pick_triad();
    RunTogether(nthreads_, [this](unsigned t) {  // first touch by the owning thread (NUMA)
      auto [lo, hi] = Part(n_, t, nthreads_);
      for (size_t i = lo; i < hi; ++i) { a_.get()[i] = 0.0f; b_.get()[i] = 1.0f; c_.get()[i] = 2.0f; }
    });
  }

  // Seconds of one pass.
  double Run() {
    return RunTogether(nthreads_, [this](unsigned t) {
      auto [lo, hi] = Part(n_, t, nthreads_);
      triad_(a_.get() + lo, b_.get() + lo, c_.get() + lo, 3.0f, hi - lo, nontemporal_);
    });
  }

  int64_t BytesMoved() const { return int64_t(3 * n_ * sizeof(float)); }
  float Sample() const { return a_.get()[n_ / 2] + a_.get()[n_ - 1]; }

 private:
  bool nontemporal_;
  unsigned nthreads_ = 1;
  size_t n_ = 0;
  std::unique_ptr<float, AlignedFree> a_{nullptr}, b_{nullptr}, c_{nullptr};
  TriadFn triad_ = nullptr;
};

// ------------------------------------------------------------ mixed read / write
//
// Reads rv and writes wv vectors from 64-byte aligned arrays, the reads spread evenly
// between the writes (Bresenham): each vector written carries the sum of the vectors
// read before it, as a fused kernel's output depends on its input. Returns a lane of
// the sum so that the reads stay observable.

using MixFn = float (*)(const float *, size_t, float *, size_t, bool);

float mix_generic(const float *in, size_t rv, float *out, size_t wv, bool) {
  float acc[16] = {};
  size_t r = 0, err = 0;
  const size_t q = wv ? rv / wv : rv, rem = wv ? rv % wv : 0;
  for (size_t j = 0; j < std::max<size_t>(wv, 1); ++j) {
    size_t reads = q + ((err += rem) >= wv && wv ? (err -= wv, 1) : 0);
    for (; reads; --reads, ++r)
      for (int l = 0; l < 16; ++l) acc[l] += in[r * 16 + l];
    if (wv)
      for (int l = 0; l < 16; ++l) out[j * 16 + l] = acc[l];
  }
  return acc[0];
}

#if defined(PFJAX_X86)
__attribute__((target("avx512f")))
float mix_avx512(const float *in, size_t rv, float *out, size_t wv, bool nt) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = acc0;  // two chains: a load every cycle
  size_t r = 0, err = 0;
  const size_t q = wv ? rv / wv : rv, rem = wv ? rv % wv : 0;
  for (size_t j = 0; j < std::max<size_t>(wv, 1); ++j) {
    size_t reads = q + ((err += rem) >= wv && wv ? (err -= wv, 1) : 0);
    for (; reads >= 2; reads -= 2, r += 2) {
      acc0 = _mm512_add_ps(acc0, _mm512_load_ps(in + r * 16));
      acc1 = _mm512_add_ps(acc1, _mm512_load_ps(in + r * 16 + 16));
    }
    if (reads) acc0 = _mm512_add_ps(acc0, _mm512_load_ps(in + r++ * 16));
    if (!wv) break;
    if (nt) _mm512_stream_ps(out + j * 16, acc0);
    else _mm512_store_ps(out + j * 16, acc0);
  }
  if (nt) _mm_sfence();
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

__attribute__((target("avx2")))
float mix_avx2(const float *in, size_t rv, float *out, size_t wv, bool nt) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
  size_t r = 0, err = 0;
  const size_t q = wv ? rv / wv : rv, rem = wv ? rv % wv : 0;
  for (size_t j = 0; j < std::max<size_t>(wv, 1); ++j) {
    size_t reads = q + ((err += rem) >= wv && wv ? (err -= wv, 1) : 0);
    for (; reads; --reads, ++r) {
      acc0 = _mm256_add_ps(acc0, _mm256_load_ps(in + r * 16));
      acc1 = _mm256_add_ps(acc1, _mm256_load_ps(in + r * 16 + 8));
    }
    if (!wv) break;
    if (nt) {
      _mm256_stream_ps(out + j * 16, acc0);
      _mm256_stream_ps(out + j * 16 + 8, acc1);
    } else {
      _mm256_store_ps(out + j * 16, acc0);
      _mm256_store_ps(out + j * 16 + 8, acc1);
    }
  }
  if (nt) _mm_sfence();
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(acc0, acc1));
  return t[0];
}
#endif

// Reads one array of read_bytes and writes one of write_bytes, the reads spread evenly
// between the writes: the bytes a fused kernel moves, in the same proportion, without
// its arithmetic. The benchmark's per-workload
// ceiling: a triad reads two bytes per byte written, and on some machines writing costs
// more than reading, so a 1:1 kernel cannot reach a triad's rate.
class StreamMix {
 public:
  StreamMix(int64_t read_bytes, int64_t write_bytes, int threads, bool nontemporal)
      : nontemporal_(nontemporal) {
    if (read_bytes < 0 || write_bytes < 0 || read_bytes + write_bytes < 64)
      throw std::invalid_argument("read_bytes and write_bytes must be >= 0, together >= 64");
    nr_ = size_t(read_bytes) / sizeof(float);
    nw_ = size_t(write_bytes) / sizeof(float);
    nthreads_ = unsigned(std::min<size_t>(ThreadCount(threads),
                                          (std::max(nr_, nw_) + 15) / 16));
    in_.reset(alloc_floats(nr_));
    out_.reset(alloc_floats(nw_));
#if defined(PFJAX_X86)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) mix_ = mix_avx512;
    else if (__builtin_cpu_supports("avx2")) mix_ = mix_avx2;
#endif
    RunTogether(nthreads_, [this](unsigned t) {  // first touch by the owning thread
      auto [rlo, rhi] = Part(nr_, t, nthreads_);
      auto [wlo, whi] = Part(nw_, t, nthreads_);
      for (size_t i = rlo; i < rhi; ++i) in_.get()[i] = float(i % 7);
      for (size_t i = wlo; i < whi; ++i) out_.get()[i] = 0.0f;
    });
  }

  double Run() {
    return RunTogether(nthreads_, [this](unsigned t) {
      auto [rlo, rhi] = Part(nr_, t, nthreads_);
      auto [wlo, whi] = Part(nw_, t, nthreads_);
      // Whole vectors (ranges start on 64-byte lines), then the last thread's tails.
      const size_t rv = (rhi - rlo) / 16, wv = (whi - wlo) / 16;
      float s = mix_(in_.get() + rlo, rv, out_.get() + wlo, wv, nontemporal_);
      for (size_t i = rlo + rv * 16; i < rhi; ++i) s += in_.get()[i];
      for (size_t i = wlo + wv * 16; i < whi; ++i) out_.get()[i] = s;
      sink_[t % kSinks] = s;  // keeps the reads observable
    });
  }

  int64_t BytesMoved() const { return int64_t((nr_ + nw_) * sizeof(float)); }

 private:
  static constexpr unsigned kSinks = 64;
  bool nontemporal_;
  unsigned nthreads_ = 1;
  size_t nr_ = 0, nw_ = 0;
  std::unique_ptr<float, AlignedFree> in_{nullptr}, out_{nullptr};
  MixFn mix_ = mix_generic;
  volatile float sink_[kSinks] = {};
};

