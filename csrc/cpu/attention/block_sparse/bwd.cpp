// CPU block-sparse attention backward (float32), the transposed layout of the forward kernel:
// queries along the vector lanes. Per query block and run of adjacent planned key blocks:
//   S^T  = K . Q^T                 P^T = 2^(S^T * scale*log2e - lse*log2e)   (recomputed)
//   dP^T = V . dO^T                dS^T = P^T * (dP^T - delta)
//   dQ^T += K^T . dS^T             (scale applied once at the end)
//   dV   += P^T . dO               dK += dS^T . (scale Q)
// Several query blocks, and the GQA heads of one kv head, add to the same dK/dV rows: work is
// split by (batch, kv head) groups, so a thread that runs a group adds straight into its dK/dV; a
// group split between threads is summed in a fixed order (see block_sparse_bwd_f32).
#include "cpu/attention/block_sparse/bwd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "cpu/common/scratch.h"
#include "cpu/common/microgemm.h"

namespace genaccel::cpu {
namespace {

constexpr int kMaxRunKeys = 256;

// Buffers for the largest query block; q_pad is the padded width of the unit being run (set per unit:
// a variable-size block, e.g. an SVG2 cluster, is often far smaller than the largest).
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

// Copies m rows of x (row stride ld), times row_scale, into `rows` (m x d_pad, zero padded) and
// its transpose into `cols` (D x q_pad, zero padded).
void pack(const float* x, int64_t ld, int m, int D, Workspace& ws, float* rows, float* cols, float row_scale) {
  for (int i = 0; i < m; ++i) {
    float* r = rows + static_cast<size_t>(i) * ws.d_pad;
    for (int d = 0; d < D; ++d) r[d] = x[i * ld + d] * row_scale;
    std::fill(r + D, r + ws.d_pad, 0.f);
  }
  for (int d = 0; d < D; ++d) {
    float* c = cols + static_cast<size_t>(d) * ws.q_pad;
    for (int i = 0; i < m; ++i) c[i] = x[i * ld + d];
    std::fill(c + m, c + ws.q_pad, 0.f);
  }
}

// Query block qb of head h in batch b. dk_acc/dv_acc: (Nk x d_pad) accumulators of kv head
// (b, h / (H / Hkv)); dK gets the softmax scale through the scaled copy of Q.
void run_query_block(const attention::BlockSparseBwdParams& bp, int b, int h, int qb, int max_run_blocks,
                     Workspace& ws, float* dk_acc, float* dv_acc) {
  const auto& p = bp.fwd;
  const int kvh = h / (p.heads / p.kv_heads);
  const int D = p.head_dim, d_pad = ws.d_pad;
  const auto queries = attention::query_block_tokens(p, b, h, qb);
  const int q0 = queries.begin, m = queries.end - queries.begin;
  if (m == 0) return;  // an empty variable-size block
  const int q_pad = ws.q_pad = round_up(m, kNR);
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

  pack(q, p.q_row_stride, m, D, ws, ws.q_rows.data(), ws.qt.data(), p.scale);
  pack(dout, bp.do_row_stride, m, D, ws, ws.do_rows.data(), ws.dot.data(), 1.f);
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
    const auto keys = attention::key_blocks_tokens(p, b, h, first, first + nblocks);
    const int k0 = keys.begin, n = keys.end - keys.begin;
    if (n == 0) continue;  // empty variable-size key blocks
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
    micro_gemm<true>(n, d_pad, m, st, q_pad, 1, ws.do_rows.data(), d_pad, dv_acc + static_cast<int64_t>(k0) * d_pad, d_pad);
    micro_gemm<true>(n, d_pad, m, dpt, q_pad, 1, ws.q_rows.data(), d_pad, dk_acc + static_cast<int64_t>(k0) * d_pad, d_pad);
  }
  for (int i = 0; i < m; ++i)
    for (int d = 0; d < D; ++d) dq[static_cast<int64_t>(i) * D + d] = ws.dqt[static_cast<size_t>(d) * q_pad + i] * p.scale;
}

}  // namespace

// Work split: the tasks of all (batch, kv head) groups, groups with the most work first and the
// tasks of a group in order, are cut into one contiguous span per thread of about equal planned
// work. A cut inside a group splits it into parts: the group's first part accumulates straight into
// its dK/dV (through a buffer of the thread's own when D is not a multiple of kNR), every later part
// into a buffer of its span (only a span's first part can be such a part), and whichever part
// finishes last adds those buffers into dK/dV in part order. The cuts depend only on the plan and the
// thread count, so two calls give bitwise equal gradients. A cut that would leave a part too small to
// pay for zeroing and adding its buffer moves to the group's nearer end.
void block_sparse_bwd_f32(const attention::BlockSparseBwdParams& bp) {
  const auto& p = bp.fwd;
  const int64_t tasks = static_cast<int64_t>(p.batch) * p.heads * p.num_q_blocks;
  const int D = p.head_dim, d_pad = round_up(D, kNR);
  const int64_t slab = static_cast<int64_t>(p.seqlen_k) * D;  // one kv head of dK or dV
  const int64_t groups = static_cast<int64_t>(p.batch) * p.kv_heads;
  float* dk = static_cast<float*>(bp.dk);
  float* dv = static_cast<float*>(bp.dv);
  if (tasks == 0) {
    std::fill(dk, dk + groups * slab, 0.f);
    std::fill(dv, dv + groups * slab, 0.f);
    return;
  }
  // Task i of group g: query block i % Tq of head kvh * (H / Hkv) + i / Tq.
  const int group = p.heads / p.kv_heads, Tq = p.num_q_blocks;
  const int64_t group_tasks = static_cast<int64_t>(group) * Tq;
  std::vector<int64_t> group_pairs(groups, 0), task_pairs(groups * group_tasks);
  for (int64_t g = 0; g < groups; ++g) {
    const int b = static_cast<int>(g / p.kv_heads), kvh = static_cast<int>(g % p.kv_heads);
    for (int hh = 0; hh < group; ++hh) {
      const int32_t* cnt = p.kv_counts + b * p.cnt_batch_stride + (kvh * group + hh) * p.cnt_head_stride;
      for (int qb = 0; qb < Tq; ++qb) group_pairs[g] += task_pairs[g * group_tasks + hh * Tq + qb] = cnt[qb];
    }
  }
  std::vector<int64_t> order(groups);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return group_pairs[x] > group_pairs[y]; });
  // work[t]: planned work of the first t tasks in that order; a task costs its block pairs, and a
  // little more so that tasks without pairs spread too.
  std::vector<int64_t> work(groups * group_tasks + 1, 0);
  for (int64_t o = 0, t = 0; o < groups; ++o)
    for (int64_t i = 0; i < group_tasks; ++i, ++t) work[t + 1] = work[t] + 16 * task_pairs[order[o] * group_tasks + i] + 1;
  const auto pairs_between = [&](int64_t t0, int64_t t1) {  // block pairs of tasks [t0, t1) of one group
    return ((work[t1] - work[t0]) - (t1 - t0)) / 16;
  };
  // A part that is not its group's first costs zeroing and adding a (Nk x d_pad) pair of buffers,
  // ~24 bytes per element, against ~10 bq bk D flops per block pair at ~12 flops per byte.
  const double min_part_pairs = 12.0 * 24.0 * static_cast<double>(p.seqlen_k) * d_pad / (10.0 * p.block_q * p.block_k * D);

  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), tasks));
  std::vector<int64_t> cut(threads + 1, tasks);
  cut[0] = 0;
  for (int j = 1; j < threads; ++j) {
    const int64_t ideal = std::lower_bound(work.begin(), work.end(), work[tasks] * j / threads) - work.begin();
    const int64_t lo = ideal / group_tasks * group_tasks, hi = std::min(lo + group_tasks, tasks);
    int64_t c = ideal;
    if (c != lo && pairs_between(c, hi) < min_part_pairs) c = pairs_between(lo, c) < pairs_between(c, hi) ? lo : hi;
    cut[j] = std::max(c, cut[j - 1]);
  }
  // Span j's first part is a later part of its group when cut[j] lies inside the group; extra[j] is
  // then the index of its buffer, else -1. parts_left[o]: the parts of the o-th group still running.
  std::vector<int> extra(threads, -1);
  int extras = 0;
  std::unique_ptr<std::atomic<int>[]> parts_left(new std::atomic<int>[groups]);
  for (int64_t o = 0; o < groups; ++o) parts_left[o].store(1, std::memory_order_relaxed);
  for (int j = 0; j < threads; ++j)
    if (cut[j] < cut[j + 1] && cut[j] % group_tasks != 0) {
      extra[j] = extras++;
      parts_left[cut[j] / group_tasks].fetch_add(1, std::memory_order_relaxed);
    }
  const int64_t acc_floats = static_cast<int64_t>(p.seqlen_k) * d_pad;
  Scratch extra_buffers = extras ? scratch(static_cast<size_t>(2 * acc_floats * extras)) : Scratch();

  const bool direct = d_pad == D;
  const int max_run_blocks = std::max(1, kMaxRunKeys / p.block_k);
  const int rows = std::min(p.block_q, p.seqlen_q);
  const int run_keys = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(max_run_blocks) * p.block_k, 1, std::max(p.seqlen_k, 1)));
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    Workspace ws(rows, D, d_pad, run_keys);
    Scratch own;  // this thread's (Nk x d_pad) dK and dV accumulators of first parts, when not direct
    for (int64_t j = begin; j < end; ++j) {
      for (int64_t t0 = cut[j]; t0 < cut[j + 1];) {
        const int64_t o = t0 / group_tasks, g = order[o];
        const int64_t t1 = std::min(cut[j + 1], (o + 1) * group_tasks);
        const bool first_part = t0 % group_tasks == 0;
        float* dk_g = dk + g * slab;
        float* dv_g = dv + g * slab;
        float* acc_k = dk_g;
        if (!first_part) {
          acc_k = extra_buffers.get() + 2 * acc_floats * extra[j];
        } else if (!direct) {
          if (!own) own = scratch(static_cast<size_t>(2 * acc_floats));
          acc_k = own.get();
        }
        float* acc_v = acc_k == dk_g ? dv_g : acc_k + acc_floats;
        std::fill(acc_k, acc_k + (acc_k == dk_g ? slab : acc_floats), 0.f);
        std::fill(acc_v, acc_v + (acc_k == dk_g ? slab : acc_floats), 0.f);
        const int b = static_cast<int>(g / p.kv_heads), kvh = static_cast<int>(g % p.kv_heads);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t i = t - o * group_tasks;
          run_query_block(bp, b, kvh * group + static_cast<int>(i / Tq), static_cast<int>(i % Tq), max_run_blocks,
                          ws, acc_k, acc_v);
        }
        if (first_part && !direct) {
          for (int64_t r = 0; r < p.seqlen_k; ++r) {
            std::copy(acc_k + r * d_pad, acc_k + r * d_pad + D, dk_g + r * D);
            std::copy(acc_v + r * d_pad, acc_v + r * d_pad + D, dv_g + r * D);
          }
        }
        // The last part to finish adds the later parts' buffers, in part order.
        if (parts_left[o].fetch_sub(1, std::memory_order_acq_rel) == 1) {
          for (int s = 0; s < threads; ++s) {
            if (extra[s] < 0 || cut[s] / group_tasks != o) continue;
            const float* add_k = extra_buffers.get() + 2 * acc_floats * extra[s];
            const float* add_v = add_k + acc_floats;
            for (int64_t r = 0; r < p.seqlen_k; ++r)
              for (int d = 0; d < D; ++d) {
                dk_g[r * D + d] += add_k[r * d_pad + d];
                dv_g[r * D + d] += add_v[r * d_pad + d];
              }
          }
        }
        t0 = t1;
      }
    }
  });
}

}  // namespace genaccel::cpu
