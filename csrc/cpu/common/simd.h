// 8-lane float32 vectors for the CPU kernels, as GCC/Clang vector extensions: they compile to AVX2
// with -mavx2 -mfma (or to what the target has) and, unlike arrays of at::vec::Vectorized, stay in
// registers inside unrolled micro-kernels (at::vec arrays were value-initialised through memory and
// spilled on every step -- seen in perf annotate).
#pragma once
#include <cstdint>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace genaccel::cpu {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// x rounded up to a multiple of m (padding of rows/columns to the vector or micro-tile width).
inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

using f32x8 = float __attribute__((vector_size(32)));
using i32x8 = int32_t __attribute__((vector_size(32)));

inline f32x8 load8(const float* p) {
  f32x8 x;
  __builtin_memcpy(&x, p, sizeof(x));
  return x;
}
inline void store8(float* p, f32x8 x) { __builtin_memcpy(p, &x, sizeof(x)); }
inline f32x8 splat8(float x) { return f32x8{} + x; }
// a where a > b, else b: a NaN in b comes through, a NaN in a does not (like maxps). Callers that
// must keep NaN put the value they clamp second.
inline f32x8 max8(f32x8 a, f32x8 b) { return a > b ? a : b; }
inline f32x8 select8(i32x8 mask, f32x8 if_true, f32x8 if_false) { return mask ? if_true : if_false; }

inline bool any8(i32x8 mask) {
#if defined(__AVX__)
  return _mm256_movemask_ps(reinterpret_cast<__m256&>(mask)) != 0;
#else
  int32_t any = 0;
  for (int i = 0; i < 8; ++i) any |= mask[i];
  return any != 0;
#endif
}

// 2^x for x <= 127, relative error below 2e-7 (degree-6 Taylor polynomial of 2^f on |f| <= 1/2),
// about half the instructions of a general exp. Inputs below -125 (-inf included) give
// 2^-125 ~ 2e-38: as good as 0 for the softmax weights and rescale factors it computes. NaN gives
// NaN (a NaN score or feature must reach the output, as in torch, not vanish).
inline f32x8 exp2_8(f32x8 x_in) {
  constexpr float kRound = 12582912.f;  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  const f32x8 x = max8(splat8(-125.f), x_in);  // NaN passes (the exponent bits below would not keep it)
  const f32x8 t = x + kRound;
  const f32x8 f = x - (t - kRound);  // in [-1/2, 1/2]
  f32x8 p = splat8(1.5403530393381608e-4f);
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.f;
  const i32x8 n = reinterpret_cast<const i32x8&>(t) - 0x4B400000;  // round(x)
  const i32x8 bits = reinterpret_cast<const i32x8&>(p) + (n << 23);
  return select8(x == x, reinterpret_cast<const f32x8&>(bits), x);
}

}  // namespace genaccel::cpu
