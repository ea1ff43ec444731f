// quanta::linear_symmetric, quanta::linear_affine and quanta::linear_int8 on the CPU: the
// stable-ABI binding of the kernels of linear_kernels_impl.h, and the int8 x int8 product.
//
// Up to kDecodeMaxRows activation rows take the decode kernel (weights streamed once, decoded in
// registers, fp32 accumulation). More rows take the prefill path: the weight is dequantized to
// the activation dtype by the native dequantizer and multiplied by aten::linear (oneDNN, AMX where
// present). Inputs no native path covers (float64 activations, fnuz float8 codes, empty shapes)
// go through the reference ops, so every call gives the documented result.

#include <algorithm>
#include <array>
#include <numeric>
#include <optional>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "linear_checks.h"
#include "stable_helpers.h"
#include "qkernels/cpu_isa.h"
#include "qkernels/linear_cpu.h"

namespace {

using quanta::qkernels::cpu::Bf16DecodeProblem;
using quanta::qkernels::cpu::DecodeProblem;
using quanta::qkernels::cpu::Isa;
using quanta::qkernels::cpu::LinearKernels;
using quanta::qkernels::cpu::OutputDtype;
using quanta::qkernels::cpu::ParamType;
using quanta::qkernels::cpu::Params;
using quanta::qkernels::cpu::WeightFormat;
using quanta::qkernels::cpu::WeightView;
using quanta::qkernels::cpu::Int32Product;
using quanta::qkernels::cpu::box;
using quanta::qkernels::cpu::call_op;
using quanta::qkernels::cpu::convert;
using quanta::qkernels::cpu::float32_contiguous;
using quanta::qkernels::cpu::linear_kernels;
using quanta::qkernels::cpu::weight_rows;
using torch::headeronly::ScalarType;
using torch::stable::Tensor;

constexpr int64_t kDecodeMaxRows = 16;
// Minimum weight bytes per parallel task: smaller layers run on one thread.
constexpr int64_t kGrainBytes = 1 << 15;
// Bytes of dequantized weight per block of the prefill path: large enough that aten::mm runs at
// full speed (measured: 1 MiB blocks cost ~15% more than 8 MiB ones on 512 x 4096 x 4096).
constexpr int64_t kPrefillBlockBytes = 1 << 23;
// Bytes of the packed activations of one panel of the AMX prefill: they stay in the level-2
// cache while every weight block is multiplied by them. Panels of 128 rows dequantize the weight
// 4 times for 512 rows, which costs under a third of the products (measured, 512 x 4096 x 4096).
constexpr int64_t kAmxPanelBytes = 1 << 20;
constexpr int64_t kAmxPanelRows = 128;

std::optional<Tensor> bias_as(const std::optional<Tensor>& bias, ScalarType dtype) {
  return bias.has_value() ? std::optional<Tensor>(torch::stable::to(*bias, dtype)) : std::nullopt;
}

// A weight the native kernels read, with the tensors that own its memory.
struct NativeWeight {
  WeightView view;
  Tensor codes;
  Tensor scale;
  std::optional<Tensor> zero;
};

std::optional<OutputDtype> output_dtype(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Float: return OutputDtype::kFloat32;
    case ScalarType::BFloat16: return OutputDtype::kBFloat16;
    case ScalarType::Half: return OutputDtype::kFloat16;
    default: return std::nullopt;
  }
}

std::optional<ParamType> param_type(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Float: return ParamType::kFloat32;
    case ScalarType::BFloat16: return ParamType::kBFloat16;
    case ScalarType::Half: return ParamType::kFloat16;
    case ScalarType::Byte: return ParamType::kUInt8;
    default: return std::nullopt;
  }
}

Tensor as_contiguous(const Tensor& t) {
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

// t as the kernels read it: contiguous, in its own dtype when they read that (float64 becomes
// float32), so that a call converts no scale, zero point or bias.
Tensor param_tensor(const Tensor& t) {
  const Tensor src = as_contiguous(t);
  return param_type(src.scalar_type()).has_value() ? src
                                                   : torch::stable::to(src, ScalarType::Float);
}

Params params_of(const std::optional<Tensor>& t) {
  if (!t.has_value()) {
    return {nullptr, ParamType::kFloat32};
  }
  return {t->const_data_ptr(), *param_type(t->scalar_type())};
}

int64_t grain_rows(int64_t row_bytes) {
  return std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(1, row_bytes));
}

// The activations of the decode kernels, prepared on the calling thread into one scratch buffer:
// x as the kernel reads it (float32, or bfloat16 in the order of decode_uint4), then the sums of
// each row over each group (the zero-point term), when the weight has a zero point.
struct DecodeInput {
  Tensor scratch;
  const void* x;
  const float* group_sums;
};

// out[r, g] = sum of x[r, g * group_size .. (g + 1) * group_size), summed in float32 in order.
template <class T>
void sum_groups(const T* x, int64_t m, int64_t k, int64_t group_size, float* out) {
  for (int64_t i = 0; i < m * (k / group_size); ++i) {
    float total = 0.0f;
    for (int64_t j = 0; j < group_size; ++j) {
      total += static_cast<float>(x[i * group_size + j]);
    }
    out[i] = total;
  }
}

// count elements of x, in chunks of lanes * per: element per * i + j of a chunk goes to
// lanes * j + i (the order in which the decode kernels unpack codes), as value(element).
template <class In, class Out, class Value>
void deinterleave(const In* x, int64_t count, int64_t lanes, int64_t per, Out* out,
                  const Value& value) {
  for (int64_t chunk = 0; chunk < count; chunk += lanes * per) {
    for (int64_t j = 0; j < per; ++j) {
      for (int64_t i = 0; i < lanes; ++i) {
        out[chunk + lanes * j + i] = value(x[chunk + per * i + j]);
      }
    }
  }
}

// x [m, k] of any float dtype for the decode kernels: float32, converted into scratch unless it
// is, and in lookup order (DecodeProblem::lookup) when lookup is set; else with the group sums.
template <class T>
DecodeInput float32_decode_input(
    const Tensor& input, int64_t m, const WeightView& view, bool lookup) {
  const int64_t k = view.k;
  const bool copy_x = lookup || !std::is_same_v<T, float>;
  const int64_t sums = view.zero.data != nullptr && !lookup ? m * (k / view.group_size) : 0;
  const int64_t floats = (copy_x ? m * k : 0) + sums;
  DecodeInput in{input, input.const_data_ptr(), nullptr};
  if (floats == 0) {
    return in;
  }
  in.scratch = torch::stable::new_empty(input, {floats}, ScalarType::Float);
  float* buffer = in.scratch.mutable_data_ptr<float>();
  const T* x = static_cast<const T*>(input.const_data_ptr());
  if (lookup) {
    const int64_t per_byte = 8 / quanta::qkernels::cpu::weight_bits(view.format);
    deinterleave(x, m * k, 16, per_byte, buffer, [](T v) { return static_cast<float>(v); });
  } else if (copy_x) {
    convert<T, float>(x, buffer, m * k);
  }
  if (copy_x) {
    in.x = buffer;
    buffer += m * k;
  }
  if (sums > 0) {
    sum_groups(x, m, k, view.group_size, buffer);
    in.group_sums = buffer;
  }
  return in;
}

DecodeInput decode_input(const Tensor& input, int64_t m, const WeightView& view, bool lookup) {
  switch (input.scalar_type()) {
    case ScalarType::BFloat16: return float32_decode_input<c10::BFloat16>(input, m, view, lookup);
    case ScalarType::Half: return float32_decode_input<c10::Half>(input, m, view, lookup);
    default: return float32_decode_input<float>(input, m, view, lookup);
  }
}

// Whether the decode kernels of isa look 2- and 4-bit codes up (DecodeProblem::lookup): those
// of AVX-512, for groups of whole lookup chunks.
bool lookup_decode(Isa isa, const WeightView& view) {
  const bool packed = view.format == WeightFormat::kUInt4 || view.format == WeightFormat::kUInt2;
  return isa >= Isa::kAvx512 && packed &&
      view.group_size % quanta::qkernels::cpu::lookup_chunk(view.format) == 0;
}

// x [m, k] in bfloat16 for decode_uint4: each 64-value chunk of a row as its 32 even-index
// values, then its 32 odd-index ones; then the group sums.
DecodeInput bf16_decode_input(const Tensor& input, int64_t m, const WeightView& view) {
  const int64_t k = view.k;
  const int64_t groups = k / view.group_size;
  Tensor scratch = torch::stable::new_empty(input, {m * k / 2 + m * groups}, ScalarType::Float);
  uint16_t* ordered = static_cast<uint16_t*>(scratch.mutable_data_ptr());
  float* sums = scratch.mutable_data_ptr<float>() + m * k / 2;
  const uint16_t* bits = static_cast<const uint16_t*>(input.const_data_ptr());
  deinterleave(bits, m * k, 32, 2, ordered, [](uint16_t v) { return v; });
  const auto* x = static_cast<const c10::BFloat16*>(input.const_data_ptr());
  sum_groups(x, m, k, view.group_size, sums);
  return {scratch, ordered, sums};
}

// The decode path, for a contiguous input of m <= kDecodeMaxRows rows of k (any leading shape):
// every weight row is read once and decoded in registers, products summed in float32, the result
// stored in the input's dtype, shaped out_sizes. The bfloat16 dot-product kernel serves bfloat16
// activations and 4-bit weights on AVX512-BF16; other 2- and 4-bit cases on AVX-512 look their
// codes up in a table of each group's values.
Tensor linear_decode(
    const Tensor& input, int64_t m, const WeightView& view, const Params& bias,
    const std::vector<int64_t>& out_sizes) {
  const OutputDtype out_dtype = *output_dtype(input.scalar_type());
  Tensor out = torch::stable::new_empty(input, out_sizes);
  void* out_data = out.mutable_data_ptr();
  const int64_t grain = grain_rows(view.row_bytes * m);
  const Isa isa = quanta::qkernels::cpu::active_isa();
#ifdef QKERNELS_X86_KERNELS
  if (isa >= Isa::kAvx512Bf16 && input.scalar_type() == ScalarType::BFloat16 &&
      view.format == WeightFormat::kUInt4 && view.group_size % 64 == 0) {
    const DecodeInput in = bf16_decode_input(input, m, view);
    const Bf16DecodeProblem problem{
        view, static_cast<const uint16_t*>(in.x), in.group_sums, m, bias, out_data, out_dtype};
    torch::stable::parallel_for(0, view.n, grain, [&](int64_t begin, int64_t end) {
      quanta::qkernels::cpu::avx512_bf16::decode_uint4(problem, begin, end);
    });
    return out;
  }
#endif
  const bool lookup = lookup_decode(isa, view);
  const DecodeInput in = decode_input(input, m, view, lookup);
  const DecodeProblem problem{
      view, static_cast<const float*>(in.x), in.group_sums, m, bias, out_data, out_dtype, lookup};
  const LinearKernels& impl = linear_kernels(isa);
  torch::stable::parallel_for(0, view.n, grain, [&](int64_t begin, int64_t end) {
    impl.decode(problem, begin, end);
  });
  return out;
}

// The dequantize-then-aten::mm prefill, for input [m, k] with m > kDecodeMaxRows: the weight is
// dequantized a block of rows at a time (kPrefillBlockBytes) into one buffer, and each block is
// multiplied by aten::mm (oneDNN, AMX where present) into its columns of out = x @ weightᵀ. The
// whole float weight is never held, and a block is still in cache when aten::mm reads it.
Tensor dequantized_prefill(const Tensor& input2d, const WeightView& view) {
  const ScalarType dtype = input2d.scalar_type();
  const int64_t m = input2d.size(0);
  const int64_t k = view.k;
  const int64_t element_bytes = dtype == ScalarType::Float ? 4 : 2;
  const int64_t block_rows = std::max<int64_t>(16, kPrefillBlockBytes / (k * element_bytes));
  Tensor buffer = torch::stable::new_empty(input2d, {std::min(block_rows, view.n), k});
  Tensor block_out = torch::stable::new_empty(input2d, {m, std::min(block_rows, view.n)});
  Tensor out = torch::stable::new_empty(input2d, {m, view.n});
  const OutputDtype out_dtype = *output_dtype(dtype);
  const LinearKernels& impl = linear_kernels(quanta::qkernels::cpu::active_isa());
  void* buffer_ptr = buffer.mutable_data_ptr();
  for (int64_t n0 = 0; n0 < view.n; n0 += block_rows) {
    const int64_t rows = std::min(block_rows, view.n - n0);
    const WeightView block = weight_rows(view, n0, rows);
    const auto dequantize = [&](int64_t begin, int64_t end) {
      impl.dequantize(block, out_dtype, buffer_ptr, begin, end);
    };
    torch::stable::parallel_for(0, rows, grain_rows(view.row_bytes), dequantize);
    // aten::mm into a contiguous block (its fast path), then into the block's columns of out.
    if (rows < block_rows) {
      block_out = torch::stable::new_empty(input2d, {m, rows});
    }
    const Tensor weight = torch::stable::narrow(buffer, 0, 0, rows);
    const Tensor weight_t = torch::stable::transpose(weight, 0, 1);
    call_op<3>("aten::mm", "out", {box(input2d), box(weight_t), box(block_out)});
    Tensor out_columns = torch::stable::narrow(out, 1, n0, rows);
    torch::stable::copy_(out_columns, block_out);
  }
  return out;
}

#ifdef QKERNELS_X86_KERNELS
// How the AMX prefill takes x: panels of as many rows as fit kAmxPanelBytes packed (level-2
// cache) with all of k, or, when that is fewer than kAmxPanelRows rows, panels of kAmxPanelRows
// rows and k in chunks of chunk_steps steps of 32 values (whole groups of the weight). The weight
// is dequantized once per panel, so k is split rather than panels made smaller (measured on
// 512 x 11008 x 4096 bf16: int4 1.04-1.09x dense in 3 chunks, 1.57x in panels of 32 rows).
struct AmxPanels {
  int64_t rows;
  int64_t chunk_steps;
};

AmxPanels amx_panels(int64_t m, int64_t k, int64_t group_size) {
  const int64_t m_padded = (m + 31) / 32 * 32;
  const int64_t k_steps = (k + 31) / 32;
  const int64_t fit = kAmxPanelBytes / (k_steps * 64) / 32 * 32;
  if (fit >= std::min(m_padded, kAmxPanelRows)) {
    return {std::min(fit, m_padded), k_steps};
  }
  const int64_t rows = std::min(m_padded, kAmxPanelRows);
  // chunks of whole groups: a multiple of lcm(32, group_size) values, unless one group a row
  const int64_t unit = group_size == k ? 1 : std::lcm<int64_t>(32, group_size) / 32;
  const int64_t chunk_steps = std::max(unit, kAmxPanelBytes / (rows * 64) / unit * unit);
  return {rows, std::min(chunk_steps, k_steps)};
}

// The AMX prefill (linear_kernels_amx.cpp): x packed into tiles, then each thread's 32-row weight
// blocks dequantized and multiplied panel by panel.
Tensor amx_prefill(const Tensor& input2d, const WeightView& view) {
  const int64_t m = input2d.size(0);
  const int64_t k_steps = (view.k + 31) / 32;
  const int64_t x_blocks = (m + 31) / 32 * 2;
  const AmxPanels panels = amx_panels(m, view.k, view.group_size);
  Tensor packed = torch::stable::new_empty(input2d, {x_blocks * k_steps * 512});
  Tensor out = torch::stable::new_empty(input2d, {m, view.n});
  const quanta::qkernels::cpu::Bf16Prefill problem{
      view, m, k_steps, panels.rows, panels.chunk_steps,
      static_cast<uint16_t*>(packed.mutable_data_ptr()),
      static_cast<uint16_t*>(out.mutable_data_ptr())};
  const uint16_t* x = static_cast<const uint16_t*>(input2d.const_data_ptr());
  torch::stable::parallel_for(0, x_blocks, 1, [&](int64_t begin, int64_t end) {
    quanta::qkernels::cpu::amx::pack_x(problem, x, begin, end);
  });
  torch::stable::parallel_for(0, (view.n + 31) / 32, 1, [&](int64_t begin, int64_t end) {
    quanta::qkernels::cpu::amx::prefill(problem, begin, end);
  });
  return out;
}
#endif

// The prefill path, for input [m, k] with m > kDecodeMaxRows: the AMX prefill for bfloat16
// activations where the processor has it, else dequantized_prefill; then the bias.
Tensor linear_prefill(
    const Tensor& input2d, const WeightView& view, const std::optional<Tensor>& bias) {
  const ScalarType dtype = input2d.scalar_type();
  std::optional<Tensor> out;
#ifdef QKERNELS_X86_KERNELS
  if (quanta::qkernels::cpu::active_isa() == Isa::kAmx && dtype == ScalarType::BFloat16) {
    out = amx_prefill(input2d, view);
  }
#endif
  if (!out.has_value()) {
    out = dequantized_prefill(input2d, view);
  }
  // out - (-1) * bias: the stable ABI's one elementwise add.
  if (!bias.has_value()) {
    return *out;
  }
  return torch::stable::subtract(*out, torch::stable::to(*bias, dtype), -1.0);
}

Tensor linear_native(
    const Tensor& input, const NativeWeight& w, const std::optional<Tensor>& bias) {
  const int64_t k = w.view.k;
  const int64_t m = input.numel() / k;
  std::vector<int64_t> out_sizes(input.sizes().begin(), input.sizes().end());
  out_sizes.back() = w.view.n;
  if (m > kDecodeMaxRows) {
    const Tensor input2d = as_contiguous(torch::stable::reshape(input, {m, k}));
    return torch::stable::reshape(linear_prefill(input2d, w.view, bias), out_sizes);
  }
  const std::optional<Tensor> bias_param =
      bias.has_value() ? std::optional<Tensor>(param_tensor(*bias)) : std::nullopt;
  return linear_decode(as_contiguous(input), m, w.view, params_of(bias_param), out_sizes);
}

// The native kernels cover float32/bfloat16/float16 activations and a non-empty problem.
bool native_input(const Tensor& input, int64_t n, int64_t k) {
  return output_dtype(input.scalar_type()).has_value() && input.numel() > 0 && n > 0 && k > 0;
}

std::optional<WeightFormat> symmetric_format(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Char: return WeightFormat::kInt8;
    case ScalarType::Float8_e4m3fn: return WeightFormat::kFloat8E4M3;
    case ScalarType::Float8_e5m2: return WeightFormat::kFloat8E5M2;
    default: return std::nullopt;
  }
}

Tensor linear_symmetric_cpu(
    const Tensor& input, const Tensor& codes, const Tensor& scale, std::optional<Tensor> bias) {
  quanta::qkernels::cpu::check_linear_symmetric(input, codes, scale, bias);
  const int64_t n = codes.size(0);
  const int64_t k = codes.size(1);
  const auto format = symmetric_format(codes.scalar_type());
  if (!format.has_value() || !native_input(input, n, k)) {
    const Tensor weight = call_op<3>(
        "quanta::dequantize_symmetric", "", {box(codes), box(scale), box(input.scalar_type())});
    return call_op<3>(
        "aten::linear", "", {box(input), box(weight), box(bias_as(bias, input.scalar_type()))});
  }
  NativeWeight w{{}, as_contiguous(codes), param_tensor(scale), std::nullopt};
  w.view = {*format, static_cast<const uint8_t*>(w.codes.const_data_ptr()), n, k, k, k,
            params_of(w.scale), params_of(std::nullopt)};
  return linear_native(input, w, bias);
}

Tensor linear_affine_cpu(
    const Tensor& input, const Tensor& packed, const Tensor& scale, const Tensor& zero_point,
    int64_t bits, int64_t group_size, std::optional<Tensor> bias) {
  quanta::qkernels::cpu::check_linear_affine(
      input, packed, scale, zero_point, bits, group_size, bias);
  const int64_t n = packed.size(0);
  const int64_t k = input.size(input.dim() - 1);
  if (!native_input(input, n, k)) {
    const Tensor codes = call_op<3>("quanta::unpack", "", {box(packed), box(bits), box(k)});
    const Tensor weight = call_op<5>(
        "quanta::dequantize_affine", "",
        {box(codes), box(scale), box(zero_point), box(group_size), box(input.scalar_type())});
    return call_op<3>(
        "aten::linear", "", {box(input), box(weight), box(bias_as(bias, input.scalar_type()))});
  }
  NativeWeight w{{}, as_contiguous(packed), param_tensor(scale), param_tensor(zero_point)};
  const WeightFormat format = bits == 4 ? WeightFormat::kUInt4 : WeightFormat::kUInt2;
  w.view = {format, w.codes.const_data_ptr<uint8_t>(), n, k, packed.size(1), group_size,
            params_of(w.scale), params_of(w.zero)};
  return linear_native(input, w, bias);
}

// The exact int32 product of int8 input2d [m, k] and codes [n, k]: up to kDecodeMaxRows rows on
// AVX512-VNNI by the decode kernel (each weight row streamed once), as acc [m, n]; else by
// aten::_int_mm as codes @ input2dᵀ, acc [n, m] (transposed): with the weight as the first
// operand oneDNN reads it as stored, where as the second it makes a reordered copy every call.
struct Int8Product {
  Tensor acc;
  bool transposed;
};

Int8Product int8_product(const Tensor& input2d, const Tensor& codes) {
  const int64_t m = input2d.size(0);
  const int64_t k = input2d.size(1);
  const int64_t n = codes.size(0);
#ifdef QKERNELS_X86_KERNELS
  if (m <= kDecodeMaxRows &&
      quanta::qkernels::cpu::active_isa() >= quanta::qkernels::cpu::Isa::kAvx512Bf16) {
    Tensor shifted = torch::stable::new_empty(input2d, {m, k}, ScalarType::Byte);
    const int8_t* x = input2d.const_data_ptr<int8_t>();
    uint8_t* x_u8 = shifted.mutable_data_ptr<uint8_t>();
    for (int64_t i = 0; i < m * k; ++i) {
      x_u8[i] = static_cast<uint8_t>(x[i]) ^ 0x80;  // x + 128
    }
    Tensor acc = torch::stable::new_empty(input2d, {m, n}, ScalarType::Int);
    const quanta::qkernels::cpu::Int8DecodeProblem problem{
        x_u8, codes.const_data_ptr<int8_t>(), m, k, n, acc.mutable_data_ptr<int32_t>()};
    torch::stable::parallel_for(0, n, grain_rows(k * m), [&](int64_t begin, int64_t end) {
      quanta::qkernels::cpu::avx512_bf16::decode_int8_product(problem, begin, end);
    });
    return {acc, false};
  }
#endif
  const Tensor input_t = torch::stable::transpose(input2d, 0, 1);
  return {call_op<2>("aten::_int_mm", "", {box(codes), box(input_t)}), true};
}

// int8 activations times int8 weights: the products summed exactly by aten::_int_mm (oneDNN:
// AMX or AVX-512 VNNI where present), then scaled in one vectorized pass over the int32 result
// (scale_int32; the kernels are built without FMA contraction, so they round like the reference).
Tensor linear_int8_cpu(
    const Tensor& input, const Tensor& input_scale, const Tensor& codes, const Tensor& scale,
    std::optional<Tensor> bias, ScalarType dtype) {
  quanta::qkernels::cpu::check_linear_int8(input, input_scale, codes, scale, bias, dtype);
  const int64_t n = codes.size(0);
  const int64_t k = codes.size(1);
  std::vector<int64_t> out_sizes(input.sizes().begin(), input.sizes().end());
  out_sizes.back() = n;
  int64_t m = 1;  // rows of input: the product of its leading sizes (K may be 0)
  for (size_t d = 0; d + 1 < out_sizes.size(); ++d) {
    m *= out_sizes[d];
  }
  if (m == 0 || n == 0) {
    return torch::stable::new_empty(input, out_sizes, dtype);
  }
  const Tensor input2d = torch::stable::contiguous(torch::stable::reshape(input, {m, k}));
  const Int8Product product32 =
      k == 0 ? Int8Product{torch::stable::new_zeros(input, {m, n}, ScalarType::Int), false}
             : int8_product(input2d, as_contiguous(codes));
  const Tensor row_scale = float32_contiguous(input_scale);
  const Tensor scale32 = float32_contiguous(scale);
  const std::optional<Tensor> bias32 =
      bias.has_value() ? std::optional<Tensor>(float32_contiguous(*bias)) : std::nullopt;
  const Int32Product product{
      product32.acc.const_data_ptr<int32_t>(), product32.transposed, m,
      row_scale.const_data_ptr<float>(), row_scale.numel() > 1,
      scale32.const_data_ptr<float>(),
      bias32.has_value() ? bias32->const_data_ptr<float>() : nullptr, n};
  // float64 is the float32 result widened, as in the reference.
  const ScalarType stored = dtype == ScalarType::Double ? ScalarType::Float : dtype;
  Tensor out = torch::stable::new_empty(input, out_sizes, stored);
  const LinearKernels& impl = linear_kernels(quanta::qkernels::cpu::active_isa());
  void* data = out.mutable_data_ptr();
  torch::stable::parallel_for(0, m, grain_rows(n * 4), [&](int64_t begin, int64_t end) {
    impl.scale_int32(product, *output_dtype(stored), data, begin, end);
  });
  return stored == dtype ? out : torch::stable::to(out, dtype);
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(quanta, CPU, m) {
  m.impl("linear_symmetric", TORCH_BOX(&linear_symmetric_cpu));
  m.impl("linear_affine", TORCH_BOX(&linear_affine_cpu));
  m.impl("linear_int8", TORCH_BOX(&linear_int8_cpu));
}
