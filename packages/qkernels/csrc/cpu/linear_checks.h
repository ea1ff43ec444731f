// Argument checks of the native linear ops, with the messages of the Python reference
// (quanta/qkernels/reference.py and _validate.py), so both paths fail alike.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include "qkernels/unpack.h"

namespace quanta::qkernels::cpu {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

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
    default: return std::string("torch.") + torch::headeronly::toString(dtype);
  }
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

inline bool is_float_dtype(ScalarType dtype) {
  return dtype == ScalarType::Float || dtype == ScalarType::Double || dtype == ScalarType::Half ||
      dtype == ScalarType::BFloat16;
}

inline bool is_symmetric_code_dtype(ScalarType dtype) {
  return dtype == ScalarType::Char || dtype == ScalarType::Float8_e4m3fn ||
      dtype == ScalarType::Float8_e5m2 || dtype == ScalarType::Float8_e4m3fnuz ||
      dtype == ScalarType::Float8_e5m2fnuz;
}

inline void check_floating(const char* op, const char* name, const Tensor& t) {
  STD_TORCH_CHECK(
      is_float_dtype(t.scalar_type()), "quanta::", op, ": ", name,
      " must be a float32, float16, bfloat16 or float64 tensor, got ", dtype_name(t.scalar_type()));
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

inline void check_linear_input(const char* op, const Tensor& input, int64_t k) {
  check_floating(op, "input", input);
  STD_TORCH_CHECK(
      input.dim() >= 1 && input.size(input.dim() - 1) == k, "quanta::", op,
      ": input must be [..., K] with K = ", k, " (the weight's K), got shape ",
      shape_string(input, false));
}

// codes [N, K] (their dtype checked by the caller) with a floating scale [N, 1].
inline void check_symmetric_weight(const char* op, const Tensor& codes, const Tensor& scale) {
  STD_TORCH_CHECK(
      codes.dim() == 2, "quanta::", op, ": codes must be 2-D [N, K], got shape ",
      shape_string(codes, false));
  const int64_t n = codes.size(0);
  check_floating(op, "scale", scale);
  STD_TORCH_CHECK(
      scale.dim() == 2 && scale.size(0) == n && scale.size(1) == 1, "quanta::", op,
      ": scale must have shape [N, 1] = [", n, ", 1], got ", shape_string(scale, true));
}

inline void check_linear_symmetric(
    const Tensor& input, const Tensor& codes, const Tensor& scale,
    const std::optional<Tensor>& bias) {
  const char* op = "linear_symmetric";
  STD_TORCH_CHECK(
      is_symmetric_code_dtype(codes.scalar_type()), "quanta::", op,
      ": codes must have dtype in (int8, float8_e4m3fn, float8_e5m2, float8_e4m3fnuz, "
      "float8_e5m2fnuz), got ", dtype_name(codes.scalar_type()));
  check_symmetric_weight(op, codes, scale);
  check_linear_input(op, input, codes.size(1));
  check_bias(op, bias, codes.size(0));
}

inline void check_linear_int8(
    const Tensor& input, const Tensor& input_scale, const Tensor& codes, const Tensor& scale,
    const std::optional<Tensor>& bias, ScalarType dtype) {
  const char* op = "linear_int8";
  STD_TORCH_CHECK(
      codes.scalar_type() == ScalarType::Char, "quanta::", op,
      ": codes must have dtype in (int8), got ", dtype_name(codes.scalar_type()));
  check_symmetric_weight(op, codes, scale);
  const int64_t k = codes.size(1);
  STD_TORCH_CHECK(
      input.scalar_type() == ScalarType::Char, "quanta::", op,
      ": input must have dtype in (int8), got ", dtype_name(input.scalar_type()));
  STD_TORCH_CHECK(
      input.dim() >= 1 && input.size(input.dim() - 1) == k, "quanta::", op,
      ": input must be [..., K] with K = ", k, " (the weight's K), got shape ",
      shape_string(input, false));
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
  STD_TORCH_CHECK(
      is_float_dtype(dtype), "quanta::", op,
      ": dtype must be one of (float32, float16, bfloat16, float64), got ", dtype_name(dtype));
}

inline void check_groups(
    const char* op, int64_t n, int64_t k, const Tensor& scale, const Tensor& zero_point,
    int64_t group_size) {
  STD_TORCH_CHECK(
      group_size > 0 && k % group_size == 0, "quanta::", op,
      ": group_size must be a positive divisor of K = ", k, ", got ", group_size);
  const int64_t groups = k / group_size;
  for (const auto& [name, t] : {std::pair{"scale", &scale}, std::pair{"zero_point", &zero_point}}) {
    STD_TORCH_CHECK(
        t->dim() == 2 && t->size(0) == n && t->size(1) == groups, "quanta::", op, ": ", name,
        " must have shape [rows, K // group_size] = [", n, ", ", groups, "], got ",
        shape_string(*t, true));
  }
  check_floating(op, "scale", scale);
  STD_TORCH_CHECK(
      zero_point.scalar_type() == ScalarType::Byte || is_float_dtype(zero_point.scalar_type()),
      "quanta::", op, ": zero_point must be uint8 or floating point, got ",
      dtype_name(zero_point.scalar_type()));
}

inline void check_linear_affine(
    const Tensor& input, const Tensor& packed, const Tensor& scale, const Tensor& zero_point,
    int64_t bits, int64_t group_size, const std::optional<Tensor>& bias) {
  const char* op = "linear_affine";
  STD_TORCH_CHECK(
      bits == 2 || bits == 4, "quanta::", op, ": bits must be one of (2, 4), got ", bits);
  STD_TORCH_CHECK(input.dim() >= 1, "quanta::", op, ": input must be [..., K], got a scalar");
  const int64_t k = input.size(input.dim() - 1);
  check_floating(op, "input", input);
  STD_TORCH_CHECK(
      packed.scalar_type() == ScalarType::Byte, "quanta::", op,
      ": packed must have dtype in (uint8), got ", dtype_name(packed.scalar_type()));
  STD_TORCH_CHECK(
      packed.dim() >= 1, "quanta::", op, ": packed must have at least one dimension, got a scalar");
  const int64_t width = packed_width(k, bits);
  const int64_t last = packed.size(packed.dim() - 1);
  STD_TORCH_CHECK(
      last == width, "quanta::", op, ": packed has ", last, " bytes in its last dimension, but ", k,
      " codes of ", bits, " bits need ceil(size * bits / 8) = ", width);
  STD_TORCH_CHECK(
      packed.dim() == 2, "quanta::", op, ": packed must be 2-D [N, ceil(K * bits / 8)], got shape ",
      shape_string(packed, false));
  check_groups(op, packed.size(0), k, scale, zero_point, group_size);
  check_bias(op, bias, packed.size(0));
}

}  // namespace quanta::qkernels::cpu
