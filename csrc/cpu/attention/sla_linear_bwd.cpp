// CPU backward of SLA's linear branch (float32); the forward is sla_linear_fwd.cpp.
//
// Per (batch, kv head): h_j = phi(K_j)^T V_j, z_j = colsum phi(K_j) and their totals, as in the
// forward. Then for each query head of that kv head:
//  A. per query block i, in parallel: H_i, Z_i as in the forward (direct sum or total minus the
//     rest). With dO the gradient of O^l (zero on rows whose denom <= 0), inv = 1/denom,
//     D^l = rowsum(dO * O^l) and q~ = phi(Q_i) * inv:
//        d_phi(Q_i)^T = (H_i dO^T - Z_i D^l^T) * inv       (queries along the vector lanes)
//        dH_i = q~^T dO          dZ_i = -q~^T D^l
//     dH_i, dZ_i are kept for every i (Tq x D x d_pad); their totals are summed per thread, then
//     reduced.
//  B. per key block j, in parallel: dh_j = sum_{i: j marginal for i} dH_i, the same switch in
//     reverse: a direct sum when j is marginal for few query blocks, else the total minus a
//     correction over the query blocks for which j is not marginal; dz_j likewise. Summed over the
//     query heads of the kv head; after the last one
//        d_phi(K_j) = V_j dh_j^T + 1 dz_j^T          dV_j += phi(K_j) dh_j
// Nothing of size (Tq, Tk, D, D) exists: the buffers are h/z per key block, dH/dZ per query block
// and (with GQA) dh/dz per key block, reused across (batch, kv head), plus per-thread tiles.
#include "cpu/attention/sla_linear_bwd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "cpu/attention/sla_linear_common.h"
#include "genaccel/cpu/microgemm.h"

namespace genaccel::cpu {
namespace {

using attention::SlaLinearBwdParams;

struct QueryWorkspace {
  int q_pad;
  // h, z: H_i, Z_i; qt, dot: q~^T and dO^T (D x q_pad); do_rows: dO (rows x d_pad, columns from D
  // on stay zero); dqt: (H_i dO^T) (D x q_pad); dl, inv: D^l and 1/denom per query.
  std::vector<float> h, z, qt, dot, do_rows, dqt, dl, inv;
  QueryWorkspace(int rows, int D, int d_pad)
      : q_pad(round_up(rows, kNR)),
        h(static_cast<size_t>(D) * d_pad),
        z(D),
        qt(static_cast<size_t>(D) * q_pad),
        dot(static_cast<size_t>(D) * q_pad),
        do_rows(static_cast<size_t>(rows) * d_pad),
        dqt(static_cast<size_t>(D) * q_pad),
        dl(q_pad),
        inv(q_pad) {}
};

// Phase A for query block qb of query head h: writes its rows of d_phi_q, and dH_i (D x d_pad),
// dZ_i (D).
void query_block(const SlaLinearBwdParams& bp, const sla::KvHeadSums& s, int b, int h, int qb,
                 QueryWorkspace& ws, float* dH, float* dZ) {
  const auto& p = bp.fwd;
  const int D = p.head_dim, d_pad = p.d_pad, q_pad = ws.q_pad;
  const int q0 = qb * p.block_q;
  const int m = std::min(p.block_q, p.seqlen_q - q0);

  const int8_t* codes = p.codes + b * p.codes_batch_stride + h * p.codes_head_stride +
                        static_cast<int64_t>(qb) * p.num_k_blocks;
  int marginal = p.num_k_blocks;
  if (!p.all_keys) marginal = static_cast<int>(std::count(codes, codes + p.num_k_blocks, int8_t{0}));
  const bool direct = sla::sum_directly(marginal, p.num_k_blocks);
  auto is_marginal = [&](int j) { return p.all_keys || codes[j] == 0; };
  auto block = [](int j) { return j; };
  sla::marginal_sum(s.h, p.num_k_blocks, is_marginal, block, direct, ws.h.data());
  sla::marginal_sum(s.z, p.num_k_blocks, is_marginal, block, direct, ws.z.data());

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
  micro_gemm<false>(D, q_pad, D, ws.h.data(), d_pad, 1, ws.dot.data(), q_pad, ws.dqt.data(), q_pad);
  float* dpq = bp.d_phi_q + row0 * D;
  for (int r = 0; r < m; ++r) {
    const float inv = ws.inv[r], dl = ws.dl[r];
    for (int d = 0; d < D; ++d)
      dpq[static_cast<int64_t>(r) * D + d] = (ws.dqt[static_cast<size_t>(d) * q_pad + r] - dl * ws.z[d]) * inv;
  }
  // dH_i (D x d_pad) = q~^T (A: element (d, r) = qt[d][r]) . dO (m x d_pad);  dZ_i = -q~^T D^l
  micro_gemm<false>(D, d_pad, m, ws.qt.data(), q_pad, 1, do_rows, d_pad, dH, d_pad);
  for (int d = 0; d < D; ++d) {
    const float* qrow = ws.qt.data() + static_cast<size_t>(d) * q_pad;
    float acc = 0.f;
    for (int r = 0; r < m; ++r) acc += qrow[r] * ws.dl[r];
    dZ[d] = -acc;
  }
}

struct KeyWorkspace {
  // dh, dz: this head's dh_j, dz_j; dht: dh_j^T (D x d_pad, columns from D on stay zero);
  // c: one GEMM result (rows x d_pad).
  std::vector<float> dh, dz, dht, c;
  KeyWorkspace(int rows, int D, int d_pad)
      : dh(static_cast<size_t>(D) * d_pad), dz(D), dht(static_cast<size_t>(D) * d_pad), c(static_cast<size_t>(rows) * d_pad) {}
};

// d_phi(K_j) = V_j dh^T + 1 dz^T and dV_j += phi(K_j) dh for key block j of one (batch, kv head).
void finish_key_block(const SlaLinearBwdParams& bp, int b, int kvh, int j, const float* dh, const float* dz,
                      KeyWorkspace& ws) {
  const auto& p = bp.fwd;
  const int D = p.head_dim, d_pad = p.d_pad;
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

// Runs body(ws, task) for tasks [0, n) on at most get_num_threads() threads, each with its own
// workspace made by make(); tasks are handed out one at a time (their costs differ: direct sums
// versus corrections).
template <class Make, class Body>
void for_each_task(int64_t n, Make&& make, Body&& body) {
  if (n <= 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), n));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      auto ws = make(static_cast<int>(t));
      for (int64_t task = next.fetch_add(1); task < n; task = next.fetch_add(1)) body(ws, static_cast<int>(t), task);
    }
  });
}

}  // namespace

void sla_linear_bwd_f32(const SlaLinearBwdParams& bp) {
  const auto& p = bp.fwd;
  if (p.batch == 0 || p.kv_heads == 0) return;
  const int D = p.head_dim, d_pad = p.d_pad, Tq = p.num_q_blocks, Tk = p.num_k_blocks;
  if (p.heads == 0 || p.seqlen_q == 0) {  // no query: O^l is empty, every gradient is zero
    std::fill(bp.d_phi_k, bp.d_phi_k + static_cast<int64_t>(p.batch) * p.kv_heads * p.seqlen_k * D, 0.f);
    return;
  }
  const int group = p.heads / p.kv_heads;
  const size_t hsize = static_cast<size_t>(D) * d_pad;
  const int q_rows = std::min(p.block_q, p.seqlen_q);
  const int k_rows = std::max(1, std::min(p.block_k, p.seqlen_k));
  const int threads = std::max(1, at::get_num_threads());

  sla::KvHeadSums sums(D, d_pad, Tk);
  sla::BlockBuffer dH(Tq, hsize), dZ(Tq, D);  // per query block of the current head, and totals
  // With GQA: dh_j, dz_j summed over the query heads of the kv head.
  sla::BlockBuffer dh_acc(group > 1 ? Tk : 0, hsize), dz_acc(group > 1 ? Tk : 0, D);
  std::vector<float> thread_dH(static_cast<size_t>(threads) * hsize), thread_dZ(static_cast<size_t>(threads) * D);

  for (int b = 0; b < p.batch; ++b) {
    for (int kvh = 0; kvh < p.kv_heads; ++kvh) {
      sla::key_block_sums(p, p.phi_k + b * p.pk_batch_stride + kvh * p.pk_head_stride,
                          p.v + b * p.v_batch_stride + kvh * p.v_head_stride, sums);
      for (int hh = 0; hh < group; ++hh) {
        const int h = kvh * group + hh;

        // A: d_phi_q, dH_i, dZ_i; the totals per thread, then reduced.
        std::fill(thread_dH.begin(), thread_dH.end(), 0.f);
        std::fill(thread_dZ.begin(), thread_dZ.end(), 0.f);
        for_each_task(
            Tq, [&](int) { return QueryWorkspace(q_rows, D, d_pad); },
            [&](QueryWorkspace& ws, int t, int64_t i) {
              float* dHi = dH.block(static_cast<int>(i));
              float* dZi = dZ.block(static_cast<int>(i));
              query_block(bp, sums, b, h, static_cast<int>(i), ws, dHi, dZi);
              float* tot_h = thread_dH.data() + static_cast<size_t>(t) * hsize;
              float* tot_z = thread_dZ.data() + static_cast<size_t>(t) * D;
              for (size_t e = 0; e < hsize; ++e) tot_h[e] += dHi[e];
              for (int d = 0; d < D; ++d) tot_z[d] += dZi[d];
            });
        std::fill(dH.total(), dH.total() + hsize, 0.f);
        std::fill(dZ.total(), dZ.total() + D, 0.f);
        for (int t = 0; t < threads; ++t) {
          const float* tot_h = thread_dH.data() + static_cast<size_t>(t) * hsize;
          const float* tot_z = thread_dZ.data() + static_cast<size_t>(t) * D;
          for (size_t e = 0; e < hsize; ++e) dH.total()[e] += tot_h[e];
          for (int d = 0; d < D; ++d) dZ.total()[d] += tot_z[d];
        }

        // B: dh_j, dz_j over the query blocks for which key block j is marginal.
        const int8_t* codes = p.codes + b * p.codes_batch_stride + h * p.codes_head_stride;
        const bool first = hh == 0, last = hh == group - 1;
        for_each_task(
            Tk, [&](int) { return KeyWorkspace(k_rows, D, d_pad); },
            [&](KeyWorkspace& ws, int, int64_t j) {
              const int8_t* col = codes + j;
              auto is_marginal = [&](int i) { return p.all_keys || col[static_cast<int64_t>(i) * Tk] == 0; };
              int marginal = Tq;
              if (!p.all_keys) {
                marginal = 0;
                for (int i = 0; i < Tq; ++i) marginal += is_marginal(i);
              }
              const bool direct = sla::sum_directly(marginal, Tq);
              auto block = [](int i) { return i; };
              sla::marginal_sum(dH, Tq, is_marginal, block, direct, ws.dh.data());
              sla::marginal_sum(dZ, Tq, is_marginal, block, direct, ws.dz.data());
              const float* dh = ws.dh.data();
              const float* dz = ws.dz.data();
              if (group > 1) {
                float* acc_h = dh_acc.block(static_cast<int>(j));
                float* acc_z = dz_acc.block(static_cast<int>(j));
                if (first) {
                  std::copy(ws.dh.begin(), ws.dh.end(), acc_h);
                  std::copy(ws.dz.begin(), ws.dz.end(), acc_z);
                } else {
                  for (size_t e = 0; e < hsize; ++e) acc_h[e] += dh[e];
                  for (int d = 0; d < D; ++d) acc_z[d] += dz[d];
                }
                dh = acc_h;
                dz = acc_z;
              }
              if (last) finish_key_block(bp, b, kvh, static_cast<int>(j), dh, dz, ws);
            });
      }
    }
  }
}

}  // namespace genaccel::cpu
