// quanta::unpack on the CPU: torch-free math first, then the stable-ABI binding.

#include <algorithm>

#include <torch/csrc/stable/library.h>
#include <torch/headeronly/util/Exception.h>

#include "qkernels/unpack.h"
#include "unpack_binding.h"

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
    const uint8_t* packed, uint8_t* codes, int64_t row_begin, int64_t row_end, int64_t size,
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

using torch::stable::Tensor;

// Rows per parallel task: unpack is memory bound, so only large tensors are split.
constexpr int64_t kGrainBytes = 1 << 16;

Tensor unpack_cpu(const Tensor& packed, int64_t bits, int64_t size) {
  const auto call = quanta::qkernels::prepare_unpack(packed, bits, size, packed.is_cpu(), "CPU");
  if (call.rows == 0) {
    return call.codes;
  }
  const auto* in_ptr = call.packed.const_data_ptr<uint8_t>();
  auto* out_ptr = call.codes.mutable_data_ptr<uint8_t>();
  const int64_t grain_rows = std::max<int64_t>(1, kGrainBytes / size);
  torch::stable::parallel_for(0, call.rows, grain_rows, [&](int64_t begin, int64_t end) {
    quanta::qkernels::unpack_rows_cpu(in_ptr, out_ptr, begin, end, size, static_cast<int>(bits));
  });
  return call.codes;
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(quanta, CPU, m) {
  m.impl("unpack", TORCH_BOX(&unpack_cpu));
}
