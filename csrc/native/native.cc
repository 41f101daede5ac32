// pfjax._native: machine description and a STREAM-triad bandwidth probe.
//
// Built with -O2 and no -march flags: the ISA-specific triad kernels are
// selected at run time (AVX-512F / AVX2+FMA / SSE2 on x86-64, plain C++
// elsewhere, which the compiler vectorises for NEON on aarch64).

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define PFJAX_X86 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace nb = nanobind;

namespace {

// ---------------------------------------------------------------- machine info

std::string read_first_line(const std::string &path) {
  std::ifstream f(path);
  std::string line;
  if (f) std::getline(f, line);
  return line;
}

// "32K" / "1024K" / "32M" / "12345" -> bytes; 0 if unparsable.
long parse_size(const std::string &s) {
  if (s.empty()) return 0;
  char *end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (end == s.c_str() || v < 0) return 0;
  while (*end == ' ') ++end;
  switch (*end) {
    case 'K': case 'k': return v * 1024L;
    case 'M': case 'm': return v * 1024L * 1024L;
    case 'G': case 'g': return v * 1024L * 1024L * 1024L;
    default: return v;
  }
}

struct SysCache {
  long l1d = 0, l2 = 0, l3 = 0, line = 0;
};

SysCache sys_cache() {
  SysCache c;
  for (int i = 0; i < 16; ++i) {
    std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::string level = read_first_line(dir + "level");
    if (level.empty()) break;
    std::string type = read_first_line(dir + "type");
    long size = parse_size(read_first_line(dir + "size"));
    if (type == "Instruction") continue;
    if (level == "1") {
      c.l1d = size;
      c.line = parse_size(read_first_line(dir + "coherency_line_size"));
    } else if (level == "2") {
      c.l2 = size;
    } else if (level == "3") {
      c.l3 = size;
    }
  }
  return c;
}

long sysconf_or(int name, long fallback) {
  long v = -1;
  if (name >= 0) v = sysconf(name);
  return v > 0 ? v : fallback;
}

#ifndef _SC_LEVEL1_DCACHE_SIZE
#define PFJAX_SC_L1D -1
#define PFJAX_SC_L1LINE -1
#define PFJAX_SC_L2 -1
#define PFJAX_SC_L3 -1
#else
#define PFJAX_SC_L1D _SC_LEVEL1_DCACHE_SIZE
#define PFJAX_SC_L1LINE _SC_LEVEL1_DCACHE_LINESIZE
#define PFJAX_SC_L2 _SC_LEVEL2_CACHE_SIZE
#define PFJAX_SC_L3 _SC_LEVEL3_CACHE_SIZE
#endif

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto pos = line.find(':');
      if (pos == std::string::npos) return "";
      std::string v = line.substr(pos + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "";
}

struct Isa {
  std::vector<std::string> names;
  int simd_bytes = 8;
};

Isa detect_isa() {
  Isa r;
#if defined(PFJAX_X86)
  __builtin_cpu_init();
  bool sse2 = __builtin_cpu_supports("sse2");
  bool avx = __builtin_cpu_supports("avx");
  bool avx2 = __builtin_cpu_supports("avx2");
  bool fma = __builtin_cpu_supports("fma");
  bool avx512f = __builtin_cpu_supports("avx512f");
  bool avx512bw = __builtin_cpu_supports("avx512bw");
  bool avx512vl = __builtin_cpu_supports("avx512vl");
  bool avx512dq = __builtin_cpu_supports("avx512dq");
  // Bits that not every compiler's __builtin_cpu_supports knows: read CPUID.
  bool f16c = false, avx512_bf16 = false, avx512fp16 = false, avx512vnni = false;
  unsigned a, b, c, d;
  if (__get_cpuid(1, &a, &b, &c, &d)) f16c = avx && (c & (1u << 29));
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    avx512fp16 = avx512f && (d & (1u << 23));
    avx512vnni = avx512f && (c & (1u << 11));
    unsigned max_sub = a;
    if (max_sub >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d))
      avx512_bf16 = avx512f && (a & (1u << 5));
  }
  auto add = [&](bool ok, const char *n) { if (ok) r.names.emplace_back(n); };
  add(sse2, "sse2");
  add(__builtin_cpu_supports("sse4.2"), "sse4_2");
  add(avx, "avx");
  add(avx2, "avx2");
  add(fma, "fma");
  add(f16c, "f16c");
  add(avx512f, "avx512f");
  add(avx512bw, "avx512bw");
  add(avx512vl, "avx512vl");
  add(avx512dq, "avx512dq");
  add(avx512vnni, "avx512vnni");
  add(avx512_bf16, "avx512_bf16");
  add(avx512fp16, "avx512fp16");
  r.simd_bytes = avx512f ? 64 : avx2 ? 32 : sse2 ? 16 : 8;
#elif defined(__aarch64__)
  r.names.emplace_back("neon");
  r.simd_bytes = 16;
#if defined(__linux__) && defined(HWCAP_SVE)
  if (getauxval(AT_HWCAP) & HWCAP_SVE) r.names.emplace_back("sve");
#endif
#if defined(__linux__) && defined(HWCAP_ASIMDHP)
  if (getauxval(AT_HWCAP) & HWCAP_ASIMDHP) r.names.emplace_back("asimdhp");
#endif
#elif defined(__ARM_NEON)
  r.names.emplace_back("neon");
  r.simd_bytes = 16;
#endif
  return r;
}

nb::dict machine_info() {
  SysCache sc = sys_cache();
  Isa isa = detect_isa();
  unsigned cores = std::thread::hardware_concurrency();
  nb::dict d;
  d["num_cores"] = cores ? cores : 1u;
  d["simd_bytes"] = isa.simd_bytes;
  d["isa"] = isa.names;
  d["l1d_bytes"] = sysconf_or(PFJAX_SC_L1D, sc.l1d);
  d["l2_bytes"] = sysconf_or(PFJAX_SC_L2, sc.l2);
  d["l3_bytes"] = sysconf_or(PFJAX_SC_L3, sc.l3);
  d["cache_line_bytes"] = sysconf_or(PFJAX_SC_L1LINE, sc.line > 0 ? sc.line : 64);
  d["cpu_model"] = cpu_model();
  d["page_bytes"] = sysconf_or(_SC_PAGESIZE, 4096);
  return d;
}

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

// A STREAM triad a = b + s*c over arrays allocated (and first touched by their owning
// thread) once, so that it can run many times beside other work: the benchmark times it
// in the same rounds as the workloads, as the ceiling under the same conditions.
class Triad {
 public:
  Triad(int64_t bytes_per_array, int threads, bool nontemporal) : nontemporal_(nontemporal) {
    if (bytes_per_array < 64)
      throw std::invalid_argument("bytes_per_array must be at least 64");
    if (threads < 0) throw std::invalid_argument("threads must be >= 0");
    nthreads_ = threads ? unsigned(threads) : std::thread::hardware_concurrency();
    if (nthreads_ == 0) nthreads_ = 1;
    n_ = size_t(bytes_per_array) / sizeof(float);
    const size_t nchunks = (n_ + kChunk - 1) / kChunk;
    if (nthreads_ > nchunks) nthreads_ = unsigned(nchunks);
    a_.reset(alloc_floats(n_));
    b_.reset(alloc_floats(n_));
    c_.reset(alloc_floats(n_));
    triad_ = pick_triad();
    Parallel([this](size_t lo, size_t hi) {  // first touch by the owning thread (NUMA)
      float *a = a_.get(), *b = b_.get(), *c = c_.get();
      for (size_t i = lo; i < hi; ++i) { a[i] = 0.0f; b[i] = 1.0f; c[i] = 2.0f; }
    });
  }

  // Seconds of one pass, from all threads starting together to all finishing (thread
  // start-up is outside the timed part).
  double Run() {
    return Parallel([this](size_t lo, size_t hi) {
      triad_(a_.get() + lo, b_.get() + lo, c_.get() + lo, 3.0f, hi - lo, nontemporal_);
    });
  }

  int64_t BytesMoved() const { return int64_t(3 * n_ * sizeof(float)); }
  float Sample() const { return a_.get()[n_ / 2] + a_.get()[n_ - 1]; }

 private:
  static constexpr size_t kChunk = 16;  // floats: one 64-byte line

  template <class Fn>
  double Parallel(Fn fn) {
    const size_t nchunks = (n_ + kChunk - 1) / kChunk;
    SpinBarrier barrier(nthreads_);
    using clock = std::chrono::steady_clock;
    clock::time_point t0, t1;
    auto worker = [&](unsigned t) {
      size_t lo = std::min(n_, (nchunks * t / nthreads_) * kChunk);
      size_t hi = std::min(n_, (nchunks * (t + 1) / nthreads_) * kChunk);
      barrier.wait();
      if (t == 0) t0 = clock::now();
      barrier.wait();
      fn(lo, hi);
      barrier.wait();
      if (t == 0) t1 = clock::now();
    };
    std::vector<std::thread> pool;
    pool.reserve(nthreads_ - 1);
    for (unsigned t = 1; t < nthreads_; ++t) pool.emplace_back(worker, t);
    worker(0);
    for (auto &th : pool) th.join();
    return std::chrono::duration<double>(t1 - t0).count();
  }

  bool nontemporal_;
  unsigned nthreads_ = 1;
  size_t n_ = 0;
  std::unique_ptr<float, AlignedFree> a_{nullptr}, b_{nullptr}, c_{nullptr};
  TriadFn triad_ = nullptr;
};

double measure_bandwidth(int64_t bytes_per_array, int threads, int repeats, bool nontemporal) {
  if (repeats < 1) throw std::invalid_argument("repeats must be >= 1");
  Triad triad(bytes_per_array, threads, nontemporal);
  triad.Run();  // warm-up pass
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < repeats; ++r) best = std::min(best, triad.Run());
  volatile float sink = triad.Sample();  // keep the stores observable
  (void)sink;
  if (!(best > 0.0)) best = 1e-9;
  return double(triad.BytesMoved()) / best / 1e9;
}

}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "pfjax native helpers: machine description and bandwidth probe";

  m.def("machine_info", &machine_info,
        "Describe the CPU: num_cores, simd_bytes, isa, l1d_bytes, l2_bytes, "
        "l3_bytes, cache_line_bytes, cpu_model, page_bytes.");

  m.def(
      "measure_bandwidth",
      [](int64_t bytes_per_array, int threads, int repeats, bool nontemporal) {
        nb::gil_scoped_release release;
        return measure_bandwidth(bytes_per_array, threads, repeats, nontemporal);
      },
      nb::arg("bytes_per_array"), nb::arg("threads") = 0, nb::arg("repeats") = 10,
      nb::arg("nontemporal") = false,
      "STREAM triad a = b + s*c over float32 arrays of bytes_per_array bytes each, "
      "split over `threads` threads (0 = all hardware threads); returns the best "
      "GB/s over `repeats`, counting 3 * bytes_per_array bytes per pass.");

  nb::class_<Triad>(m, "Triad",
                    "A STREAM triad over float32 arrays allocated once, to be run many "
                    "times (the benchmark's side-by-side ceiling).")
      .def(nb::init<int64_t, int, bool>(), nb::arg("bytes_per_array"), nb::arg("threads") = 0,
           nb::arg("nontemporal") = false)
      .def(
          "run",
          [](Triad &t) {
            nb::gil_scoped_release release;
            return t.Run();
          },
          "One pass; returns its seconds (all threads start together; thread start-up "
          "is not timed).")
      .def_prop_ro("bytes_moved", &Triad::BytesMoved, "3 * bytes_per_array");
}
