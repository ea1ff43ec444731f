// The linear kernels for the portable instruction set (its compile flags: CMakeLists.txt).
#include "vec_portable.h"
#include "linear_kernels_impl.h"

namespace quanta::qkernels::cpu::portable {

const LinearKernels kLinearKernels = make_linear_kernels<Portable>();

}  // namespace quanta::qkernels::cpu::portable
