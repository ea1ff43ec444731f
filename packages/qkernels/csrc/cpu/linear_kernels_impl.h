// The linear kernels, written once over a vector type V (vec_avx512.h, vec_avx2.h,
// vec_portable.h) and instantiated by one file per instruction set.
//
// Decode: each weight row is streamed once and decoded in registers; a group's codes are dotted
// with up to V::kMaxRows activation rows at a time, and the group's scale and zero are applied
// once per group: sum_k x * (q - z) * s = s * (sum_k x * q - z * sum_k x).
#pragma once

#include <cstdint>

#include "qkernels/linear_cpu.h"
#include "weight_codes.h"

namespace quanta::qkernels::cpu {
namespace {

// How far ahead of the decode loop the weight bytes are prefetched.
constexpr int64_t kPrefetchBytes = 4096;

// Codes of one group that the vector loop covers: whole chunks of 2 * V::kLanes codes, when every
// group starts on a byte boundary (the rest of the group goes through code_value).
template <class V, WeightFormat Format>
int64_t vector_codes_per_group(int64_t group_size) {
  constexpr int64_t chunk = 2 * V::kLanes;
  if ((group_size * weight_bits(Format)) % 8 != 0) {
    return 0;
  }
  return group_size / chunk * chunk;
}

// out[m0 .. m0 + Rows, ns[0 .. Cols]]: Cols weight rows against Rows activation rows. Several
// weight rows at once keep several memory streams in flight, which a single core needs to come
// near the memory bandwidth when few activation rows leave little work per weight byte.
template <class V, WeightFormat Format, int Rows, int Cols>
void decode_block(const DecodeProblem& p, int64_t m0, const int64_t* ns) {
  using F = typename V::F;
  const WeightView& w = p.weight;
  const int64_t k = w.k;
  const int64_t groups = k / w.group_size;
  const int64_t vector_codes = vector_codes_per_group<V, Format>(w.group_size);
  const float* x = p.x + m0 * k;
  const uint8_t* rows[Cols];
  for (int c = 0; c < Cols; ++c) {
    rows[c] = w.codes + ns[c] * w.row_bytes;
  }

  F acc[Rows][Cols];
  float scalar_acc[Rows][Cols];  // group tails and zero-point terms
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Cols; ++c) {
      acc[r][c] = V::zero();
      scalar_acc[r][c] = 0.0f;
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t begin = g * w.group_size;
    F dot_lo[Rows][Cols], dot_hi[Rows][Cols];  // two chains hide the FMA latency
    for (int r = 0; r < Rows; ++r) {
      for (int c = 0; c < Cols; ++c) {
        dot_lo[r][c] = dot_hi[r][c] = V::zero();
      }
    }
    for (int64_t kk = begin; kk < begin + vector_codes; kk += 2 * V::kLanes) {
      for (int c = 0; c < Cols; ++c) {
        // Weights stream from memory once: ask for them a few cache lines ahead.
        __builtin_prefetch(rows[c] + kk * weight_bits(Format) / 8 + kPrefetchBytes);
        const auto codes = V::template decode<Format>(rows[c], kk);
        for (int r = 0; r < Rows; ++r) {
          dot_lo[r][c] = V::fma(V::load(x + r * k + kk), codes.lo, dot_lo[r][c]);
          dot_hi[r][c] = V::fma(V::load(x + r * k + kk + V::kLanes), codes.hi, dot_hi[r][c]);
        }
      }
    }
    for (int c = 0; c < Cols; ++c) {
      const int64_t n = ns[c];
      float tail[Rows] = {};
      for (int64_t kk = begin + vector_codes; kk < begin + w.group_size; ++kk) {
        const float code = code_value<Format>(rows[c], kk);
        for (int r = 0; r < Rows; ++r) {
          tail[r] += x[r * k + kk] * code;
        }
      }
      const float scale = w.scale[n * groups + g];
      const F scale_v = V::set1(scale);
      for (int r = 0; r < Rows; ++r) {
        acc[r][c] = V::fma(V::add(dot_lo[r][c], dot_hi[r][c]), scale_v, acc[r][c]);
        float shifted = tail[r];
        if (w.zero != nullptr) {
          shifted -= w.zero[n * groups + g] * p.group_sums[(m0 + r) * groups + g];
        }
        scalar_acc[r][c] += scale * shifted;
      }
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Cols; ++c) {
      p.out[(m0 + r) * w.n + ns[c]] = V::sum(acc[r][c]) + scalar_acc[r][c] + p.bias[ns[c]];
    }
  }
}

// out[.., ns[0 .. Cols]] for every activation row, in blocks of at most Rows rows.
template <class V, WeightFormat Format, int Rows, int Cols>
void decode_columns_of(const DecodeProblem& p, const int64_t* ns) {
  int64_t m0 = 0;
  for (; m0 + Rows <= p.m; m0 += Rows) {
    decode_block<V, Format, Rows, Cols>(p, m0, ns);
  }
  if constexpr (Rows > 4) {
    if (p.m - m0 >= 4) {
      decode_block<V, Format, 4, Cols>(p, m0, ns);
      m0 += 4;
    }
  }
  if constexpr (Rows > 2) {
    if (p.m - m0 >= 2) {
      decode_block<V, Format, 2, Cols>(p, m0, ns);
      m0 += 2;
    }
  }
  if (p.m - m0 >= 1) {
    decode_block<V, Format, 1, Cols>(p, m0, ns);
  }
}

// Calls body(ns) for the columns [n_begin, n_end): for one or two activation rows, Streams columns
// at a time taken from Streams equal parts of the range, so that each memory stream runs through
// its own pages (adjacent rows would share the hardware prefetcher's 4 KiB pages); one column at a
// time for the rest.
template <int Streams, class Block, class Single>
void for_column_streams(
    int64_t m, int64_t n_begin, int64_t n_end, const Block& block, const Single& single) {
  int64_t n = n_begin;
  if (m <= 2 && Streams > 1) {
    const int64_t span = (n_end - n_begin) / Streams;
    for (int64_t i = 0; i < span; ++i) {
      int64_t ns[Streams];
      for (int c = 0; c < Streams; ++c) {
        ns[c] = n_begin + c * span + i;
      }
      block(ns);
    }
    n = n_begin + Streams * span;
  }
  for (; n < n_end; ++n) {
    single(&n);
  }
}

// Columns [n_begin, n_end) for every activation row: V::kStreams weight rows at a time for one or
// two activation rows, else one weight row against blocks of up to V::kMaxRows activation rows.
template <class V, WeightFormat Format>
void decode_columns(const DecodeProblem& p, int64_t n_begin, int64_t n_end) {
  for_column_streams<V::kStreams>(
      p.m, n_begin, n_end,
      [&](const int64_t* ns) { decode_columns_of<V, Format, 2, V::kStreams>(p, ns); },
      [&](const int64_t* ns) { decode_columns_of<V, Format, V::kMaxRows, 1>(p, ns); });
}

// Rows [n_begin, n_end) of the dequantized weight, (q - z) * s in fp32, stored as Out.
template <class V, WeightFormat Format, class Out>
void dequantize_rows(const WeightView& w, Out* out, int64_t n_begin, int64_t n_end) {
  const int64_t k = w.k;
  const int64_t groups = k / w.group_size;
  const int64_t vector_codes = vector_codes_per_group<V, Format>(w.group_size);
  for (int64_t n = n_begin; n < n_end; ++n) {
    const uint8_t* row = w.codes + n * w.row_bytes;
    Out* dst = out + n * k;
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t begin = g * w.group_size;
      const float scale = w.scale[n * groups + g];
      const float zero = w.zero != nullptr ? w.zero[n * groups + g] : 0.0f;
      const auto scale_v = V::set1(scale);
      const auto zero_v = V::set1(zero);
      for (int64_t kk = begin; kk < begin + vector_codes; kk += 2 * V::kLanes) {
        const auto codes = V::template decode<Format>(row, kk);
        V::store(dst + kk, V::mul(V::sub(codes.lo, zero_v), scale_v));
        V::store(dst + kk + V::kLanes, V::mul(V::sub(codes.hi, zero_v), scale_v));
      }
      for (int64_t kk = begin + vector_codes; kk < begin + w.group_size; ++kk) {
        store_scalar(dst + kk, (code_value<Format>(row, kk) - zero) * scale);
      }
    }
  }
}

// The weight format is a run-time value; everything below it is compiled per format.
template <class Body>
void with_format(WeightFormat format, const Body& body) {
  switch (format) {
    case WeightFormat::kInt8:
      return body.template operator()<WeightFormat::kInt8>();
    case WeightFormat::kFloat8E4M3:
      return body.template operator()<WeightFormat::kFloat8E4M3>();
    case WeightFormat::kFloat8E5M2:
      return body.template operator()<WeightFormat::kFloat8E5M2>();
    case WeightFormat::kUInt4:
      return body.template operator()<WeightFormat::kUInt4>();
    case WeightFormat::kUInt2:
      return body.template operator()<WeightFormat::kUInt2>();
  }
}

template <class V>
void decode(const DecodeProblem& p, int64_t n_begin, int64_t n_end) {
  with_format(p.weight.format, [&]<WeightFormat Format>() {
    decode_columns<V, Format>(p, n_begin, n_end);
  });
}

template <class V>
void dequantize(const WeightView& w, OutputDtype dtype, void* out, int64_t n_begin, int64_t n_end) {
  with_format(w.format, [&]<WeightFormat Format>() {
    switch (dtype) {
      case OutputDtype::kFloat32:
        return dequantize_rows<V, Format>(w, static_cast<float*>(out), n_begin, n_end);
      case OutputDtype::kBFloat16:
        return dequantize_rows<V, Format>(w, static_cast<BFloat16Bits*>(out), n_begin, n_end);
      case OutputDtype::kFloat16:
        return dequantize_rows<V, Format>(w, static_cast<Float16Bits*>(out), n_begin, n_end);
    }
  });
}

inline float element_value(float value) {
  return value;
}
inline float element_value(BFloat16Bits value) {
  return bits_float(static_cast<uint32_t>(value.bits) << 16);
}

// Plain loops, vectorized by the compiler for the instruction set of the file that includes this.
template <class In>
void quantize_int8_rows(
    const In* x, const float* scale, int8_t* codes, int64_t width, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const float row_scale = scale[r];
    const In* in = x + r * width;
    int8_t* out = codes + r * width;
    for (int64_t j = 0; j < width; ++j) {
      out[j] = int8_code(element_value(in[j]) / row_scale);
    }
  }
}

void quantize_int8(
    const void* x, InputDtype dtype, const float* scale, int8_t* codes, int64_t width,
    int64_t begin, int64_t end) {
  if (dtype == InputDtype::kBFloat16) {
    quantize_int8_rows(static_cast<const BFloat16Bits*>(x), scale, codes, width, begin, end);
  } else {
    quantize_int8_rows(static_cast<const float*>(x), scale, codes, width, begin, end);
  }
}

template <class Out>
void scale_int32_rows(const Int32Product& p, Out* out, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) {
    const float row_scale = p.row_scale[p.per_row ? i : 0];
    const int32_t* acc = p.acc + i * p.n;
    Out* y = out + i * p.n;
    if (p.bias != nullptr) {
      for (int64_t j = 0; j < p.n; ++j) {
        store_scalar(y + j, static_cast<float>(acc[j]) * row_scale * p.scale[j] + p.bias[j]);
      }
    } else {
      for (int64_t j = 0; j < p.n; ++j) {
        store_scalar(y + j, static_cast<float>(acc[j]) * row_scale * p.scale[j]);
      }
    }
  }
}

void scale_int32(const Int32Product& p, OutputDtype dtype, void* out, int64_t begin, int64_t end) {
  switch (dtype) {
    case OutputDtype::kFloat32:
      return scale_int32_rows(p, static_cast<float*>(out), begin, end);
    case OutputDtype::kBFloat16:
      return scale_int32_rows(p, static_cast<BFloat16Bits*>(out), begin, end);
    case OutputDtype::kFloat16:
      return scale_int32_rows(p, static_cast<Float16Bits*>(out), begin, end);
  }
}

template <class V>
constexpr LinearKernels make_linear_kernels() {
  return {&decode<V>, &dequantize<V>, &quantize_int8, &scale_int32};
}

}  // namespace
}  // namespace quanta::qkernels::cpu
