// The stable-ABI side of quanta::unpack shared by the CPU and CUDA bindings: argument checks
// with messages a user can act on, and the output tensor.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

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
    const torch::stable::Tensor& packed,
    int64_t bits,
    int64_t size,
    bool on_device,
    const char* device_name) {
  STD_TORCH_CHECK(
      bits == 2 || bits == 4, "quanta::unpack: bits must be one of (2, 4), got ", bits);
  STD_TORCH_CHECK(size >= 0, "quanta::unpack: size must be >= 0, got ", size);
  STD_TORCH_CHECK(
      packed.scalar_type() == torch::headeronly::ScalarType::Byte,
      "quanta::unpack: packed must have dtype in (uint8), got ",
      torch::headeronly::toString(packed.scalar_type()));
  STD_TORCH_CHECK(
      packed.dim() >= 1, "quanta::unpack: packed must have at least one dimension, got a scalar");
  STD_TORCH_CHECK(
      on_device, "quanta::unpack: the ", device_name, " kernel got a tensor on another device");
  const int64_t width = packed_width(size, bits);
  const int64_t last = packed.size(packed.dim() - 1);
  STD_TORCH_CHECK(
      last == width,
      "quanta::unpack: packed has ", last, " bytes in its last dimension, but ", size,
      " codes of ", bits, " bits need ceil(size * bits / 8) = ", width);

  torch::stable::Tensor src = packed.is_contiguous() ? packed : torch::stable::contiguous(packed);
  std::vector<int64_t> out_sizes(src.sizes().begin(), src.sizes().end());
  out_sizes.back() = size;
  torch::stable::Tensor out = torch::stable::new_empty(src, out_sizes);
  const int64_t rows = (width == 0 || size == 0) ? 0 : src.numel() / width;
  return {src, out, rows};
}

}  // namespace quanta::qkernels
