// Torch-free entry points of the native CUDA decode kernels (csrc/cuda/linear_decode.cu).
#pragma once

#include "qkernels/cuda_decode_math.h"

namespace quanta::qkernels::cuda_decode {

// Launches the decode kernel of p (1 <= p.m <= kMaxRows) on `stream` (a cudaStream_t): no host
// synchronization and no allocation, so it can be captured in a CUDA graph. Returns null, or the
// text of the launch's CUDA error.
const char* launch_linear_decode(const DecodeProblem& p, void* stream);

// The compute capability's major number of CUDA device `device` (0 when it cannot be read).
int compute_capability_major(int device);

}  // namespace quanta::qkernels::cuda_decode
