// quanta::unpack on CUDA: a torch-free kernel and launcher, then the stable-ABI binding.
#include <dlfcn.h>

#include <cstdint>

#include <cuda_runtime.h>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/headeronly/util/Exception.h>

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
  const torch::stable::accelerator::DeviceGuard guard(packed.get_device_index());
  const auto call = quanta::qkernels::prepare_unpack(packed, bits, size, packed.is_cuda(), "CUDA");
  if (call.rows == 0) {
    return call.codes;
  }
  const int error = quanta::qkernels::launch_unpack_cuda(
      call.packed.const_data_ptr<uint8_t>(), call.codes.mutable_data_ptr<uint8_t>(), call.rows,
      size, static_cast<int>(bits), current_cuda_stream(packed.get_device_index()));
  STD_TORCH_CHECK(
      error == cudaSuccess, "quanta::unpack: CUDA launch failed: ",
      cudaGetErrorString(static_cast<cudaError_t>(error)));
  return call.codes;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(quanta, CUDA, m) {
  m.impl("unpack", TORCH_BOX(&unpack_cuda));
}
