// Run-time choice of the CPU kernels' instruction set, and the quanta::cpu_isa op that reports it.

#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <torch/csrc/stable/library.h>
#include <torch/headeronly/util/Exception.h>

#include "qkernels/cpu_isa.h"
#include "qkernels/linear_cpu.h"

namespace quanta::qkernels::cpu {

namespace {

constexpr const char* kIsaNames[] = {"portable", "avx2", "avx512", "avx512_bf16", "amx"};
constexpr Isa kWidest = Isa::kAmx;

// Whether the processor has AMX-TILE and AMX-BF16 (cpuid leaf 7: edx bits 24 and 22) and Linux
// lets this process use the tile registers (they must be asked for, since Linux 5.16).
bool amx_usable() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0 || (edx >> 22 & 1) == 0 ||
      (edx >> 24 & 1) == 0) {
    return false;
  }
  constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
  constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
#else
  return false;
#endif
}

Isa detect_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    if (!__builtin_cpu_supports("avx512bf16") || !__builtin_cpu_supports("avx512vnni")) {
      return Isa::kAvx512;
    }
    return amx_usable() ? Isa::kAmx : Isa::kAvx512Bf16;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kPortable;
}

}  // namespace

Isa best_isa() {
  static const Isa best = detect_isa();
  return best;
}

const LinearKernels& linear_kernels(Isa isa) {
  switch (isa) {
#ifdef QKERNELS_X86_KERNELS
    case Isa::kAmx:  // the AMX prefill is called by the binding; the rest is AVX512-BF16's
    case Isa::kAvx512Bf16:
      return avx512_bf16::kLinearKernels;
    case Isa::kAvx512:
      return avx512::kLinearKernels;
    case Isa::kAvx2:
      return avx2::kLinearKernels;
#endif
    default:
      return portable::kLinearKernels;
  }
}

const char* isa_name(Isa isa) {
  return kIsaNames[static_cast<int>(isa)];
}

Isa active_isa() {
  const Isa best = best_isa();
  const char* forced = std::getenv("QUANTA_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0') {
    return best;
  }
  for (int i = 0; i <= static_cast<int>(kWidest); ++i) {
    if (std::strcmp(forced, kIsaNames[i]) == 0) {
      // A variable can only lower the instruction set: the processor may lack a wider one.
      return i < static_cast<int>(best) ? static_cast<Isa>(i) : best;
    }
  }
  STD_TORCH_CHECK(false,
      "quanta: QUANTA_CPU_ISA must be one of (portable, avx2, avx512, avx512_bf16, amx), got '",
      forced, "'");
  return best;
}

}  // namespace quanta::qkernels::cpu

namespace {

std::string cpu_isa() {
  return quanta::qkernels::cpu::isa_name(quanta::qkernels::cpu::active_isa());
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(quanta, CompositeExplicitAutograd, m) {
  m.impl("cpu_isa", TORCH_BOX(&cpu_isa));
}
