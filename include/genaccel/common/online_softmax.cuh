// Online softmax over mma.sync accumulator tiles, shared by the attention kernels (forward now,
// backward later). Torch-free.
//
// Layout: a warp owns 16 rows; in an m16n8 float32 accumulator tile, lane l holds rows l/4 and
// l/4 + 8 (elements [0..1] and [2..3] of its 4 values), and the four lanes of a quad (l/4 equal)
// together hold a whole row. Row statistics are therefore reduced across a quad with
// __shfl_xor_sync over lane bits 0 and 1.
//
// Scores enter in log2 units (score * softmax_scale * log2(e)), so every exponential is one exp2.
#pragma once
#include <cuda_runtime.h>

namespace genaccel::attention {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// 2^x on the special-function unit. The .ftz form flushes subnormal results to 0 (a weight below
// 2^-126 of the row max, invisible in a softmax) and saves the subnormal fix-up instructions that
// plain exp2f wraps around the same ex2.approx; exp2(-inf) is still +0.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_allreduce_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_allreduce_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Running max and sum of the two rows a lane holds.
struct OnlineSoftmax {
  float row_max[2];  // max over the keys seen so far, log2 units, equal across the quad
  float row_sum[2];  // this lane's share of sum exp2(score - row_max); the quad's shares add up

  __device__ __forceinline__ void init() {
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // Folds one tile of scores (kNTiles n8 tiles, log2 units, -inf where masked) into the running
  // statistics, overwrites the scores with the unnormalised probabilities exp2(score - new max), and
  // returns per row the factor exp2(old max - new max) by which earlier partial outputs must shrink.
  template <int kNTiles>
  __device__ __forceinline__ void update(float (&s)[kNTiles][4], float (&rescale)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float m = row_max[r];
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) m = fmaxf(m, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      m = quad_allreduce_max(m);
      // A row with no unmasked key yet keeps max -inf; subtracting 0 instead keeps every exp2 at 0
      // rather than exp2(-inf - -inf) = NaN.
      const float base = m == -INFINITY ? 0.f : m;
      rescale[r] = exp2_approx(row_max[r] - base);
      row_max[r] = m;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
        s[j][2 * r] = exp2_approx(s[j][2 * r] - base);
        s[j][2 * r + 1] = exp2_approx(s[j][2 * r + 1] - base);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * rescale[r] + sum;
    }
  }

  // Multiplies an m16 x (8 * kDTiles) accumulator, row by row, by the factors from update().
  template <int kDTiles>
  static __device__ __forceinline__ void rescale_rows(float (&acc)[kDTiles][4],
                                                      const float (&rescale)[2]) {
#pragma unroll
    for (int j = 0; j < kDTiles; ++j) {
      acc[j][0] *= rescale[0];
      acc[j][1] *= rescale[0];
      acc[j][2] *= rescale[1];
      acc[j][3] *= rescale[1];
    }
  }

  // Final statistics per row: the factor 1 / sum that normalises the output, and the natural-log
  // logsumexp of the scaled scores. A row that saw no key gets factor 0 (output zeros) and lse -inf.
  __device__ __forceinline__ void finish(float (&inv_sum)[2], float (&lse)[2]) const {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float total = quad_allreduce_sum(row_sum[r]);
      const bool seen = total > 0.f;
      inv_sum[r] = seen ? 1.f / total : 0.f;
      lse[r] = seen ? (row_max[r] + log2f(total)) * kLn2 : -INFINITY;
    }
  }
};

}  // namespace genaccel::attention
