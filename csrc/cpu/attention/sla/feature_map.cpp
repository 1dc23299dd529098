// SLA's feature maps and their gradients, per row in 8-lane vectors (a row is copied into a padded
// local buffer, so any dim in [1, 256] takes the same code). Computing phi here, into scratch that
// the caller reuses, spares two fresh (B, H, N, D) float32 tensors per call.
#include "cpu/attention/sla/feature_map.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "cpu/common/simd.h"

namespace genaccel::cpu {
namespace {

constexpr int kMaxDim = 256;

float hmax8(f32x8 v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) m = std::max(m, v[i]);
  return m;
}

float hsum8(f32x8 v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}

// phi of one row, in place in buf (padded to dp = round_up(dim, 8) lanes). Softmax pads with -inf
// (exp2_8 gives ~1e-38 there: nothing next to the row's own weights).
void phi_row(float* buf, int dim, int dp, FeatureMap f) {
  switch (f) {
    case FeatureMap::kSoftmax: {
      std::fill(buf + dim, buf + dp, -INFINITY);
      f32x8 m = splat8(-INFINITY);
      for (int i = 0; i < dp; i += 8) m = max8(m, load8(buf + i));
      const float mx = hmax8(m);
      f32x8 s{};
      for (int i = 0; i < dp; i += 8) {
        const f32x8 e = exp2_8((load8(buf + i) - mx) * kLog2e);
        store8(buf + i, e);
        s += e;
      }
      const float inv = 1.f / hsum8(s);
      for (int i = 0; i < dp; i += 8) store8(buf + i, load8(buf + i) * inv);
      break;
    }
    case FeatureMap::kElu:  // elu(x) + 1 = x + 1 for x > 0, exp(x) otherwise
      for (int i = 0; i < dp; i += 8) {
        const f32x8 x = load8(buf + i);
        store8(buf + i, select8(x > 0.f, x + 1.f, exp2_8(x * kLog2e)));
      }
      break;
    case FeatureMap::kRelu:
      for (int i = 0; i < dp; i += 8) store8(buf + i, max8(splat8(0.f), load8(buf + i)));  // NaN stays
      break;
  }
}

template <class RowFn>
void for_each_row(const FeatureRows& x, RowFn&& fn) {
  const int64_t n = x.batch * x.heads * x.rows;
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (x.heads * x.rows), h = r / x.rows % x.heads, i = r % x.rows;
      fn(r, x.x + b * x.batch_stride + h * x.head_stride + i * x.row_stride);
    }
  });
}

}  // namespace

void sla_feature_map_f32(const FeatureRows& x, FeatureMap f, float* out) {
  const int dim = static_cast<int>(x.dim), dp = round_up(dim, 8);
  for_each_row(x, [&](int64_t r, const float* row) {
    alignas(32) float buf[kMaxDim + 8];
    std::copy(row, row + dim, buf);
    std::fill(buf + dim, buf + dp, 0.f);
    phi_row(buf, dim, dp, f);
    std::copy(buf, buf + dim, out + r * dim);
  });
}

void sla_feature_map_bwd_f32(const FeatureRows& x, FeatureMap f, const float* d_phi, float* dx) {
  const int dim = static_cast<int>(x.dim), dp = round_up(dim, 8);
  for_each_row(x, [&](int64_t r, const float* row) {
    alignas(32) float xs[kMaxDim + 8], g[kMaxDim + 8], phi[kMaxDim + 8];
    std::copy(row, row + dim, xs);
    std::fill(xs + dim, xs + dp, 0.f);
    std::copy(d_phi + r * dim, d_phi + (r + 1) * dim, g);
    std::fill(g + dim, g + dp, 0.f);
    float* out = dx + r * dim;
    switch (f) {
      case FeatureMap::kSoftmax: {  // dx = phi * (g - <g, phi>)
        std::copy(xs, xs + dp, phi);
        phi_row(phi, dim, dp, f);
        f32x8 dot{};
        for (int i = 0; i < dp; i += 8) dot += load8(g + i) * load8(phi + i);
        const float d = hsum8(dot);
        for (int i = 0; i < dim; ++i) out[i] += phi[i] * (g[i] - d);
        break;
      }
      case FeatureMap::kElu:  // d(elu + 1)/dx = 1 for x > 0, exp(x) otherwise
        for (int i = 0; i < dp; i += 8) {
          const f32x8 v = load8(xs + i);
          store8(phi + i, load8(g + i) * select8(v > 0.f, splat8(1.f), exp2_8(v * kLog2e)));
        }
        for (int i = 0; i < dim; ++i) out[i] += phi[i];
        break;
      case FeatureMap::kRelu:
        for (int i = 0; i < dim; ++i) out[i] += xs[i] > 0.f ? g[i] : 0.f;
        break;
    }
  });
}

}  // namespace genaccel::cpu
