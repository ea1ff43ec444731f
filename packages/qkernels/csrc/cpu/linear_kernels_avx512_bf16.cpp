// The linear kernels for AVX512-BF16 (compile flags in CMakeLists.txt): those of AVX-512, with
// the dequantizer rounding to bfloat16 in one instruction, plus a decode kernel for bfloat16
// activations and 4-bit weights. A uint4 nibble q becomes the bfloat16 128 + q with one OR
// (0x4300 | q), so 64 codes cost one widening load, three logic ops and two vdpbf16ps (each sums
// 32 products in pairs into 16 fp32 lanes): about half the work of the fp32 path. The 128 is
// taken out with the group's zero: sum x * (q - z) = sum x * (128 + q) - (128 + z) * sum x, for
// all groups at once after the dot products. A lut4 code is looked up (vpermw) in the group's
// values table[q] * scale rounded to bfloat16, the weight the reference multiplies. Also the
// exact int8 x int8 product of a few rows with AVX512-VNNI (every processor with AVX512-BF16 has
// it), and a dequantizer of its own for bfloat16 output of 4-bit codes (looked up in a table of
// each group's 16 values) and int8 codes.
#include <immintrin.h>

#include <cstdint>

#include "linear_kernels_impl.h"
#include "qkernels/linear_cpu.h"
#include "vec_avx512.h"

namespace quanta::qkernels::cpu {
namespace {

struct Avx512Bf16 : Avx512 {
  using Avx512::store;
  static void store(BFloat16Bits* out, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh(v));
  }
};

}  // namespace
}  // namespace quanta::qkernels::cpu

namespace quanta::qkernels::cpu::avx512_bf16 {
namespace {

// (q - zero) * scale, and when both factors are NaN the NaN of q - zero, as in the generic
// dequantizer: x86 returns the NaN of the first operand, and the compiler may swap the two.
__m512 affine_value(__m512 q, __m512 zero, __m512 scale) {
  const __m512 shifted = _mm512_sub_ps(q, zero);
  const __mmask16 nan = _mm512_cmp_ps_mask(shifted, shifted, _CMP_UNORD_Q);
  return _mm512_mask_mov_ps(_mm512_mul_ps(shifted, scale), nan, shifted);
}

// Codes [0, size) of a 4-bit group (size / 2 bytes at src) as bfloat16: the 16 values of the
// group (values), rounded once into a word table, are looked up 32 codes at a time with vpermw.
void dequantize_4bit_group(const uint8_t* src, int64_t size, __m512 values, uint16_t* dst) {
  // Words 0 .. 15 and 16 .. 31 both hold the values of codes 0 .. 15: vpermw reads 5 bits of
  // an index, and bit 4 of ours is the low bit of the other code of the byte.
  const __m512i table = _mm512_broadcast_i64x4((__m256i)_mm512_cvtneps_pbh(values));
  // The 16 bytes of a step are loaded into every 128-bit lane, so that vpshufb can fill dword i
  // with four copies of byte i (codes 2i and 2i + 1); shifting its high word right by 4 leaves
  // code 2i in the low bits of the low word and code 2i + 1 in those of the high word: the
  // vpermw indices of the two codes, in order.
  const __m512i spread = _mm512_setr_epi32(
      0x00000000, 0x01010101, 0x02020202, 0x03030303, 0x04040404, 0x05050505, 0x06060606,
      0x07070707, 0x08080808, 0x09090909, 0x0A0A0A0A, 0x0B0B0B0B, 0x0C0C0C0C, 0x0D0D0D0D,
      0x0E0E0E0E, 0x0F0F0F0F);
  const __m512i odd_shift = _mm512_set1_epi32(4 << 16);
  for (int64_t i = 0; i < size; i += 32) {
    const __m512i bytes =
        _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i / 2)));
    const __m512i index = _mm512_srlv_epi16(_mm512_shuffle_epi8(bytes, spread), odd_shift);
    _mm512_storeu_si512(dst + i, _mm512_permutexvar_epi16(index, table));
  }
}

// Codes [0, size) of a symmetric group (int8 or float8) as bfloat16, 32 at a time: two vectors
// of values rounded by one vcvtne2ps2bf16 into one 64-byte store. Symmetric weights have no zero
// point, and (q - 0) * scale, the generic dequantizer's value, is q * scale exactly.
template <WeightFormat Format>
void dequantize_symmetric_group(const uint8_t* src, int64_t size, __m512 scale, uint16_t* dst) {
  const auto value = [&](const uint8_t* p) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (Format == WeightFormat::kInt8) {
      return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), scale);
    } else {
      return _mm512_mul_ps(Avx512::float8_to_float<Format>(bytes), scale);
    }
  };
  for (int64_t i = 0; i < size; i += 32) {
    _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(value(src + i + 16), value(src + i)));
  }
}

// The bfloat16 dequantizer of 4-bit, int8 and float8 codes (the prefill path): bit for bit the
// generic one ((q - zero) * scale in fp32, rounded by vcvtneps2bf16), about 2.4x (4-bit) and 1.4x
// (int8) faster in cache; blocks larger than the L2 cache are mostly bound by the memory writes.
// Groups that are not whole 32-code steps (the generic dequantizer rounds their tails in scalar
// code), 2-bit codes and other outputs take the generic one.
void dequantize_bf16(
    const WeightView& w, OutputDtype dtype, void* out, int64_t n_begin, int64_t n_end) {
  if (dtype != OutputDtype::kBFloat16 || w.group_size % 32 != 0 ||
      w.format == WeightFormat::kUInt2) {
    return dequantize<Avx512Bf16>(w, dtype, out, n_begin, n_end);
  }
  const int64_t groups = w.k / w.group_size;
  const int64_t group_bytes = w.group_size * weight_bits(w.format) / 8;
  const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 table = w.table != nullptr ? _mm512_loadu_ps(w.table) : codes;
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* src = w.codes + n * w.row_bytes + g * group_bytes;
      uint16_t* dst = static_cast<uint16_t*>(out) + n * w.k + g * w.group_size;
      const __m512 scale = _mm512_set1_ps(param_value(w.scale, n * groups + g));
      const __m512 zero = _mm512_set1_ps(param_value(w.zero, n * groups + g));
      switch (w.format) {
        case WeightFormat::kUInt4:
          dequantize_4bit_group(src, w.group_size, affine_value(codes, zero, scale), dst);
          break;
        case WeightFormat::kLut4:
          dequantize_4bit_group(src, w.group_size, _mm512_mul_ps(table, scale), dst);
          break;
        case WeightFormat::kFloat8E4M3:
          dequantize_symmetric_group<WeightFormat::kFloat8E4M3>(src, w.group_size, scale, dst);
          break;
        case WeightFormat::kFloat8E5M2:
          dequantize_symmetric_group<WeightFormat::kFloat8E5M2>(src, w.group_size, scale, dst);
          break;
        default:
          dequantize_symmetric_group<WeightFormat::kInt8>(src, w.group_size, scale, dst);
      }
    }
  }
}

}  // namespace

const LinearKernels kLinearKernels = [] {
  LinearKernels kernels = make_linear_kernels<Avx512Bf16>();
  kernels.dequantize = &dequantize_bf16;
  return kernels;
}();

namespace {

constexpr int64_t kChunk = 64;  // codes per step: 32 packed bytes
constexpr int kMaxRows = 8;     // 3 * 8 accumulators fit the 32 registers
constexpr int kStreams = 4;     // weight rows at once for one or two activation rows

__m512bh as_bf16(__m512i v) {
  return reinterpret_cast<__m512bh&>(v);
}

// Elements i .. i + 15 of a parameter array (the lanes of `lanes`; the others 0), as floats.
__m512 load_params(const Params& params, int64_t i, __mmask16 lanes) {
  switch (params.type) {
    case ParamType::kFloat32:
      return _mm512_maskz_loadu_ps(lanes, static_cast<const float*>(params.data) + i);
    case ParamType::kBFloat16: {
      const __m256i bits =
          _mm256_maskz_loadu_epi16(lanes, static_cast<const uint16_t*>(params.data) + i);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
    }
    case ParamType::kFloat16:
      return _mm512_cvtph_ps(
          _mm256_maskz_loadu_epi16(lanes, static_cast<const uint16_t*>(params.data) + i));
    case ParamType::kUInt8:
      return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(
          _mm_maskz_loadu_epi8(lanes, static_cast<const uint8_t*>(params.data) + i)));
    case ParamType::kFloat8E4M3:
    case ParamType::kFloat8E8M0: {  // scales of lut4 weights, which read no zero terms
      alignas(64) float values[16] = {};
      for (int j = 0; j < 16; ++j) {
        values[j] = (lanes >> j) & 1 ? param_value(params, i + j) : 0.0f;
      }
      return _mm512_load_ps(values);
    }
  }
  return _mm512_setzero_ps();
}

// sum over the groups g of row n of scale * (128 + zero) * group_sum: the 128 of the codes and
// the zero point, taken out once per output, 16 groups per step, after the dot products.
float shifted_zero_terms(const WeightView& w, int64_t n, const float* group_sums) {
  const int64_t groups = w.k / w.group_size;
  const __m512 bf16_offset = _mm512_set1_ps(128.0f);
  __m512 total = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; g += 16) {
    const __mmask16 lanes = groups - g >= 16 ? 0xFFFF : (1u << (groups - g)) - 1;
    const int64_t i = n * groups + g;
    const __m512 shifted = _mm512_add_ps(load_params(w.zero, i, lanes), bf16_offset);
    const __m512 weighted = _mm512_mul_ps(load_params(w.scale, i, lanes), shifted);
    total = _mm512_fmadd_ps(weighted, _mm512_maskz_loadu_ps(lanes, group_sums + g), total);
  }
  return _mm512_reduce_add_ps(total);
}

// out[m0 .. m0 + Rows, ns[0 .. Cols]] (see decode_block in linear_kernels_impl.h), for kUInt4
// or kLut4 weights.
template <WeightFormat Format, int Rows, int Cols>
void decode_block(const Bf16DecodeProblem& p, int64_t m0, const int64_t* ns) {
  constexpr bool lut4 = Format == WeightFormat::kLut4;
  const WeightView& w = p.weight;
  const int64_t k = w.k;
  const int64_t groups = k / w.group_size;
  const uint16_t* x = p.x + m0 * k;
  const __m512i low_nibble = _mm512_set1_epi16(0x0F);
  const __m512i bf16_128 = _mm512_set1_epi16(0x4300);
  const uint8_t* rows[Cols];
  for (int c = 0; c < Cols; ++c) {
    rows[c] = w.codes + ns[c] * w.row_bytes;
  }

  __m512 acc[Rows][Cols];
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Cols; ++c) {
      acc[r][c] = _mm512_setzero_ps();
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = g * w.group_size;
    // lut4: the group's values in bfloat16 words 0 .. 15, and again in 16 .. 31, as vpermw
    // reads 5 bits of an index and the widened byte holds the other code's low bit in bit 4.
    __m512i values[Cols];
    if constexpr (lut4) {
      const __m512 table = _mm512_loadu_ps(w.table);
      for (int c = 0; c < Cols; ++c) {
        const __m512 scale = _mm512_set1_ps(param_value(w.scale, ns[c] * groups + g));
        const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_mul_ps(table, scale));
        values[c] = _mm512_broadcast_i64x4((__m256i)rounded);
      }
    }
    __m512 dot_even[Rows][Cols], dot_odd[Rows][Cols];
    for (int r = 0; r < Rows; ++r) {
      for (int c = 0; c < Cols; ++c) {
        dot_even[r][c] = dot_odd[r][c] = _mm512_setzero_ps();
      }
    }
    for (int64_t kk = begin; kk < begin + w.group_size; kk += kChunk) {
      for (int c = 0; c < Cols; ++c) {
        __builtin_prefetch(rows[c] + kk / 2 + kPrefetchBytes);
        const __m512i bytes = _mm512_cvtepu8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[c] + kk / 2)));
        __m512bh even, odd;
        if constexpr (lut4) {
          even = as_bf16(_mm512_permutexvar_epi16(bytes, values[c]));
          odd = as_bf16(_mm512_permutexvar_epi16(_mm512_srli_epi16(bytes, 4), values[c]));
        } else {
          // (bytes & 0x0F) | 0x4300: the even codes; (bytes >> 4) | 0x4300: the odd ones.
          even = as_bf16(_mm512_ternarylogic_epi32(bytes, low_nibble, bf16_128, 0xEA));
          odd = as_bf16(_mm512_or_si512(_mm512_srli_epi16(bytes, 4), bf16_128));
        }
        for (int r = 0; r < Rows; ++r) {
          const uint16_t* xr = x + r * k + kk;
          dot_even[r][c] =
              _mm512_dpbf16_ps(dot_even[r][c], as_bf16(_mm512_loadu_si512(xr)), even);
          dot_odd[r][c] =
              _mm512_dpbf16_ps(dot_odd[r][c], as_bf16(_mm512_loadu_si512(xr + 32)), odd);
        }
      }
    }
    for (int c = 0; c < Cols; ++c) {
      const __m512 scale = _mm512_set1_ps(lut4 ? 1.0f : param_value(w.scale, ns[c] * groups + g));
      for (int r = 0; r < Rows; ++r) {
        const __m512 dot = _mm512_add_ps(dot_even[r][c], dot_odd[r][c]);
        acc[r][c] = lut4 ? _mm512_add_ps(dot, acc[r][c]) : _mm512_fmadd_ps(dot, scale, acc[r][c]);
      }
    }
  }
  for (int c = 0; c < Cols; ++c) {
    for (int r = 0; r < Rows; ++r) {
      const float zero_terms =
          lut4 ? 0.0f : shifted_zero_terms(w, ns[c], p.group_sums + (m0 + r) * groups);
      const float value = _mm512_reduce_add_ps(acc[r][c]) - zero_terms + param_value(p.bias, ns[c]);
      store_output(p.out, p.out_dtype, (m0 + r) * w.n + ns[c], value);
    }
  }
}

template <WeightFormat Format, int Cols>
void decode_columns_of(const Bf16DecodeProblem& p, const int64_t* ns) {
  constexpr int kRows = Cols == 1 ? kMaxRows : 2;
  for_row_blocks<kRows>(
      p.m, [&]<int R>(int64_t m0) { decode_block<Format, R, Cols>(p, m0, ns); });
}

template <WeightFormat Format>
void decode_columns(const Bf16DecodeProblem& p, int64_t n_begin, int64_t n_end) {
  for_column_streams<kStreams>(
      p.m, n_begin, n_end, [&](const int64_t* ns) { decode_columns_of<Format, kStreams>(p, ns); },
      [&](const int64_t* ns) { decode_columns_of<Format, 1>(p, ns); });
}

}  // namespace

void decode_4bit(const Bf16DecodeProblem& p, int64_t n_begin, int64_t n_end) {
  if (p.weight.format == WeightFormat::kLut4) {
    return decode_columns<WeightFormat::kLut4>(p, n_begin, n_end);
  }
  decode_columns<WeightFormat::kUInt4>(p, n_begin, n_end);
}

namespace {

// acc[r0 .. r0 + Rows, n_begin .. n_end) of an Int8DecodeProblem: each weight row is read once,
// 64 codes per step (the last step masked), against Rows activation rows.
template <int Rows>
void int8_product_rows(const Int8DecodeProblem& p, int64_t r0, int64_t n_begin, int64_t n_end) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const int8_t* row = p.codes + n * p.k;
    __m512i acc[Rows];
    for (int r = 0; r < Rows; ++r) {
      acc[r] = _mm512_setzero_si512();
    }
    __m512i code_sums = _mm512_setzero_si512();
    for (int64_t kk = 0; kk < p.k; kk += 64) {
      const __mmask64 lanes = p.k - kk >= 64 ? ~__mmask64{0} : (__mmask64{1} << (p.k - kk)) - 1;
      __builtin_prefetch(row + kk + kPrefetchBytes);
      const __m512i codes = _mm512_maskz_loadu_epi8(lanes, row + kk);
      code_sums = _mm512_dpbusd_epi32(code_sums, ones, codes);
      for (int r = 0; r < Rows; ++r) {
        const __m512i x = _mm512_maskz_loadu_epi8(lanes, p.x + (r0 + r) * p.k + kk);
        acc[r] = _mm512_dpbusd_epi32(acc[r], x, codes);
      }
    }
    const int32_t offset = 128 * _mm512_reduce_add_epi32(code_sums);
    for (int r = 0; r < Rows; ++r) {
      p.acc[(r0 + r) * p.n + n] = _mm512_reduce_add_epi32(acc[r]) - offset;
    }
  }
}

}  // namespace

void decode_int8_product(const Int8DecodeProblem& p, int64_t n_begin, int64_t n_end) {
  for_row_blocks<8>(
      p.m, [&]<int R>(int64_t r0) { int8_product_rows<R>(p, r0, n_begin, n_end); });
}

}  // namespace quanta::qkernels::cpu::avx512_bf16
