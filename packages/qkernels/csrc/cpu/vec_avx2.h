// AVX2 vector operations of the linear kernels: 8 fp32 lanes, codes decoded 16 at a time.
// Include only from a file compiled with -mavx2 -mfma -mf16c.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "weight_codes.h"

namespace quanta::qkernels::cpu {
namespace {

struct Avx2 {
  using F = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = 4;  // 3 * 4 accumulators fit the 16 registers
  static constexpr int kStreams = 2;  // 2 weight rows x 2 activation rows fit too
  struct Pair {  // codes k .. k + 7 and k + 8 .. k + 15, as floats
    F lo, hi;
  };

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float value) { return _mm256_set1_ps(value); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(F v) {
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    return _mm_cvtss_f32(_mm_add_ss(half, _mm_movehdup_ps(half)));
  }

  static F int32_to_float(__m256i v) { return _mm256_cvtepi32_ps(v); }
  static __m128i load8(const uint8_t* p) {
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  }

  // The 16 float8 codes of `bytes` as floats (see Avx512::float8_to_float), widened to 16-bit
  // halves in one register and converted 8 at a time.
  template <WeightFormat Format>
  static Pair float8_to_float(__m128i bytes) {
    if constexpr (Format == WeightFormat::kFloat8E5M2) {
      return halves_to_float(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8));
    } else {
      const __m256i shifted = _mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7);
      const __m256i carry = _mm256_and_si256(
          _mm256_add_epi16(shifted, _mm256_set1_epi16(0x80)), _mm256_set1_epi16(0x4000));
      const Pair scaled = halves_to_float(_mm256_xor_si256(shifted, carry));
      const F unit = _mm256_set1_ps(256.0f);
      return {_mm256_mul_ps(scaled.lo, unit), _mm256_mul_ps(scaled.hi, unit)};
    }
  }
  static Pair halves_to_float(__m256i halves) {
    return {_mm256_cvtph_ps(_mm256_castsi256_si128(halves)),
            _mm256_cvtph_ps(_mm256_extracti128_si256(halves, 1))};
  }

  // table[index] for 8 indices below 16: each half of the table looked up by vpermps (which
  // reads the low 3 bits), the half chosen by bit 3, moved to the sign bit for vblendvps.
  static F lookup16(const float* table, __m256i index) {
    const F low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), index);
    const F high = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), index);
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
  }

  // Codes k .. k + 15 of a row; k * bits is a multiple of 8; table: the values of kLut4 codes.
  template <WeightFormat Format>
  static Pair decode(const uint8_t* row, int64_t k, const float* table) {
    if constexpr (Format == WeightFormat::kInt8) {
      return {int32_to_float(_mm256_cvtepi8_epi32(load8(row + k))),
              int32_to_float(_mm256_cvtepi8_epi32(load8(row + k + 8)))};
    } else if constexpr (Format == WeightFormat::kUInt4 || Format == WeightFormat::kLut4) {
      const __m128i bytes = load8(row + k / 2);
      const __m128i mask = _mm_set1_epi8(0x0F);
      const __m128i codes = _mm_unpacklo_epi8(
          _mm_and_si128(bytes, mask), _mm_and_si128(_mm_srli_epi16(bytes, 4), mask));
      const __m256i lo = _mm256_cvtepu8_epi32(codes);
      const __m256i hi = _mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8));
      if constexpr (Format == WeightFormat::kLut4) {
        return {lookup16(table, lo), lookup16(table, hi)};
      }
      return {int32_to_float(lo), int32_to_float(hi)};
    } else if constexpr (Format == WeightFormat::kUInt2) {
      uint32_t word;
      std::memcpy(&word, row + k / 4, sizeof(word));
      const __m256i broadcast = _mm256_set1_epi32(static_cast<int>(word));
      const __m256i mask = _mm256_set1_epi32(3);
      const __m256i low_shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
      const __m256i high_shifts = _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30);
      return {int32_to_float(_mm256_and_si256(_mm256_srlv_epi32(broadcast, low_shifts), mask)),
              int32_to_float(_mm256_and_si256(_mm256_srlv_epi32(broadcast, high_shifts), mask))};
    } else {
      return float8_to_float<Format>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k)));
    }
  }

  static void store(float* out, F v) { _mm256_storeu_ps(out, v); }
  static void store(BFloat16Bits* out, F v) {
    const __m256i lanes = (__m256i)bfloat16_lanes(v);
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(out),
        _mm_packus_epi32(_mm256_castsi256_si128(lanes), _mm256_extracti128_si256(lanes, 1)));
  }
  static void store(Float16Bits* out, F v) {
    _mm_storeu_si128(
        reinterpret_cast<__m128i*>(out),
        _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

}  // namespace
}  // namespace quanta::qkernels::cpu
