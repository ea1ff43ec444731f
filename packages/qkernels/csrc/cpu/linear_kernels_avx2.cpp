// The linear kernels for the avx2 instruction set (its compile flags: CMakeLists.txt).
#include "vec_avx2.h"
#include "linear_kernels_impl.h"

namespace quanta::qkernels::cpu::avx2 {

const LinearKernels kLinearKernels = make_linear_kernels<Avx2>();

}  // namespace quanta::qkernels::cpu::avx2
