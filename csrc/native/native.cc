// pfjax._native: machine description and bandwidth probes (csrc/native/bandwidth.h).
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

#include "bandwidth.h"

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

  nb::class_<StreamMix>(m, "StreamMix",
                        "Reads read_bytes and writes write_bytes of float32 arrays "
                        "allocated once, the reads spread evenly between the writes, to be "
                        "run many times (the benchmark's per-workload ceiling).")
      .def(nb::init<int64_t, int64_t, int, bool>(), nb::arg("read_bytes"),
           nb::arg("write_bytes"), nb::arg("threads") = 0, nb::arg("nontemporal") = false)
      .def(
          "run",
          [](StreamMix &k) {
            nb::gil_scoped_release release;
            return k.Run();
          },
          "One pass; returns its seconds (all threads start together; thread start-up "
          "is not timed).")
      .def_prop_ro("bytes_moved", &StreamMix::BytesMoved, "read_bytes + write_bytes");
}
