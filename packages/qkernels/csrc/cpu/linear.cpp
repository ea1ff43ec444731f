// quanta::linear_symmetric, quanta::linear_affine and quanta::linear_int8 on the CPU: the
// stable-ABI binding of the kernels of linear_cpu.h. Each op checks its arguments (checks.h),
// asks the torch-free planner (linear_plan.h) which kernel serves the call and what scratch it
// needs, allocates that, and runs the kernel over torch's thread pool.
//
// Up to kDecodeMaxRows activation rows take the decode kernel (weights streamed once, decoded in
// registers, fp32 accumulation), unless it cannot serve them (decode_serves). More rows take the
// prefill path: the AMX prefill, or the weight
// dequantized to the activation dtype by the native dequantizer and multiplied by aten::mm
// (oneDNN). Inputs no native path covers (float64 activations, fnuz float8 codes, empty shapes)
// go through the reference ops, so every call gives the documented result.

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "checks.h"
#include "qkernels/cpu_isa.h"
#include "qkernels/linear_cpu.h"
#include "qkernels/linear_plan.h"
#include "stable_helpers.h"

namespace quanta::qkernels::cpu {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

std::optional<Tensor> bias_as(const std::optional<Tensor>& bias, ScalarType dtype) {
  return bias.has_value() ? std::optional<Tensor>(torch::stable::to(*bias, dtype)) : std::nullopt;
}

// A weight the native kernels read, with the tensors that own its memory.
struct NativeWeight {
  WeightView view;
  Tensor codes;
  Tensor scale;
  std::optional<Tensor> zero;
  std::optional<Tensor> table;
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
    case ScalarType::Float8_e4m3fn: return ParamType::kFloat8E4M3;
    case ScalarType::Float8_e8m0fnu: return ParamType::kFloat8E8M0;
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

// The decode path, for a contiguous input of m <= kDecodeMaxRows rows of k (any leading shape),
// the result stored in the input's dtype, shaped out_sizes (plan_decode chooses the kernel); none
// when the kernel cannot serve this x (decode_serves: infinite activations).
std::optional<Tensor> linear_decode(
    const Tensor& input, int64_t m, const WeightView& view, const Params& bias,
    const std::vector<int64_t>& out_sizes) {
  const OutputDtype dtype = *output_dtype(input.scalar_type());
  const Isa isa = active_isa();
  const DecodePlan plan = plan_decode(isa, dtype, m, view);
  Tensor out = torch::stable::new_empty(input, out_sizes);
  const Tensor scratch = plan.scratch_floats == 0
      ? input
      : torch::stable::new_empty(input, {plan.scratch_floats}, ScalarType::Float);
  const DecodeInput in = prepare_decode_input(
      plan, input.const_data_ptr(), dtype, m, view,
      plan.scratch_floats == 0 ? nullptr : scratch.mutable_data_ptr());
  if (!decode_serves(in, m, view)) {
    return std::nullopt;
  }
  void* out_data = out.mutable_data_ptr();
  const int64_t grain = grain_rows(view.row_bytes * m);
#ifdef QKERNELS_X86_KERNELS
  if (plan.kernel == DecodeKernel::kBf16FourBit) {
    const Bf16DecodeProblem problem{
        view, static_cast<const uint16_t*>(in.x), in.group_sums, m, bias, out_data, dtype};
    torch::stable::parallel_for(0, view.n, grain, [&](int64_t begin, int64_t end) {
      avx512_bf16::decode_4bit(problem, begin, end);
    });
    return out;
  }
#endif
  const DecodeProblem problem{
      view, static_cast<const float*>(in.x), in.group_sums, m, bias, out_data, dtype,
      plan.kernel == DecodeKernel::kLookup};
  const LinearKernels& impl = linear_kernels(isa);
  torch::stable::parallel_for(0, view.n, grain, [&](int64_t begin, int64_t end) {
    impl.decode(problem, begin, end);
  });
  return out;
}

// The dequantize-then-aten::mm prefill, for input [m, k]: the weight is dequantized a block of
// rows at a time (prefill_block_rows) into one buffer, and each block is multiplied by aten::mm
// (oneDNN, AMX where present) into its columns of out = x @ weightᵀ. The whole float weight is
// never held, and a block is still in cache when aten::mm reads it.
Tensor dequantized_prefill(const Tensor& input2d, const WeightView& view) {
  const int64_t m = input2d.size(0);
  const OutputDtype dtype = *output_dtype(input2d.scalar_type());
  const int64_t block_rows = prefill_block_rows(view.k, dtype);
  Tensor buffer = torch::stable::new_empty(input2d, {std::min(block_rows, view.n), view.k});
  Tensor block_out = torch::stable::new_empty(input2d, {m, std::min(block_rows, view.n)});
  Tensor out = torch::stable::new_empty(input2d, {m, view.n});
  const LinearKernels& impl = linear_kernels(active_isa());
  void* buffer_ptr = buffer.mutable_data_ptr();
  for (int64_t n0 = 0; n0 < view.n; n0 += block_rows) {
    const int64_t rows = std::min(block_rows, view.n - n0);
    const WeightView block = weight_rows(view, n0, rows);
    const auto dequantize = [&](int64_t begin, int64_t end) {
      impl.dequantize(block, dtype, buffer_ptr, begin, end);
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
// The AMX prefill (linear_kernels_amx.cpp): x packed into tiles, then each thread's 32-row weight
// blocks dequantized and multiplied panel by panel (plan_amx).
Tensor amx_prefill(const Tensor& input2d, const WeightView& view) {
  const int64_t m = input2d.size(0);
  const AmxPlan plan = plan_amx(m, view);
  Tensor packed = torch::stable::new_empty(input2d, {plan.packed_values});
  Tensor out = torch::stable::new_empty(input2d, {m, view.n});
  const Bf16Prefill problem{
      view, m, plan.k_steps, plan.panel_rows, plan.chunk_steps,
      static_cast<uint16_t*>(packed.mutable_data_ptr()),
      static_cast<uint16_t*>(out.mutable_data_ptr())};
  const uint16_t* x = static_cast<const uint16_t*>(input2d.const_data_ptr());
  torch::stable::parallel_for(0, plan.x_blocks, 1, [&](int64_t begin, int64_t end) {
    amx::pack_x(problem, x, begin, end);
  });
  torch::stable::parallel_for(0, plan.weight_blocks, 1, [&](int64_t begin, int64_t end) {
    amx::prefill(problem, begin, end);
  });
  return out;
}
#endif

// The prefill path, for input [m, k] with m > kDecodeMaxRows or rows the decode kernel cannot
// serve (plan_prefill chooses the kernel); then the bias.
Tensor linear_prefill(
    const Tensor& input2d, const WeightView& view, const std::optional<Tensor>& bias) {
  const ScalarType dtype = input2d.scalar_type();
  std::optional<Tensor> out;
#ifdef QKERNELS_X86_KERNELS
  if (plan_prefill(active_isa(), *output_dtype(dtype)) == PrefillKernel::kAmx) {
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
  if (m <= kDecodeMaxRows) {
    const std::optional<Tensor> bias_param =
        bias.has_value() ? std::optional<Tensor>(param_tensor(*bias)) : std::nullopt;
    std::optional<Tensor> out =
        linear_decode(as_contiguous(input), m, w.view, params_of(bias_param), out_sizes);
    if (out.has_value()) {
      return *out;
    }
  }
  const Tensor input2d = as_contiguous(torch::stable::reshape(input, {m, k}));
  return torch::stable::reshape(linear_prefill(input2d, w.view, bias), out_sizes);
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
  check_linear_symmetric(input, codes, scale, bias);
  const int64_t n = codes.size(0);
  const int64_t k = codes.size(1);
  const auto format = symmetric_format(codes.scalar_type());
  if (!format.has_value() || !native_input(input, n, k)) {
    const Tensor weight = call_op<3>(
        "quanta::dequantize_symmetric", "", {box(codes), box(scale), box(input.scalar_type())});
    return call_op<3>(
        "aten::linear", "", {box(input), box(weight), box(bias_as(bias, input.scalar_type()))});
  }
  NativeWeight w{{}, as_contiguous(codes), param_tensor(scale), std::nullopt, std::nullopt};
  w.view = {*format, static_cast<const uint8_t*>(w.codes.const_data_ptr()), n, k, k, k,
            params_of(w.scale), params_of(std::nullopt)};
  return linear_native(input, w, bias);
}

Tensor linear_affine_cpu(
    const Tensor& input, const Tensor& packed, const Tensor& scale, const Tensor& zero_point,
    int64_t bits, int64_t group_size, std::optional<Tensor> bias) {
  check_linear_affine(
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
  NativeWeight w{
      {}, as_contiguous(packed), param_tensor(scale), param_tensor(zero_point), std::nullopt};
  const WeightFormat format = bits == 4 ? WeightFormat::kUInt4 : WeightFormat::kUInt2;
  w.view = {format, w.codes.const_data_ptr<uint8_t>(), n, k, packed.size(1), group_size,
            params_of(w.scale), params_of(w.zero)};
  return linear_native(input, w, bias);
}

Tensor linear_lut4_cpu(
    const Tensor& input, const Tensor& packed, const Tensor& table, const Tensor& scale,
    int64_t group_size, std::optional<Tensor> bias) {
  check_linear_lut4(input, packed, table, scale, group_size, bias);
  const int64_t n = packed.size(0);
  const int64_t k = input.size(input.dim() - 1);
  if (!native_input(input, n, k)) {
    const Tensor codes = call_op<3>("quanta::unpack", "", {box(packed), box(int64_t{4}), box(k)});
    const Tensor weight = call_op<5>(
        "quanta::dequantize_lut4", "",
        {box(codes), box(table), box(scale), box(group_size), box(input.scalar_type())});
    return call_op<3>(
        "aten::linear", "", {box(input), box(weight), box(bias_as(bias, input.scalar_type()))});
  }
  NativeWeight w{
      {}, as_contiguous(packed), param_tensor(scale), std::nullopt, as_contiguous(table)};
  w.view = {WeightFormat::kLut4, w.codes.const_data_ptr<uint8_t>(), n, k, packed.size(1),
            group_size, params_of(w.scale), params_of(std::nullopt),
            w.table->const_data_ptr<float>()};
  return linear_native(input, w, bias);
}

Tensor linear_grouped_cpu(
    const Tensor& input, const Tensor& codes, const Tensor& scale, int64_t group_size,
    std::optional<Tensor> bias) {
  check_linear_grouped(input, codes, scale, group_size, bias);
  const int64_t n = codes.size(0);
  const int64_t k = codes.size(1);
  if (!native_input(input, n, k)) {
    const Tensor weight = call_op<4>(
        "quanta::dequantize_grouped", "",
        {box(codes), box(scale), box(group_size), box(input.scalar_type())});
    return call_op<3>(
        "aten::linear", "", {box(input), box(weight), box(bias_as(bias, input.scalar_type()))});
  }
  NativeWeight w{{}, as_contiguous(codes), param_tensor(scale), std::nullopt, std::nullopt};
  w.view = {*symmetric_format(codes.scalar_type()),
            static_cast<const uint8_t*>(w.codes.const_data_ptr()), n, k, k, group_size,
            params_of(w.scale), params_of(std::nullopt)};
  return linear_native(input, w, bias);
}

// The exact int32 product of int8 input2d [m, k] and codes [n, k]: for a few rows on
// AVX512-VNNI by the decode kernel (int8_decode: each weight row streamed once), as acc [m, n];
// else by aten::_int_mm (or in float64, see int8_product_in_float64) as codes @ input2dᵀ, acc
// [n, m] (transposed): with the weight as the first operand oneDNN reads it as stored, where as
// the second it makes a reordered copy.
struct Int8Product {
  Tensor acc;
  bool transposed;
};

Int8Product int8_product(const Tensor& input2d, const Tensor& codes) {
  const int64_t m = input2d.size(0);
  const int64_t k = input2d.size(1);
  const int64_t n = codes.size(0);
#ifdef QKERNELS_X86_KERNELS
  if (int8_decode(active_isa(), m)) {
    Tensor shifted = torch::stable::new_empty(input2d, {m, k}, ScalarType::Byte);
    uint8_t* x_u8 = shifted.mutable_data_ptr<uint8_t>();
    shift_int8(input2d.const_data_ptr<int8_t>(), x_u8, m * k);
    Tensor acc = torch::stable::new_empty(input2d, {m, n}, ScalarType::Int);
    const Int8DecodeProblem problem{
        x_u8, codes.const_data_ptr<int8_t>(), m, k, n, acc.mutable_data_ptr<int32_t>()};
    torch::stable::parallel_for(0, n, grain_rows(k * m), [&](int64_t begin, int64_t end) {
      avx512_bf16::decode_int8_product(problem, begin, end);
    });
    return {acc, false};
  }
#endif
  const Tensor input_t = torch::stable::transpose(input2d, 0, 1);
  if (int8_product_in_float64(active_isa())) {
    const Tensor codes64 = torch::stable::to(codes, ScalarType::Double);
    const Tensor input64 = torch::stable::to(input_t, ScalarType::Double);
    const Tensor acc64 = call_op<2>("aten::mm", "", {box(codes64), box(input64)});
    return {torch::stable::to(acc64, ScalarType::Int), true};
  }
  return {call_op<2>("aten::_int_mm", "", {box(codes), box(input_t)}), true};
}

// int8 activations times int8 weights: the products summed exactly by aten::_int_mm (oneDNN:
// AMX or AVX-512 VNNI where present), then scaled in one vectorized pass over the int32 result
// (scale_int32; the kernels are built without FMA contraction, so they round like the reference).
Tensor linear_int8_cpu(
    const Tensor& input, const Tensor& input_scale, const Tensor& codes, const Tensor& scale,
    std::optional<Tensor> bias, ScalarType dtype) {
  check_linear_int8(input, input_scale, codes, scale, bias, dtype);
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
  const LinearKernels& impl = linear_kernels(active_isa());
  void* data = out.mutable_data_ptr();
  torch::stable::parallel_for(0, m, grain_rows(n * 4), [&](int64_t begin, int64_t end) {
    impl.scale_int32(product, *output_dtype(stored), data, begin, end);
  });
  return stored == dtype ? out : torch::stable::to(out, dtype);
}

}  // namespace
}  // namespace quanta::qkernels::cpu

STABLE_TORCH_LIBRARY_IMPL(quanta, CPU, m) {
  using namespace quanta::qkernels::cpu;
  m.impl("linear_symmetric", TORCH_BOX(&linear_symmetric_cpu));
  m.impl("linear_affine", TORCH_BOX(&linear_affine_cpu));
  m.impl("linear_int8", TORCH_BOX(&linear_int8_cpu));
  m.impl("linear_lut4", TORCH_BOX(&linear_lut4_cpu));
  m.impl("linear_grouped", TORCH_BOX(&linear_grouped_cpu));
}
