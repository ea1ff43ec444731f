// The stable-ABI side of quanta::unpack shared by the CPU and CUDA bindings: the argument checks
// (checks.h), and the output tensor.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include "checks.h"
#include "qkernels/unpack.h"

namespace quanta::qkernels {

// A checked call: contiguous input, allocated output, and the row count of the 2D view.
struct UnpackCall {
  torch::stable::Tensor packed;
  torch::stable::Tensor codes;
  int64_t rows;
};

// Checks quanta::unpack's arguments (`on_device`: the tensor sits where this kernel runs).
inline UnpackCall prepare_unpack(
    const torch::stable::Tensor& packed, int64_t bits, int64_t size, bool on_device,
    const char* device_name) {
  check_unpack(packed, bits, size);
  STD_TORCH_CHECK(
      on_device, "quanta::unpack: the ", device_name, " kernel got a tensor on another device");
  const int64_t width = packed_width(size, bits);

  torch::stable::Tensor src = packed.is_contiguous() ? packed : torch::stable::contiguous(packed);
  std::vector<int64_t> out_sizes(src.sizes().begin(), src.sizes().end());
  out_sizes.back() = size;
  torch::stable::Tensor out = torch::stable::new_empty(src, out_sizes);
  const int64_t rows = (width == 0 || size == 0) ? 0 : src.numel() / width;
  return {src, out, rows};
}

}  // namespace quanta::qkernels
