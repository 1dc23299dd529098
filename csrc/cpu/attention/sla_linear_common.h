// Pieces shared by the CPU kernels of SLA's linear branch (sla_linear_fwd.cpp, sla_linear_bwd.cpp):
// the per-key-block sums h_j = phi(K_j)^T V_j, z_j = colsum phi(K_j) of one (batch, kv head), and
// the sum of per-block matrices over a marginal set, taken directly or as the total minus the rest.
// Compiled only into the CPU kernel sources (they share one set of vector ISA flags).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstddef>
#include <memory>

#include "genaccel/attention/sla_params.h"
#include "genaccel/cpu/microgemm.h"

namespace genaccel::cpu::sla {

// n floats per block, for `count` blocks, plus their total; block j at data() + j * n.
struct BlockBuffer {
  size_t n;
  int count;
  std::unique_ptr<float[]> data_, total_;
  BlockBuffer(int count_, size_t n_) : n(n_), count(count_), data_(new float[count_ * n_]), total_(new float[n_]) {}
  float* block(int j) const { return data_.get() + static_cast<size_t>(j) * n; }
  float* total() const { return total_.get(); }
};

// h_j (D x d_pad) and z_j (D) of every key block of one (batch, kv head), and their totals.
struct KvHeadSums {
  BlockBuffer h, z;
  KvHeadSums(int D, int d_pad, int tk) : h(tk, static_cast<size_t>(D) * d_pad), z(tk, D) {}
};

// The sums for phi_k / v pointing at one (batch, kv head); v has d_pad readable (zero) columns.
inline void key_block_sums(const attention::SlaLinearFwdParams& p, const float* phi_k, const float* v,
                           KvHeadSums& s) {
  at::parallel_for(0, p.num_k_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t k0 = j * p.block_k;
      const int valid = static_cast<int>(std::min<int64_t>(p.block_k, p.seqlen_k - k0));
      const float* fk = phi_k + k0 * p.pk_row_stride;
      // h_j (D x d_pad) = phi(K_j)^T (D x valid) . V_j (valid x d_pad)
      micro_gemm<false>(p.head_dim, p.d_pad, valid, fk, 1, p.pk_row_stride, v + k0 * p.v_row_stride,
                        p.v_row_stride, s.h.block(static_cast<int>(j)), p.d_pad);
      float* z = s.z.block(static_cast<int>(j));
      std::fill(z, z + p.head_dim, 0.f);
      for (int t = 0; t < valid; ++t)
        for (int d = 0; d < p.head_dim; ++d) z[d] += fk[t * p.pk_row_stride + d];
    }
  });
  for (BlockBuffer* buf : {&s.h, &s.z}) {
    float* tot = buf->total();
    std::fill(tot, tot + buf->n, 0.f);
    for (int j = 0; j < buf->count; ++j) {
      const float* x = buf->block(j);
      for (size_t e = 0; e < buf->n; ++e) tot[e] += x[e];
    }
  }
}

// Sum directly when fewer than half of the `count` blocks are marginal, else total minus the rest.
// Besides halving the worst case, this keeps "total minus nearly everything" (few marginal blocks)
// from cancelling in float32; with no marginal block the sum is exactly zero.
inline bool sum_directly(int marginal, int count) { return 2 * marginal < count; }

// out (buf.n floats) = sum of the blocks `index(t)` for t in [0, n_items) with marginal(t), using
// `direct` (see sum_directly): direct adds the marginal blocks, else total minus the others.
template <class Marginal, class Index>
inline void marginal_sum(const BlockBuffer& buf, int n_items, Marginal&& marginal, Index&& index,
                         bool direct, float* out) {
  const size_t n = buf.n;
  if (direct)
    std::fill(out, out + n, 0.f);
  else
    std::copy(buf.total(), buf.total() + n, out);
  for (int t = 0; t < n_items; ++t) {
    if (marginal(t) != direct) continue;
    const float* x = buf.block(index(t));
    if (direct)
      for (size_t e = 0; e < n; ++e) out[e] += x[e];
    else
      for (size_t e = 0; e < n; ++e) out[e] -= x[e];
  }
}

}  // namespace genaccel::cpu::sla
