// CPU backward of SLA's linear branch (float32); the forward is linear_fwd.cpp.
//
// Each block's D x D matrix and its D-vector travel together as one item of n = D*d_pad + dz_pad
// floats ([h | z], [H | Z], [dH | dZ], [dh | dz]). Per (batch, kv head):
//  0. [h_j | z_j] = [phi(K_j)^T V_j | colsum phi(K_j)] of every key block, stored strip-major.
// Then for each query head of that kv head:
//  1. [H_i | Z_i] for every query block: the sums over its marginal key blocks, pre-aggregated as in
//     the forward (a direct sum when few blocks are marginal, else the total minus the rest).
//  2. per query block i, in parallel, with dO the gradient of O^l (zero on rows whose denom <= 0),
//     inv = 1/denom, D^l = rowsum(dO * O^l) and q~ = phi(Q_i) * inv:
//        d_phi(Q_i)^T = (H_i dO^T - Z_i D^l^T) * inv       (queries along the vector lanes)
//        dH_i = q~^T dO          dZ_i = -q~^T D^l           (stored strip-major)
//  3. [dh_j | dz_j] += sum_{i: j marginal for i} [dH_i | dZ_i]: the same switch in reverse, per key
//     block a direct sum over the query blocks for which it is marginal when they are few, else the
//     total over all query blocks minus those for which it is not; summed over the query heads.
// After the last query head, per key block j in parallel:
//        d_phi(K_j) = V_j dh_j^T + 1 dz_j^T          dV_j += phi(K_j) dh_j
// The sums of 1 and 3 run strip by strip (sla::plan_sums), so the blocks they read stay in cache.
// Memory: 2 (Tq + Tk) n floats, reused across (batch, kv head), plus per-thread tiles; nothing of
// size (Tq, Tk, D, D).
#include "cpu/attention/sla/linear_bwd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/attention/sla/linear_common.h"
#include "cpu/common/microgemm.h"

namespace genaccel::cpu {
namespace {

using attention::SlaLinearBwdParams;

using Sizes = sla::ItemSizes;

struct QueryWorkspace {
  int q_pad;
  // qt, dot: q~^T and dO^T (D x q_pad); do_rows: dO (rows x d_pad, columns from D on stay zero);
  // dqt: H_i dO^T (D x q_pad); dl, inv: D^l and 1/denom per query; item: [dH_i | dZ_i].
  std::vector<float> qt, dot, do_rows, dqt, dl, inv, item;
  QueryWorkspace(int rows, const Sizes& sz)
      : q_pad(round_up(rows, kNR)),
        qt(static_cast<size_t>(sz.D) * q_pad),
        dot(static_cast<size_t>(sz.D) * q_pad),
        do_rows(static_cast<size_t>(rows) * sz.d_pad),
        dqt(static_cast<size_t>(sz.D) * q_pad),
        dl(q_pad),
        inv(q_pad),
        item(sz.n, 0.f) {}
};

// 2: for query block qb of query head h, given hz_i = [H_i | Z_i]: writes its rows of d_phi_q and
// returns [dH_i | dZ_i] in ws.item.
void query_block(const SlaLinearBwdParams& bp, const Sizes& sz, int b, int h, int qb, const float* hz_i,
                 QueryWorkspace& ws) {
  const auto& p = bp.fwd;
  const int D = sz.D, d_pad = sz.d_pad, q_pad = ws.q_pad;
  const int q0 = qb * p.block_q;
  const int m = std::min(p.block_q, p.seqlen_q - q0);
  const float* z = hz_i + sz.hsize;

  const int64_t row0 = (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q + q0;
  const float* fq = p.phi_q + b * p.pq_batch_stride + h * p.pq_head_stride + static_cast<int64_t>(q0) * p.pq_row_stride;
  const float* dout = bp.dout + b * bp.do_batch_stride + h * bp.do_head_stride + static_cast<int64_t>(q0) * bp.do_row_stride;
  const float* out = bp.out + row0 * D;
  float* do_rows = ws.do_rows.data();
  for (int r = 0; r < m; ++r) {
    const float den = bp.denom[row0 + r];
    float* dst = do_rows + static_cast<size_t>(r) * d_pad;
    if (den > 0.f) {  // else O^l was a constant 0: no gradient (and inf/nan in dO stays out)
      const float* src = dout + r * bp.do_row_stride;
      const float* o = out + static_cast<int64_t>(r) * D;
      float dl = 0.f;
      for (int e = 0; e < D; ++e) {
        dst[e] = src[e];
        dl += src[e] * o[e];
      }
      ws.inv[r] = 1.f / den;
      ws.dl[r] = dl;
    } else {
      std::fill(dst, dst + D, 0.f);
      ws.inv[r] = 0.f;
      ws.dl[r] = 0.f;
    }
  }
  std::fill(ws.inv.begin() + m, ws.inv.end(), 0.f);
  std::fill(ws.dl.begin() + m, ws.dl.end(), 0.f);
  for (int d = 0; d < D; ++d) {
    float* qrow = ws.qt.data() + static_cast<size_t>(d) * q_pad;
    float* drow = ws.dot.data() + static_cast<size_t>(d) * q_pad;
    for (int r = 0; r < m; ++r) {
      qrow[r] = fq[r * p.pq_row_stride + d] * ws.inv[r];
      drow[r] = do_rows[static_cast<size_t>(r) * d_pad + d];
    }
    std::fill(qrow + m, qrow + q_pad, 0.f);
    std::fill(drow + m, drow + q_pad, 0.f);
  }

  // d_phi(Q)^T (D x q_pad) = H (D x D, A with rows of d_pad) . dO^T, then - Z D^l^T, times inv.
  micro_gemm<false>(D, q_pad, D, hz_i, d_pad, 1, ws.dot.data(), q_pad, ws.dqt.data(), q_pad);
  float* dpq = bp.d_phi_q + row0 * D;
  for (int r = 0; r < m; ++r) {
    const float inv = ws.inv[r], dl = ws.dl[r];
    for (int d = 0; d < D; ++d)
      dpq[static_cast<int64_t>(r) * D + d] = (ws.dqt[static_cast<size_t>(d) * q_pad + r] - dl * z[d]) * inv;
  }
  // dH_i (D x d_pad) = q~^T (A: element (d, r) = qt[d][r]) . dO (m x d_pad);  dZ_i = -q~^T D^l
  micro_gemm<false>(D, d_pad, m, ws.qt.data(), q_pad, 1, do_rows, d_pad, ws.item.data(), d_pad);
  float* dz = ws.item.data() + sz.hsize;
  for (int d = 0; d < D; ++d) {
    const float* qrow = ws.qt.data() + static_cast<size_t>(d) * q_pad;
    float acc = 0.f;
    for (int r = 0; r < m; ++r) acc += qrow[r] * ws.dl[r];
    dz[d] = -acc;
  }
}

struct KeyWorkspace {
  // dht: dh_j^T (D x d_pad, columns from D on stay zero); c: one GEMM result (rows x d_pad).
  std::vector<float> dht, c;
  KeyWorkspace(int rows, const Sizes& sz)
      : dht(static_cast<size_t>(sz.D) * sz.d_pad, 0.f), c(static_cast<size_t>(rows) * sz.d_pad) {}
};

// d_phi(K_j) = V_j dh^T + 1 dz^T and dV_j += phi(K_j) dh for key block j, given [dh | dz].
void finish_key_block(const SlaLinearBwdParams& bp, const Sizes& sz, int b, int kvh, int j, const float* dhz,
                      KeyWorkspace& ws) {
  const auto& p = bp.fwd;
  const int D = sz.D, d_pad = sz.d_pad;
  const float* dh = dhz;
  const float* dz = dhz + sz.hsize;
  const int64_t k0 = static_cast<int64_t>(j) * p.block_k;
  const int valid = static_cast<int>(std::min<int64_t>(p.block_k, p.seqlen_k - k0));
  const float* v = p.v + b * p.v_batch_stride + kvh * p.v_head_stride + k0 * p.v_row_stride;
  const float* fk = p.phi_k + b * p.pk_batch_stride + kvh * p.pk_head_stride + k0 * p.pk_row_stride;
  const int64_t out0 = ((static_cast<int64_t>(b) * p.kv_heads + kvh) * p.seqlen_k + k0) * D;
  float* c = ws.c.data();

  for (int d = 0; d < D; ++d)
    for (int e = 0; e < D; ++e) ws.dht[static_cast<size_t>(e) * d_pad + d] = dh[static_cast<size_t>(d) * d_pad + e];
  micro_gemm<false>(valid, d_pad, D, v, p.v_row_stride, 1, ws.dht.data(), d_pad, c, d_pad);
  float* dpk = bp.d_phi_k + out0;
  for (int t = 0; t < valid; ++t)
    for (int d = 0; d < D; ++d) dpk[static_cast<int64_t>(t) * D + d] = c[static_cast<size_t>(t) * d_pad + d] + dz[d];

  micro_gemm<false>(valid, d_pad, D, fk, p.pk_row_stride, 1, dh, d_pad, c, d_pad);
  float* dv = bp.dv + out0;
  for (int t = 0; t < valid; ++t)
    for (int e = 0; e < D; ++e) dv[static_cast<int64_t>(t) * D + e] += c[static_cast<size_t>(t) * d_pad + e];
}

}  // namespace

void sla_linear_bwd_f32(const SlaLinearBwdParams& bp) {
  const auto& p = bp.fwd;
  if (p.batch == 0 || p.kv_heads == 0) return;
  if (p.heads == 0 || p.seqlen_q == 0) {  // no query: O^l is empty, every gradient is zero
    std::fill(bp.d_phi_k, bp.d_phi_k + static_cast<int64_t>(p.batch) * p.kv_heads * p.seqlen_k * p.head_dim, 0.f);
    return;
  }
  const Sizes sz(p);
  const int Tq = p.num_q_blocks, Tk = p.num_k_blocks;
  const int group = p.heads / p.kv_heads;
  const int q_rows = std::min(p.block_q, p.seqlen_q);
  const int k_rows = std::max(1, std::min(p.block_k, p.seqlen_k));

  sla::StripBuffer hz(Tk, sz.n_strips);     // [h_j | z_j]
  sla::StripBuffer dhz(Tq, sz.n_strips);    // [dH_i | dZ_i] of the current query head
  cpu::Scratch sums_q = cpu::scratch(static_cast<size_t>(Tq) * sz.n);  // [H_i | Z_i], plain
  cpu::Scratch sums_k = cpu::scratch(static_cast<size_t>(Tk) * sz.n);  // [dh_j | dz_j], plain
  sla::SumPlan rows, cols;

  for (int b = 0; b < p.batch; ++b) {
    for (int kvh = 0; kvh < p.kv_heads; ++kvh) {
      sla::key_block_sums(p, sz, b, kvh, hz);
      for (int hh = 0; hh < group; ++hh) {
        const int h = kvh * group + hh;
        const sla::Marginal marginal{p.codes + b * p.codes_batch_stride + h * p.codes_head_stride, Tk, p.all_keys};
        // 1: [H_i | Z_i] over the marginal key blocks of each query block.
        rows.build(Tq, hz, marginal);
        sla::plan_sums<false>(hz, rows, sums_q.get(), sz.n);

        // 2: d_phi_q and [dH_i | dZ_i].
        at::parallel_for(0, Tq, 1, [&](int64_t begin, int64_t end) {
          QueryWorkspace ws(q_rows, sz);
          for (int64_t i = begin; i < end; ++i) {
            query_block(bp, sz, b, h, static_cast<int>(i), sums_q.get() + i * sz.n, ws);
            dhz.put(static_cast<int>(i), ws.item.data());
          }
        });

        // 3: [dh_j | dz_j] over the query blocks for which key block j is marginal, summed over heads.
        cols.build(Tk, dhz, [&](int j, int i) { return marginal(i, j); });
        if (hh == 0)
          sla::plan_sums<false>(dhz, cols, sums_k.get(), sz.n);
        else
          sla::plan_sums<true>(dhz, cols, sums_k.get(), sz.n);
      }
      at::parallel_for(0, Tk, 1, [&](int64_t begin, int64_t end) {
        KeyWorkspace ws(k_rows, sz);
        for (int64_t j = begin; j < end; ++j)
          finish_key_block(bp, sz, b, kvh, static_cast<int>(j), sums_k.get() + j * sz.n, ws);
      });
    }
  }
}

}  // namespace genaccel::cpu
