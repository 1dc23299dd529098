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
#include <vector>

#include "cpu/attention/sla_linear_common.h"
#include "genaccel/cpu/microgemm.h"

namespace genaccel::cpu {
namespace {

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

void query_block(const attention::SlaLinearFwdParams& p, const sla::KvHeadSums& s, int b, int h, int qb,
                 Workspace& ws) {
  const int D = p.head_dim, d_pad = p.d_pad, q_pad = ws.q_pad;
  const int q0 = qb * p.block_q;
  const int m = std::min(p.block_q, p.seqlen_q - q0);

  // The marginal blocks of this row, summed directly or as total minus the rest (sum_directly);
  // with all_keys every block is marginal.
  const int8_t* codes = p.codes + b * p.codes_batch_stride + h * p.codes_head_stride +
                        static_cast<int64_t>(qb) * p.num_k_blocks;
  int marginal = p.num_k_blocks;
  if (!p.all_keys) marginal = static_cast<int>(std::count(codes, codes + p.num_k_blocks, int8_t{0}));
  const bool direct = sla::sum_directly(marginal, p.num_k_blocks);
  auto is_marginal = [&](int j) { return p.all_keys || codes[j] == 0; };
  auto block = [](int j) { return j; };
  sla::marginal_sum(s.h, p.num_k_blocks, is_marginal, block, direct, ws.h.data());
  sla::marginal_sum(s.z, p.num_k_blocks, is_marginal, block, direct, ws.z.data());

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
  sla::KvHeadSums sums(p.head_dim, p.d_pad, p.num_k_blocks);
  for (int b = 0; b < p.batch; ++b) {
    for (int kvh = 0; kvh < p.kv_heads; ++kvh) {
      sla::key_block_sums(p, p.phi_k + b * p.pk_batch_stride + kvh * p.pk_head_stride,
                          p.v + b * p.v_batch_stride + kvh * p.v_head_stride, sums);
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
