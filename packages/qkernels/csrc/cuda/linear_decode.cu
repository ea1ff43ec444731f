// The native CUDA decode kernels (1 to 16 input rows) of the quanta_cuda linear ops: torch-free
// kernels and their launcher. The math is in qkernels/cuda_decode_math.h, which the CPU tests
// also compile; this file adds only the warp layout, the shared table and the warp sum.
#include <cuda_runtime.h>

#include "qkernels/cuda_decode.h"

namespace quanta::qkernels::cuda_decode {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kRowsPerBlock = kWarpsPerBlock * kRowsPerWarp;

// One warp per kRowsPerWarp output columns; MaxRows bounds the input rows (p.m <= MaxRows), so
// that the sums stay in registers.
template <CodeFormat Format, ActType Act, int MaxRows>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarpSize)
    decode_kernel(const DecodeProblem p) {
  __shared__ float table[CodeTraits<Format>::tabled ? kCodeTableSize : 1];
  if constexpr (CodeTraits<Format>::tabled) {
    for (int i = threadIdx.x; i < kCodeTableSize; i += blockDim.x) {
      table[i] = code_table_entry<Format>(i, p.table);
    }
    __syncthreads();
  }
  const int lane = threadIdx.x % kWarpSize;
  const int64_t n0 =
      static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x / kWarpSize) * kRowsPerWarp;
  if (n0 >= p.n) {
    return;
  }
  float acc[kRowsPerWarp][MaxRows] = {};
  lane_dot<Format, Act, MaxRows>(p, n0, lane, kWarpSize, table, acc);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
#pragma unroll
    for (int m = 0; m < MaxRows; ++m) {
#pragma unroll
      for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        acc[r][m] += __shfl_xor_sync(0xFFFFFFFFu, acc[r][m], offset);
      }
      // every lane holds the sum: lane (r * MaxRows + m) % 32 stores it
      if (m < p.m && n0 + r < p.n && lane == (r * MaxRows + m) % kWarpSize) {
        store_out<Act>(p, m, n0 + r, acc[r][m]);
      }
    }
  }
}

template <CodeFormat Format, ActType Act, int MaxRows>
void launch(const DecodeProblem& p, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((p.n + kRowsPerBlock - 1) / kRowsPerBlock);
  decode_kernel<Format, Act, MaxRows><<<blocks, kWarpsPerBlock * kWarpSize, 0, stream>>>(p);
}

}  // namespace

const char* launch_linear_decode(const DecodeProblem& p, void* stream) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  // Two sizes of the register sums: one token, or up to 16 rows (whose loop skips the rows
  // past p.m); each size is one more kernel per format and dtype for the CI build to compile.
  dispatch(p.format, p.act, [&]<CodeFormat Format, ActType Act>() {
    if (p.m == 1) {
      launch<Format, Act, 1>(p, cuda_stream);
    } else {
      launch<Format, Act, kMaxRows>(p, cuda_stream);
    }
  });
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

int compute_capability_major(int device) {
  int major = 0;
  return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess
      ? major
      : 0;
}

}  // namespace quanta::qkernels::cuda_decode
