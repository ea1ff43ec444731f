// Torch-free CPU kernels of the linear ops: for the weight-only ones (quanta::linear_symmetric and
// quanta::linear_affine) a decode kernel for a few activation rows and a weight dequantizer for
// the prefill path (dequantize, then a dense matmul); for int8 activations (quanta::linear_int8
// and quanta::quantize_symmetric) the activation quantizer and the scaling of the int32 product.
#pragma once

#include <cstdint>

namespace quanta::qkernels::cpu {

// How one weight code is stored. Symmetric formats hold one byte per code; affine ones hold
// unsigned codes packed low bits first (the layout of quanta::pack); kLut4 codes are packed as
// kUInt4 and stand for the values of a table (nf4, fp4, MXFP4, NVFP4).
enum class WeightFormat : int { kInt8, kFloat8E4M3, kFloat8E5M2, kUInt4, kUInt2, kLut4 };

constexpr int weight_bits(WeightFormat format) {
  return format == WeightFormat::kUInt4 || format == WeightFormat::kLut4 ? 4
      : format == WeightFormat::kUInt2                                   ? 2
                                                                         : 8;
}

// Scales, zero points and biases are read as stored, so that a call converts none of them.
// kFloat8E8M0 is 2^(e - 127), 0xFF NaN (the shared scale of the microscaling formats).
enum class ParamType : int { kFloat32, kBFloat16, kFloat16, kUInt8, kFloat8E4M3, kFloat8E8M0 };

// A flat array of such parameters; data is nullptr for "none" (a zero point or bias of 0).
struct Params {
  const void* data;
  ParamType type;
};

// A quantized weight [n, k]: value = (code - zero) * scale, or table[code] * scale for kLut4, with
// one scale (and zero) per group of group_size codes along k. Symmetric weights have one group
// per row (or groups: quanta::linear_grouped) and no zero.
struct WeightView {
  WeightFormat format;
  const uint8_t* codes;  // [n, row_bytes]
  int64_t n;
  int64_t k;
  int64_t row_bytes;
  int64_t group_size;   // divides k
  Params scale;         // [n, k / group_size]
  Params zero;          // [n, k / group_size], or none
  const float* table = nullptr;  // [16]: the value of each kLut4 code
};

// The parameters from element i on.
inline Params params_from(const Params& params, int64_t i) {
  if (params.data == nullptr) {
    return params;
  }
  const int64_t bytes = params.type == ParamType::kFloat32 ? 4
      : params.type == ParamType::kBFloat16 || params.type == ParamType::kFloat16 ? 2
                                                                                  : 1;
  return {static_cast<const char*>(params.data) + i * bytes, params.type};
}

// Rows [n0, n0 + rows) of a weight, as a weight of their own.
inline WeightView weight_rows(const WeightView& view, int64_t n0, int64_t rows) {
  const int64_t groups = view.k / view.group_size;
  WeightView block = view;
  block.codes += n0 * view.row_bytes;
  block.scale = params_from(view.scale, n0 * groups);
  block.zero = params_from(view.zero, n0 * groups);
  block.n = rows;
  return block;
}

// Where a result goes: float32, or the bits of a 16-bit float format.
enum class OutputDtype : int { kFloat32, kBFloat16, kFloat16 };

// out[m, n] = sum_k x[m, k] * weight[n, k] + bias[n], accumulated in fp32 and stored as
// out_dtype, for m rows and the columns [n_begin, n_end); every weight row is read once.
struct DecodeProblem {
  WeightView weight;
  const float* x;           // [m, k], in lookup order when lookup is set
  const float* group_sums;  // [m, k / group_size]: sums of x per group (read when zero is set)
  int64_t m;
  Params bias;              // [n], or none
  void* out;                // [m, n]
  OutputDtype out_dtype;
  // 2- and 4-bit weights with 16-lane vectors (AVX-512), groups of a multiple of lookup_chunk():
  // the codes are looked up in a table of each group's values. x is then given with each chunk of
  // lookup_chunk() values as its values j, j + per, j + 2 per, ... for j = 0 .. per - 1 (per =
  // 8 / bits, the codes of a byte), the order of the lookups; group_sums is not read.
  bool lookup;
};

// Codes of 16 bytes: the step of the lookup decode.
constexpr int64_t lookup_chunk(WeightFormat format) {
  return 16 * (8 / weight_bits(format));
}

// The decode problem for bfloat16 activations and 4-bit weights whose groups are multiples of 64
// codes, on AVX512-BF16: x holds bfloat16 bits, each 64-code chunk of a row stored as its 32
// even-index values, then its 32 odd-index ones (the order the kernel unpacks nibbles in).
struct Bf16DecodeProblem {
  WeightView weight;        // kUInt4 with zero, or kLut4
  const uint16_t* x;        // [m, k], chunks deinterleaved
  const float* group_sums;  // [m, k / group_size] (kUInt4)
  int64_t m;
  Params bias;              // [n], or none
  void* out;                // [m, n]
  OutputDtype out_dtype;
};


// int8 activations times int8 weights for a few rows (quanta::linear_int8 on AVX512-VNNI):
// acc[r, j] = sum_k x[r, k] * codes[j, k], exact in int32. x is given as x + 128 (unsigned
// bytes): vpdpbusd multiplies unsigned by signed bytes, and 128 * sum_k codes[j, k] is taken out.
struct Int8DecodeProblem {
  const uint8_t* x;      // [m, k]: the int8 activations + 128
  const int8_t* codes;   // [n, k]
  int64_t m;
  int64_t k;
  int64_t n;
  int32_t* acc;          // [m, n]
};

// The element type of the activations that the int8 quantizer reads.
enum class InputDtype : int { kFloat32, kBFloat16 };

// The int32 result of an int8 product and what scales it (quanta::linear_int8):
// out[i, j] = acc(i, j) * row_scale[i] * scale[j] + bias[j], in fp32, in that order. acc(i, j)
// is acc[i, j] ([m, n]), or acc[j, i] for a product computed transposed ([n, m]: aten::_int_mm
// with the weight as its first operand, which spares oneDNN a reordered copy of the weight).
struct Int32Product {
  const int32_t* acc;
  bool transposed;
  int64_t m;
  const float* row_scale;   // [m], or a single value when !per_row
  bool per_row;
  const float* scale;       // [n]
  const float* bias;        // [n], or nullptr
  int64_t n;
};

// One implementation of each kernel per instruction set (csrc/cpu/linear_kernels_<isa>.cpp).
struct LinearKernels {
  void (*decode)(const DecodeProblem& problem, int64_t n_begin, int64_t n_end);
  void (*dequantize)(
      const WeightView& weight, OutputDtype dtype, void* out, int64_t n_begin, int64_t n_end);
  // codes[r, :] = x[r, :] / scale[r] rounded half to even and clamped to int8 (NaN to 0), for
  // the rows [begin, end) of `width` elements.
  void (*quantize_int8)(
      const void* x, InputDtype dtype, const float* scale, int8_t* codes, int64_t width,
      int64_t begin, int64_t end);
  // Rows [begin, end) of an Int32Product, stored as dtype.
  void (*scale_int32)(const Int32Product& product, OutputDtype dtype, void* out, int64_t begin,
                      int64_t end);
};

namespace portable {
extern const LinearKernels kLinearKernels;
}
namespace avx2 {
extern const LinearKernels kLinearKernels;
}
namespace avx512 {
extern const LinearKernels kLinearKernels;
}
namespace avx512_bf16 {
extern const LinearKernels kLinearKernels;
void decode_4bit(const Bf16DecodeProblem& problem, int64_t n_begin, int64_t n_end);
void decode_int8_product(const Int8DecodeProblem& problem, int64_t n_begin, int64_t n_end);
}

// The prefill product of bfloat16 activations on AMX-BF16 (linear_kernels_amx.cpp):
// out[m, n] = sum_k x[m, k] * weight[n, k], fp32 accumulation, stored as bfloat16.
struct Bf16Prefill {
  WeightView weight;
  int64_t m;
  int64_t k_steps;      // ceil(weight.k / 32): x and the dequantized rows padded with zeros
  int64_t panel_rows;   // rows of x multiplied per dequantized weight block: a multiple of 32
  int64_t chunk_steps;  // steps of k per dequantized block: all, or whole groups of the weight
  uint16_t* packed_x;   // [ceil(m / 32) * 2][k_steps][16][32]: x packed by pack_x
  uint16_t* out;        // [m, n]
};

namespace amx {
// The 16-row blocks [block_begin, block_end) of x [m, k] (bfloat16 bits) into p.packed_x.
void pack_x(const Bf16Prefill& p, const uint16_t* x, int64_t block_begin, int64_t block_end);
// The output columns of the 32-row weight blocks [block_begin, block_end).
void prefill(const Bf16Prefill& p, int64_t block_begin, int64_t block_end);
}  // namespace amx

enum class Isa : int;
// The kernels of an instruction set (see cpu_isa.h).
const LinearKernels& linear_kernels(Isa isa);

}  // namespace quanta::qkernels::cpu
