// CPU kernel of op svg2_kmeans (SVG2's batched Euclidean k-means, every (batch, head) on its own).
#pragma once
#include <cstdint>

namespace genaccel::cpu {

struct Svg2KmeansParams {
  const float* x;  // (B, H, N, D), last dim contiguous, rows not overlapping
  int64_t x_batch_stride, x_head_stride, x_row_stride;
  const float* init;    // (B, H, C, D) contiguous
  float* centroids;     // (B, H, C, D) contiguous, written
  int32_t* labels;      // (B, H, N), written
  int32_t* counts;      // (B, H, C), written
  int32_t* iters_run;   // (B, H), written
  int64_t batch, heads, n, c, d;
  int64_t iters;
  double tol;
};

// Lloyd iterations from init, per (batch, head): assign every token to its nearest centroid (the
// lowest index among equals), replace each centroid by the mean of its tokens (an empty cluster keeps
// its centroid), stop after `iters` updates or after the first update whose largest centroid move (L2)
// is below tol. Then a final assignment against the returned centroids gives labels, and counts is
// their histogram. A (batch, head) whose x or init holds a non-finite value gets labels -1, centroids
// NaN, counts 0 and iters_run 0. Needs 1 <= c <= n.
void svg2_kmeans_f32(const Svg2KmeansParams& p);

}  // namespace genaccel::cpu
