// Torch-free planning of the CPU linear ops: which kernel serves a call (from its sizes, dtype and
// the instruction set), the scratch memory it needs, and the preparation of that scratch. The
// binding (csrc/cpu/linear.cpp) checks the arguments, allocates what a plan asks for and runs the
// kernels of linear_cpu.h over torch's thread pool.
#pragma once

#include <cstdint>

#include "qkernels/cpu_isa.h"
#include "qkernels/linear_cpu.h"

namespace quanta::qkernels::cpu {

// Up to this many activation rows take the decode kernels (weights streamed once, decoded in
// registers, fp32 accumulation); more take the prefill path.
constexpr int64_t kDecodeMaxRows = 16;

// Rows per parallel task, for rows of row_bytes bytes: small layers run on one thread.
int64_t grain_rows(int64_t row_bytes);

// ---- decode: x [m, k] with m <= kDecodeMaxRows, in dtype (the output's too) -------------------

enum class DecodeKernel : int {
  kFloat32,    // LinearKernels::decode, x in float32
  kLookup,     // LinearKernels::decode with DecodeProblem::lookup: x in lookup order
  kBf16FourBit,  // avx512_bf16::decode_4bit: bfloat16 x, 4-bit weights, groups of 64k codes
};

struct DecodePlan {
  DecodeKernel kernel;
  int64_t scratch_floats;  // float32 elements of scratch the inputs need; 0: x is read as given
};

// The bfloat16 dot-product kernel serves bfloat16 activations and 4-bit weights (uint4 and lut4)
// on AVX512-BF16;
// other 2- and 4-bit cases on AVX-512 look their codes up in a table of each group's values.
DecodePlan plan_decode(Isa isa, OutputDtype dtype, int64_t m, const WeightView& weight);

// The activations of a decode kernel: x as it reads it, and the sums of each row of x over each
// group (the zero-point term), or nullptr when the kernel does not read them.
struct DecodeInput {
  const void* x;
  const float* group_sums;
};

// x as plan.kernel reads it, written into scratch (plan.scratch_floats floats) on the calling
// thread: converted to float32, reordered, and the group sums after it, as the kernel needs.
DecodeInput prepare_decode_input(
    const DecodePlan& plan, const void* x, OutputDtype dtype, int64_t m, const WeightView& weight,
    void* scratch);

// Whether the decode kernel can serve the prepared x: those that read group sums take the zero
// point out of the products (sum x * (q - z) = sum x * q - z * sum x), which turns an infinite
// x, or sums that overflow, into inf - inf = NaN where the reference's products give +-inf. So
// only when every group sum is finite; otherwise the call takes the prefill path, whose products
// are per code, as the reference's.
bool decode_serves(const DecodeInput& in, int64_t m, const WeightView& weight);

// ---- prefill: x [m, k] with m > kDecodeMaxRows ------------------------------------------------

enum class PrefillKernel : int {
  kDequantizeMatmul,  // blocks of weight rows dequantized (LinearKernels::dequantize), then aten::mm
  kAmx,               // amx::pack_x, then amx::prefill (bfloat16 activations on AMX)
};

PrefillKernel plan_prefill(Isa isa, OutputDtype dtype);

// Weight rows dequantized per block of the kDequantizeMatmul prefill.
int64_t prefill_block_rows(int64_t k, OutputDtype dtype);

// The sizes of an AMX prefill: x packed in 16-row blocks of k_steps tiles, taken in panels of
// panel_rows rows and chunk_steps steps of k (see Bf16Prefill), against 32-row weight blocks.
struct AmxPlan {
  int64_t k_steps;
  int64_t x_blocks;
  int64_t weight_blocks;
  int64_t panel_rows;
  int64_t chunk_steps;
  int64_t packed_values;  // bfloat16 values of the packed x
};

AmxPlan plan_amx(int64_t m, const WeightView& weight);

// ---- int8 x int8 ------------------------------------------------------------------------------

// Whether the product of m int8 rows runs avx512_bf16::decode_int8_product (each weight row
// streamed once) rather than aten::_int_mm.
bool int8_decode(Isa isa, int64_t m);

// Whether the int32 product of int8 operands is summed in float64 (aten::mm) rather than by
// aten::_int_mm: on processors without int8 dot products _int_mm runs a generic loop (W8A8
// 512 x 576 x 1536 on an AVX2 AMD EPYC, 2 threads: 234 ms through _int_mm, 20 ms in float64;
// bench/RESULTS.md). Exact: every partial sum of int8 products is an integer far below 2^53.
bool int8_product_in_float64(Isa isa);

// out[i] = x[i] + 128 as an unsigned byte (Int8DecodeProblem::x).
void shift_int8(const int8_t* x, uint8_t* out, int64_t count);

}  // namespace quanta::qkernels::cpu
