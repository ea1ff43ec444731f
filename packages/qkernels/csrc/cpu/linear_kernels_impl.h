// The linear kernels, written once over a vector type V (vec_avx512.h, vec_avx2.h,
// vec_portable.h) and instantiated by one file per instruction set.
//
// Decode: each weight row is streamed once and decoded in registers; a group's codes are dotted
// with up to V::kMaxRows activation rows at a time, and the group's scale and zero are applied
// once per group: sum_k x * (q - z) * s = s * (sum_k x * q - z * sum_k x).
#pragma once

#include <algorithm>
#include <cstdint>

#include "qkernels/linear_cpu.h"
#include "weight_codes.h"

namespace quanta::qkernels::cpu {
namespace {

// How far ahead of the decode loop the weight bytes are prefetched.
constexpr int64_t kPrefetchBytes = 4096;

// Groups whose scales and zeros the decode kernels read into floats at a time (param_values).
constexpr int64_t kParamBlock = 64;

// The scales and zeros of groups [g0, g0 + count) of Cols weight rows, as floats.
template <int Cols>
struct GroupParams {
  float scale[Cols][kParamBlock];
  float zero[Cols][kParamBlock];

  void read(const WeightView& w, const int64_t* ns, int64_t groups, int64_t g0, int64_t count) {
    for (int c = 0; c < Cols; ++c) {
      param_values(w.scale, ns[c] * groups + g0, count, scale[c]);
      param_values(w.zero, ns[c] * groups + g0, count, zero[c]);
    }
  }
};

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
  GroupParams<Cols> params;
  for (int64_t g = 0; g < groups; ++g) {
    if (g % kParamBlock == 0) {
      params.read(w, ns, groups, g, std::min(kParamBlock, groups - g));
    }
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
        const auto codes = V::template decode<Format>(rows[c], kk, w.table);
        for (int r = 0; r < Rows; ++r) {
          dot_lo[r][c] = V::fma(V::load(x + r * k + kk), codes.lo, dot_lo[r][c]);
          dot_hi[r][c] = V::fma(V::load(x + r * k + kk + V::kLanes), codes.hi, dot_hi[r][c]);
        }
      }
    }
    for (int c = 0; c < Cols; ++c) {
      float tail[Rows] = {};
      for (int64_t kk = begin + vector_codes; kk < begin + w.group_size; ++kk) {
        const float code = code_value<Format>(rows[c], kk, w.table);
        for (int r = 0; r < Rows; ++r) {
          tail[r] += x[r * k + kk] * code;
        }
      }
      const float scale = params.scale[c][g % kParamBlock];
      const F scale_v = V::set1(scale);
      for (int r = 0; r < Rows; ++r) {
        acc[r][c] = V::fma(V::add(dot_lo[r][c], dot_hi[r][c]), scale_v, acc[r][c]);
        float shifted = tail[r];
        if (w.zero.data != nullptr) {
          shifted -= params.zero[c][g % kParamBlock] * p.group_sums[(m0 + r) * groups + g];
        }
        scalar_acc[r][c] += scale * shifted;
      }
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Cols; ++c) {
      const float value = V::sum(acc[r][c]) + scalar_acc[r][c] + param_value(p.bias, ns[c]);
      store_output(p.out, p.out_dtype, (m0 + r) * w.n + ns[c], value);
    }
  }
}

// decode_block for 2- and 4-bit weights with 16-lane vectors (DecodeProblem::lookup): each
// group's values (q - zero) * scale (table[q] * scale for kLut4), for every 4-bit index whose low
// bits are q, are computed once
// into one vector (as the dequantizer computes them), and 16 codes at a time are looked up in it,
// 16 bytes shifted right by bits * j giving codes per * i + j; then one FMA a code, and no
// per-group terms. x comes in the order of the lookups.
template <class V, WeightFormat Format, int Rows, int Cols>
void lookup_block(const DecodeProblem& p, int64_t m0, const int64_t* ns) {
  using F = typename V::F;
  constexpr int bits = weight_bits(Format);
  constexpr int per_byte = 8 / bits;
  constexpr int64_t chunk = lookup_chunk(Format);
  const WeightView& w = p.weight;
  const int64_t k = w.k;
  const int64_t groups = k / w.group_size;
  const float* x = p.x + m0 * k;
  const uint8_t* rows[Cols];
  for (int c = 0; c < Cols; ++c) {
    rows[c] = w.codes + ns[c] * w.row_bytes;
  }
  const F codes =
      Format == WeightFormat::kLut4 ? V::load(w.table) : V::template table_codes<bits>();

  F acc[Rows][Cols][2];  // two chains hide the FMA latency
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Cols; ++c) {
      acc[r][c][0] = acc[r][c][1] = V::zero();
    }
  }
  GroupParams<Cols> params;
  for (int64_t g = 0; g < groups; ++g) {
    if (g % kParamBlock == 0) {
      params.read(w, ns, groups, g, std::min(kParamBlock, groups - g));
    }
    F table[Cols];
    for (int c = 0; c < Cols; ++c) {
      const int64_t i = g % kParamBlock;
      table[c] = V::mul(V::sub(codes, V::set1(params.zero[c][i])), V::set1(params.scale[c][i]));
    }
    for (int64_t kk = g * w.group_size; kk < (g + 1) * w.group_size; kk += chunk) {
      for (int c = 0; c < Cols; ++c) {
        __builtin_prefetch(rows[c] + kk / per_byte + kPrefetchBytes);
        auto index = V::load_bytes(rows[c] + kk / per_byte);
        for (int j = 0; j < per_byte; ++j) {  // codes per_byte * i + j
          const F weights = V::lookup(table[c], index);
          index = V::template shift_right<bits>(index);
          for (int r = 0; r < Rows; ++r) {
            F& sum = acc[r][c][j % 2];
            sum = V::fma(V::load(x + r * k + kk + 16 * j), weights, sum);
          }
        }
      }
    }
  }
  for (int r = 0; r < Rows; ++r) {
    for (int c = 0; c < Cols; ++c) {
      const float value =
          V::sum(V::add(acc[r][c][0], acc[r][c][1])) + param_value(p.bias, ns[c]);
      store_output(p.out, p.out_dtype, (m0 + r) * w.n + ns[c], value);
    }
  }
}

// Calls block.template operator()<R>(m0) for the rows [0, m) in blocks of R = Rows rows, then
// the rows left in blocks of 4, 2 and 1: a kernel keeps R rows' accumulators in registers.
template <int Rows, class Block>
void for_row_blocks(int64_t m, const Block& block) {
  int64_t m0 = 0;
  for (; m0 + Rows <= m; m0 += Rows) {
    block.template operator()<Rows>(m0);
  }
  if constexpr (Rows > 4) {
    if (m - m0 >= 4) {
      block.template operator()<4>(m0);
      m0 += 4;
    }
  }
  if constexpr (Rows > 2) {
    if (m - m0 >= 2) {
      block.template operator()<2>(m0);
      m0 += 2;
    }
  }
  if (m - m0 >= 1) {
    block.template operator()<1>(m0);
  }
}

// out[.., ns[0 .. Cols]] for every activation row, in blocks of at most Rows rows.
template <class V, WeightFormat Format, int Rows, int Cols>
void decode_columns_of(const DecodeProblem& p, const int64_t* ns) {
  for_row_blocks<Rows>(p.m, [&]<int R>(int64_t m0) {
    if constexpr (V::kLanes == 16 && weight_bits(Format) < 8) {
      if (p.lookup) {
        return lookup_block<V, Format, R, Cols>(p, m0, ns);
      }
    }
    decode_block<V, Format, R, Cols>(p, m0, ns);
  });
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
      const float scale = param_value(w.scale, n * groups + g);
      const float zero = param_value(w.zero, n * groups + g);
      const auto scale_v = V::set1(scale);
      const auto zero_v = V::set1(zero);
      for (int64_t kk = begin; kk < begin + vector_codes; kk += 2 * V::kLanes) {
        const auto codes = V::template decode<Format>(row, kk, w.table);
        V::store(dst + kk, V::mul(V::sub(codes.lo, zero_v), scale_v));
        V::store(dst + kk + V::kLanes, V::mul(V::sub(codes.hi, zero_v), scale_v));
      }
      for (int64_t kk = begin + vector_codes; kk < begin + w.group_size; ++kk) {
        store_scalar(dst + kk, (code_value<Format>(row, kk, w.table) - zero) * scale);
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
    case WeightFormat::kLut4:
      return body.template operator()<WeightFormat::kLut4>();
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

// y[j] = acc[j] * row_scale * scale[j] (+ bias[j]) for j < count (vectorized by the compiler).
template <class Out>
void scale_int32_row(
    const int32_t* acc, float row_scale, const float* scale, const float* bias, Out* y,
    int64_t count) {
  if (bias != nullptr) {
    for (int64_t j = 0; j < count; ++j) {
      store_scalar(y + j, static_cast<float>(acc[j]) * row_scale * scale[j] + bias[j]);
    }
  } else {
    for (int64_t j = 0; j < count; ++j) {
      store_scalar(y + j, static_cast<float>(acc[j]) * row_scale * scale[j]);
    }
  }
}

// The 16 x 16 outputs [i0, i0 + 16) x [j0, j0 + 16) of a transposed product, in the order of
// operations of scale_int32_row, for 16-lane vectors.
template <class V, class Out>
void scale_int32_tile(const Int32Product& p, int64_t i0, int64_t j0, Out* out) {
  using F = typename V::F;
  const F row_scale = p.per_row ? V::load(p.row_scale + i0) : V::set1(p.row_scale[0]);
  F columns[16];
  for (int c = 0; c < 16; ++c) {
    const int64_t j = j0 + c;
    const F products = V::mul(V::load_int32(p.acc + j * p.m + i0), row_scale);
    const F scaled = V::mul(products, V::set1(p.scale[j]));
    columns[c] = p.bias != nullptr ? V::add(scaled, V::set1(p.bias[j])) : scaled;
  }
  V::transpose16(columns);
  for (int r = 0; r < 16; ++r) {
    V::store(out + (i0 + r) * p.n + j0, columns[r]);
  }
}

// A product computed transposed, kTile x kTile outputs at a time. With 16-lane vectors a whole
// tile is scaled as 16 columns of acc (contiguous runs) and turned into rows in registers; edge
// tiles, and other vector widths, go through a small buffer and scale_int32_row.
template <class V, class Out>
void scale_int32_transposed(const Int32Product& p, Out* out, int64_t begin, int64_t end) {
  constexpr int64_t kTile = 16;
  int32_t tile[kTile][kTile];
  for (int64_t i0 = begin; i0 < end; i0 += kTile) {
    const int64_t rows = std::min(kTile, end - i0);
    for (int64_t j0 = 0; j0 < p.n; j0 += kTile) {
      const int64_t cols = std::min(kTile, p.n - j0);
      if constexpr (V::kLanes == kTile) {
        if (rows == kTile && cols == kTile) {
          scale_int32_tile<V>(p, i0, j0, out);
          continue;
        }
      }
      for (int64_t c = 0; c < cols; ++c) {
        const int32_t* column = p.acc + (j0 + c) * p.m + i0;
        for (int64_t r = 0; r < rows; ++r) {
          tile[r][c] = column[r];
        }
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        scale_int32_row(
            tile[r], p.row_scale[p.per_row ? i : 0], p.scale + j0,
            p.bias != nullptr ? p.bias + j0 : nullptr, out + i * p.n + j0, cols);
      }
    }
  }
}

template <class V, class Out>
void scale_int32_rows(const Int32Product& p, Out* out, int64_t begin, int64_t end) {
  if (p.transposed) {
    return scale_int32_transposed<V>(p, out, begin, end);
  }
  for (int64_t i = begin; i < end; ++i) {
    scale_int32_row(
        p.acc + i * p.n, p.row_scale[p.per_row ? i : 0], p.scale, p.bias, out + i * p.n, p.n);
  }
}

template <class V>
void scale_int32(const Int32Product& p, OutputDtype dtype, void* out, int64_t begin, int64_t end) {
  switch (dtype) {
    case OutputDtype::kFloat32:
      return scale_int32_rows<V>(p, static_cast<float*>(out), begin, end);
    case OutputDtype::kBFloat16:
      return scale_int32_rows<V>(p, static_cast<BFloat16Bits*>(out), begin, end);
    case OutputDtype::kFloat16:
      return scale_int32_rows<V>(p, static_cast<Float16Bits*>(out), begin, end);
  }
}

template <class V>
constexpr LinearKernels make_linear_kernels() {
  return {&decode<V>, &dequantize<V>, &quantize_int8, &scale_int32<V>};
}

}  // namespace
}  // namespace quanta::qkernels::cpu
