// Register-blocked float32 matrix product for the CPU kernels' small tiles:
//   C (m x n) = A (m x k) * B (k x n)   or   C += A * B,   n a multiple of kNR.
// C and B are row-major (B rows of kNR contiguous floats are streamed); A is read one scalar at a
// time and broadcast, at a[r * a_row + kk * a_col], so A can be any strided view (a plain or a
// transposed matrix) without packing. A kMR x kNR block of C lives in 2*kMR vector registers for
// the whole k loop: each step is 2*kMR FMAs against 2 loads of B and kMR broadcasts (FMA-bound).
#pragma once
#include <cstdint>

#include "cpu/common/simd.h"

namespace genaccel::cpu {

constexpr int kNR = 16;  // columns of C per micro-tile: two 8-float vectors
constexpr int kMR = 6;   // rows of C per micro-tile: 12 accumulators + 2 B + 1 A = 15 of 16 ymm

// One R x kNR tile of C. With kColMax, also folds the tile's per-column maximum into colmax[0..1]
// while the tile is still in registers (the softmax needs it next).
template <int R, bool kAccumulate, bool kColMax>
inline void micro_tile(int k, const float* a, int64_t a_row, int64_t a_col, const float* b,
                       int64_t ldb, float* c, int64_t ldc, f32x8* colmax) {
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
    if constexpr (kColMax) {
      colmax[0] = max8(colmax[0], acc0[r]);
      colmax[1] = max8(colmax[1], acc1[r]);
    }
  }
}

template <bool kAccumulate, bool kColMax>
inline void micro_rows(int rows, int k, const float* a, int64_t a_row, int64_t a_col,
                       const float* b, int64_t ldb, float* c, int64_t ldc, f32x8* colmax) {
  switch (rows) {
    case 1: return micro_tile<1, kAccumulate, kColMax>(k, a, a_row, a_col, b, ldb, c, ldc, colmax);
    case 2: return micro_tile<2, kAccumulate, kColMax>(k, a, a_row, a_col, b, ldb, c, ldc, colmax);
    case 3: return micro_tile<3, kAccumulate, kColMax>(k, a, a_row, a_col, b, ldb, c, ldc, colmax);
    case 4: return micro_tile<4, kAccumulate, kColMax>(k, a, a_row, a_col, b, ldb, c, ldc, colmax);
    case 5: return micro_tile<5, kAccumulate, kColMax>(k, a, a_row, a_col, b, ldb, c, ldc, colmax);
    default: return micro_tile<kMR, kAccumulate, kColMax>(k, a, a_row, a_col, b, ldb, c, ldc, colmax);
  }
}

// C (m x n) (+)= A (m x k) * B (k x n); n % kNR == 0. Column tiles outermost so one k x kNR slice
// of B stays in L1 while every row tile of A passes over it. With kColMax, also writes the maximum
// of every column of C to col_max[0..n) (-inf for m == 0).
template <bool kAccumulate, bool kColMax = false>
inline void micro_gemm(int m, int n, int k, const float* a, int64_t a_row, int64_t a_col,
                       const float* b, int64_t ldb, float* c, int64_t ldc,
                       float* col_max = nullptr) {
  for (int j = 0; j < n; j += kNR) {
    f32x8 colmax[2] = {splat8(-__builtin_inff()), splat8(-__builtin_inff())};
    for (int i = 0; i < m; i += kMR) {
      const int rows = m - i < kMR ? m - i : kMR;
      micro_rows<kAccumulate, kColMax>(rows, k, a + i * a_row, a_row, a_col, b + j, ldb,
                                       c + i * ldc + j, ldc, colmax);
    }
    if constexpr (kColMax) {
      store8(col_max + j, colmax[0]);
      store8(col_max + j + 8, colmax[1]);
    }
  }
}

}  // namespace genaccel::cpu
