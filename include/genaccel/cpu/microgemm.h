// Register-blocked float32 matrix product for the CPU kernels' small tiles:
//   C (m x n) = A (m x k) * B (k x n)   or   C += A * B,   n a multiple of kNR.
// C and B are row-major (B rows of kNR contiguous floats are streamed); A is read one scalar at a
// time and broadcast, at a[r * a_row + kk * a_col], so A can be any strided view (a plain or a
// transposed matrix) without packing. A kMR x kNR block of C lives in 2*kMR vector registers for
// the whole k loop: each step is 2*kMR FMAs against 2 loads of B and kMR broadcasts (FMA-bound).
#pragma once
#include <cstdint>

namespace genaccel::cpu {

constexpr int kNR = 16;  // columns of C per micro-tile: two 8-float vectors
constexpr int kMR = 6;   // rows of C per micro-tile: 12 accumulators + 2 B + 1 A = 15 of 16 ymm

// GCC/Clang vector-extension values rather than at::vec::Vectorized: arrays of Vectorized were
// value-initialised through memory and spilled on every k step (seen in perf annotate), while
// plain vector values stay in registers.
using f32x8 = float __attribute__((vector_size(32)));

inline f32x8 load8(const float* p) {
  f32x8 x;
  __builtin_memcpy(&x, p, sizeof(x));
  return x;
}
inline void store8(float* p, f32x8 x) { __builtin_memcpy(p, &x, sizeof(x)); }

template <int R, bool kAccumulate>
inline void micro_tile(int k, const float* a, int64_t a_row, int64_t a_col, const float* b,
                       int64_t ldb, float* c, int64_t ldc) {
  f32x8 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) {
    acc0[r] = kAccumulate ? load8(c + r * ldc) : f32x8{};
    acc1[r] = kAccumulate ? load8(c + r * ldc + 8) : f32x8{};
  }
  for (int kk = 0; kk < k; ++kk) {
    const f32x8 b0 = load8(b + kk * ldb), b1 = load8(b + kk * ldb + 8);
    const float* ak = a + kk * a_col;
    for (int r = 0; r < R; ++r) {
      const float ar = ak[r * a_row];
      acc0[r] += ar * b0;  // contracted to FMA (-ffp-contract=fast is GCC's default for gnu++)
      acc1[r] += ar * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    store8(c + r * ldc, acc0[r]);
    store8(c + r * ldc + 8, acc1[r]);
  }
}

template <bool kAccumulate>
inline void micro_rows(int rows, int k, const float* a, int64_t a_row, int64_t a_col,
                       const float* b, int64_t ldb, float* c, int64_t ldc) {
  switch (rows) {
    case 1: return micro_tile<1, kAccumulate>(k, a, a_row, a_col, b, ldb, c, ldc);
    case 2: return micro_tile<2, kAccumulate>(k, a, a_row, a_col, b, ldb, c, ldc);
    case 3: return micro_tile<3, kAccumulate>(k, a, a_row, a_col, b, ldb, c, ldc);
    case 4: return micro_tile<4, kAccumulate>(k, a, a_row, a_col, b, ldb, c, ldc);
    case 5: return micro_tile<5, kAccumulate>(k, a, a_row, a_col, b, ldb, c, ldc);
    default: return micro_tile<kMR, kAccumulate>(k, a, a_row, a_col, b, ldb, c, ldc);
  }
}

// C (m x n) (+)= A (m x k) * B (k x n); n % kNR == 0. Column tiles outermost so one k x kNR slice
// of B stays in L1 while every row tile of A passes over it.
template <bool kAccumulate>
inline void micro_gemm(int m, int n, int k, const float* a, int64_t a_row, int64_t a_col,
                       const float* b, int64_t ldb, float* c, int64_t ldc) {
  for (int j = 0; j < n; j += kNR) {
    for (int i = 0; i < m; i += kMR) {
      const int rows = m - i < kMR ? m - i : kMR;
      micro_rows<kAccumulate>(rows, k, a + i * a_row, a_row, a_col, b + j, ldb, c + i * ldc + j, ldc);
    }
  }
}

}  // namespace genaccel::cpu
