// Compile-time dispatch of run-time values (head dim, block size, dtype) to template instances, in
// place of hand-written ternaries: each call site lists the values that have kernels.
#pragma once
#include <type_traits>

#include "genaccel/common/dtype.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace genaccel {

// Calls f(std::integral_constant<int, V>{}) for the V of Values equal to `value` (use
// decltype(arg)::value inside); false when none is.
template <int... Values, class F>
bool dispatch_int(int value, F&& f) {
  return ((value == Values && (f(std::integral_constant<int, Values>{}), true)) || ...);
}

#if defined(__CUDACC__)
// Calls f(T{}) with T = __nv_bfloat16 or __half for a half-precision dtype; false for any other.
template <class F>
bool dispatch_half(DType dtype, F&& f) {
  if (dtype == DType::kBFloat16) return f(__nv_bfloat16{}), true;
  if (dtype == DType::kFloat16) return f(__half{}), true;
  return false;
}
#endif

}  // namespace genaccel
