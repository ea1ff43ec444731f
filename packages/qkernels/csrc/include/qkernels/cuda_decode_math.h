// The index and dequantization math of the native CUDA decode kernels (csrc/cuda/linear_decode.cu),
// torch-free and compiled twice: by nvcc for the device, and by the host C++ compiler in the CPU
// tests (tests/test_cuda_decode_math.py), which run each lane's work of a kernel (lane_dot) on the
// host and check it against quanta.qkernels.reference.
//
// A warp computes kRowsPerWarp output columns n of out[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]).
// Each lane reads 16 bytes of each of its weight rows at a time (one vectorized load), strided by
// the warp's lanes, dequantizes them 8 codes at a time in fp32, and multiplies them by those 8
// elements of every input row; the lanes' sums are then added across the warp.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define QK_HD __host__ __device__ __forceinline__
#define QK_HD_NOINLINE __host__ __device__ __noinline__
#define QK_UNROLL _Pragma("unroll")
#define QK_NO_UNROLL _Pragma("unroll 1")
#else
#define QK_HD inline
#define QK_HD_NOINLINE inline
#define QK_UNROLL
#define QK_NO_UNROLL
#endif

namespace quanta::qkernels::cuda_decode {

// How the weight codes are stored (one row of K codes per output column).
enum class CodeFormat : int {
  kUInt4 = 0,        // packed 4-bit, affine: (q - zero) * scale
  kUInt2 = 1,        // packed 2-bit, affine
  kLut4 = 2,         // packed 4-bit, table[q] * scale
  kInt8 = 3,         // int8 * scale
  kFloat8E4M3 = 4,   // float8_e4m3fn * scale
  kFloat8E5M2 = 5,   // float8_e5m2 * scale
};

// The dtype of a scale, zero point or bias array (kNone: absent).
enum class ParamType : int {
  kNone = 0,
  kFloat32 = 1,
  kBFloat16 = 2,
  kFloat16 = 3,
  kUInt8 = 4,
  kFloat8E4M3 = 5,
  kFloat8E8M0 = 6,
};

// The dtype of the input rows, which the output also has.
enum class ActType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

inline constexpr int kMaxRows = 16;       // input rows a decode kernel serves
inline constexpr int kChunkBytes = 16;    // bytes of a weight row one lane loads at once
inline constexpr int kStepCodes = 8;      // codes dequantized at once
inline constexpr int kRowsPerWarp = 4;    // weight rows a warp reads together (x loaded once)
inline constexpr int kCodeTableSize = 256;

// One call of a decode kernel, in raw pointers (all on the device, contiguous).
struct DecodeProblem {
  const void* x;         // [m, k] of act
  void* out;             // [m, n] of act
  const uint8_t* codes;  // [n, row_bytes]
  const void* scale;     // [n, groups] of scale_type
  const void* zero;      // [n, groups] of zero_type (affine formats only)
  const void* bias;      // [n] of bias_type, or null
  const float* table;    // [16] (kLut4 only)
  int64_t m, n, k, group_size, groups, row_bytes;
  CodeFormat format;
  ActType act;
  ParamType scale_type, zero_type, bias_type;
  bool codes_vector;       // every row's 16-byte chunks are 16-byte aligned
  bool x_vector;           // K % 8 == 0 and x is 16-byte aligned: whole aligned 8-element steps
  bool step_in_one_group;  // 8 codes that start at a multiple of 8 share one group
};

// ---- bit-level conversions (exact; NaN stays NaN) --------------------------------------------
// They rescale subnormal floats (float16 and float8 subnormals, e8m0's 2^-127): compile them
// without flush-to-zero (no --use_fast_math or -ftz=true), which would turn those into 0.

QK_HD float bits_to_float(uint32_t bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

QK_HD uint32_t float_to_bits(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

QK_HD float bfloat16_to_float(uint16_t bits) {
  return bits_to_float(static_cast<uint32_t>(bits) << 16);
}

// IEEE half to float: the exponent and mantissa moved into place and rescaled by 2^(127 - 15),
// which is exact for normal and subnormal halves alike; infinities and NaN set apart.
QK_HD float float16_to_float(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t magnitude = bits & 0x7FFFu;
  const uint32_t value = magnitude >= 0x7C00u
      ? 0x7F800000u | ((magnitude & 0x3FFu) << 13)
      : float_to_bits(bits_to_float(magnitude << 13) * 0x1p112f);
  return bits_to_float(sign | value);
}

// float8_e4m3fn (bias 7, no infinities, S.1111.111 is NaN) to float, rescaled like a half.
QK_HD float float8_e4m3_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t magnitude = code & 0x7Fu;
  const uint32_t value = magnitude == 0x7Fu
      ? 0x7FC00000u
      : float_to_bits(bits_to_float(magnitude << 20) * 0x1p120f);
  return bits_to_float(sign | value);
}

// float8_e5m2 (IEEE-like, bias 15) to float.
QK_HD float float8_e5m2_to_float(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t magnitude = code & 0x7Fu;
  const uint32_t value = magnitude >= 0x7Cu
      ? 0x7F800000u | ((magnitude & 0x3u) << 21)
      : float_to_bits(bits_to_float(magnitude << 21) * 0x1p112f);
  return bits_to_float(sign | value);
}

// float8_e8m0fnu to float: 2^(e - 127), 0xFF NaN (e = 0 is the float subnormal 2^-127).
QK_HD float float8_e8m0_to_float(uint8_t e) {
  if (e == 0xFFu) {
    return bits_to_float(0x7FC00000u);
  }
  return bits_to_float(e == 0 ? 0x00400000u : static_cast<uint32_t>(e) << 23);
}

// float to bfloat16 bits, rounding to nearest even (NaN stays NaN, quieted).
QK_HD uint16_t float_to_bfloat16(float value) {
  const uint32_t bits = float_to_bits(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x40u);
  }
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// float to IEEE half bits, rounding to nearest even, with subnormals, infinities and NaN
// (the branch-free method of the FP16 library by M. Dukhan).
QK_HD uint16_t float_to_float16(float value) {
  const uint32_t w = float_to_bits(value);
  const float magnitude = bits_to_float(w & 0x7FFFFFFFu);
  float base = (magnitude * 0x1p112f) * 0x1p-110f;
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) {
    bias = 0x71000000u;
  }
  base = bits_to_float((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = float_to_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

// A small unsigned integer as a float, from its bits: 2^23 + q has q in its mantissa, so one
// OR and one subtraction (exact) replace a slower int-to-float conversion.
inline constexpr float kMagic = 8388608.0f;  // 2^23
QK_HD float magic_float(uint32_t q) {
  return bits_to_float(0x4B000000u | q);
}

// ---- parameters and input elements ------------------------------------------------------------

// Element i of a scale, zero point or bias array as a float (0 for none).
QK_HD float param_value(const void* data, ParamType type, int64_t i) {
  switch (type) {
    case ParamType::kFloat32: return static_cast<const float*>(data)[i];
    case ParamType::kBFloat16: return bfloat16_to_float(static_cast<const uint16_t*>(data)[i]);
    case ParamType::kFloat16: return float16_to_float(static_cast<const uint16_t*>(data)[i]);
    case ParamType::kUInt8: return static_cast<float>(static_cast<const uint8_t*>(data)[i]);
    case ParamType::kFloat8E4M3:
      return float8_e4m3_to_float(static_cast<const uint8_t*>(data)[i]);
    case ParamType::kFloat8E8M0:
      return float8_e8m0_to_float(static_cast<const uint8_t*>(data)[i]);
    case ParamType::kNone: break;
  }
  return 0.0f;
}

template <ActType Act>
struct ActTraits;
template <>
struct ActTraits<ActType::kFloat32> {
  using Storage = float;
  QK_HD static float to_float(float v) { return v; }
  QK_HD static float from_float(float v) { return v; }
};
template <>
struct ActTraits<ActType::kBFloat16> {
  using Storage = uint16_t;
  QK_HD static float to_float(uint16_t v) { return bfloat16_to_float(v); }
  QK_HD static uint16_t from_float(float v) { return float_to_bfloat16(v); }
};
template <>
struct ActTraits<ActType::kFloat16> {
  using Storage = uint16_t;
  QK_HD static float to_float(uint16_t v) { return float16_to_float(v); }
  QK_HD static uint16_t from_float(float v) { return float_to_float16(v); }
};

// value rounded to the input dtype (the reference adds the bias in the input's dtype).
template <ActType Act>
QK_HD float round_to_act(float value) {
  return ActTraits<Act>::to_float(ActTraits<Act>::from_float(value));
}

// 16 bytes of a row, loaded at once.
struct Chunk {
  uint32_t words[4];
};

// Reads bytes [offset, offset + 16) of a row of row_bytes, zero past its end: one 16-byte load
// when `vector` (aligned, whole chunks), else byte by byte.
QK_HD Chunk load_chunk(const uint8_t* row, int64_t offset, int64_t row_bytes, bool vector) {
  Chunk chunk{{0, 0, 0, 0}};
  if (vector) {
#ifdef __CUDA_ARCH__
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(row + offset));
    chunk = Chunk{{v.x, v.y, v.z, v.w}};
#else
    std::memcpy(chunk.words, row + offset, kChunkBytes);
#endif
    return chunk;
  }
  for (int i = 0; i < kChunkBytes && offset + i < row_bytes; ++i) {
    chunk.words[i / 4] |= static_cast<uint32_t>(row[offset + i]) << (8 * (i % 4));
  }
  return chunk;
}

// ---- codes ------------------------------------------------------------------------------------

template <CodeFormat Format>
struct CodeTraits {
  static constexpr int bits = (Format == CodeFormat::kUInt4 || Format == CodeFormat::kLut4) ? 4
      : Format == CodeFormat::kUInt2                                                     ? 2
                                                                                         : 8;
  static constexpr int codes_per_byte = 8 / bits;
  static constexpr int chunk_codes = kChunkBytes * codes_per_byte;
  static constexpr bool affine = Format == CodeFormat::kUInt4 || Format == CodeFormat::kUInt2;
  // Codes read through a table of values (kCodeTableSize floats: shared memory on the device).
  static constexpr bool tabled = Format == CodeFormat::kLut4 ||
      Format == CodeFormat::kFloat8E4M3 || Format == CodeFormat::kFloat8E5M2;
};

// Entry i of a tabled format's value table (table: the kLut4 op's own 16 values).
template <CodeFormat Format>
QK_HD float code_table_entry(int i, const float* table) {
  if constexpr (Format == CodeFormat::kLut4) {
    return table[i & 15];
  } else if constexpr (Format == CodeFormat::kFloat8E4M3) {
    return float8_e4m3_to_float(static_cast<uint8_t>(i));
  } else {
    return float8_e5m2_to_float(static_cast<uint8_t>(i));
  }
}

// Code j (0..7) of the chunk's current step: the layout of quanta::pack, code c of a row in byte
// c / codes_per_byte at bit (c % codes_per_byte) * bits, low bits first. A step is the chunk's
// low 8 * bits bits (next_step moves the next one there).
template <CodeFormat Format>
QK_HD uint32_t code_of(const Chunk& chunk, int j) {
  constexpr int bits = CodeTraits<Format>::bits;
  const int bit = j * bits;
  return (chunk.words[bit / 32] >> (bit % 32)) & ((1u << bits) - 1u);
}

// Shifts the chunk down by one step (8 codes), so that the step loop needs no unrolling: the
// words stay in registers without indexing them by the step.
template <CodeFormat Format>
QK_HD void next_step(Chunk& chunk) {
  constexpr int bits = CodeTraits<Format>::bits * kStepCodes;  // 16, 32 or 64
  if constexpr (bits == 16) {
    chunk.words[0] = (chunk.words[0] >> 16) | (chunk.words[1] << 16);
    chunk.words[1] = (chunk.words[1] >> 16) | (chunk.words[2] << 16);
    chunk.words[2] = (chunk.words[2] >> 16) | (chunk.words[3] << 16);
    chunk.words[3] >>= 16;
  } else {
    constexpr int words = bits / 32;
    QK_UNROLL
    for (int i = 0; i < 4; ++i) {
      chunk.words[i] = i + words < 4 ? chunk.words[i + words] : 0u;
    }
  }
}

// Code q's value before its scale (and zero point): a table entry, or the integer itself (int8
// codes are flipped to unsigned, read as a magic float, and moved back by 2^23 + 128 at once).
template <CodeFormat Format>
QK_HD float code_value(uint32_t q, const float* table) {
  if constexpr (CodeTraits<Format>::tabled) {
    return table[q];
  } else if constexpr (Format == CodeFormat::kInt8) {
    return magic_float(q ^ 0x80u) - (kMagic + 128.0f);
  } else {
    return magic_float(q) - kMagic;
  }
}

// The weight of code q: (q - zero) * scale for the affine formats (as the reference computes it,
// in fp32), value * scale for the others.
template <CodeFormat Format>
QK_HD float weight_value(uint32_t q, const float* table, float zero, float scale) {
  if constexpr (CodeTraits<Format>::affine) {
    return (code_value<Format>(q, table) - zero) * scale;
  } else {
    return code_value<Format>(q, table) * scale;
  }
}

// The scale and zero point (0 for none) of one group of one weight row, as floats.
struct GroupParams {
  float scale;
  float zero;
};

QK_HD GroupParams group_params(const DecodeProblem& p, int64_t index) {
  return {param_value(p.scale, p.scale_type, index), param_value(p.zero, p.zero_type, index)};
}

// The group parameters of code k of row n, for groups that do not hold whole steps of 8 codes:
// a rare case, kept out of line so that it does not bloat the kernels.
QK_HD_NOINLINE GroupParams code_params(const DecodeProblem& p, int64_t n, int64_t k) {
  return group_params(p, n * p.groups + k / p.group_size);
}

// The 8 weights of the chunk's current step, of row n, whose first code is k, in fp32 (0 past K).
// group: k's group in the row (when p.step_in_one_group, the group of all 8). table:
// kCodeTableSize values of a tabled format.
template <CodeFormat Format>
QK_HD void dequantize_step(
    const DecodeProblem& p, const Chunk& chunk, int64_t n, int64_t k, int64_t group,
    const float* table, float (&w)[kStepCodes]) {
  if (p.step_in_one_group) {
    const GroupParams params = group_params(p, n * p.groups + group);
    QK_UNROLL
    for (int j = 0; j < kStepCodes; ++j) {
      w[j] = weight_value<Format>(code_of<Format>(chunk, j), table, params.zero, params.scale);
    }
    return;
  }
  QK_UNROLL
  for (int j = 0; j < kStepCodes; ++j) {
    w[j] = 0.0f;
    if (k + j < p.k) {
      const GroupParams params = code_params(p, n, k + j);
      w[j] = weight_value<Format>(code_of<Format>(chunk, j), table, params.zero, params.scale);
    }
  }
}

// Elements [k, k + 8) of input row m as floats, 0 past K.
template <ActType Act>
QK_HD void load_x_step(const DecodeProblem& p, int m, int64_t k, float (&x)[kStepCodes]) {
  using Storage = typename ActTraits<Act>::Storage;
  const Storage* row = static_cast<const Storage*>(p.x) + m * p.k;
  if (p.x_vector) {  // K % 8 == 0: whole, aligned 16-byte loads
    alignas(16) Storage values[kStepCodes];
#ifdef __CUDA_ARCH__
    constexpr int loads = sizeof(values) / 16;
    QK_UNROLL
    for (int i = 0; i < loads; ++i) {
      reinterpret_cast<uint4*>(values)[i] = __ldg(reinterpret_cast<const uint4*>(row + k) + i);
    }
#else
    std::memcpy(values, row + k, sizeof(values));
#endif
    QK_UNROLL
    for (int j = 0; j < kStepCodes; ++j) {
      x[j] = ActTraits<Act>::to_float(values[j]);
    }
    return;
  }
  QK_UNROLL
  for (int j = 0; j < kStepCodes; ++j) {
    x[j] = k + j < p.k ? ActTraits<Act>::to_float(row[k + j]) : 0.0f;
  }
}

// One lane's share of kRowsPerWarp output columns n0.. for up to MaxRows input rows: the partial
// sums acc[r][m] over the chunks lane, lane + lanes, ... of each weight row. The caller adds the
// lanes' sums.
template <CodeFormat Format, ActType Act, int MaxRows>
QK_HD void lane_dot(
    const DecodeProblem& p, int64_t n0, int lane, int lanes, const float* table,
    float (&acc)[kRowsPerWarp][MaxRows]) {
  using Traits = CodeTraits<Format>;
  const int64_t rows = p.n - n0 < kRowsPerWarp ? p.n - n0 : kRowsPerWarp;
  for (int64_t offset = static_cast<int64_t>(lane) * kChunkBytes; offset < p.row_bytes;
       offset += static_cast<int64_t>(lanes) * kChunkBytes) {
    Chunk chunks[kRowsPerWarp];
    QK_UNROLL
    for (int r = 0; r < kRowsPerWarp; ++r) {
      chunks[r] = r < rows
          ? load_chunk(p.codes + (n0 + r) * p.row_bytes, offset, p.row_bytes, p.codes_vector)
          : Chunk{{0, 0, 0, 0}};
    }
    const int64_t k0 = offset * Traits::codes_per_byte;
    QK_NO_UNROLL  // the body is large enough: unrolling would multiply the build time
    for (int step = 0; step < Traits::chunk_codes / kStepCodes; ++step) {
      const int64_t k = k0 + step * kStepCodes;
      if (k >= p.k) {
        break;
      }
      // 32-bit division: K < 2^31 (checked by the caller)
      const int64_t group = p.step_in_one_group
          ? static_cast<uint32_t>(k) / static_cast<uint32_t>(p.group_size)
          : 0;
      float w[kRowsPerWarp][kStepCodes];
      QK_UNROLL
      for (int r = 0; r < kRowsPerWarp; ++r) {
        if (r < rows) {
          dequantize_step<Format>(p, chunks[r], n0 + r, k, group, table, w[r]);
          next_step<Format>(chunks[r]);
        } else {
          QK_UNROLL
          for (int j = 0; j < kStepCodes; ++j) {
            w[r][j] = 0.0f;
          }
        }
      }
      QK_UNROLL
      for (int m = 0; m < MaxRows; ++m) {
        if (m < p.m) {
          float x[kStepCodes];
          load_x_step<Act>(p, m, k, x);
          QK_UNROLL
          for (int r = 0; r < kRowsPerWarp; ++r) {
            QK_UNROLL
            for (int j = 0; j < kStepCodes; ++j) {
              acc[r][m] += x[j] * w[r][j];
            }
          }
        }
      }
    }
  }
}

// out[m, n] = sum + bias[n] (the bias rounded to the input dtype first, as the reference adds it),
// stored in the input dtype.
template <ActType Act>
QK_HD void store_out(const DecodeProblem& p, int m, int64_t n, float sum) {
  float value = sum;
  if (p.bias_type != ParamType::kNone) {
    value += round_to_act<Act>(param_value(p.bias, p.bias_type, n));
  }
  static_cast<typename ActTraits<Act>::Storage*>(p.out)[m * p.n + n] =
      ActTraits<Act>::from_float(value);
}

// ---- host side: the problem of a call, and the choice of template ---------------------------

inline bool aligned16(const void* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % 16 == 0;
}

inline int format_bits(CodeFormat format) {
  switch (format) {
    case CodeFormat::kUInt4:
    case CodeFormat::kLut4: return 4;
    case CodeFormat::kUInt2: return 2;
    default: return 8;
  }
}

// The problem of a call: the caller's pointers and sizes plus what follows from them.
inline DecodeProblem make_problem(
    const void* x, void* out, const uint8_t* codes, const void* scale, ParamType scale_type,
    const void* zero, ParamType zero_type, const void* bias, ParamType bias_type,
    const float* table, int64_t m, int64_t n, int64_t k, int64_t group_size, CodeFormat format,
    ActType act) {
  DecodeProblem p{};
  p.x = x;
  p.out = out;
  p.codes = codes;
  p.scale = scale;
  p.zero = zero;
  p.bias = bias;
  p.table = table;
  p.m = m;
  p.n = n;
  p.k = k;
  p.group_size = group_size;
  p.groups = k / group_size;
  p.row_bytes = (k * format_bits(format) + 7) / 8;
  p.format = format;
  p.act = act;
  p.scale_type = scale_type;
  p.zero_type = zero_type;
  p.bias_type = bias_type;
  p.codes_vector = aligned16(codes) && p.row_bytes % kChunkBytes == 0;
  p.x_vector = aligned16(x) && k % kStepCodes == 0;
  p.step_in_one_group = p.groups == 1 || group_size % kStepCodes == 0;
  return p;
}

// Calls fn.template operator()<Format, Act>() for the problem's format and input dtype.
template <class Fn>
void dispatch(CodeFormat format, ActType act, Fn&& fn) {
  auto with_act = [&]<CodeFormat Format>() {
    switch (act) {
      case ActType::kFloat32: return fn.template operator()<Format, ActType::kFloat32>();
      case ActType::kBFloat16: return fn.template operator()<Format, ActType::kBFloat16>();
      case ActType::kFloat16: return fn.template operator()<Format, ActType::kFloat16>();
    }
  };
  switch (format) {
    case CodeFormat::kUInt4: return with_act.template operator()<CodeFormat::kUInt4>();
    case CodeFormat::kUInt2: return with_act.template operator()<CodeFormat::kUInt2>();
    case CodeFormat::kLut4: return with_act.template operator()<CodeFormat::kLut4>();
    case CodeFormat::kInt8: return with_act.template operator()<CodeFormat::kInt8>();
    case CodeFormat::kFloat8E4M3: return with_act.template operator()<CodeFormat::kFloat8E4M3>();
    case CodeFormat::kFloat8E5M2: return with_act.template operator()<CodeFormat::kFloat8E5M2>();
  }
}

}  // namespace quanta::qkernels::cuda_decode
