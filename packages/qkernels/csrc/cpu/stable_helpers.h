// Helpers of the stable-ABI bindings: calling other ops through the dispatcher, and small
// conversions done on the calling thread. Internal linkage, like weight_codes.h.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

namespace quanta::qkernels::cpu {
namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Calls a registered op through the dispatcher and returns its single tensor output.
template <size_t N>
Tensor call_op(const char* name, const char* overload, std::array<StableIValue, N> stack) {
  STABLE_TORCH_ERROR_CODE_CHECK(
      torch_call_dispatcher(name, overload, stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

template <class T>
StableIValue box(const T& value) {
  return torch::stable::detail::from(value);
}

// Small tensors (activations of the decode path, scales, zeros, bias, outputs) are converted here,
// on the calling thread: torch splits a conversion of more than 32K elements over the intra-op
// pool, and waking the pool costs more than the copy.
template <class From, class To>
void convert(const void* in, void* out, int64_t count) {
  const From* src = static_cast<const From*>(in);
  To* dst = static_cast<To*>(out);
  for (int64_t i = 0; i < count; ++i) {
    dst[i] = static_cast<To>(static_cast<float>(src[i]));
  }
}

// Elements below which a conversion runs on the calling thread (see convert).
constexpr int64_t kSmallConversion = 1 << 15;

// A contiguous float32 copy of t (t itself when it already is one).
Tensor float32_contiguous(const Tensor& t) {
  const Tensor src = torch::stable::contiguous(t);
  if (src.scalar_type() == ScalarType::Float) {
    return src;
  }
  if (src.numel() >= kSmallConversion) {  // large (an int4 weight's scales): torch's, in parallel
    return torch::stable::to(src, ScalarType::Float);
  }
  const std::vector<int64_t> sizes(src.sizes().begin(), src.sizes().end());
  Tensor out = torch::stable::new_empty(src, sizes, ScalarType::Float);
  const void* in = src.const_data_ptr();
  switch (src.scalar_type()) {
    case ScalarType::BFloat16:
      convert<c10::BFloat16, float>(in, out.mutable_data_ptr(), src.numel());
      break;
    case ScalarType::Half:
      convert<c10::Half, float>(in, out.mutable_data_ptr(), src.numel());
      break;
    case ScalarType::Byte:
      convert<uint8_t, float>(in, out.mutable_data_ptr(), src.numel());
      break;
    default:
      return torch::stable::to(src, ScalarType::Float);
  }
  return out;
}

}  // namespace
}  // namespace quanta::qkernels::cpu
