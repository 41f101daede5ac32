// pfjax/cuda_kernel.cuh -- fixed code behind every generated CUDA kernel.
//
// Generated sources include this header, define their __global__ kernel(s) and a launch
// function, and export one XLA FFI handler per kernel with PFJAX_CUDA_EXPORT. The math is
// math.h / fastmath.h compiled for the device, so results match the CPU backend. Compiled
// by a host compiler instead of nvcc, the same source runs on emulated threads
// (pfjax/cuda_emulation.h): the tests check generated CUDA against JAX without a GPU.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
// Launch syntax and dynamic shared memory, spelled so the emulation can replace them.
#define PFJAX_LAUNCH(KERNEL, BLOCKS, THREADS, SHARED, STREAM, ...) \
  KERNEL<<<BLOCKS, THREADS, SHARED, STREAM>>>(__VA_ARGS__)
#define PFJAX_DYNAMIC_SHARED(NAME, BYTES) extern __shared__ __align__(16) unsigned char NAME[]
#else
#include "pfjax/cuda_emulation.h"
#endif

#include "pfjax/fastmath.h"

namespace pfjax::rt {

// Float to integer with XLA's semantics: NaN -> 0, out of range saturates.
template <typename I, typename F>
__host__ __device__ __forceinline__ I f2i(F x) {
  constexpr F lo = static_cast<F>(std::numeric_limits<I>::min());
  constexpr F hi = static_cast<F>(std::numeric_limits<I>::max());
  const F c = x != x ? F(0) : (x < lo ? lo : x);
  return c >= hi ? std::numeric_limits<I>::max() : static_cast<I>(c);
}

// N consecutive elements moved as one aligned access (16 bytes for 4 floats).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& x) {
  *reinterpret_cast<Pack<T, N>*>(p) = x;
}

// Reductions over the threads of a block (unit scope: a warp's lanes by shuffles; group
// scope: the warps' partials through shared memory, with barriers). `shared` holds one
// value per warp; every thread gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, d));
  return v;
}

template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // `shared` may still be read from the previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = threadIdx.x < warps ? shared[threadIdx.x] : identity;
  if (warp == 0) v = warp_reduce(v, op);
  if (threadIdx.x == 0) shared[0] = v;
  __syncthreads();
  return shared[0];
}

// Reduction operators with XLA's semantics (max/min propagate NaN).
struct OpSum {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct OpProd {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a * b; }
};
struct OpMax {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
    return (b > a || b != b) ? b : a;
  }
};
struct OpMin {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
    return (b < a || b != b) ? b : a;
  }
};
struct OpAnd {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a & b; }
};
struct OpOr {
  template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a | b; }
};

}  // namespace pfjax::rt

#if defined(__CUDACC__)
#include "xla/ffi/api/ffi.h"

namespace pfjax::rt {

namespace ffi = xla::ffi;

// Checks the buffers against what the kernel was built for and collects their pointers.
inline ffi::Error Collect(ffi::RemainingArgs& args, ffi::RemainingRets& rets,
                          const char* name, const int64_t* in_sizes, int num_in,
                          const int64_t* out_sizes, int num_out, void** in, void** out) {
  if (static_cast<int>(args.size()) != num_in || static_cast<int>(rets.size()) != num_out)
    return ffi::Error::InvalidArgument(std::string(name) + ": expected " +
                                       std::to_string(num_in) + " operands and " +
                                       std::to_string(num_out) + " results");
  for (int i = 0; i < num_in; ++i) {
    auto buf = args.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    if (static_cast<int64_t>(buf->element_count()) != in_sizes[i])
      return ffi::Error::InvalidArgument(std::string(name) + ": operand " +
                                         std::to_string(i) + " has the wrong size");
    in[i] = buf->untyped_data();
  }
  for (int i = 0; i < num_out; ++i) {
    auto buf = rets.get<ffi::AnyBuffer>(i);
    if (buf.has_error()) return buf.error();
    if (static_cast<int64_t>((*buf)->element_count()) != out_sizes[i])
      return ffi::Error::InvalidArgument(std::string(name) + ": result " +
                                         std::to_string(i) + " has the wrong size");
    out[i] = (*buf)->untyped_data();
  }
  return ffi::Error::Success();
}

inline ffi::Error Check(cudaError_t err, const char* name) {
  if (err == cudaSuccess) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(name) + ": CUDA error " + cudaGetErrorName(err) +
                              ": " + cudaGetErrorString(err));
}

}  // namespace pfjax::rt

// One FFI handler per kernel, launched on the stream XLA hands over. LAUNCH is
// `cudaError_t LAUNCH(void** in, void** out, cudaStream_t stream)`.
#define PFJAX_CUDA_EXPORT(NAME, LAUNCH, NUM_IN, IN_SIZES, NUM_OUT, OUT_SIZES)               \
  static xla::ffi::Error NAME##_impl(cudaStream_t stream, xla::ffi::RemainingArgs args,   \
                                     xla::ffi::RemainingRets rets) {                      \
    void* in[(NUM_IN) + 1];                                                                \
    void* out[(NUM_OUT) + 1];                                                              \
    auto err = pfjax::rt::Collect(args, rets, #NAME, IN_SIZES, NUM_IN, OUT_SIZES, NUM_OUT, \
                                  in, out);                                                \
    if (err.failure()) return err;                                                         \
    return pfjax::rt::Check(LAUNCH(in, out, stream), #NAME);                               \
  }                                                                                        \
  extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* NAME##_ffi(             \
      XLA_FFI_CallFrame* call_frame);                                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME##_ffi, NAME##_impl,                                   \
                                xla::ffi::Ffi::Bind()                                      \
                                    .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()         \
                                    .RemainingArgs()                                       \
                                    .RemainingRets());
#endif  // __CUDACC__
