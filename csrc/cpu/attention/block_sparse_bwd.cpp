// CPU block-sparse attention backward (float32), the transposed layout of the forward kernel:
// queries along the vector lanes. Per query block and run of adjacent planned key blocks:
//   S^T  = K . Q^T                 P^T = 2^(S^T * scale*log2e - lse*log2e)   (recomputed)
//   dP^T = V . dO^T                dS^T = P^T * (dP^T - delta)
//   dQ^T += K^T . dS^T             (scale applied once at the end)
//   dV   += P^T . dO               dK += dS^T . Q   (per-thread accumulators, D padded to kNR)
#include "cpu/attention/block_sparse_bwd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "genaccel/cpu/microgemm.h"

namespace genaccel::cpu {
namespace {

constexpr int kMaxRunKeys = 256;

struct Workspace {
  int q_pad, d_pad;
  std::vector<float> qt, dot, q_rows, do_rows, st, dpt, dqt, lse2, delta;
  Workspace(int rows, int D, int d_pad_, int run_keys)
      : q_pad(round_up(rows, kNR)),
        d_pad(d_pad_),
        qt(static_cast<size_t>(D) * q_pad),
        dot(static_cast<size_t>(D) * q_pad),
        q_rows(static_cast<size_t>(rows) * d_pad_),
        do_rows(static_cast<size_t>(rows) * d_pad_),
        st(static_cast<size_t>(run_keys) * q_pad),
        dpt(static_cast<size_t>(run_keys) * q_pad),
        dqt(static_cast<size_t>(D) * q_pad),
        lse2(q_pad),
        delta(q_pad) {}
};

// Copies m rows of x (row stride ld) into `rows` (m x d_pad, zero padded) and its transpose into
// `cols` (D x q_pad, zero padded).
void pack(const float* x, int64_t ld, int m, int D, Workspace& ws, float* rows, float* cols) {
  for (int i = 0; i < m; ++i) {
    std::copy(x + i * ld, x + i * ld + D, rows + static_cast<size_t>(i) * ws.d_pad);
    std::fill(rows + static_cast<size_t>(i) * ws.d_pad + D, rows + static_cast<size_t>(i + 1) * ws.d_pad, 0.f);
  }
  for (int d = 0; d < D; ++d) {
    float* c = cols + static_cast<size_t>(d) * ws.q_pad;
    for (int i = 0; i < m; ++i) c[i] = x[i * ld + d];
    std::fill(c + m, c + ws.q_pad, 0.f);
  }
}

void run_query_block(const attention::BlockSparseBwdParams& bp, int64_t task, int max_run_blocks,
                     Workspace& ws, float* dk_acc, float* dv_acc) {
  const auto& p = bp.fwd;
  const int qb = static_cast<int>(task % p.num_q_blocks);
  const int h = static_cast<int>((task / p.num_q_blocks) % p.heads);
  const int b = static_cast<int>(task / (static_cast<int64_t>(p.num_q_blocks) * p.heads));
  const int kvh = h / (p.heads / p.kv_heads);
  const int D = p.head_dim, q_pad = ws.q_pad, d_pad = ws.d_pad;
  const int q0 = qb * p.block_q;
  const int m = std::min(p.block_q, p.seqlen_q - q0);
  const int64_t row0 = (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q + q0;  // into lse/delta/dq

  float* dq = static_cast<float*>(bp.dq) + row0 * D;
  const int32_t* blocks = p.kv_indices + b * p.idx_batch_stride + h * p.idx_head_stride +
                          static_cast<int64_t>(qb) * p.max_kv_blocks;
  const int count = p.kv_counts[b * p.cnt_batch_stride + h * p.cnt_head_stride + qb];
  if (count == 0) {  // the output was a constant zero: no gradient flows
    std::fill(dq, dq + static_cast<int64_t>(m) * D, 0.f);
    return;
  }
  const float* q = static_cast<const float*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride + static_cast<int64_t>(q0) * p.q_row_stride;
  const float* dout = static_cast<const float*>(bp.dout) + b * bp.do_batch_stride + h * bp.do_head_stride + static_cast<int64_t>(q0) * bp.do_row_stride;
  const float* k = static_cast<const float*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const float* v = static_cast<const float*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
  const int64_t kv_row0 = (static_cast<int64_t>(b) * p.kv_heads + kvh) * p.seqlen_k;  // into dk/dv accumulators

  pack(q, p.q_row_stride, m, D, ws, ws.q_rows.data(), ws.qt.data());
  pack(dout, bp.do_row_stride, m, D, ws, ws.do_rows.data(), ws.dot.data());
  // Padding query columns get lse = +inf, so their recomputed probabilities (and gradients) are 0.
  std::fill(ws.lse2.begin(), ws.lse2.end(), std::numeric_limits<float>::infinity());
  std::fill(ws.delta.begin(), ws.delta.end(), 0.f);
  for (int i = 0; i < m; ++i) {
    ws.lse2[i] = p.lse[row0 + i] * kLog2e;
    ws.delta[i] = bp.delta[row0 + i];
  }
  std::fill(ws.dqt.begin(), ws.dqt.end(), 0.f);
  const float scale_log2 = p.scale * kLog2e;

  for (int j = 0; j < count;) {
    const int first = blocks[j];
    int nblocks = 1;
    while (j + nblocks < count && nblocks < max_run_blocks && blocks[j + nblocks] == first + nblocks) ++nblocks;
    j += nblocks;
    const int k0 = first * p.block_k;
    const int n = static_cast<int>(std::min<int64_t>(static_cast<int64_t>(first + nblocks) * p.block_k, p.seqlen_k) - k0);
    float* st = ws.st.data();
    float* dpt = ws.dpt.data();
    micro_gemm<false>(n, q_pad, D, k + k0 * p.k_row_stride, p.k_row_stride, 1, ws.qt.data(), q_pad, st, q_pad);
    micro_gemm<false>(n, q_pad, D, v + k0 * p.v_row_stride, p.v_row_stride, 1, ws.dot.data(), q_pad, dpt, q_pad);
    for (int r = 0; r < n; ++r) {
      float* s = st + static_cast<size_t>(r) * q_pad;
      float* dp = dpt + static_cast<size_t>(r) * q_pad;
      for (int c = 0; c < q_pad; c += 8) {
        const f32x8 prob = exp2_8(load8(s + c) * scale_log2 - load8(ws.lse2.data() + c));
        store8(s + c, prob);                                                  // P^T
        store8(dp + c, prob * (load8(dp + c) - load8(ws.delta.data() + c)));  // dS^T
      }
    }
    micro_gemm<true>(D, q_pad, n, k + k0 * p.k_row_stride, 1, p.k_row_stride, dpt, q_pad, ws.dqt.data(), q_pad);
    micro_gemm<true>(n, d_pad, m, st, q_pad, 1, ws.do_rows.data(), d_pad, dv_acc + (kv_row0 + k0) * d_pad, d_pad);
    micro_gemm<true>(n, d_pad, m, dpt, q_pad, 1, ws.q_rows.data(), d_pad, dk_acc + (kv_row0 + k0) * d_pad, d_pad);
  }
  for (int i = 0; i < m; ++i)
    for (int d = 0; d < D; ++d) dq[static_cast<int64_t>(i) * D + d] = ws.dqt[static_cast<size_t>(d) * q_pad + i] * p.scale;
}

}  // namespace

void block_sparse_bwd_f32(const attention::BlockSparseBwdParams& bp) {
  const auto& p = bp.fwd;
  const int64_t tasks = static_cast<int64_t>(p.batch) * p.heads * p.num_q_blocks;
  const int D = p.head_dim, d_pad = round_up(D, kNR);
  const int64_t kv_rows = static_cast<int64_t>(p.batch) * p.kv_heads * p.seqlen_k;
  float* dk = static_cast<float*>(bp.dk);
  float* dv = static_cast<float*>(bp.dv);
  std::fill(dk, dk + kv_rows * D, 0.f);
  std::fill(dv, dv + kv_rows * D, 0.f);
  if (tasks == 0) return;
  const int max_run_blocks = std::max(1, kMaxRunKeys / p.block_k);
  const int rows = std::min(p.block_q, p.seqlen_q);
  const int run_keys = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(max_run_blocks) * p.block_k, 1, std::max(p.seqlen_k, 1)));
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), tasks));
  // Per-thread dK/dV accumulators (D padded): several query blocks and GQA heads add to one key row.
  const size_t acc_size = static_cast<size_t>(kv_rows) * d_pad;
  std::vector<std::unique_ptr<float[]>> dk_acc(threads), dv_acc(threads);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      dk_acc[t].reset(new float[acc_size]());
      dv_acc[t].reset(new float[acc_size]());
      Workspace ws(rows, D, d_pad, run_keys);
      for (int64_t task = next.fetch_add(1); task < tasks; task = next.fetch_add(1))
        run_query_block(bp, task, max_run_blocks, ws, dk_acc[t].get(), dv_acc[t].get());
    }
  });
  at::parallel_for(0, kv_rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int t = 0; t < threads; ++t) {
        const float* dka = dk_acc[t].get() + r * d_pad;
        const float* dva = dv_acc[t].get() + r * d_pad;
        for (int d = 0; d < D; ++d) {
          dk[r * D + d] += dka[d] * p.scale;
          dv[r * D + d] += dva[d];
        }
      }
    }
  });
}

}  // namespace genaccel::cpu
