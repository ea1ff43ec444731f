// The argument checks of every native op (CPU and CUDA), with the messages of the Python checks
// (quanta/qkernels/_validate.py, run by the reference and fake kernels), so that every path fails
// alike: a native kernel registered for a device takes precedence over the reference there.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include "qkernels/unpack.h"

namespace quanta::qkernels {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

inline constexpr ScalarType kSymmetricCodeDtypes[] = {
    ScalarType::Char, ScalarType::Float8_e4m3fn, ScalarType::Float8_e5m2,
    ScalarType::Float8_e4m3fnuz, ScalarType::Float8_e5m2fnuz};
inline constexpr ScalarType kFloatDtypes[] = {
    ScalarType::Float, ScalarType::Half, ScalarType::BFloat16, ScalarType::Double};
inline constexpr ScalarType kInt8[] = {ScalarType::Char};
// The scales of the lut4 and grouped weights (_validate.GROUP_SCALE_DTYPES).
inline constexpr ScalarType kGroupScaleDtypes[] = {
    ScalarType::Float, ScalarType::Half, ScalarType::BFloat16, ScalarType::Double,
    ScalarType::Float8_e4m3fn, ScalarType::Float8_e8m0fnu};
inline constexpr ScalarType kGroupedCodeDtypes[] = {
    ScalarType::Char, ScalarType::Float8_e4m3fn, ScalarType::Float8_e5m2};
inline constexpr ScalarType kFloat32[] = {ScalarType::Float};
inline constexpr int64_t kLut4TableSize = 16;
inline constexpr ScalarType kUInt8[] = {ScalarType::Byte};

// torch's Python name of a dtype, e.g. "torch.bfloat16".
inline std::string dtype_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Float: return "torch.float32";
    case ScalarType::Double: return "torch.float64";
    case ScalarType::Half: return "torch.float16";
    case ScalarType::BFloat16: return "torch.bfloat16";
    case ScalarType::Char: return "torch.int8";
    case ScalarType::Byte: return "torch.uint8";
    case ScalarType::Short: return "torch.int16";
    case ScalarType::Int: return "torch.int32";
    case ScalarType::Long: return "torch.int64";
    case ScalarType::Bool: return "torch.bool";
    case ScalarType::Float8_e4m3fn: return "torch.float8_e4m3fn";
    case ScalarType::Float8_e5m2: return "torch.float8_e5m2";
    case ScalarType::Float8_e4m3fnuz: return "torch.float8_e4m3fnuz";
    case ScalarType::Float8_e5m2fnuz: return "torch.float8_e5m2fnuz";
    case ScalarType::Float8_e8m0fnu: return "torch.float8_e8m0fnu";
    default: return std::string("torch.") + torch::headeronly::toString(dtype);
  }
}

// "(int8, float8_e4m3fn)": the names of dtypes as the Python checks list them.
inline std::string dtype_names(std::span<const ScalarType> dtypes) {
  std::string text = "(";
  for (size_t i = 0; i < dtypes.size(); ++i) {
    text += (i ? ", " : "") + dtype_name(dtypes[i]).substr(6);  // without "torch."
  }
  return text + ")";
}

inline bool has_dtype(std::span<const ScalarType> dtypes, ScalarType dtype) {
  return std::find(dtypes.begin(), dtypes.end(), dtype) != dtypes.end();
}

inline bool is_float_dtype(ScalarType dtype) {
  return has_dtype(kFloatDtypes, dtype);
}

// A shape as Python prints a tuple ("(3, 7)", "(4,)") or a list ("[3, 7]").
inline std::string shape_string(const Tensor& t, bool as_list) {
  std::string text = as_list ? "[" : "(";
  for (int64_t i = 0; i < t.dim(); ++i) {
    text += (i ? ", " : "") + std::to_string(t.size(i));
  }
  if (!as_list && t.dim() == 1) {
    text += ",";
  }
  return text + (as_list ? "]" : ")");
}

inline void check_dtype(
    const char* op, const char* name, const Tensor& t, std::span<const ScalarType> allowed) {
  STD_TORCH_CHECK(
      has_dtype(allowed, t.scalar_type()), "quanta::", op, ": ", name, " must have dtype in ",
      dtype_names(allowed), ", got ", dtype_name(t.scalar_type()));
}

inline void check_target_dtype(
    const char* op, ScalarType dtype, std::span<const ScalarType> allowed) {
  STD_TORCH_CHECK(
      has_dtype(allowed, dtype), "quanta::", op, ": dtype must be one of ", dtype_names(allowed),
      ", got ", dtype_name(dtype));
}

inline void check_floating(const char* op, const char* name, const Tensor& t) {
  STD_TORCH_CHECK(
      is_float_dtype(t.scalar_type()), "quanta::", op, ": ", name,
      " must be a float32, float16, bfloat16 or float64 tensor, got ", dtype_name(t.scalar_type()));
}

// `operand` broadcasts to `target` without enlarging it.
inline void check_broadcasts_to(
    const char* op, const char* name, const Tensor& operand, const Tensor& target) {
  bool fits = operand.dim() <= target.dim();
  for (int64_t d = 1; fits && d <= operand.dim(); ++d) {
    const int64_t size = operand.size(operand.dim() - d);
    fits = size == 1 || size == target.size(target.dim() - d);
  }
  STD_TORCH_CHECK(
      fits, "quanta::", op, ": ", name, " of shape ", shape_string(operand, false),
      " must broadcast to ", shape_string(target, false), " without enlarging it");
}

inline void check_pack_bits(const char* op, int64_t bits) {
  STD_TORCH_CHECK(
      bits == 2 || bits == 4, "quanta::", op, ": bits must be one of (2, 4), got ", bits);
}

// packed: uint8 [..., packed_width(size, bits)].
inline void check_packed(const char* op, const Tensor& packed, int64_t size, int64_t bits) {
  check_dtype(op, "packed", packed, kUInt8);
  STD_TORCH_CHECK(
      packed.dim() >= 1, "quanta::", op, ": packed must have at least one dimension, got a scalar");
  const int64_t width = packed_width(size, bits);
  const int64_t last = packed.size(packed.dim() - 1);
  STD_TORCH_CHECK(
      last == width, "quanta::", op, ": packed has ", last, " bytes in its last dimension, but ",
      size, " codes of ", bits, " bits need ceil(size * bits / 8) = ", width);
}

inline void check_bias(const char* op, const std::optional<Tensor>& bias, int64_t n) {
  if (!bias.has_value()) {
    return;
  }
  check_floating(op, "bias", *bias);
  STD_TORCH_CHECK(
      bias->dim() == 1 && bias->size(0) == n, "quanta::", op, ": bias must have shape [N] = [", n,
      "], got ", shape_string(*bias, true));
}

inline void check_input_k(const char* op, const Tensor& input, int64_t k) {
  STD_TORCH_CHECK(
      input.dim() >= 1 && input.size(input.dim() - 1) == k, "quanta::", op,
      ": input must be [..., K] with K = ", k, " (the weight's K), got shape ",
      shape_string(input, false));
}

// codes [N, K] of one of code_dtypes, with a floating scale [N, 1].
inline void check_symmetric_weight(
    const char* op, const Tensor& codes, const Tensor& scale,
    std::span<const ScalarType> code_dtypes) {
  check_dtype(op, "codes", codes, code_dtypes);
  STD_TORCH_CHECK(
      codes.dim() == 2, "quanta::", op, ": codes must be 2-D [N, K], got shape ",
      shape_string(codes, false));
  const int64_t n = codes.size(0);
  check_floating(op, "scale", scale);
  STD_TORCH_CHECK(
      scale.dim() == 2 && scale.size(0) == n && scale.size(1) == 1, "quanta::", op,
      ": scale must have shape [N, 1] = [", n, ", 1], got ", shape_string(scale, true));
}

// group_size divides k, and t is [n, k / group_size].
inline void check_group_shape(
    const char* op, int64_t n, int64_t k, int64_t group_size, const char* name, const Tensor& t) {
  STD_TORCH_CHECK(
      group_size > 0 && k % group_size == 0, "quanta::", op,
      ": group_size must be a positive divisor of K = ", k, ", got ", group_size);
  const int64_t groups = k / group_size;
  STD_TORCH_CHECK(
      t.dim() == 2 && t.size(0) == n && t.size(1) == groups, "quanta::", op, ": ", name,
      " must have shape [rows, K // group_size] = [", n, ", ", groups, "], got ",
      shape_string(t, true));
}

// scale and zero_point [n, k / group_size] of a weight [n, k].
inline void check_groups(
    const char* op, int64_t n, int64_t k, const Tensor& scale, const Tensor& zero_point,
    int64_t group_size) {
  check_group_shape(op, n, k, group_size, "scale", scale);
  check_group_shape(op, n, k, group_size, "zero_point", zero_point);
  check_floating(op, "scale", scale);
  STD_TORCH_CHECK(
      zero_point.scalar_type() == ScalarType::Byte || is_float_dtype(zero_point.scalar_type()),
      "quanta::", op, ": zero_point must be uint8 or floating point, got ",
      dtype_name(zero_point.scalar_type()));
}

// ---- the checks of each op --------------------------------------------------------------------

inline void check_quantize_symmetric(const Tensor& input, const Tensor& scale, ScalarType dtype) {
  const char* op = "quantize_symmetric";
  check_floating(op, "input", input);
  check_floating(op, "scale", scale);
  check_target_dtype(op, dtype, kSymmetricCodeDtypes);
  check_broadcasts_to(op, "scale", scale, input);
}

inline void check_quantize_dynamic(const Tensor& input, ScalarType dtype) {
  const char* op = "quantize_dynamic";
  check_floating(op, "input", input);
  STD_TORCH_CHECK(
      input.dim() > 0, "quanta::", op,
      ": input must have at least one dimension (each row of the last one gets a scale), "
      "got a 0-d tensor");
  check_target_dtype(op, dtype, kSymmetricCodeDtypes);
}

inline void check_dequantize_symmetric(const Tensor& codes, const Tensor& scale, ScalarType dtype) {
  const char* op = "dequantize_symmetric";
  check_dtype(op, "codes", codes, kSymmetricCodeDtypes);
  check_floating(op, "scale", scale);
  check_target_dtype(op, dtype, kFloatDtypes);
  check_broadcasts_to(op, "scale", scale, codes);
}

inline void check_unpack(const Tensor& packed, int64_t bits, int64_t size) {
  check_pack_bits("unpack", bits);
  STD_TORCH_CHECK(size >= 0, "quanta::unpack: size must be >= 0, got ", size);
  check_packed("unpack", packed, size, bits);
}

inline void check_linear_symmetric(
    const Tensor& input, const Tensor& codes, const Tensor& scale,
    const std::optional<Tensor>& bias) {
  const char* op = "linear_symmetric";
  check_symmetric_weight(op, codes, scale, kSymmetricCodeDtypes);
  check_floating(op, "input", input);
  check_input_k(op, input, codes.size(1));
  check_bias(op, bias, codes.size(0));
}

inline void check_linear_int8(
    const Tensor& input, const Tensor& input_scale, const Tensor& codes, const Tensor& scale,
    const std::optional<Tensor>& bias, ScalarType dtype) {
  const char* op = "linear_int8";
  check_symmetric_weight(op, codes, scale, kInt8);
  check_dtype(op, "input", input, kInt8);
  check_input_k(op, input, codes.size(1));
  check_floating(op, "input_scale", input_scale);
  bool per_row = input_scale.dim() == input.dim() && input_scale.size(input.dim() - 1) == 1;
  for (int64_t d = 0; per_row && d + 1 < input.dim(); ++d) {
    per_row = input_scale.size(d) == input.size(d);
  }
  if (!per_row && input_scale.numel() != 1) {
    std::string rows = "[";
    for (int64_t d = 0; d + 1 < input.dim(); ++d) {
      rows += std::to_string(input.size(d)) + ", ";
    }
    STD_TORCH_CHECK(
        false, "quanta::", op, ": input_scale must have one element (per tensor) or shape ",
        rows, "1] (one per row of input), got ", shape_string(input_scale, true));
  }
  check_bias(op, bias, codes.size(0));
  check_target_dtype(op, dtype, kFloatDtypes);
}

// input [..., K] float and packed [N, ceil(K * bits / 8)]; returns K.
inline int64_t check_packed_weight(
    const char* op, const Tensor& input, const Tensor& packed, int64_t bits) {
  STD_TORCH_CHECK(input.dim() >= 1, "quanta::", op, ": input must be [..., K], got a scalar");
  const int64_t k = input.size(input.dim() - 1);
  check_floating(op, "input", input);
  check_packed(op, packed, k, bits);
  STD_TORCH_CHECK(
      packed.dim() == 2, "quanta::", op, ": packed must be 2-D [N, ceil(K * bits / 8)], got shape ",
      shape_string(packed, false));
  return k;
}

inline void check_linear_affine(
    const Tensor& input, const Tensor& packed, const Tensor& scale, const Tensor& zero_point,
    int64_t bits, int64_t group_size, const std::optional<Tensor>& bias) {
  const char* op = "linear_affine";
  check_pack_bits(op, bits);
  const int64_t k = check_packed_weight(op, input, packed, bits);
  check_groups(op, packed.size(0), k, scale, zero_point, group_size);
  check_bias(op, bias, packed.size(0));
}

// scale [n, k / group_size] of kGroupScaleDtypes, for a weight [n, k].
inline void check_scaled_groups(
    const char* op, int64_t n, int64_t k, const Tensor& scale, int64_t group_size) {
  check_group_shape(op, n, k, group_size, "scale", scale);
  check_dtype(op, "scale", scale, kGroupScaleDtypes);
}

inline void check_linear_lut4(
    const Tensor& input, const Tensor& packed, const Tensor& table, const Tensor& scale,
    int64_t group_size, const std::optional<Tensor>& bias) {
  const char* op = "linear_lut4";
  const int64_t k = check_packed_weight(op, input, packed, 4);
  check_dtype(op, "table", table, kFloat32);
  STD_TORCH_CHECK(
      table.dim() == 1 && table.size(0) == kLut4TableSize, "quanta::", op,
      ": table must have shape [16] (the value of each 4-bit code), got ",
      shape_string(table, true));
  check_scaled_groups(op, packed.size(0), k, scale, group_size);
  check_bias(op, bias, packed.size(0));
}

inline void check_linear_grouped(
    const Tensor& input, const Tensor& codes, const Tensor& scale, int64_t group_size,
    const std::optional<Tensor>& bias) {
  const char* op = "linear_grouped";
  check_dtype(op, "codes", codes, kGroupedCodeDtypes);
  STD_TORCH_CHECK(
      codes.dim() == 2, "quanta::", op, ": codes must be 2-D [rows, K], got shape ",
      shape_string(codes, false));
  check_scaled_groups(op, codes.size(0), codes.size(1), scale, group_size);
  check_floating(op, "input", input);
  check_input_k(op, input, codes.size(1));
  check_bias(op, bias, codes.size(0));
}

}  // namespace quanta::qkernels
