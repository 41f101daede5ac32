// pfjax/cuda_emulation.h -- run generated CUDA kernels on host threads.
//
// Included by cuda_kernel.cuh when a host compiler (not nvcc) compiles a generated CUDA
// source: every CUDA thread of a block is a std::thread, blocks run one after another,
// __syncthreads is a barrier of the block, warp shuffles exchange through memory with a
// barrier of the warp, and __shared__ variables are statics (shared by the block's threads).
// Slow, but it runs the very kernel text nvcc compiles, so tests without a GPU check the
// CUDA codegen's results against JAX. Needs C++20 (std::barrier) and -pthread.
#pragma once

#include <barrier>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static

namespace pfjax::emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

struct BlockState {
  std::unique_ptr<std::barrier<>> block;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint64_t> exchange;
};

inline BlockState* current = nullptr;  // blocks run one at a time

inline void sync_block() { current->block->arrive_and_wait(); }

inline void launch(unsigned blocks, unsigned threads, std::function<void()> body);

}  // namespace pfjax::emu

inline thread_local pfjax::emu::Dim3 threadIdx, blockIdx;
inline pfjax::emu::Dim3 blockDim, gridDim;

#define __syncthreads() pfjax::emu::sync_block()

template <typename T>
inline T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a wide type");
  auto& st = *pfjax::emu::current;
  const unsigned t = threadIdx.x;
  auto& warp = *st.warps[t / 32];
  std::memcpy(&st.exchange[t], &v, sizeof(T));
  warp.arrive_and_wait();
  T out;
  std::memcpy(&out, &st.exchange[t ^ static_cast<unsigned>(lane_mask)], sizeof(T));
  warp.arrive_and_wait();
  return out;
}

inline void pfjax::emu::launch(unsigned blocks, unsigned threads, std::function<void()> body) {
  gridDim = {blocks, 1, 1};
  blockDim = {threads, 1, 1};
  for (unsigned b = 0; b < blocks; ++b) {
    BlockState st;
    st.block = std::make_unique<std::barrier<>>(threads);
    for (unsigned w = 0; w < (threads + 31) / 32; ++w)
      st.warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
    st.exchange.resize(threads);
    current = &st;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t, b] {
        threadIdx = {t, 0, 0};
        blockIdx = {b, 0, 0};
        body();
      });
    for (auto& th : pool) th.join();
    current = nullptr;
  }
}

using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  *p = std::malloc(bytes);
  return *p ? cudaSuccess : 2;
}
inline cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  std::free(p);
  return cudaSuccess;
}
#define cudaFuncSetAttribute(...) cudaSuccess

#define PFJAX_LAUNCH(KERNEL, BLOCKS, THREADS, SHARED, STREAM, ...) \
  pfjax::emu::launch(BLOCKS, THREADS, [&] { KERNEL(__VA_ARGS__); })
#define PFJAX_DYNAMIC_SHARED(NAME, BYTES) alignas(16) static unsigned char NAME[(BYTES) > 0 ? (BYTES) : 1]

#define PFJAX_CUDA_EXPORT(NAME, LAUNCH, NUM_IN, IN_SIZES, NUM_OUT, OUT_SIZES) \
  extern "C" __attribute__((visibility("default"))) int NAME##_emulate(void** in, void** out) { \
    return LAUNCH(in, out, nullptr);                                                          \
  }
