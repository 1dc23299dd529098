#pragma once
#include <cstdint>

#include "genaccel/attention/sla/params.h"

namespace genaccel::cpu {

using FeatureMap = attention::SlaFeatureMap;

// Rows of x (batch, heads, rows, dim) with the given element strides (last dim contiguous).
struct FeatureRows {
  const float* x;
  int64_t batch_stride, head_stride, row_stride;
  int64_t batch, heads, rows, dim;  // dim in [1, 256]
};

// out (batch, heads, rows, dim) contiguous = phi(x), float32.
void sla_feature_map_f32(const FeatureRows& x, FeatureMap f, float* out);

// dx (contiguous, like out) += J_phi(x)^T d_phi (d_phi contiguous): the gradient through phi.
void sla_feature_map_bwd_f32(const FeatureRows& x, FeatureMap f, const float* d_phi, float* dx);

}  // namespace genaccel::cpu
