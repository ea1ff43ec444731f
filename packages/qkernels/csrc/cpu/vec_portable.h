// Portable "vector" operations of the linear kernels: one fp32 lane, codes decoded 2 at a time,
// so that the same kernel templates serve processors without AVX2.
#pragma once

#include <cstdint>

#include "weight_codes.h"

namespace quanta::qkernels::cpu {
namespace {

struct Portable {
  using F = float;
  static constexpr int kLanes = 1;
  static constexpr int kMaxRows = 4;
  static constexpr int kStreams = 1;
  struct Pair {
    F lo, hi;
  };

  static F zero() { return 0.0f; }
  static F set1(float value) { return value; }
  static F load(const float* p) { return *p; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static float sum(F v) { return v; }

  template <WeightFormat Format>
  static Pair decode(const uint8_t* row, int64_t k, const float* table) {
    return {code_value<Format>(row, k, table), code_value<Format>(row, k + 1, table)};
  }

  template <class Out>
  static void store(Out* out, F v) {
    store_scalar(out, v);
  }
};

}  // namespace
}  // namespace quanta::qkernels::cpu
