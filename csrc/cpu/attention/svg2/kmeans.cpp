// Lloyd's k-means per (batch, head). The assignment is fused: a register-blocked micro-kernel
// computes kRows x 16 dot products x.c of a token tile against one packed panel of 16 centroids
// (D x 16 floats, contiguous), turns them into ||c||^2 - 2 x.c (the distance less ||x||^2, which is
// the same for every centroid of a token and so cannot change its argmin) and folds them into a
// running per-lane minimum, so the N x C distance matrix never exists. The update accumulates each
// (batch, head)'s cluster sums in float64, serially per (batch, head) (parallel over them).
#include "cpu/attention/svg2/kmeans.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common/simd.h"

namespace genaccel::cpu {
namespace {

constexpr int kPanel = 16;     // centroids per packed panel: two 8-float vectors
constexpr int kRows = 6;       // tokens per micro-tile: 12 accumulators + 2 panel vectors + 1 broadcast
constexpr int kTileRows = 96;  // tokens per parallel task: its rows stay in L1 across all panels

inline i32x8 load8i(const int32_t* p) {
  i32x8 x;
  __builtin_memcpy(&x, p, sizeof(x));
  return x;
}
inline void store8i(int32_t* p, i32x8 x) { __builtin_memcpy(p, &x, sizeof(x)); }

// R tokens (rows of x, ldx apart) against one panel (d x 16, row k at panel + 16 k) with squared
// norms cn[0..16): per token and lane l keeps the smallest ||c||^2 - 2 x.c of the panel's columns l
// and 8 + l in best_v[8 r + l] and its centroid index (col0 + column) in best_i, replacing only on a
// strictly smaller value, so that among equal distances the lowest index stays.
template <int R>
inline void assign_micro(int64_t d, const float* x, int64_t ldx, const float* panel, const float* cn, int32_t col0,
                         float* best_v, int32_t* best_i) {
  f32x8 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = f32x8{};
  for (int64_t k = 0; k < d; ++k) {
    const f32x8 b0 = load8(panel + k * kPanel), b1 = load8(panel + k * kPanel + 8);
    const float* xk = x + k;
    for (int r = 0; r < R; ++r) {
      const float a = xk[r * ldx];
      acc0[r] += a * b0;
      acc1[r] += a * b1;
    }
  }
  const f32x8 c0 = load8(cn), c1 = load8(cn + 8);
  const i32x8 idx0 = i32x8{0, 1, 2, 3, 4, 5, 6, 7} + col0, idx1 = idx0 + 8;
  for (int r = 0; r < R; ++r) {
    const f32x8 d0 = c0 - (acc0[r] + acc0[r]), d1 = c1 - (acc1[r] + acc1[r]);
    f32x8 v = load8(best_v + 8 * r);
    i32x8 i = load8i(best_i + 8 * r);
    i32x8 m = d0 < v;
    v = m ? d0 : v;
    i = m ? idx0 : i;
    m = d1 < v;
    v = m ? d1 : v;
    i = m ? idx1 : i;
    store8(best_v + 8 * r, v);
    store8i(best_i + 8 * r, i);
  }
}

inline void assign_rows(int rows, int64_t d, const float* x, int64_t ldx, const float* panel, const float* cn,
                        int32_t col0, float* best_v, int32_t* best_i) {
  switch (rows) {
    case 1: return assign_micro<1>(d, x, ldx, panel, cn, col0, best_v, best_i);
    case 2: return assign_micro<2>(d, x, ldx, panel, cn, col0, best_v, best_i);
    case 3: return assign_micro<3>(d, x, ldx, panel, cn, col0, best_v, best_i);
    case 4: return assign_micro<4>(d, x, ldx, panel, cn, col0, best_v, best_i);
    case 5: return assign_micro<5>(d, x, ldx, panel, cn, col0, best_v, best_i);
    default: return assign_micro<kRows>(d, x, ldx, panel, cn, col0, best_v, best_i);
  }
}

struct Problem {
  const Svg2KmeansParams& p;
  int64_t bh, c_pad;
  std::vector<float> packed;    // (bh, c_pad / 16, d, 16): the centroids in panels, zero padded
  std::vector<float> norms;     // (bh, c_pad): ||c||^2, +inf for the padding
  std::vector<uint8_t> poisoned, done;

  explicit Problem(const Svg2KmeansParams& params)
      : p(params), bh(params.batch * params.heads), c_pad((params.c + kPanel - 1) / kPanel * kPanel),
        packed(static_cast<size_t>(bh * c_pad * params.d)), norms(static_cast<size_t>(bh * c_pad)),
        poisoned(static_cast<size_t>(bh)), done(static_cast<size_t>(bh)) {}

  const float* x_of(int64_t i) const {
    return p.x + (i / p.heads) * p.x_batch_stride + (i % p.heads) * p.x_head_stride;
  }
  float* centroids_of(int64_t i) const { return p.centroids + i * p.c * p.d; }

  void pack(int64_t i) {
    const int64_t d = p.d, c = p.c;
    const float* cent = centroids_of(i);
    float* out = packed.data() + i * c_pad * d;
    float* cn = norms.data() + i * c_pad;
    for (int64_t j = 0; j < c_pad; ++j) {
      const int64_t panel = j / kPanel, lane = j % kPanel;
      float* dst = out + panel * d * kPanel + lane;
      if (j < c) {
        float s = 0.f;
        for (int64_t k = 0; k < d; ++k) {
          const float v = cent[j * d + k];
          dst[k * kPanel] = v;
          s += v * v;
        }
        cn[j] = s;
      } else {
        for (int64_t k = 0; k < d; ++k) dst[k * kPanel] = 0.f;
        cn[j] = std::numeric_limits<float>::infinity();
      }
    }
  }

  // Labels of tokens [t0, t1) of (batch, head) i against its packed centroids.
  void assign_tile(int64_t i, int64_t t0, int64_t t1) const {
    const int64_t d = p.d, ldx = p.x_row_stride;
    const float* x = x_of(i);
    const float* pk = packed.data() + i * c_pad * d;
    const float* cn = norms.data() + i * c_pad;
    alignas(32) float best_v[kTileRows * 8];
    alignas(32) int32_t best_i[kTileRows * 8];
    const int64_t rows = t1 - t0;
    std::fill(best_v, best_v + rows * 8, std::numeric_limits<float>::infinity());
    std::fill(best_i, best_i + rows * 8, 0);
    for (int64_t j = 0; j < c_pad; j += kPanel) {
      const float* panel = pk + j * d;
      for (int64_t r = 0; r < rows; r += kRows) {
        const int n = static_cast<int>(std::min<int64_t>(kRows, rows - r));
        assign_rows(n, d, x + (t0 + r) * ldx, ldx, panel, cn + j, static_cast<int32_t>(j), best_v + 8 * r,
                    best_i + 8 * r);
      }
    }
    int32_t* labels = p.labels + i * p.n;
    for (int64_t r = 0; r < rows; ++r) {
      float v = best_v[8 * r];
      int32_t l = best_i[8 * r];
      for (int lane = 1; lane < 8; ++lane) {
        const float w = best_v[8 * r + lane];
        const int32_t m = best_i[8 * r + lane];
        if (w < v || (w == v && m < l)) v = w, l = m;
      }
      labels[t0 + r] = l;
    }
  }

  void assign(const std::vector<int64_t>& heads) {
    at::parallel_for(0, static_cast<int64_t>(heads.size()), 1, [&](int64_t a, int64_t b) {
      for (int64_t h = a; h < b; ++h) pack(heads[h]);
    });
    const int64_t tiles = (p.n + kTileRows - 1) / kTileRows;
    at::parallel_for(0, static_cast<int64_t>(heads.size()) * tiles, 1, [&](int64_t a, int64_t b) {
      for (int64_t t = a; t < b; ++t) {
        const int64_t i = heads[t / tiles], t0 = (t % tiles) * kTileRows;
        assign_tile(i, t0, std::min(p.n, t0 + kTileRows));
      }
    });
  }

  // One update of (batch, head) i from its labels; returns the largest squared centroid move.
  double update(int64_t i, std::vector<double>& sums, std::vector<int64_t>& counts) const {
    const int64_t d = p.d, c = p.c, n = p.n;
    sums.assign(static_cast<size_t>(c * d), 0.0);
    counts.assign(static_cast<size_t>(c), 0);
    const float* x = x_of(i);
    const int32_t* labels = p.labels + i * n;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t l = labels[t];
      const float* row = x + t * p.x_row_stride;
      double* s = sums.data() + l * d;
      for (int64_t k = 0; k < d; ++k) s[k] += row[k];
      ++counts[l];
    }
    float* cent = centroids_of(i);
    double shift = 0.0;
    for (int64_t j = 0; j < c; ++j) {
      if (counts[j] == 0) continue;  // an empty cluster keeps its centroid
      const double inv = 1.0 / static_cast<double>(counts[j]);
      double moved = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const float v = static_cast<float>(sums[j * d + k] * inv);
        const double diff = static_cast<double>(v) - cent[j * d + k];
        moved += diff * diff;
        cent[j * d + k] = v;
      }
      shift = std::max(shift, moved);
    }
    return shift;
  }

  bool finite(int64_t i) const {
    const float* x = x_of(i);
    bool ok = true;
    for (int64_t t = 0; t < p.n && ok; ++t) {
      const float* row = x + t * p.x_row_stride;
      float acc = 0.f;
      for (int64_t k = 0; k < p.d; ++k) acc += row[k] * 0.f;  // NaN for a NaN or an infinity
      ok = acc == 0.f;
    }
    const float* cent = p.init + i * p.c * p.d;
    float acc = 0.f;
    for (int64_t k = 0; k < p.c * p.d; ++k) acc += cent[k] * 0.f;
    return ok && acc == 0.f;
  }
};

}  // namespace

void svg2_kmeans_f32(const Svg2KmeansParams& p) {
  Problem prob(p);
  const int64_t bh = prob.bh, c = p.c, d = p.d;
  std::copy(p.init, p.init + bh * c * d, p.centroids);
  at::parallel_for(0, bh, 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      prob.poisoned[i] = !prob.finite(i);
      p.iters_run[i] = 0;
    }
  });
  const double tol = p.tol;
  const bool can_stop = tol > 0;
  std::vector<int64_t> active;
  for (int64_t it = 0; it < p.iters; ++it) {
    active.clear();
    for (int64_t i = 0; i < bh; ++i)
      if (!prob.poisoned[i] && !prob.done[i]) active.push_back(i);
    if (active.empty()) break;
    prob.assign(active);
    at::parallel_for(0, static_cast<int64_t>(active.size()), 1, [&](int64_t a, int64_t b) {
      std::vector<double> sums;
      std::vector<int64_t> counts;
      for (int64_t h = a; h < b; ++h) {
        const int64_t i = active[h];
        const double shift = prob.update(i, sums, counts);
        p.iters_run[i] = static_cast<int32_t>(it + 1);
        if (can_stop && std::sqrt(shift) < tol) prob.done[i] = 1;
      }
    });
  }
  // The final assignment, against the centroids returned; counts are its histogram.
  active.clear();
  for (int64_t i = 0; i < bh; ++i)
    if (!prob.poisoned[i]) active.push_back(i);
  prob.assign(active);
  at::parallel_for(0, bh, 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      int32_t* counts = p.counts + i * c;
      int32_t* labels = p.labels + i * p.n;
      std::fill(counts, counts + c, 0);
      if (prob.poisoned[i]) {
        std::fill(labels, labels + p.n, -1);
        std::fill(p.centroids + i * c * d, p.centroids + (i + 1) * c * d, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      for (int64_t t = 0; t < p.n; ++t) ++counts[labels[t]];
    }
  });
}

}  // namespace genaccel::cpu
