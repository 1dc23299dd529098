// Run-time check that this processor has the vector ISA the CPU kernels were compiled for
// (GENACCEL_CPU_CAPABILITY, set by CMakeLists.txt), so a missing ISA is an error, not SIGILL.
#pragma once
#include <c10/util/Exception.h>

#include <cstring>

namespace genaccel::cpu {

inline void check_capability(const char* op) {
#if defined(__x86_64__) || defined(_M_X64)
  if (std::strcmp(GENACCEL_CPU_CAPABILITY, "AVX2") == 0) {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
    TORCH_CHECK(ok, op, ": genaccel's CPU kernels were built for AVX2+FMA+F16C, which this processor lacks");
  }
#else
  (void)op;
#endif
}

}  // namespace genaccel::cpu
