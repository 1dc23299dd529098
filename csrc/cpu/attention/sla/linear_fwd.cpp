// CPU forward of SLA's linear branch (float32).
//
// Per (batch, kv head): h_j = phi(K_j)^T V_j (D x d_pad) and z_j = colsum phi(K_j) for every key
// block (sla_linear_common.h). Per query head of that kv head, for every query block:
//   H_i = H_total - sum_{j critical or negligible} h_j   (pre-aggregation: only the ~15 % of blocks
//   Z_i = Z_total - sum_{same j} z_j                      that are not marginal are visited; rows
//                                                         with few marginal blocks sum them directly;
//                                                         sla::plan_sums, strip by strip)
// then per query block, in parallel:
//   O^l_i^T (D x queries) = H_i^T . phi(Q_i)^T ;  denom = Z_i . phi(Q_i)^T
// with queries along the vector lanes as in the block-sparse kernel, so any D works and only V
// needs its columns padded to the micro-kernel width.
#include "cpu/attention/sla/linear_fwd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention/sla/linear_common.h"
#include "cpu/common/microgemm.h"

namespace genaccel::cpu {
namespace {

struct Workspace {
  int q_pad;
  std::vector<float> qt, ot, den;
  Workspace(int rows, int D)
      : q_pad(round_up(rows, kNR)),
        qt(static_cast<size_t>(D) * q_pad),
        ot(static_cast<size_t>(D) * q_pad),
        den(q_pad) {}
};

// O^l and denom of query block qb of query head h, given hz_i = [H_i | Z_i].
void query_block(const attention::SlaLinearFwdParams& p, const sla::ItemSizes& sz, int b, int h, int qb,
                 const float* hz_i, Workspace& ws) {
  const int D = p.head_dim, d_pad = p.d_pad, q_pad = ws.q_pad;
  const int q0 = qb * p.block_q;
  const int m = std::min(p.block_q, p.seqlen_q - q0);
  const float* z = hz_i + sz.hsize;

  const float* fq = p.phi_q + b * p.pq_batch_stride + h * p.pq_head_stride + static_cast<int64_t>(q0) * p.pq_row_stride;
  float* qt = ws.qt.data();
  for (int d = 0; d < D; ++d) {
    float* row = qt + d * q_pad;
    for (int i = 0; i < m; ++i) row[i] = fq[i * p.pq_row_stride + d];
    std::fill(row + m, row + q_pad, 0.f);
  }
  // O^T (D x q_pad) = H^T (A: element (e, d) = h[d][e]) . phi(Q)^T
  micro_gemm<false>(D, q_pad, D, hz_i, 1, d_pad, qt, q_pad, ws.ot.data(), q_pad);
  float* den = ws.den.data();
  std::fill(den, den + q_pad, p.all_keys ? p.eps : 0.f);
  for (int d = 0; d < D; ++d) {
    const float zd = z[d];
    const float* row = qt + d * q_pad;
    for (int i = 0; i < q_pad; ++i) den[i] += zd * row[i];
  }

  float* out = p.out + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q * D + static_cast<int64_t>(q0) * D;
  float* denom = p.denom + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q + q0;
  for (int i = 0; i < m; ++i) {
    const float inv = den[i] > 0.f ? 1.f / den[i] : (std::isnan(den[i]) ? den[i] : 0.f);  // NaN stays NaN
    for (int e = 0; e < D; ++e) out[i * D + e] = ws.ot[e * q_pad + i] * inv;
    denom[i] = den[i];
  }
}

}  // namespace

void sla_linear_fwd_f32(const attention::SlaLinearFwdParams& p) {
  if (p.batch == 0 || p.heads == 0 || p.seqlen_q == 0) return;
  const sla::ItemSizes sz(p);
  const int Tq = p.num_q_blocks, Tk = p.num_k_blocks;
  const int group = p.heads / p.kv_heads;
  const int rows = std::min(p.block_q, p.seqlen_q);
  sla::StripBuffer hz(Tk, sz.n_strips);                                      // [h_j | z_j]
  cpu::Scratch sums = cpu::scratch(static_cast<size_t>(Tq) * sz.n);  // [H_i | Z_i]
  sla::SumPlan plan;
  for (int b = 0; b < p.batch; ++b) {
    for (int kvh = 0; kvh < p.kv_heads; ++kvh) {
      sla::key_block_sums(p, sz, b, kvh, hz);
      for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
        plan.build(Tq, hz, sla::Marginal{p.codes + b * p.codes_batch_stride + h * p.codes_head_stride, Tk, p.all_keys});
        sla::plan_sums<false>(hz, plan, sums.get(), sz.n);
        at::parallel_for(0, Tq, 1, [&](int64_t begin, int64_t end) {
          Workspace ws(rows, p.head_dim);
          for (int64_t i = begin; i < end; ++i) query_block(p, sz, b, h, static_cast<int>(i), sums.get() + i * sz.n, ws);
        });
      }
    }
  }
}

}  // namespace genaccel::cpu
