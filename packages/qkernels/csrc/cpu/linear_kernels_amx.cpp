// The prefill product of bfloat16 activations on AMX-BF16 (compile flags: CMakeLists.txt):
// out = x @ weightᵀ with each weight block dequantized into the level-2 cache just before the
// tile products read it, instead of a dequantized weight written out and read back by aten::mm.
//
// Tiles: C^T[n, m] = sum_k W[n, k] x[m, k], weight rows as the row-major A tiles (16 rows x 32
// values) and x as the B tiles, packed once per call in the pair-interleaved ("VNNI") layout that
// tdpbf16ps reads. Four accumulator tiles hold 32 weight rows x 32 activation rows (2 x 2 tiles);
// fp32 accumulation, rounded to bfloat16 once.
//
// Blocking: x is taken a panel of panel_rows rows and chunk_steps steps of k at a time, whose
// packed copy (<= 1 MiB) stays in the level-2 cache; for each panel every 32-row weight block is
// dequantized (those columns of it, once per panel) and multiplied by the panel. With k in
// several chunks, the accumulators of each block wait in memory between chunks. While a block is
// multiplied, the codes of the next one are prefetched, so dequantizing reads them from the
// cache, not from memory.

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "qkernels/linear_cpu.h"
#include "vec_avx512.h"

namespace quanta::qkernels::cpu::amx {
namespace {

// The tile configuration: palette 1, the 8 tiles of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// The 32 values k0 .. k0 + 31 of a row of x, zeros past k (and for rows past m), as 16 pairs.
__m512 load_x(const Bf16Prefill& p, const uint16_t* x, int64_t row, int64_t k0) {
  if (row >= p.m) {
    return _mm512_setzero_ps();
  }
  const int64_t count = std::min<int64_t>(32, p.weight.k - k0);
  const __mmask32 lanes = count == 32 ? ~__mmask32{0} : (__mmask32{1} << count) - 1;
  return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(lanes, x + row * p.weight.k + k0));
}

// Walks the codes of a weight block's chunk, cache line by cache line, prefetching `lines` of
// them per step of k: rows of row_lines lines, `stride` bytes apart.
struct Prefetch {
  const uint8_t* row;
  int64_t stride;
  int64_t row_lines;
  int64_t rows_left;
  int64_t lines;
  int64_t line = 0;

  void step() {
    for (int64_t i = 0; i < lines && rows_left > 0; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(row + line * 64), _MM_HINT_T1);
      if (++line == row_lines) {
        line = 0;
        if (--rows_left > 0) {
          row += stride;
        }
      }
    }
  }
};

// Values per row of the dequantized weight chunk: its steps, plus 32 so that the 16 rows of a
// tile fall in different level-1 cache sets (rows 4 KiB apart would share one).
int64_t weight_row_values(const Bf16Prefill& p) {
  return p.chunk_steps * 32 + 32;
}

// Steps [s0, s1) of k of a 32 x 32 block of the output: C^T tiles of weight rows n0 .. n0 + 31
// (their chunk from step s0 in `weight`, a row every weight_row_values values) and activation rows
// m0 .. m0 + 31, added to c (set, on the first chunk); `next` prefetches meanwhile.
void multiply_steps(const Bf16Prefill& p, const uint16_t* weight, int64_t m0, int64_t s0,
                    int64_t s1, float* c, Prefetch& next) {
  const int64_t row_values = weight_row_values(p);
  const uint16_t* x0 = p.packed_x + (m0 / 16) * p.k_steps * 512;
  const uint16_t* x1 = x0 + p.k_steps * 512;
  if (s0 == 0) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, c, 64);
    _tile_loadd(1, c + 256, 64);
    _tile_loadd(2, c + 512, 64);
    _tile_loadd(3, c + 768, 64);
  }
  for (int64_t s = s0; s < s1; ++s) {
    _tile_loadd(4, weight + (s - s0) * 32, row_values * 2);
    _tile_loadd(5, weight + 16 * row_values + (s - s0) * 32, row_values * 2);
    _tile_loadd(6, x0 + s * 512, 64);
    _tile_loadd(7, x1 + s * 512, 64);
    next.step();
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  _tile_stored(1, c + 256, 64);
  _tile_stored(2, c + 512, 64);
  _tile_stored(3, c + 768, 64);
}

// One accumulator tile, c[i][j] = out[m0 + j, n0 + i], stored as bfloat16 where in range.
void store_tile(const Bf16Prefill& p, const float* c, int64_t n0, int64_t m0) {
  if (n0 >= p.weight.n || m0 >= p.m) {
    return;
  }
  __m512 rows[16];
  for (int i = 0; i < 16; ++i) {
    rows[i] = _mm512_loadu_ps(c + 16 * i);
  }
  Avx512::transpose16(rows);
  const int64_t columns = std::min<int64_t>(16, p.weight.n - n0);
  const __mmask16 lanes = columns == 16 ? __mmask16{0xFFFF} : (__mmask16{1} << columns) - 1;
  for (int64_t j = 0; j < std::min<int64_t>(16, p.m - m0); ++j) {
    const __m256bh out = _mm512_cvtneps_pbh(rows[j]);
    _mm256_mask_storeu_epi16(p.out + (m0 + j) * p.weight.n + n0, lanes, (__m256i)out);
  }
}

// Columns [k0, k1) of weight rows n0 .. n0 + rows - 1 dequantized to bfloat16 into `weight`,
// rows of weight_row_values whose values past k1 - k0 are zeros. k0 starts a group, or the weight
// has one group a row (its scale then serves every chunk).
void dequantize_block(
    const Bf16Prefill& p, int64_t n0, int64_t rows, int64_t k0, int64_t k1, uint16_t* weight) {
  const int64_t row_values = weight_row_values(p);
  const int64_t group = p.weight.group_size;
  for (int64_t r = 0; r < rows; ++r) {
    WeightView chunk = weight_rows(p.weight, n0 + r, 1);
    chunk.codes += k0 * weight_bits(p.weight.format) / 8;
    if (group == p.weight.k) {
      chunk.group_size = k1 - k0;
    } else {
      chunk.scale = params_from(chunk.scale, k0 / group);
      chunk.zero = params_from(chunk.zero, k0 / group);
    }
    chunk.k = k1 - k0;
    uint16_t* row = weight + r * row_values;
    avx512_bf16::kLinearKernels.dequantize(chunk, OutputDtype::kBFloat16, row, 0, 1);
    std::memset(row + chunk.k, 0, (row_values - chunk.k) * sizeof(uint16_t));
  }
}

// A buffer of 64-byte aligned values (aligned tile loads run 3x faster), kept by each thread
// for its next call: one per element type.
template <class T>
T* thread_buffer(int64_t count) {
  thread_local std::vector<T> buffer;
  const int64_t padding = 64 / sizeof(T);
  if (static_cast<int64_t>(buffer.size()) < count + padding) {
    buffer.assign(count + padding, T{});
  }
  const uintptr_t address = reinterpret_cast<uintptr_t>(buffer.data());
  return buffer.data() + (64 - address % 64) % 64 / sizeof(T);
}

}  // namespace

void pack_x(const Bf16Prefill& p, const uint16_t* x, int64_t block_begin, int64_t block_end) {
  for (int64_t block = block_begin; block < block_end; ++block) {
    for (int64_t s = 0; s < p.k_steps; ++s) {
      __m512 rows[16];  // row j: the 16 value pairs (k0 + 2r, k0 + 2r + 1) of x row 16 block + j
      for (int j = 0; j < 16; ++j) {
        rows[j] = load_x(p, x, block * 16 + j, s * 32);
      }
      Avx512::transpose16(rows);
      uint16_t* tile = p.packed_x + (block * p.k_steps + s) * 512;
      for (int r = 0; r < 16; ++r) {
        _mm512_storeu_ps(tile + 32 * r, rows[r]);
      }
    }
  }
}

void prefill(const Bf16Prefill& p, int64_t block_begin, int64_t block_end) {
  const int64_t blocks = block_end - block_begin;
  if (blocks <= 0) {
    return;
  }
  const TileConfig config;
  _tile_loadconfig(&config);
  const int64_t chunks = (p.k_steps + p.chunk_steps - 1) / p.chunk_steps;
  const int64_t panel_blocks = p.panel_rows / 32;
  uint16_t* weight = thread_buffer<uint16_t>(32 * weight_row_values(p));
  // 4 tiles per 32 panel rows, for every block while k is in several chunks
  float* accumulators = thread_buffer<float>((chunks > 1 ? blocks : 1) * panel_blocks * 1024);
  const int64_t m_padded = (p.m + 31) / 32 * 32;
  const int64_t bits = weight_bits(p.weight.format);
  for (int64_t panel = 0; panel < m_padded; panel += p.panel_rows) {
    const int64_t panel_end = std::min(m_padded, panel + p.panel_rows);
    for (int64_t s0 = 0; s0 < p.k_steps; s0 += p.chunk_steps) {
      const int64_t s1 = std::min(p.k_steps, s0 + p.chunk_steps);
      const int64_t k0 = s0 * 32;
      const int64_t k1 = std::min(p.weight.k, s1 * 32);
      const int64_t steps = (panel_end - panel) / 32 * (s1 - s0);
      for (int64_t i = 0; i < blocks; ++i) {
        const int64_t n0 = (block_begin + i) * 32;
        dequantize_block(p, n0, std::min<int64_t>(32, p.weight.n - n0), k0, k1, weight);
        // The codes of the next block's chunk (in cyclic order), spread over this block's steps.
        const int64_t next = (block_begin + (i + 1) % blocks) * 32;
        const int64_t row_lines = ((k1 - k0) * bits / 8 + 63) / 64;
        const int64_t next_rows = std::min<int64_t>(32, p.weight.n - next);
        Prefetch prefetch{p.weight.codes + next * p.weight.row_bytes + k0 * bits / 8,
                          p.weight.row_bytes, row_lines, next_rows,
                          (next_rows * row_lines + steps - 1) / steps};
        float* c = accumulators + (chunks > 1 ? i : 0) * panel_blocks * 1024;
        for (int64_t m0 = panel; m0 < panel_end; m0 += 32) {
          multiply_steps(p, weight, m0, s0, s1, c + (m0 - panel) / 32 * 1024, prefetch);
        }
        if (s1 < p.k_steps) {
          continue;
        }
        for (int64_t m0 = panel; m0 < panel_end; m0 += 32) {
          const float* tiles = c + (m0 - panel) / 32 * 1024;
          store_tile(p, tiles, n0, m0);
          store_tile(p, tiles + 256, n0, m0 + 16);
          store_tile(p, tiles + 512, n0 + 16, m0);
          store_tile(p, tiles + 768, n0 + 16, m0 + 16);
        }
      }
    }
  }
  _tile_release();
}

}  // namespace quanta::qkernels::cpu::amx
