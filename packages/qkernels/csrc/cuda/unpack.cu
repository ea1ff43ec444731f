// quanta::unpack on CUDA: a torch-free kernel and launcher, then the stable-ABI binding.
#include <cstdint>

#include <cuda_runtime.h>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/headeronly/util/Exception.h>

#include "cuda_stream.h"
#include "qkernels/unpack.h"
#include "unpack_binding.h"

namespace quanta::qkernels {

namespace {

// One thread per packed byte: it writes the 8 / Bits codes the byte holds.
template <int Bits>
__global__ void unpack_kernel(
    const uint8_t* __restrict__ packed,
    uint8_t* __restrict__ codes,
    int64_t total_bytes,
    int64_t width,
    int64_t size) {
  constexpr int per_byte = 8 / Bits;
  constexpr uint8_t mask = (1u << Bits) - 1u;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total_bytes;
       i += stride) {
    const int64_t row = i / width;
    const int64_t first = (i - row * width) * per_byte;
    const uint8_t byte = packed[i];
    uint8_t* out = codes + row * size;
#pragma unroll
    for (int k = 0; k < per_byte; ++k) {
      if (first + k < size) {
        out[first + k] = static_cast<uint8_t>((byte >> (k * Bits)) & mask);
      }
    }
  }
}

}  // namespace

int launch_unpack_cuda(
    const uint8_t* packed, uint8_t* codes, int64_t rows, int64_t size, int bits, void* stream) {
  const int64_t width = packed_width(size, bits);
  const int64_t total_bytes = rows * width;
  if (total_bytes == 0) {
    return cudaSuccess;
  }
  constexpr int threads = 256;
  const int64_t blocks = std::min<int64_t>((total_bytes + threads - 1) / threads, 65535);
  auto cuda_stream = static_cast<cudaStream_t>(stream);
  if (bits == 4) {
    unpack_kernel<4><<<blocks, threads, 0, cuda_stream>>>(packed, codes, total_bytes, width, size);
  } else {
    unpack_kernel<2><<<blocks, threads, 0, cuda_stream>>>(packed, codes, total_bytes, width, size);
  }
  return cudaGetLastError();
}

}  // namespace quanta::qkernels

namespace {

using torch::stable::Tensor;

Tensor unpack_cuda(const Tensor& packed, int64_t bits, int64_t size) {
  const torch::stable::accelerator::DeviceGuard guard(packed.get_device_index());
  const auto call = quanta::qkernels::prepare_unpack(packed, bits, size, packed.is_cuda(), "CUDA");
  if (call.rows == 0) {
    return call.codes;
  }
  void* stream = quanta::qkernels::current_cuda_stream(packed.get_device_index(), "quanta::unpack");
  const int error = quanta::qkernels::launch_unpack_cuda(
      call.packed.const_data_ptr<uint8_t>(), call.codes.mutable_data_ptr<uint8_t>(), call.rows,
      size, static_cast<int>(bits), stream);
  STD_TORCH_CHECK(
      error == cudaSuccess, "quanta::unpack: CUDA launch failed: ",
      cudaGetErrorString(static_cast<cudaError_t>(error)));
  return call.codes;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(quanta, CUDA, m) {
  m.impl("unpack", TORCH_BOX(&unpack_cuda));
}
