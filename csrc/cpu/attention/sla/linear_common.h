// Pieces shared by the CPU kernels of SLA's linear branch (linear_fwd.cpp, linear_bwd.cpp):
// a block's D x d_pad matrix and its D-vector travel together as one item of n = D*d_pad + dz_pad
// floats ([h_j | z_j] = [phi(K_j)^T V_j | colsum phi(K_j)], [H_i | Z_i], ...); the key blocks'
// items of one (batch, kv head); and sums of items over marginal sets, taken directly or as the
// total minus the rest. Compiled only into the CPU kernel sources (one set of vector ISA flags).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/common/scratch.h"
#include "genaccel/attention/sla/params.h"
#include "cpu/common/microgemm.h"

namespace genaccel::cpu::sla {

// Sum directly when fewer than half of the `count` blocks are marginal, or when the other blocks
// outweigh the marginal ones (sums of their items' absolute values); else take the total minus the
// rest. Total minus rest visits ~15 % of the blocks instead of ~85 % at SLA's usual fractions, but
// its float32 error is relative to the total, not to the marginal sum: "total minus nearly
// everything" (few marginal blocks) or minus a heavy rest (an outlier key of large norm under elu or
// relu features, critical for many rows) would cancel away the marginal sum's digits. With no
// marginal block the sum is exactly zero.
inline bool sum_directly(int marginal, int count, double marginal_weight, double rest_weight) {
  return 2 * marginal < count || rest_weight > marginal_weight;
}

// Summing whole D x D blocks one after the other would stream Tk * D^2 floats from memory per
// query block (32 MB per (batch, head) at N = 32k, D = 128: not cache resident). Instead, items (key
// or query blocks, each n_strips * kNR floats) are stored strip-major, so strip s of every item is
// contiguous, and the sums run per group of strips over all outputs: the items' strips then stay in
// L1/L2 while every output visits them.

struct StripBuffer {
  int count, n_strips;
  cpu::Scratch data_;
  std::vector<double> weight;  // per item: the sum of its elements' absolute values
  StripBuffer(int count_, int n_strips_)
      : count(count_), n_strips(n_strips_), data_(cpu::scratch(static_cast<size_t>(count_) * n_strips_ * kNR)),
        weight(count_) {}
  const float* strip(int s, int t) const { return data_.get() + (static_cast<size_t>(s) * count + t) * kNR; }
  // Item t from x laid out plainly (n_strips * kNR floats). Threads may put different items at once.
  void put(int t, const float* x) {
    double w = 0.0;
    for (int s = 0; s < n_strips; ++s) {
      const float* src = x + static_cast<size_t>(s) * kNR;
      for (int e = 0; e < kNR; ++e) w += std::abs(src[e]);
      std::copy(src, src + kNR, data_.get() + (static_cast<size_t>(s) * count + t) * kNR);
    }
    weight[t] = w;
  }
};

// For each output o: whether it sums its marginal items directly (sum_directly) and the items it
// visits: the marginal ones if direct, else the others (subtracted from the total). An output whose
// rest holds a non-finite item (from a NaN or inf in the keys or values) sums directly, so that the
// value reaches exactly the outputs whose marginal sets hold it: the total minus the rest would
// spread it to every output (NaN - NaN, inf - inf).
struct SumPlan {
  std::vector<int32_t> offsets, items;
  std::vector<uint8_t> direct;
  // `src` holds the items (their weights decide between direct and total minus rest).
  template <class IsMarginal>
  void build(int n_out, const StripBuffer& src, IsMarginal&& marginal) {
    const int n_items = src.count;
    offsets.assign(1, 0);
    items.clear();
    direct.assign(n_out, 0);
    for (int o = 0; o < n_out; ++o) {
      int count = 0;
      double marginal_weight = 0.0, rest_weight = 0.0;
      for (int t = 0; t < n_items; ++t) {
        const bool m = marginal(o, t);
        count += m ? 1 : 0;
        (m ? marginal_weight : rest_weight) += src.weight[t];
      }
      const bool d = sum_directly(count, n_items, marginal_weight, rest_weight) || !std::isfinite(rest_weight);
      direct[o] = d;
      for (int t = 0; t < n_items; ++t)
        if (marginal(o, t) == d) items.push_back(t);
      offsets.push_back(static_cast<int32_t>(items.size()));
    }
  }
};

template <int G, bool kAccumulate>
inline void plan_sums_strips(const StripBuffer& src, const SumPlan& plan, int s0, float* dst, int64_t ld) {
  f32x8 tot[G][2] = {};
  for (int t = 0; t < src.count; ++t)
    for (int g = 0; g < G; ++g) {
      const float* x = src.strip(s0 + g, t);
      tot[g][0] += load8(x);
      tot[g][1] += load8(x + 8);
    }
  const int n_out = static_cast<int>(plan.direct.size());
  for (int o = 0; o < n_out; ++o) {
    f32x8 acc[G][2] = {};
    for (int32_t k = plan.offsets[o]; k < plan.offsets[o + 1]; ++k) {
      const int t = plan.items[k];
      for (int g = 0; g < G; ++g) {
        const float* x = src.strip(s0 + g, t);
        acc[g][0] += load8(x);
        acc[g][1] += load8(x + 8);
      }
    }
    const bool direct = plan.direct[o];
    float* out = dst + o * ld + static_cast<int64_t>(s0) * kNR;
    for (int g = 0; g < G; ++g)
      for (int h = 0; h < 2; ++h) {
        f32x8 r = direct ? acc[g][h] : tot[g][h] - acc[g][h];
        float* y = out + g * kNR + h * 8;
        if constexpr (kAccumulate) r += load8(y);
        store8(y, r);
      }
  }
}

// dst[o * ld + e] = (or += with kAccumulate) the plan's sum of element e over src's items, for
// every output o of the plan and e < src.n_strips * kNR: direct outputs add their items, the others
// take the total minus their items. Parallel over groups of strips.
template <bool kAccumulate>
inline void plan_sums(const StripBuffer& src, const SumPlan& plan, float* dst, int64_t ld) {
  constexpr int kG = 4;  // strips per pass: 8 accumulators
  const int groups = (src.n_strips + kG - 1) / kG;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const int s0 = static_cast<int>(g) * kG;
      switch (std::min(kG, src.n_strips - s0)) {
        case 1: plan_sums_strips<1, kAccumulate>(src, plan, s0, dst, ld); break;
        case 2: plan_sums_strips<2, kAccumulate>(src, plan, s0, dst, ld); break;
        case 3: plan_sums_strips<3, kAccumulate>(src, plan, s0, dst, ld); break;
        default: plan_sums_strips<kG, kAccumulate>(src, plan, s0, dst, ld); break;
      }
    }
  });
}


struct ItemSizes {
  int D, d_pad, hsize, n, n_strips;  // hsize = D * d_pad; n = hsize + round_up(D, kNR)
  explicit ItemSizes(const attention::SlaLinearFwdParams& p)
      : D(p.head_dim), d_pad(p.d_pad), hsize(p.head_dim * p.d_pad), n(hsize + round_up(p.head_dim, kNR)),
        n_strips(n / kNR) {}
};

// [h_j | z_j] of every key block of (batch b, kv head kvh) into hz (strip-major, Tk items).
inline void key_block_sums(const attention::SlaLinearFwdParams& p, const ItemSizes& sz, int b, int kvh,
                           StripBuffer& hz) {
  const float* phi_k = p.phi_k + b * p.pk_batch_stride + kvh * p.pk_head_stride;
  const float* v = p.v + b * p.v_batch_stride + kvh * p.v_head_stride;
  at::parallel_for(0, p.num_k_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> item(sz.n, 0.f);
    for (int64_t j = begin; j < end; ++j) {
      const int64_t k0 = j * p.block_k;
      const int valid = static_cast<int>(std::min<int64_t>(p.block_k, p.seqlen_k - k0));
      const float* fk = phi_k + k0 * p.pk_row_stride;
      // h_j (D x d_pad) = phi(K_j)^T (D x valid) . V_j (valid x d_pad)
      micro_gemm<false>(sz.D, sz.d_pad, valid, fk, 1, p.pk_row_stride, v + k0 * p.v_row_stride, p.v_row_stride,
                        item.data(), sz.d_pad);
      float* z = item.data() + sz.hsize;
      std::fill(z, z + sz.D, 0.f);
      for (int t = 0; t < valid; ++t)
        for (int d = 0; d < sz.D; ++d) z[d] += fk[t * p.pk_row_stride + d];
      hz.put(static_cast<int>(j), item.data());
    }
  });
}

// Whether key block j is marginal for query block i of the codes of one (batch, head).
struct Marginal {
  const int8_t* codes;  // (Tq, Tk)
  int64_t num_k_blocks;
  bool all_keys;
  bool operator()(int i, int j) const { return all_keys || codes[i * num_k_blocks + j] == 0; }
};

}  // namespace genaccel::cpu::sla
