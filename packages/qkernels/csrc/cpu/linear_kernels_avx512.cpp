// The linear kernels for the avx512 instruction set (its compile flags: CMakeLists.txt).
#include "vec_avx512.h"
#include "linear_kernels_impl.h"

namespace quanta::qkernels::cpu::avx512 {

const LinearKernels kLinearKernels = make_linear_kernels<Avx512>();

}  // namespace quanta::qkernels::cpu::avx512
