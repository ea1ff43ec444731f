// Every op of the library, declared once. The schemas are the contract of docs/ops.md:
// implementations register per device (csrc/cpu, csrc/cuda, and the Python references).
#include <torch/csrc/stable/library.h>

STABLE_TORCH_LIBRARY(quanta, m) {
  m.def("quantize_symmetric(Tensor input, Tensor scale, ScalarType dtype) -> Tensor");
  m.def("dequantize_symmetric(Tensor codes, Tensor scale, ScalarType dtype) -> Tensor");
  m.def("quantize_dynamic(Tensor input, ScalarType dtype) -> (Tensor, Tensor)");
  m.def(
      "quantize_affine(Tensor input, Tensor scale, Tensor zero_point, int bits, int group_size)"
      " -> Tensor");
  m.def(
      "dequantize_affine(Tensor codes, Tensor scale, Tensor zero_point, int group_size,"
      " ScalarType dtype) -> Tensor");
  m.def("pack(Tensor codes, int bits) -> Tensor");
  m.def("unpack(Tensor packed, int bits, int size) -> Tensor");
  m.def("linear_symmetric(Tensor input, Tensor codes, Tensor scale, Tensor? bias) -> Tensor");
  m.def(
      "linear_affine(Tensor input, Tensor packed, Tensor scale, Tensor zero_point, int bits,"
      " int group_size, Tensor? bias) -> Tensor");
  m.def(
      "linear_int8(Tensor input, Tensor input_scale, Tensor codes, Tensor scale, Tensor? bias,"
      " ScalarType dtype) -> Tensor");
  // float8 activations times float8 weights (W8A8 fp8), scaled as linear_int8.
  m.def(
      "linear_float8(Tensor input, Tensor input_scale, Tensor codes, Tensor scale, Tensor? bias,"
      " ScalarType dtype) -> Tensor");
  // 4-bit codes looked up in a table of 16 values, times a scale per group (nf4, fp4, MXFP4,
  // NVFP4); scale: float, float8_e4m3fn or float8_e8m0fnu.
  m.def("quantize_lut4(Tensor input, Tensor table, Tensor scale, int group_size) -> Tensor");
  m.def(
      "dequantize_lut4(Tensor codes, Tensor table, Tensor scale, int group_size,"
      " ScalarType dtype) -> Tensor");
  m.def(
      "linear_lut4(Tensor input, Tensor packed, Tensor table, Tensor scale, int group_size,"
      " Tensor? bias) -> Tensor");
  // int8 / float8 codes times a scale per group (MXFP8: e4m3 codes, an e8m0 scale per 32).
  m.def(
      "dequantize_grouped(Tensor codes, Tensor scale, int group_size, ScalarType dtype)"
      " -> Tensor");
  m.def(
      "linear_grouped(Tensor input, Tensor codes, Tensor scale, int group_size, Tensor? bias)"
      " -> Tensor");
  // The instruction set the CPU kernels run with now (QUANTA_CPU_ISA can lower it).
  m.def("cpu_isa() -> str");
}
