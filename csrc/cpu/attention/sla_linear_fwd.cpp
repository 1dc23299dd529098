// CPU forward of SLA's linear branch (float32).
//
// Per (batch, kv head): h_j = phi(K_j)^T V_j (D x d_pad) and z_j = colsum phi(K_j) for every key
// block, then the totals. Per (query head of that kv head, query block), in parallel:
//   H_i = H_total - sum_{j critical or negligible} h_j   (pre-aggregation: only the ~15 % of blocks
//   Z_i = Z_total - sum_{same j} z_j                      that are not marginal are visited; rows
//                                                         with few marginal blocks sum them directly)
//   O^l_i^T (D x queries) = H_i^T . phi(Q_i)^T ;  denom = Z_i . phi(Q_i)^T
// with queries along the vector lanes as in the block-sparse kernel, so any D works and only V
// needs its columns padded to the micro-kernel width.
#include "cpu/attention/sla_linear_fwd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "genaccel/cpu/microgemm.h"

namespace genaccel::cpu {
namespace {

struct KvHeadSums {
  int D, d_pad, num_k_blocks;
  std::unique_ptr<float[]> h, z, h_total, z_total;  // (Tk, D, d_pad), (Tk, D), (D, d_pad), (D)
  KvHeadSums(int D_, int d_pad_, int tk)
      : D(D_), d_pad(d_pad_), num_k_blocks(tk),
        h(new float[static_cast<size_t>(tk) * D_ * d_pad_]),
        z(new float[static_cast<size_t>(tk) * D_]),
        h_total(new float[static_cast<size_t>(D_) * d_pad_]),
        z_total(new float[D_]) {}
  float* h_block(int j) const { return h.get() + static_cast<size_t>(j) * D * d_pad; }
  float* z_block(int j) const { return z.get() + static_cast<size_t>(j) * D; }
};

void block_sums(const attention::SlaLinearFwdParams& p, const float* phi_k, const float* v, KvHeadSums& s) {
  at::parallel_for(0, s.num_k_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t k0 = j * p.block_k;
      const int valid = static_cast<int>(std::min<int64_t>(p.block_k, p.seqlen_k - k0));
      const float* fk = phi_k + k0 * p.pk_row_stride;
      // h_j (D x d_pad) = phi(K_j)^T (D x valid) . V_j (valid x d_pad)
      micro_gemm<false>(p.head_dim, s.d_pad, valid, fk, 1, p.pk_row_stride, v + k0 * p.v_row_stride,
                        p.v_row_stride, s.h_block(j), s.d_pad);
      float* z = s.z_block(static_cast<int>(j));
      std::fill(z, z + p.head_dim, 0.f);
      for (int t = 0; t < valid; ++t)
        for (int d = 0; d < p.head_dim; ++d) z[d] += fk[t * p.pk_row_stride + d];
    }
  });
  const size_t hsize = static_cast<size_t>(s.D) * s.d_pad;
  std::fill(s.h_total.get(), s.h_total.get() + hsize, 0.f);
  std::fill(s.z_total.get(), s.z_total.get() + s.D, 0.f);
  for (int j = 0; j < s.num_k_blocks; ++j) {
    const float* h = s.h_block(j);
    const float* z = s.z_block(j);
    for (size_t e = 0; e < hsize; ++e) s.h_total[e] += h[e];
    for (int d = 0; d < s.D; ++d) s.z_total[d] += z[d];
  }
}

struct Workspace {
  int q_pad;
  std::vector<float> h, z, qt, ot, den;
  Workspace(int rows, int D, int d_pad)
      : q_pad(round_up(rows, kNR)),
        h(static_cast<size_t>(D) * d_pad),
        z(D),
        qt(static_cast<size_t>(D) * q_pad),
        ot(static_cast<size_t>(D) * q_pad),
        den(q_pad) {}
};

void query_block(const attention::SlaLinearFwdParams& p, const KvHeadSums& s, int b, int h, int qb,
                 Workspace& ws) {
  const int D = p.head_dim, d_pad = s.d_pad, q_pad = ws.q_pad;
  const int q0 = qb * p.block_q;
  const int m = std::min(p.block_q, p.seqlen_q - q0);
  const size_t hsize = static_cast<size_t>(D) * d_pad;

  // Sum whichever side is smaller: the marginal blocks directly, or the total minus the others.
  // Besides halving the worst case, this keeps "total minus nearly everything" (few marginal blocks)
  // from cancelling in float32; with no marginal block H_i and Z_i are exactly zero.
  const int8_t* codes = p.codes + b * p.codes_batch_stride + h * p.codes_head_stride +
                        static_cast<int64_t>(qb) * p.num_k_blocks;
  int marginal = p.num_k_blocks;
  if (!p.all_keys) marginal = static_cast<int>(std::count(codes, codes + p.num_k_blocks, int8_t{0}));
  const bool direct = 2 * marginal < p.num_k_blocks;
  if (direct) {
    std::fill(ws.h.begin(), ws.h.end(), 0.f);
    std::fill(ws.z.begin(), ws.z.end(), 0.f);
  } else {
    std::copy(s.h_total.get(), s.h_total.get() + hsize, ws.h.begin());
    std::copy(s.z_total.get(), s.z_total.get() + D, ws.z.begin());
  }
  if (!p.all_keys) {
    const float sign = direct ? 1.f : -1.f;
    for (int j = 0; j < p.num_k_blocks; ++j) {
      if ((codes[j] == 0) != direct) continue;  // direct: add marginal blocks; else subtract the rest
      const float* hj = s.h_block(j);
      const float* zj = s.z_block(j);
      for (size_t e = 0; e < hsize; ++e) ws.h[e] += sign * hj[e];
      for (int d = 0; d < D; ++d) ws.z[d] += sign * zj[d];
    }
  }

  const float* fq = p.phi_q + b * p.pq_batch_stride + h * p.pq_head_stride + static_cast<int64_t>(q0) * p.pq_row_stride;
  float* qt = ws.qt.data();
  for (int d = 0; d < D; ++d) {
    float* row = qt + d * q_pad;
    for (int i = 0; i < m; ++i) row[i] = fq[i * p.pq_row_stride + d];
    std::fill(row + m, row + q_pad, 0.f);
  }
  // O^T (D x q_pad) = H^T (A: element (e, d) = h[d][e]) . phi(Q)^T
  micro_gemm<false>(D, q_pad, D, ws.h.data(), 1, d_pad, qt, q_pad, ws.ot.data(), q_pad);
  float* den = ws.den.data();
  std::fill(den, den + q_pad, p.all_keys ? p.eps : 0.f);
  for (int d = 0; d < D; ++d) {
    const float zd = ws.z[d];
    const float* row = qt + d * q_pad;
    for (int i = 0; i < q_pad; ++i) den[i] += zd * row[i];
  }

  float* out = p.out + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q * D + static_cast<int64_t>(q0) * D;
  float* denom = p.denom + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q + q0;
  for (int i = 0; i < m; ++i) {
    const float inv = den[i] > 0.f ? 1.f / den[i] : 0.f;
    for (int e = 0; e < D; ++e) out[i * D + e] = ws.ot[e * q_pad + i] * inv;
    denom[i] = den[i];
  }
}

}  // namespace

void sla_linear_fwd_f32(const attention::SlaLinearFwdParams& p) {
  if (p.batch == 0 || p.heads == 0 || p.seqlen_q == 0) return;
  const int group = p.heads / p.kv_heads;
  const int rows = std::min(p.block_q, p.seqlen_q);
  KvHeadSums sums(p.head_dim, p.d_pad, p.num_k_blocks);
  for (int b = 0; b < p.batch; ++b) {
    for (int kvh = 0; kvh < p.kv_heads; ++kvh) {
      if (p.num_k_blocks > 0) {
        block_sums(p, p.phi_k + b * p.pk_batch_stride + kvh * p.pk_head_stride,
                   p.v + b * p.v_batch_stride + kvh * p.v_head_stride, sums);
      } else {
        std::fill(sums.h_total.get(), sums.h_total.get() + static_cast<size_t>(p.head_dim) * p.d_pad, 0.f);
        std::fill(sums.z_total.get(), sums.z_total.get() + p.head_dim, 0.f);
      }
      const int64_t tasks = static_cast<int64_t>(group) * p.num_q_blocks;
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        Workspace ws(rows, p.head_dim, p.d_pad);
        for (int64_t t = begin; t < end; ++t)
          query_block(p, sums, b, kvh * group + static_cast<int>(t / p.num_q_blocks),
                      static_cast<int>(t % p.num_q_blocks), ws);
      });
    }
  }
}

}  // namespace genaccel::cpu
