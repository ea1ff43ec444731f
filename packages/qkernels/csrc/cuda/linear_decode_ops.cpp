// The quanta_cuda ops: the native CUDA decode kernels (csrc/cuda/linear_decode.cu) of the quanta
// linear ops, for 1 to 16 input rows. Each has the semantics of the quanta op of the same name
// (docs/ops.md); the Python dispatch of quanta.qkernels decides when to call them. A binding
// checks its arguments (checks.h, then what the kernels serve), allocates the output and
// launches on torch's current stream.
#include <optional>
#include <string>
#include <vector>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>

#include "checks.h"
#include "cuda_stream.h"
#include "qkernels/cuda_decode.h"

namespace quanta::qkernels {
namespace {

namespace cd = cuda_decode;

// The 16-bit and 32-bit float dtypes of inputs, scales and biases the kernels read.
inline constexpr ScalarType kKernelFloats[] = {
    ScalarType::Float, ScalarType::BFloat16, ScalarType::Half};
inline constexpr ScalarType kKernelGroupScales[] = {
    ScalarType::Float, ScalarType::BFloat16, ScalarType::Half, ScalarType::Float8_e4m3fn,
    ScalarType::Float8_e8m0fnu};
inline constexpr ScalarType kKernelZeroPoints[] = {
    ScalarType::Byte, ScalarType::Float, ScalarType::BFloat16, ScalarType::Half};

cd::ParamType param_type(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Float: return cd::ParamType::kFloat32;
    case ScalarType::BFloat16: return cd::ParamType::kBFloat16;
    case ScalarType::Half: return cd::ParamType::kFloat16;
    case ScalarType::Byte: return cd::ParamType::kUInt8;
    case ScalarType::Float8_e4m3fn: return cd::ParamType::kFloat8E4M3;
    default: return cd::ParamType::kFloat8E8M0;  // the only other dtype the checks let through
  }
}

cd::ActType act_type(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Float: return cd::ActType::kFloat32;
    case ScalarType::BFloat16: return cd::ActType::kBFloat16;
    default: return cd::ActType::kFloat16;
  }
}

cd::CodeFormat symmetric_format(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Char: return cd::CodeFormat::kInt8;
    case ScalarType::Float8_e4m3fn: return cd::CodeFormat::kFloat8E4M3;
    default: return cd::CodeFormat::kFloat8E5M2;
  }
}

// A dtype the kernels read (the op's own checks allow more).
void check_kernel_dtype(
    const char* op, const char* name, const Tensor& t, std::span<const ScalarType> allowed) {
  STD_TORCH_CHECK(
      has_dtype(allowed, t.scalar_type()), "quanta_cuda::", op, ": ", name,
      " must have dtype in ", dtype_names(allowed), ", got ", dtype_name(t.scalar_type()));
}

// Rows of the input (the product of its leading dimensions).
int64_t input_rows(const Tensor& input) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) {
    rows *= input.size(d);
  }
  return rows;
}

// What the kernels serve beyond the op's own checks: 1..16 contiguous input rows of a float
// dtype on a CUDA device, and every other tensor contiguous on that device.
void check_served(
    const char* op, const Tensor& input, std::initializer_list<const Tensor*> tensors,
    const std::optional<Tensor>& bias) {
  STD_TORCH_CHECK(
      input.is_cuda(), "quanta_cuda::", op, ": input must be on a CUDA device, got it elsewhere");
  check_kernel_dtype(op, "input", input, kKernelFloats);
  const int64_t rows = input_rows(input);
  STD_TORCH_CHECK(
      rows >= 1 && rows <= cd::kMaxRows, "quanta_cuda::", op,
      ": the decode kernels take 1 to 16 input rows (prod(input.shape[:-1])), got ", rows);
  const int64_t k = input.size(input.dim() - 1);
  STD_TORCH_CHECK(
      k >= 1 && k < (int64_t{1} << 31), "quanta_cuda::", op,
      ": K must be in [1, 2**31), got ", k);
  std::vector<const Tensor*> all(tensors);
  all.push_back(&input);
  if (bias.has_value()) {
    check_kernel_dtype(op, "bias", *bias, kKernelFloats);
    all.push_back(&*bias);
  }
  for (const Tensor* t : all) {
    STD_TORCH_CHECK(
        t->is_cuda() && t->get_device_index() == input.get_device_index(), "quanta_cuda::", op,
        ": every tensor must be on the input's CUDA device");
    STD_TORCH_CHECK(
        t->is_contiguous(), "quanta_cuda::", op, ": every tensor must be contiguous");
  }
}

// Allocates the output [..., n] and launches the kernel of the problem on the current stream.
Tensor run_decode(
    const char* op, const Tensor& input, int64_t n, const Tensor& codes, const Tensor& scale,
    const Tensor* zero_point, const std::optional<Tensor>& bias, const Tensor* table,
    int64_t group_size, cd::CodeFormat format) {
  const torch::stable::accelerator::DeviceGuard guard(input.get_device_index());
  std::vector<int64_t> out_sizes(input.sizes().begin(), input.sizes().end());
  out_sizes.back() = n;
  Tensor out = torch::stable::new_empty(input, out_sizes);
  const cd::DecodeProblem problem = cd::make_problem(
      input.const_data_ptr(), out.mutable_data_ptr(),
      static_cast<const uint8_t*>(codes.const_data_ptr()), scale.const_data_ptr(),
      param_type(scale.scalar_type()), zero_point ? zero_point->const_data_ptr() : nullptr,
      zero_point ? param_type(zero_point->scalar_type()) : cd::ParamType::kNone,
      bias ? bias->const_data_ptr() : nullptr,
      bias ? param_type(bias->scalar_type()) : cd::ParamType::kNone,
      table ? static_cast<const float*>(table->const_data_ptr()) : nullptr, input_rows(input), n,
      input.size(input.dim() - 1), group_size, format, act_type(input.scalar_type()));
  if (n == 0) {
    return out;
  }
  const std::string name = std::string("quanta_cuda::") + op;
  const char* error = cd::launch_linear_decode(
      problem, current_cuda_stream(input.get_device_index(), name.c_str()));
  STD_TORCH_CHECK(error == nullptr, name, ": CUDA launch failed: ", error ? error : "");
  return out;
}

Tensor linear_affine(
    const Tensor& input, const Tensor& packed, const Tensor& scale, const Tensor& zero_point,
    int64_t bits, int64_t group_size, const std::optional<Tensor>& bias) {
  check_linear_affine(input, packed, scale, zero_point, bits, group_size, bias);
  const char* op = "linear_affine";
  check_kernel_dtype(op, "scale", scale, kKernelFloats);
  check_kernel_dtype(op, "zero_point", zero_point, kKernelZeroPoints);
  check_served(op, input, {&packed, &scale, &zero_point}, bias);
  return run_decode(
      op, input, packed.size(0), packed, scale, &zero_point, bias, nullptr, group_size,
      bits == 4 ? cd::CodeFormat::kUInt4 : cd::CodeFormat::kUInt2);
}

Tensor linear_symmetric(
    const Tensor& input, const Tensor& codes, const Tensor& scale,
    const std::optional<Tensor>& bias) {
  check_linear_symmetric(input, codes, scale, bias);
  const char* op = "linear_symmetric";
  check_kernel_dtype(op, "codes", codes, kGroupedCodeDtypes);
  check_kernel_dtype(op, "scale", scale, kKernelFloats);
  check_served(op, input, {&codes, &scale}, bias);
  // one group per row: the scale [N, 1]
  return run_decode(
      op, input, codes.size(0), codes, scale, nullptr, bias, nullptr, codes.size(1),
      symmetric_format(codes.scalar_type()));
}

Tensor linear_lut4(
    const Tensor& input, const Tensor& packed, const Tensor& table, const Tensor& scale,
    int64_t group_size, const std::optional<Tensor>& bias) {
  check_linear_lut4(input, packed, table, scale, group_size, bias);
  const char* op = "linear_lut4";
  check_kernel_dtype(op, "scale", scale, kKernelGroupScales);
  check_served(op, input, {&packed, &table, &scale}, bias);
  return run_decode(
      op, input, packed.size(0), packed, scale, nullptr, bias, &table, group_size,
      cd::CodeFormat::kLut4);
}

Tensor linear_grouped(
    const Tensor& input, const Tensor& codes, const Tensor& scale, int64_t group_size,
    const std::optional<Tensor>& bias) {
  check_linear_grouped(input, codes, scale, group_size, bias);
  const char* op = "linear_grouped";
  check_kernel_dtype(op, "scale", scale, kKernelGroupScales);
  check_served(op, input, {&codes, &scale}, bias);
  return run_decode(
      op, input, codes.size(0), codes, scale, nullptr, bias, nullptr, group_size,
      symmetric_format(codes.scalar_type()));
}

// Whether the decode kernel of `op` serves this input and weight codes: their dtypes and
// contiguity, the input's rows and device (compute capability 8.0 or later), a group size dividing
// K (linear_symmetric ignores it). The scale, zero point and bias dtypes are checked by the op.
bool supports(std::string op, const Tensor& input, const Tensor& weight_codes, int64_t group_size) {
  const bool packed = op == "linear_affine" || op == "linear_lut4";
  const bool bytes = op == "linear_symmetric" || op == "linear_grouped";
  if (!(packed || bytes) || !input.is_cuda() || input.dim() < 1 ||
      !has_dtype(kKernelFloats, input.scalar_type()) || !input.is_contiguous() ||
      !weight_codes.is_contiguous()) {
    return false;
  }
  const int64_t rows = input_rows(input);
  const int64_t k = input.size(input.dim() - 1);
  if (op != "linear_symmetric" && (group_size <= 0 || k % group_size != 0)) {
    return false;
  }
  const bool codes_ok = packed ? weight_codes.scalar_type() == ScalarType::Byte
                               : has_dtype(kGroupedCodeDtypes, weight_codes.scalar_type());
  return codes_ok && rows >= 1 && rows <= cd::kMaxRows && k >= 1 && k < (int64_t{1} << 31) &&
      cd::compute_capability_major(input.get_device_index()) >= 8;
}

}  // namespace
}  // namespace quanta::qkernels

STABLE_TORCH_LIBRARY(quanta_cuda, m) {
  m.def(
      "linear_affine(Tensor input, Tensor packed, Tensor scale, Tensor zero_point, int bits,"
      " int group_size, Tensor? bias) -> Tensor");
  m.def("linear_symmetric(Tensor input, Tensor codes, Tensor scale, Tensor? bias) -> Tensor");
  m.def(
      "linear_lut4(Tensor input, Tensor packed, Tensor table, Tensor scale, int group_size,"
      " Tensor? bias) -> Tensor");
  m.def(
      "linear_grouped(Tensor input, Tensor codes, Tensor scale, int group_size, Tensor? bias)"
      " -> Tensor");
  m.def("supports(str op, Tensor input, Tensor weight_codes, int group_size) -> bool");
}

STABLE_TORCH_LIBRARY_IMPL(quanta_cuda, CUDA, m) {
  m.impl("linear_affine", TORCH_BOX(&quanta::qkernels::linear_affine));
  m.impl("linear_symmetric", TORCH_BOX(&quanta::qkernels::linear_symmetric));
  m.impl("linear_lut4", TORCH_BOX(&quanta::qkernels::linear_lut4));
  m.impl("linear_grouped", TORCH_BOX(&quanta::qkernels::linear_grouped));
}

// supports answers for any device (false off CUDA), so the dispatcher can ask before moving data.
STABLE_TORCH_LIBRARY_IMPL(quanta_cuda, CompositeExplicitAutograd, m) {
  m.impl("supports", TORCH_BOX(&quanta::qkernels::supports));
}
