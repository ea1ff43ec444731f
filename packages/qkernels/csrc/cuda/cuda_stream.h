// torch's current CUDA stream, for the stable-ABI bindings of the CUDA ops.
#pragma once

#include <dlfcn.h>

#include <cstdint>

#include <torch/headeronly/util/Exception.h>

namespace quanta::qkernels {

// The current CUDA stream of device_index (a cudaStream_t). The C shim function lives in
// libtorch_cuda, which the CPU torch wheel this library is linked against does not have: look it
// up in the loaded process instead. `op` names the caller in errors.
inline void* current_cuda_stream(int32_t device_index, const char* op) {
  using GetStream = int32_t (*)(int32_t, void**);
  static GetStream get_stream = []() -> GetStream {
    void* lib = dlopen("libtorch_cuda.so", RTLD_NOW | RTLD_NOLOAD);
    void* symbol = dlsym(lib ? lib : RTLD_DEFAULT, "aoti_torch_get_current_cuda_stream");
    return reinterpret_cast<GetStream>(symbol);
  }();
  STD_TORCH_CHECK(
      get_stream != nullptr, op,
      ": cannot find torch's CUDA stream API; is this a CUDA build of torch?");
  void* stream = nullptr;
  STD_TORCH_CHECK(
      get_stream(device_index, &stream) == 0, op, ": cannot get the current CUDA stream");
  return stream;
}

}  // namespace quanta::qkernels
