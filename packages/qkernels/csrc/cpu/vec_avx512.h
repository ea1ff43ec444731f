// AVX-512 vector operations of the linear kernels: 16 fp32 lanes, codes decoded 32 at a time.
// Include only from a file compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "weight_codes.h"

namespace quanta::qkernels::cpu {
namespace {

struct Avx512 {
  using F = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = 8;  // 3 * 8 accumulators fit the 32 registers
  static constexpr int kStreams = 4;  // 4 weight rows x 2 activation rows fit too
  struct Pair {  // codes k .. k + 15 and k + 16 .. k + 31, as floats
    F lo, hi;
  };

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float value) { return _mm512_set1_ps(value); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(F v) { return _mm512_reduce_add_ps(v); }

  static F int32_to_float(__m512i v) { return _mm512_cvtepi32_ps(v); }

  // Table lookups (the lookup decode): 16 bytes widened to one a lane, shifted, and looked up by
  // vpermps, which reads the low 4 bits of each lane.
  using Indices = __m512i;
  static Indices load_bytes(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  template <int Bits>
  static Indices shift_right(Indices v) {
    return _mm512_srli_epi32(v, Bits);
  }
  static F lookup(F table, Indices index) { return _mm512_permutexvar_ps(index, table); }
  // Lane i holds i mod 2^Bits: the code that index i looks up.
  template <int Bits>
  static F table_codes() {
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return int32_to_float(_mm512_and_si512(lanes, _mm512_set1_epi32((1 << Bits) - 1)));
  }
  static F load_int32(const int32_t* p) { return int32_to_float(_mm512_loadu_si512(p)); }

  // rows[i][j] becomes rows[j][i]: 32-bit, then 64-bit interleaves, then two rounds of 128-bit
  // lane shuffles.
  static void transpose16(F (&rows)[16]) {
    __m512i a[16], b[16];
    for (int i = 0; i < 16; i += 2) {
      a[i] = _mm512_unpacklo_epi32(_mm512_castps_si512(rows[i]), _mm512_castps_si512(rows[i + 1]));
      a[i + 1] =
          _mm512_unpackhi_epi32(_mm512_castps_si512(rows[i]), _mm512_castps_si512(rows[i + 1]));
    }
    for (int i = 0; i < 16; i += 4) {
      b[i] = _mm512_unpacklo_epi64(a[i], a[i + 2]);
      b[i + 1] = _mm512_unpackhi_epi64(a[i], a[i + 2]);
      b[i + 2] = _mm512_unpacklo_epi64(a[i + 1], a[i + 3]);
      b[i + 3] = _mm512_unpackhi_epi64(a[i + 1], a[i + 3]);
    }
    for (int h = 0; h < 16; h += 8) {
      for (int i = 0; i < 4; ++i) {
        a[h + i] = _mm512_shuffle_i32x4(b[h + i], b[h + i + 4], 0x88);
        a[h + i + 4] = _mm512_shuffle_i32x4(b[h + i], b[h + i + 4], 0xDD);
      }
    }
    for (int i = 0; i < 8; ++i) {
      rows[i] = _mm512_castsi512_ps(_mm512_shuffle_i32x4(a[i], a[i + 8], 0x88));
      rows[i + 8] = _mm512_castsi512_ps(_mm512_shuffle_i32x4(a[i], a[i + 8], 0xDD));
    }
  }

  // The 16 float8 codes of `bytes` as floats. e5m2 is the high byte of an IEEE half. e4m3 codes,
  // sign-extended to 16 bits and shifted left by 7, are a half (once bit 14, a copy of the sign,
  // is cleared) that reads as value / 2^8, subnormals included: exponent bias 15 instead of 7.
  // Bit 14 of w + 0x80 is bit 14 of w flipped by the carry out of bits 13..7, which only the
  // NaN magnitude S.1111.111 (all ones there) produces: w ^ ((w + 0x80) & 0x4000), ternary
  // logic 0x78, puts that carry in place of the sign's copy, so the NaN code reads as a half
  // NaN (exponent all ones, mantissa not zero) instead of 480.
  template <WeightFormat Format>
  static F float8_to_float(__m128i bytes) {
    if constexpr (Format == WeightFormat::kFloat8E5M2) {
      return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8));
    } else {
      const __m256i shifted = _mm256_slli_epi16(_mm256_cvtepi8_epi16(bytes), 7);
      const __m256i half = _mm256_ternarylogic_epi32(
          shifted, _mm256_add_epi16(shifted, _mm256_set1_epi16(0x80)), _mm256_set1_epi16(0x4000),
          0x78);
      return _mm512_mul_ps(_mm512_cvtph_ps(half), _mm512_set1_ps(256.0f));
    }
  }

  // Codes k .. k + 31 of a row; k * bits is a multiple of 8; table: the values of kLut4 codes.
  template <WeightFormat Format>
  static Pair decode(const uint8_t* row, int64_t k, const float* table) {
    if constexpr (Format == WeightFormat::kInt8) {
      const auto* p = reinterpret_cast<const __m128i*>(row + k);
      return {int32_to_float(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))),
              int32_to_float(_mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1)))};
    } else if constexpr (Format == WeightFormat::kUInt4 || Format == WeightFormat::kLut4) {
      // Byte i holds codes 2i (low nibble) and 2i + 1: split the nibbles, interleave them back.
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2));
      const __m128i mask = _mm_set1_epi8(0x0F);
      const __m128i even = _mm_and_si128(bytes, mask);
      const __m128i odd = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
      const __m512i lo = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(even, odd));
      const __m512i hi = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(even, odd));
      if constexpr (Format == WeightFormat::kLut4) {
        const F values = _mm512_loadu_ps(table);
        return {lookup(values, lo), lookup(values, hi)};
      }
      return {int32_to_float(lo), int32_to_float(hi)};
    } else if constexpr (Format == WeightFormat::kUInt2) {
      // Each 32-bit word holds 16 codes: broadcast it and shift each lane to its own code.
      uint32_t words[2];
      std::memcpy(words, row + k / 4, sizeof(words));
      const __m512i shifts =
          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      const __m512i mask = _mm512_set1_epi32(3);
      const auto lanes = [&](uint32_t word) {
        const __m512i codes = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(word)), shifts);
        return int32_to_float(_mm512_and_si512(codes, mask));
      };
      return {lanes(words[0]), lanes(words[1])};
    } else {
      const auto* p = reinterpret_cast<const __m128i*>(row + k);
      return {float8_to_float<Format>(_mm_loadu_si128(p)),
              float8_to_float<Format>(_mm_loadu_si128(p + 1))};
    }
  }

  static void store(float* out, F v) { _mm512_storeu_ps(out, v); }
  static void store(BFloat16Bits* out, F v) {
    const __m512i lanes = (__m512i)bfloat16_lanes(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(lanes));
  }
  static void store(Float16Bits* out, F v) {
    _mm256_storeu_si256(
        reinterpret_cast<__m256i*>(out),
        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

}  // namespace
}  // namespace quanta::qkernels::cpu
