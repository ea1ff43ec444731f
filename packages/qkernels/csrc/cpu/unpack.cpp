// quanta::unpack on the CPU: torch-free math first, then the stable-ABI binding.
#include <cstring>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include "qkernels/unpack.h"

namespace quanta::qkernels {

namespace {

template <int Bits>
void unpack_row(const uint8_t* packed, uint8_t* codes, int64_t size) {
  constexpr int per_byte = 8 / Bits;
  constexpr uint8_t mask = (1u << Bits) - 1u;
  const int64_t full_bytes = size / per_byte;
  for (int64_t i = 0; i < full_bytes; ++i) {
    const uint8_t byte = packed[i];
    uint8_t* out = codes + i * per_byte;
    for (int k = 0; k < per_byte; ++k) {
      out[k] = static_cast<uint8_t>((byte >> (k * Bits)) & mask);
    }
  }
  // The last byte holds fewer codes when size is not a multiple of 8 / bits.
  for (int64_t j = full_bytes * per_byte; j < size; ++j) {
    codes[j] = static_cast<uint8_t>((packed[j / per_byte] >> ((j % per_byte) * Bits)) & mask);
  }
}

}  // namespace

void unpack_rows_cpu(
    const uint8_t* packed,
    uint8_t* codes,
    int64_t row_begin,
    int64_t row_end,
    int64_t size,
    int bits) {
  const int64_t width = packed_width(size, bits);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const uint8_t* src = packed + row * width;
    uint8_t* dst = codes + row * size;
    if (bits == 4) {
      unpack_row<4>(src, dst, size);
    } else {
      unpack_row<2>(src, dst, size);
    }
  }
}

}  // namespace quanta::qkernels

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Rows per parallel task: unpack is memory bound, so only large tensors are split.
constexpr int64_t kGrainBytes = 1 << 16;

Tensor unpack_cpu(const Tensor& packed, int64_t bits, int64_t size) {
  STD_TORCH_CHECK(
      bits == 2 || bits == 4, "quanta::unpack: bits must be one of (2, 4), got ", bits);
  STD_TORCH_CHECK(size >= 0, "quanta::unpack: size must be >= 0, got ", size);
  STD_TORCH_CHECK(
      packed.scalar_type() == ScalarType::Byte,
      "quanta::unpack: packed must have dtype in (uint8), got ",
      torch::headeronly::toString(packed.scalar_type()));
  STD_TORCH_CHECK(
      packed.dim() >= 1, "quanta::unpack: packed must have at least one dimension, got a scalar");
  STD_TORCH_CHECK(packed.is_cpu(), "quanta::unpack: the CPU kernel got a tensor on another device");
  const int64_t width = quanta::qkernels::packed_width(size, bits);
  const int64_t last = packed.size(packed.dim() - 1);
  STD_TORCH_CHECK(
      last == width,
      "quanta::unpack: packed has ", last, " bytes in its last dimension, but ", size,
      " codes of ", bits, " bits need ceil(size * bits / 8) = ", width);

  const Tensor src = packed.is_contiguous() ? packed : torch::stable::contiguous(packed);
  std::vector<int64_t> out_sizes(src.sizes().begin(), src.sizes().end());
  out_sizes.back() = size;
  Tensor out = torch::stable::new_empty(src, out_sizes);
  const int64_t rows = width == 0 ? 0 : src.numel() / width;
  if (rows == 0 || size == 0) {
    return out;
  }

  const auto* in_ptr = src.const_data_ptr<uint8_t>();
  auto* out_ptr = out.mutable_data_ptr<uint8_t>();
  const int64_t grain_rows = std::max<int64_t>(1, kGrainBytes / size);
  torch::stable::parallel_for(0, rows, grain_rows, [&](int64_t begin, int64_t end) {
    quanta::qkernels::unpack_rows_cpu(in_ptr, out_ptr, begin, end, size, static_cast<int>(bits));
  });
  return out;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(quanta, CPU, m) {
  m.impl("unpack", TORCH_BOX(&unpack_cpu));
}
