// The host side of tests/test_cuda_decode_math.py: the math of the CUDA decode kernels
// (qkernels/cuda_decode_math.h, compiled here by the host C++ compiler) behind a C ABI for
// ctypes. qk_linear_decode runs every lane's lane_dot of a launch and adds the lanes' sums, as the
// kernel's warps do, so that the index math is checked without a GPU.
#include <cstdint>

#include "qkernels/cuda_decode_math.h"

namespace cd = quanta::qkernels::cuda_decode;

namespace {

constexpr int kLanes = 32;

cd::DecodeProblem problem(
    const void* x, int act, const uint8_t* codes, int format, const void* scale, int scale_type,
    const void* zero, int zero_type, const void* bias, int bias_type, const float* table,
    int64_t m, int64_t n, int64_t k, int64_t group_size, void* out) {
  return cd::make_problem(
      x, out, codes, scale, static_cast<cd::ParamType>(scale_type), zero,
      static_cast<cd::ParamType>(zero_type), bias, static_cast<cd::ParamType>(bias_type), table,
      m, n, k, group_size, static_cast<cd::CodeFormat>(format), static_cast<cd::ActType>(act));
}

// The value table of a tabled format, as the kernel fills its shared memory.
template <cd::CodeFormat Format>
void fill_table(const float* lut4, float (&table)[cd::kCodeTableSize]) {
  if constexpr (cd::CodeTraits<Format>::tabled) {
    for (int i = 0; i < cd::kCodeTableSize; ++i) {
      table[i] = cd::code_table_entry<Format>(i, lut4);
    }
  }
}

}  // namespace

extern "C" {

void qk_bfloat16_to_float(const uint16_t* in, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = cd::bfloat16_to_float(in[i]);
}

void qk_float16_to_float(const uint16_t* in, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = cd::float16_to_float(in[i]);
}

void qk_float_to_bfloat16(const float* in, uint16_t* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = cd::float_to_bfloat16(in[i]);
}

void qk_float_to_float16(const float* in, uint16_t* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] = cd::float_to_float16(in[i]);
}

// The value of every byte as a code of `format` (the low bits only for a packed format).
void qk_code_values(int format, const float* lut4, float* out) {
  cd::dispatch(
      static_cast<cd::CodeFormat>(format), cd::ActType::kFloat32,
      [&]<cd::CodeFormat Format, cd::ActType>() {
        constexpr uint32_t mask = (1u << cd::CodeTraits<Format>::bits) - 1u;
        float table[cd::kCodeTableSize];
        fill_table<Format>(lut4, table);
        for (uint32_t i = 0; i < cd::kCodeTableSize; ++i) {
          out[i] = cd::code_value<Format>(i & mask, table);
        }
      });
}

// A scale/zero/bias array of param_type read as floats (param_value).
void qk_param_values(const void* data, int param_type, float* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = cd::param_value(data, static_cast<cd::ParamType>(param_type), i);
  }
}

// The weight [n, k] in fp32, dequantized chunk by chunk and step by step as lane_dot does.
void qk_dequantize(
    const uint8_t* codes, int format, const void* scale, int scale_type, const void* zero,
    int zero_type, const float* lut4, int64_t n, int64_t k, int64_t group_size, float* weight) {
  const cd::DecodeProblem p = problem(
      nullptr, 0, codes, format, scale, scale_type, zero, zero_type, nullptr, 0, lut4, 1, n, k,
      group_size, nullptr);
  cd::dispatch(p.format, p.act, [&]<cd::CodeFormat Format, cd::ActType>() {
    using Traits = cd::CodeTraits<Format>;
    float table[cd::kCodeTableSize];
    fill_table<Format>(lut4, table);
    for (int64_t row = 0; row < n; ++row) {
      for (int64_t offset = 0; offset < p.row_bytes; offset += cd::kChunkBytes) {
        cd::Chunk chunk =
            cd::load_chunk(codes + row * p.row_bytes, offset, p.row_bytes, p.codes_vector);
        for (int step = 0; step < Traits::chunk_codes / cd::kStepCodes; ++step) {
          const int64_t first = offset * Traits::codes_per_byte + step * cd::kStepCodes;
          if (first >= k) {
            break;
          }
          const int64_t group = p.step_in_one_group ? first / group_size : 0;
          float w[cd::kStepCodes];
          cd::dequantize_step<Format>(p, chunk, row, first, group, table, w);
          cd::next_step<Format>(chunk);
          for (int j = 0; j < cd::kStepCodes && first + j < k; ++j) {
            weight[row * k + first + j] = w[j];
          }
        }
      }
    }
  });
}

// out [m, n] of the decode kernel, computed on the host lane by lane.
void qk_linear_decode(
    const void* x, int act, const uint8_t* codes, int format, const void* scale, int scale_type,
    const void* zero, int zero_type, const void* bias, int bias_type, const float* lut4,
    int64_t m, int64_t n, int64_t k, int64_t group_size, void* out) {
  const cd::DecodeProblem p = problem(
      x, act, codes, format, scale, scale_type, zero, zero_type, bias, bias_type, lut4, m, n, k,
      group_size, out);
  cd::dispatch(p.format, p.act, [&]<cd::CodeFormat Format, cd::ActType Act>() {
    float table[cd::kCodeTableSize];
    fill_table<Format>(lut4, table);
    for (int64_t n0 = 0; n0 < n; n0 += cd::kRowsPerWarp) {
      float sums[cd::kRowsPerWarp][cd::kMaxRows] = {};
      for (int lane = 0; lane < kLanes; ++lane) {
        float acc[cd::kRowsPerWarp][cd::kMaxRows] = {};
        cd::lane_dot<Format, Act, cd::kMaxRows>(p, n0, lane, kLanes, table, acc);
        for (int r = 0; r < cd::kRowsPerWarp; ++r) {
          for (int row = 0; row < cd::kMaxRows; ++row) sums[r][row] += acc[r][row];
        }
      }
      for (int r = 0; r < cd::kRowsPerWarp && n0 + r < n; ++r) {
        for (int row = 0; row < m; ++row) cd::store_out<Act>(p, row, n0 + r, sums[r][row]);
      }
    }
  });
}

}  // extern "C"
