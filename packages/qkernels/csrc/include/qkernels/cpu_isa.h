// Which vector instruction set the CPU kernels use: the best the processor supports, or a lower
// one forced with the environment variable QUANTA_CPU_ISA (portable, avx2, avx512, avx512_bf16
// or amx).
#pragma once

namespace quanta::qkernels::cpu {

// Ordered from the most portable to the widest; a kernel table is indexed by this value.
// kAvx512Bf16 adds AVX512-BF16 dot products for bfloat16 activations; kAmx adds the AMX-BF16 tile
// products of the prefill path for bfloat16 activations (the tiles granted by the kernel).
enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2, kAvx512Bf16 = 3, kAmx = 4 };

// The widest instruction set this processor runs (cpuid, read once).
Isa best_isa();

// best_isa(), lowered to QUANTA_CPU_ISA when that names a lower one. Read on every call, so a
// test can switch paths by setting the variable; an unknown name raises an error naming the
// allowed values.
Isa active_isa();

const char* isa_name(Isa isa);

}  // namespace quanta::qkernels::cpu
