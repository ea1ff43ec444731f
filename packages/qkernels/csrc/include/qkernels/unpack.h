// Torch-free unpacking of sub-byte codes (the layout of quanta::pack, docs/ops.md).
#pragma once

#include <cstdint>

namespace quanta::qkernels {

// Bytes one row of `size` codes of `bits` bits occupies: ceil(size * bits / 8).
constexpr int64_t packed_width(int64_t size, int64_t bits) {
  return (size * bits + 7) / 8;
}

// Unpacks rows [row_begin, row_end) of a contiguous [rows, packed_width(size, bits)] uint8 array
// into a contiguous [rows, size] uint8 array. Code j of a row sits in byte j / (8 / bits) at bit
// (j % (8 / bits)) * bits, low bits first. bits must be 2 or 4 (checked by the caller).
void unpack_rows_cpu(
    const uint8_t* packed, uint8_t* codes, int64_t row_begin, int64_t row_end, int64_t size,
    int bits);

#ifdef __CUDACC__
// Same layout on a CUDA device, on `stream`; rows = all rows. Returns the launch's cudaError_t.
int launch_unpack_cuda(
    const uint8_t* packed, uint8_t* codes, int64_t rows, int64_t size, int bits, void* stream);
#endif

}  // namespace quanta::qkernels
