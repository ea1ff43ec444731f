// Scalar reading of one weight code and scalar float conversions, shared by every instruction-set
// variant of the linear kernels (tails of vector loops, and the whole portable path).
//
// Everything here has internal linkage on purpose: each kernel file is compiled with its own
// instruction-set flags, and an inline function with external linkage could be merged across
// them by the linker, running AVX-512 code on a processor without it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "qkernels/linear_cpu.h"

namespace quanta::qkernels::cpu {
namespace {

// Destinations of a dequantized weight in 16-bit float formats, as raw bits.
struct BFloat16Bits {
  uint16_t bits;
};
struct Float16Bits {
  uint16_t bits;
};

inline uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

inline float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// float8 bits to float: e4m3fn (bias 7, no infinities, S.1111.111 is NaN) or e5m2 (IEEE-like).
template <WeightFormat Format>
inline float float8_value(uint8_t code) {
  constexpr bool e4m3 = Format == WeightFormat::kFloat8E4M3;
  constexpr int mantissa_bits = e4m3 ? 3 : 2;
  constexpr int bias = e4m3 ? 7 : 15;
  constexpr int exponent_max = e4m3 ? 15 : 31;
  const int exponent = (code & 0x7F) >> mantissa_bits;
  const int mantissa = code & ((1 << mantissa_bits) - 1);
  const float sign = (code & 0x80) ? -1.0f : 1.0f;
  if (exponent == exponent_max && (!e4m3 || mantissa == 7)) {
    return (e4m3 || mantissa != 0) ? __builtin_nanf("") : sign * __builtin_inff();
  }
  if (exponent == 0) {  // subnormal: mantissa * 2^(1 - bias - mantissa_bits)
    return sign * __builtin_ldexpf(static_cast<float>(mantissa), 1 - bias - mantissa_bits);
  }
  const float significand = static_cast<float>(mantissa + (1 << mantissa_bits));
  return sign * __builtin_ldexpf(significand, exponent - bias - mantissa_bits);
}

// float8_value of every byte, computed once: the portable path reads float8 codes from here.
template <WeightFormat Format>
inline const float* float8_table() {
  static const auto table = [] {
    struct Table {
      float values[256];
    } t;
    for (int code = 0; code < 256; ++code) {
      t.values[code] = float8_value<Format>(static_cast<uint8_t>(code));
    }
    return t;
  }();
  return table.values;
}

// Code k of a weight row, as a float (before zero and scale); table: the values of kLut4 codes.
template <WeightFormat Format>
inline float code_value(const uint8_t* row, int64_t k, const float* table) {
  if constexpr (Format == WeightFormat::kInt8) {
    return static_cast<float>(static_cast<int8_t>(row[k]));
  } else if constexpr (Format == WeightFormat::kUInt4) {
    return static_cast<float>((row[k / 2] >> ((k % 2) * 4)) & 0xF);
  } else if constexpr (Format == WeightFormat::kLut4) {
    return table[(row[k / 2] >> ((k % 2) * 4)) & 0xF];
  } else if constexpr (Format == WeightFormat::kUInt2) {
    return static_cast<float>((row[k / 4] >> ((k % 4) * 2)) & 0x3);
  } else {
    return float8_table<Format>()[row[k]];
  }
}

// IEEE half bits to float (exact: subnormals, infinities and NaN included).
inline float half_value(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1Fu;
  const uint32_t mantissa = bits & 0x3FFu;
  if (exponent == 0) {
    const float magnitude = __builtin_ldexpf(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  }
  const uint32_t wide_exponent = exponent == 0x1F ? 0xFFu : exponent + 112;
  return bits_float(sign | (wide_exponent << 23) | (mantissa << 13));
}

// e8m0 bits to float: 2^(e - 127), 0xFF NaN (e = 0 is the float subnormal 2^-127).
inline float e8m0_value(uint8_t e) {
  if (e == 0xFF) {
    return __builtin_nanf("");
  }
  return e == 0 ? bits_float(0x00400000u) : bits_float(static_cast<uint32_t>(e) << 23);
}

// An element of float32 or 16-bit float activations, as a float (exact).
inline float element_value(float value) {
  return value;
}
inline float element_value(BFloat16Bits value) {
  return bits_float(static_cast<uint32_t>(value.bits) << 16);
}
inline float element_value(Float16Bits value) {
  return half_value(value.bits);
}

// Element i of a parameter array, as a float; 0 for none.
inline float param_value(const Params& params, int64_t i) {
  if (params.data == nullptr) {
    return 0.0f;
  }
  switch (params.type) {
    case ParamType::kFloat32:
      return static_cast<const float*>(params.data)[i];
    case ParamType::kBFloat16:
      return bits_float(static_cast<uint32_t>(static_cast<const uint16_t*>(params.data)[i]) << 16);
    case ParamType::kFloat16:
      return half_value(static_cast<const uint16_t*>(params.data)[i]);
    case ParamType::kUInt8:
      return static_cast<float>(static_cast<const uint8_t*>(params.data)[i]);
    case ParamType::kFloat8E4M3:
      return float8_table<WeightFormat::kFloat8E4M3>()[static_cast<const uint8_t*>(params.data)[i]];
    case ParamType::kFloat8E8M0:
      return e8m0_value(static_cast<const uint8_t*>(params.data)[i]);
  }
  return 0.0f;
}

// Elements [begin, begin + count) of a parameter array as floats (zeros for none), with the
// dtype switch outside the loop: the decode kernels read a row's group scales and zeros through
// this a block at a time, so that small groups (32 codes) pay no switch per group.
inline void param_values(const Params& params, int64_t begin, int64_t count, float* out) {
  if (params.data == nullptr) {
    std::fill(out, out + count, 0.0f);
    return;
  }
  switch (params.type) {
    case ParamType::kFloat32:
      std::copy_n(static_cast<const float*>(params.data) + begin, count, out);
      return;
    case ParamType::kUInt8:
      std::copy_n(static_cast<const uint8_t*>(params.data) + begin, count, out);
      return;
    case ParamType::kBFloat16:
      for (int64_t i = 0; i < count; ++i) {
        const uint16_t bits = static_cast<const uint16_t*>(params.data)[begin + i];
        out[i] = bits_float(static_cast<uint32_t>(bits) << 16);
      }
      return;
    default:
      for (int64_t i = 0; i < count; ++i) {
        out[i] = param_value(params, begin + i);
      }
  }
}

// float to bfloat16, rounding to nearest even (NaN stays NaN).
inline uint16_t bfloat16_bits(float value) {
  const uint32_t bits = float_bits(value);
  if ((bits & 0x7FFFFFFF) > 0x7F800000) {
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  }
  return static_cast<uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

// bfloat16_bits of every lane of a vector of floats, in the low 16 bits of each 32-bit lane: the
// one rounding of every instruction set's vector store, written with GCC vector extensions (which
// compile it to that set's instructions) so that no store can drift from it.
template <class Floats>
inline auto bfloat16_lanes(Floats v) {
  typedef uint32_t Lanes __attribute__((vector_size(sizeof(Floats))));
  const Lanes bits = (Lanes)v;
  const Lanes high = bits >> 16;
  const Lanes rounded = (bits + 0x7FFF + (high & 1)) >> 16;
  return v != v ? high | 0x40 : rounded;  // NaN stays NaN (quieted), as in bfloat16_bits
}

// float to IEEE half, rounding to nearest even, with subnormals, infinities and NaN
// (the branch-free method of the FP16 library by M. Dukhan).
inline uint16_t float16_bits(float value) {
  const float scale_to_inf = bits_float(0x77800000);   // 2^112
  const float scale_to_zero = bits_float(0x08800000);  // 2^-110
  float base = (__builtin_fabsf(value) * scale_to_inf) * scale_to_zero;
  const uint32_t w = float_bits(value);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) {
    bias = 0x71000000u;
  }
  base = bits_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// round(v) clamped to [-128, 127], ties to even, NaN to 0. The clamp comes first, which rounds
// alike, so adding and removing 1.5 * 2^23 rounds in fp32 (vectorizable, no library call).
inline int8_t int8_code(float v) {
  constexpr float kRound = 12582912.0f;
  v = v != v ? 0.0f : v;
  v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
  return static_cast<int8_t>(static_cast<int32_t>((v + kRound) - kRound));
}

inline void store_scalar(float* out, float value) {
  *out = value;
}
inline void store_scalar(BFloat16Bits* out, float value) {
  out->bits = bfloat16_bits(value);
}
inline void store_scalar(Float16Bits* out, float value) {
  out->bits = float16_bits(value);
}

// out[i] = value, stored as dtype.
inline void store_output(void* out, OutputDtype dtype, int64_t i, float value) {
  switch (dtype) {
    case OutputDtype::kFloat32:
      return store_scalar(static_cast<float*>(out) + i, value);
    case OutputDtype::kBFloat16:
      return store_scalar(static_cast<BFloat16Bits*>(out) + i, value);
    case OutputDtype::kFloat16:
      return store_scalar(static_cast<Float16Bits*>(out) + i, value);
  }
}

}  // namespace
}  // namespace quanta::qkernels::cpu
