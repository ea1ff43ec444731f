// quanta::unpack on CUDA: a torch-free kernel and launcher, then the stable-ABI binding.
#include <dlfcn.h>

#include <cstdint>
#include <vector>

#include <cuda_runtime.h>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include "qkernels/unpack.h"

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
    const uint8_t* packed,
    uint8_t* codes,
    int64_t rows,
    int64_t size,
    int bits,
    void* stream) {
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

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// torch's current CUDA stream. The C shim function lives in libtorch_cuda, which the CPU torch
// wheel this library is linked against does not have: look it up in the loaded process instead.
void* current_cuda_stream(int32_t device_index) {
  using GetStream = int32_t (*)(int32_t, void**);
  static GetStream get_stream = []() -> GetStream {
    void* lib = dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD);
    void* symbol = dlsym(lib ? lib : RTLD_DEFAULT, "aoti_torch_get_current_cuda_stream");
    return reinterpret_cast<GetStream>(symbol);
  }();
  STD_TORCH_CHECK(
      get_stream != nullptr,
      "quanta::unpack: cannot find torch's CUDA stream API; is this a CUDA build of torch?");
  void* stream = nullptr;
  STD_TORCH_CHECK(
      get_stream(device_index, &stream) == 0, "quanta::unpack: cannot get the current CUDA stream");
  return stream;
}

Tensor unpack_cuda(const Tensor& packed, int64_t bits, int64_t size) {
  STD_TORCH_CHECK(bits == 2 || bits == 4, "quanta::unpack: bits must be one of (2, 4), got ", bits);
  STD_TORCH_CHECK(size >= 0, "quanta::unpack: size must be >= 0, got ", size);
  STD_TORCH_CHECK(
      packed.scalar_type() == ScalarType::Byte,
      "quanta::unpack: packed must have dtype in (uint8), got ",
      torch::headeronly::toString(packed.scalar_type()));
  STD_TORCH_CHECK(
      packed.dim() >= 1, "quanta::unpack: packed must have at least one dimension, got a scalar");
  STD_TORCH_CHECK(
      packed.is_cuda(), "quanta::unpack: the CUDA kernel got a tensor on another device");
  const int64_t width = quanta::qkernels::packed_width(size, bits);
  const int64_t last = packed.size(packed.dim() - 1);
  STD_TORCH_CHECK(
      last == width,
      "quanta::unpack: packed has ", last, " bytes in its last dimension, but ", size,
      " codes of ", bits, " bits need ceil(size * bits / 8) = ", width);

  const torch::stable::accelerator::DeviceGuard guard(packed.get_device_index());
  const Tensor src = packed.is_contiguous() ? packed : torch::stable::contiguous(packed);
  std::vector<int64_t> out_sizes(src.sizes().begin(), src.sizes().end());
  out_sizes.back() = size;
  Tensor out = torch::stable::new_empty(src, out_sizes);
  const int64_t rows = width == 0 ? 0 : src.numel() / width;
  if (rows == 0 || size == 0) {
    return out;
  }
  const int error = quanta::qkernels::launch_unpack_cuda(
      src.const_data_ptr<uint8_t>(), out.mutable_data_ptr<uint8_t>(), rows, size,
      static_cast<int>(bits), current_cuda_stream(packed.get_device_index()));
  STD_TORCH_CHECK(
      error == cudaSuccess, "quanta::unpack: CUDA launch failed: ",
      cudaGetErrorString(static_cast<cudaError_t>(error)));
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(quanta, CUDA, m) {
  m.impl("unpack", TORCH_BOX(&unpack_cuda));
}
