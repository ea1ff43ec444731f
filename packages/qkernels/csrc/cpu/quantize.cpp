// quanta::quantize_symmetric and quanta::dequantize_symmetric on the CPU: one pass over the
// elements, the scale read through its broadcast (per tensor, per row, per channel or per element)
// without materializing it. Both compute in fp32 like the reference: codes = clamp(round(x / s))
// (int8, ties to even) or clamp(x / s, +-max) rounded to float8; values = codes * s. And
// quanta::quantize_dynamic: a scale per row from one pass, then quantize_symmetric.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Float8_e4m3fn.h>
#include <torch/headeronly/util/Float8_e4m3fnuz.h>
#include <torch/headeronly/util/Float8_e5m2.h>
#include <torch/headeronly/util/Float8_e5m2fnuz.h>
#include <torch/headeronly/util/Half.h>

#include "checks.h"
#include "qkernels/cpu_isa.h"
#include "qkernels/linear_cpu.h"
#include "stable_helpers.h"
#include "weight_codes.h"

namespace {

using quanta::qkernels::cpu::float32_contiguous;
using quanta::qkernels::cpu::InputDtype;
using quanta::qkernels::cpu::int8_code;
using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Elements per parallel task.
constexpr int64_t kGrainElements = 1 << 16;

// A scale broadcast over a tensor's rows (all dimensions but the last): the offset of each row's
// first scale in the contiguous scale, and the step along the row (0 or 1).
class RowScales {
 public:
  RowScales(const Tensor& scale, const Tensor& target) : data_(scale.const_data_ptr<float>()) {
    const int64_t rank = target.dim();
    int64_t stride = 1;
    strides_.assign(rank, 0);
    for (int64_t d = 1; d <= scale.dim(); ++d) {
      const int64_t size = scale.size(scale.dim() - d);
      strides_[rank - d] = size == 1 ? 0 : stride;
      stride *= size;
    }
    sizes_.assign(target.sizes().begin(), target.sizes().end());
    step_ = rank > 0 ? strides_[rank - 1] : 0;
  }

  // The scales of row `row` (a flat index over the leading dimensions), read with step() = 0 or 1.
  const float* row(int64_t row) const {
    int64_t offset = 0;
    for (int64_t d = static_cast<int64_t>(sizes_.size()) - 2; d >= 0; --d) {
      offset += (row % sizes_[d]) * strides_[d];
      row /= sizes_[d];
    }
    return data_ + offset;
  }
  int64_t step() const { return step_; }

 private:
  const float* data_;
  std::vector<int64_t> sizes_;
  std::vector<int64_t> strides_;
  int64_t step_;
};

// clamp(v, -max, max) (NaN stays NaN) rounded to the float8 format Code.
template <class Code>
inline Code float8_code(float v) {
  const float limit = static_cast<float>(std::numeric_limits<Code>::max());
  v = v < -limit ? -limit : (v > limit ? limit : v);
  return Code(v);
}

// out[r, j] = f(in[r, j], scale of [r, j]) for every row r of a contiguous tensor, in parallel.
template <class In, class Out, class F>
void map_rows(const Tensor& input, const RowScales& scales, Tensor& output, const F& f) {
  const int64_t width = input.size(input.dim() - 1);
  const int64_t rows = input.numel() / width;
  const In* in = static_cast<const In*>(input.const_data_ptr());
  Out* out = static_cast<Out*>(output.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, kGrainElements / width);
  torch::stable::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* scale = scales.row(r);
      const In* x = in + r * width;
      Out* y = out + r * width;
      if (scales.step() == 0) {  // one scale per row: the loop vectorizes
        const float row_scale = *scale;
        for (int64_t j = 0; j < width; ++j) {
          y[j] = f(x[j], row_scale);
        }
      } else {
        for (int64_t j = 0; j < width; ++j) {
          y[j] = f(x[j], scale[j]);
        }
      }
    }
  });
}

template <class In, class Code>
void quantize_rows(const Tensor& input, const RowScales& scales, Tensor& codes) {
  map_rows<In, Code>(input, scales, codes, [](In x, float scale) {
    const float v = static_cast<float>(x) / scale;
    if constexpr (std::is_same_v<Code, int8_t>) {
      return int8_code(v);
    } else {
      return float8_code<Code>(v);
    }
  });
}

template <class Code, class Out>
void dequantize_rows(const Tensor& codes, const RowScales& scales, Tensor& values) {
  map_rows<Code, Out>(codes, scales, values, [](Code q, float scale) {
    return static_cast<Out>(static_cast<float>(q) * scale);
  });
}

// Calls body.template operator()<T>() with T the C++ type of a float dtype.
template <class Body>
void with_float_type(ScalarType dtype, const Body& body) {
  switch (dtype) {
    case ScalarType::Float: return body.template operator()<float>();
    case ScalarType::Double: return body.template operator()<double>();
    case ScalarType::BFloat16: return body.template operator()<c10::BFloat16>();
    default: return body.template operator()<c10::Half>();
  }
}

// The same for the dtype of symmetric codes.
template <class Body>
void with_code_type(ScalarType dtype, const Body& body) {
  switch (dtype) {
    case ScalarType::Char: return body.template operator()<int8_t>();
    case ScalarType::Float8_e4m3fn: return body.template operator()<c10::Float8_e4m3fn>();
    case ScalarType::Float8_e5m2: return body.template operator()<c10::Float8_e5m2>();
    case ScalarType::Float8_e4m3fnuz: return body.template operator()<c10::Float8_e4m3fnuz>();
    default: return body.template operator()<c10::Float8_e5m2fnuz>();
  }
}

// The activations' common case, float32 or bfloat16 to int8 with a scale per row (or one for
// all): the quantizer of the active instruction set (linear_kernels), vectorized. False when
// the case is another one.
bool quantize_int8_vectorized(const Tensor& x, const RowScales& scales, Tensor& codes) {
  const ScalarType in = x.scalar_type();
  if (codes.scalar_type() != ScalarType::Char || scales.step() != 0 ||
      (in != ScalarType::Float && in != ScalarType::BFloat16)) {
    return false;
  }
  const int64_t width = x.size(x.dim() - 1);
  const int64_t rows = x.numel() / width;
  std::vector<float> row_scales(rows);
  for (int64_t r = 0; r < rows; ++r) {
    row_scales[r] = *scales.row(r);
  }
  const InputDtype dtype = in == ScalarType::Float ? InputDtype::kFloat32 : InputDtype::kBFloat16;
  const auto& impl = quanta::qkernels::cpu::linear_kernels(quanta::qkernels::cpu::active_isa());
  const void* data = x.const_data_ptr();
  int8_t* out = static_cast<int8_t*>(codes.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, kGrainElements / width);
  torch::stable::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    impl.quantize_int8(data, dtype, row_scales.data(), out, width, begin, end);
  });
  return true;
}

// out (input's shape, dtype) = an element-wise map of input and its broadcast scale:
// map(contiguous input, its RowScales, out viewed with the contiguous input's shape).
template <class Map>
Tensor map_with_scale(const Tensor& input, const Tensor& scale, ScalarType dtype, const Map& map) {
  const std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end());
  Tensor out = torch::stable::new_empty(input, sizes, dtype);
  if (input.numel() == 0) {
    return out;
  }
  const Tensor x = input.dim() == 0 ? torch::stable::reshape(input, {1}) : input;
  const Tensor contiguous = torch::stable::contiguous(x);
  const Tensor scale32 = float32_contiguous(scale);
  const RowScales scales(scale32, contiguous);
  Tensor flat = torch::stable::reshape(out, {contiguous.sizes().begin(), contiguous.sizes().end()});
  map(contiguous, scales, flat);
  return out;
}

Tensor quantize_symmetric_cpu(const Tensor& input, const Tensor& scale, ScalarType dtype) {
  quanta::qkernels::check_quantize_symmetric(input, scale, dtype);
  return map_with_scale(input, scale, dtype, [&](const Tensor& x, const RowScales& s, Tensor& q) {
    if (!quantize_int8_vectorized(x, s, q)) {
      with_float_type(input.scalar_type(), [&]<class In>() {
        with_code_type(dtype, [&]<class Code>() { quantize_rows<In, Code>(x, s, q); });
      });
    }
  });
}

Tensor dequantize_symmetric_cpu(const Tensor& codes, const Tensor& scale, ScalarType dtype) {
  quanta::qkernels::check_dequantize_symmetric(codes, scale, dtype);
  return map_with_scale(codes, scale, dtype, [&](const Tensor& q, const RowScales& s, Tensor& y) {
    with_code_type(codes.scalar_type(), [&]<class Code>() {
      with_float_type(dtype, [&]<class Out>() { dequantize_rows<Code, Out>(q, s, y); });
    });
  });
}

// The largest magnitude in a row, exact: the magnitude bits of the elements compared as
// unsigned integers (those of a NaN are above infinity's, so a row holding one gives NaN).
// Vectorizes as an integer max.
template <class Bits>
Bits largest_magnitude_bits(const Bits* row, int64_t width) {
  constexpr Bits kMagnitude = std::numeric_limits<Bits>::max() >> 1;
  Bits largest = 0;
  for (int64_t j = 0; j < width; ++j) {
    largest = std::max<Bits>(largest, row[j] & kMagnitude);
  }
  return largest;
}

// The unsigned integer type of In's bits.
template <class In>
using BitsOf = std::conditional_t<
    sizeof(In) == 2, uint16_t, std::conditional_t<sizeof(In) == 4, uint32_t, uint64_t>>;

// finfo(dtype).tiny as the reference's clamp uses it (on a float32 scale: float64's is 0).
template <class In>
float smallest_normal() {
  if constexpr (std::is_same_v<In, c10::Half>) {
    return 6.103515625e-05f;
  } else if constexpr (std::is_same_v<In, double>) {
    return 0.0f;
  } else {
    return std::numeric_limits<float>::min();  // float32 and bfloat16
  }
}

// scale[r] = max|x[r, :]| / qmax in fp32 (1 when that is 0, at least smallest_normal; NaN for a
// row holding a NaN, Inf for one holding an Inf), stored in In, for the rows of a contiguous
// [rows, width] tensor.
template <class In>
void dynamic_scales(const Tensor& x, float qmax, Tensor& scale) {
  using Bits = BitsOf<In>;
  const int64_t width = x.size(x.dim() - 1);
  const int64_t rows = scale.numel();
  const Bits* bits = static_cast<const Bits*>(x.const_data_ptr());
  In* out = static_cast<In*>(scale.mutable_data_ptr());
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(width, 1));
  torch::stable::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Bits largest = largest_magnitude_bits(bits + r * width, width);
      In value;
      std::memcpy(&value, &largest, sizeof(value));
      const float absmax = static_cast<float>(value);
      const float s = absmax == 0.0f ? 1.0f : absmax / qmax;
      out[r] = static_cast<In>(s < smallest_normal<In>() ? smallest_normal<In>() : s);
    }
  });
}

// Dynamic quantization: a scale per row of the last dimension from the row's largest magnitude
// (see dynamic_scales), then quantize_symmetric with it, in one call.
std::tuple<Tensor, Tensor> quantize_dynamic_cpu(const Tensor& input, ScalarType dtype) {
  quanta::qkernels::check_quantize_dynamic(input, dtype);
  std::vector<int64_t> scale_sizes(input.sizes().begin(), input.sizes().end());
  scale_sizes.back() = 1;
  Tensor scale = torch::stable::new_empty(input, scale_sizes);
  const Tensor x = input.is_contiguous() ? input : torch::stable::contiguous(input);
  float qmax = 127.0f;
  with_code_type(dtype, [&]<class Code>() {
    if constexpr (!std::is_same_v<Code, int8_t>) {
      qmax = static_cast<float>(std::numeric_limits<Code>::max());
    }
  });
  with_float_type(input.scalar_type(), [&]<class In>() { dynamic_scales<In>(x, qmax, scale); });
  return {quantize_symmetric_cpu(x, scale, dtype), scale};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(quanta, CPU, m) {
  m.impl("quantize_symmetric", TORCH_BOX(&quantize_symmetric_cpu));
  m.impl("dequantize_symmetric", TORCH_BOX(&dequantize_symmetric_cpu));
  m.impl("quantize_dynamic", TORCH_BOX(&quantize_dynamic_cpu));
}
