// Torch-free planning of the CPU linear ops (qkernels/linear_plan.h).

#include "qkernels/linear_plan.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>

#include "weight_codes.h"

namespace quanta::qkernels::cpu {
namespace {

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

// out[r, g] = sum of x[r, g * group_size .. (g + 1) * group_size), summed in float32 in order.
template <class T>
void sum_groups(const T* x, int64_t m, int64_t k, int64_t group_size, float* out) {
  for (int64_t i = 0; i < m * (k / group_size); ++i) {
    float total = 0.0f;
    for (int64_t j = 0; j < group_size; ++j) {
      total += element_value(x[i * group_size + j]);
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

// x [m, k] of any float dtype for LinearKernels::decode: float32, converted into scratch unless
// it is, and in lookup order when the plan looks codes up; else with the group sums.
template <class T>
DecodeInput float32_input(
    const DecodePlan& plan, const T* x, int64_t m, const WeightView& w, float* scratch) {
  const int64_t k = w.k;
  const bool lookup = plan.kernel == DecodeKernel::kLookup;
  const bool copy_x = lookup || !std::is_same_v<T, float>;
  DecodeInput in{x, nullptr};
  if (lookup) {
    const int64_t per_byte = 8 / weight_bits(w.format);
    deinterleave(x, m * k, 16, per_byte, scratch, [](T v) { return element_value(v); });
  } else if (copy_x) {
    for (int64_t i = 0; i < m * k; ++i) {
      scratch[i] = element_value(x[i]);
    }
  }
  if (copy_x) {
    in.x = scratch;
    scratch += m * k;
  }
  if (w.zero.data != nullptr && !lookup) {
    sum_groups(x, m, k, w.group_size, scratch);
    in.group_sums = scratch;
  }
  return in;
}

// x [m, k] in bfloat16 for avx512_bf16::decode_4bit: each 64-value chunk of a row as its 32
// even-index values, then its 32 odd-index ones; then the group sums, for a weight with zero.
DecodeInput bf16_input(const BFloat16Bits* x, int64_t m, const WeightView& w, void* scratch) {
  const int64_t k = w.k;
  uint16_t* ordered = static_cast<uint16_t*>(scratch);
  deinterleave(x, m * k, 32, 2, ordered, [](BFloat16Bits v) { return v.bits; });
  if (w.zero.data == nullptr) {
    return {ordered, nullptr};
  }
  float* sums = static_cast<float*>(scratch) + m * k / 2;
  sum_groups(x, m, k, w.group_size, sums);
  return {ordered, sums};
}

}  // namespace

int64_t grain_rows(int64_t row_bytes) {
  return std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(1, row_bytes));
}

DecodePlan plan_decode(Isa isa, OutputDtype dtype, int64_t m, const WeightView& w) {
  const int64_t k = w.k;
  const int64_t groups = k / w.group_size;
  if (isa >= Isa::kAvx512Bf16 && dtype == OutputDtype::kBFloat16 &&
      weight_bits(w.format) == 4 && w.group_size % 64 == 0) {
    return {DecodeKernel::kBf16FourBit, m * k / 2 + m * groups};
  }
  const bool packed = weight_bits(w.format) < 8;
  const bool lookup = isa >= Isa::kAvx512 && packed && w.group_size % lookup_chunk(w.format) == 0;
  const bool copy_x = lookup || dtype != OutputDtype::kFloat32;
  const int64_t sums = w.zero.data != nullptr && !lookup ? m * groups : 0;
  return {lookup ? DecodeKernel::kLookup : DecodeKernel::kFloat32, (copy_x ? m * k : 0) + sums};
}

DecodeInput prepare_decode_input(
    const DecodePlan& plan, const void* x, OutputDtype dtype, int64_t m, const WeightView& w,
    void* scratch) {
  if (plan.scratch_floats == 0) {
    return {x, nullptr};
  }
  float* floats = static_cast<float*>(scratch);
  switch (dtype) {
    case OutputDtype::kBFloat16: {
      const auto* bf16 = static_cast<const BFloat16Bits*>(x);
      if (plan.kernel == DecodeKernel::kBf16FourBit) {
        return bf16_input(bf16, m, w, scratch);
      }
      return float32_input(plan, bf16, m, w, floats);
    }
    case OutputDtype::kFloat16:
      return float32_input(plan, static_cast<const Float16Bits*>(x), m, w, floats);
    case OutputDtype::kFloat32:
      return float32_input(plan, static_cast<const float*>(x), m, w, floats);
  }
  return {x, nullptr};
}

bool decode_serves(const DecodeInput& in, int64_t m, const WeightView& w) {
  if (in.group_sums == nullptr) {
    return true;
  }
  const int64_t sums = m * (w.k / w.group_size);
  return std::all_of(in.group_sums, in.group_sums + sums, [](float s) { return std::isfinite(s); });
}

PrefillKernel plan_prefill(Isa isa, OutputDtype dtype) {
  return isa == Isa::kAmx && dtype == OutputDtype::kBFloat16 ? PrefillKernel::kAmx
                                                              : PrefillKernel::kDequantizeMatmul;
}

int64_t prefill_block_rows(int64_t k, OutputDtype dtype) {
  const int64_t element_bytes = dtype == OutputDtype::kFloat32 ? 4 : 2;
  return std::max<int64_t>(16, kPrefillBlockBytes / (k * element_bytes));
}

// x in panels of as many rows as fit kAmxPanelBytes packed (level-2 cache) with all of k, or,
// when that is fewer than kAmxPanelRows rows, panels of kAmxPanelRows rows and k in chunks of
// whole groups of the weight. The weight is dequantized once per panel, so k is split rather than
// panels made smaller (measured on 512 x 11008 x 4096 bf16: int4 1.04-1.09x dense in 3 chunks,
// 1.57x in panels of 32 rows).
AmxPlan plan_amx(int64_t m, const WeightView& w) {
  AmxPlan plan{};
  plan.k_steps = (w.k + 31) / 32;
  plan.x_blocks = (m + 31) / 32 * 2;
  plan.weight_blocks = (w.n + 31) / 32;
  plan.packed_values = plan.x_blocks * plan.k_steps * 512;
  const int64_t m_padded = (m + 31) / 32 * 32;
  const int64_t fit = kAmxPanelBytes / (plan.k_steps * 64) / 32 * 32;
  if (fit >= std::min(m_padded, kAmxPanelRows)) {
    plan.panel_rows = std::min(fit, m_padded);
    plan.chunk_steps = plan.k_steps;
    return plan;
  }
  plan.panel_rows = std::min(m_padded, kAmxPanelRows);
  // chunks of whole groups: a multiple of lcm(32, group_size) values, unless one group a row
  const int64_t unit = w.group_size == w.k ? 1 : std::lcm<int64_t>(32, w.group_size) / 32;
  const int64_t chunk_steps =
      std::max(unit, kAmxPanelBytes / (plan.panel_rows * 64) / unit * unit);
  plan.chunk_steps = std::min(chunk_steps, plan.k_steps);
  return plan;
}

bool int8_decode(Isa isa, int64_t m) {
  return m <= kDecodeMaxRows && isa >= Isa::kAvx512Bf16;
}

bool int8_product_in_float64(Isa isa) {
  return isa <= Isa::kAvx2;
}

void shift_int8(const int8_t* x, uint8_t* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = static_cast<uint8_t>(x[i]) ^ 0x80;  // x + 128
  }
}

}  // namespace quanta::qkernels::cpu
