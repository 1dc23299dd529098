// CPU block-sparse attention backward (float32), the transposed layout of the forward kernel:
// queries along the vector lanes. Per query block and run of adjacent planned key blocks:
//   S^T  = K . Q^T                 P^T = 2^(S^T * scale*log2e - lse*log2e)   (recomputed)
//   dP^T = V . dO^T                dS^T = P^T * (dP^T - delta)
//   dQ^T += K^T . dS^T             (scale applied once at the end)
//   dV   += P^T . dO               dK += dS^T . (scale Q)
// Several query blocks, and the GQA heads of one kv head, add to the same dK/dV rows: work is
// split by (batch, kv head) groups, so a thread that owns a group adds straight into its dK/dV,
// with no per-thread copies of them and no reduction (see block_sparse_bwd_f32).
#include "cpu/attention/block_sparse/bwd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#include "cpu/common/scratch.h"
#include "cpu/common/microgemm.h"

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
  const int D = p.head_dim, q_pad = ws.q_pad, d_pad = ws.d_pad;
  const auto queries = attention::query_block_tokens(p, b, h, qb);
  const int q0 = queries.begin, m = queries.end - queries.begin;
  if (m == 0) return;  // an empty variable-size block
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

// Progress of one (batch, kv head) group: its tasks, query block t % Tq of head
// kvh * (H / Hkv) + t / Tq for t in [0, H / Hkv * Tq), are claimed in order through `next`.
struct Group {
  std::atomic<int64_t> next{0};
  std::atomic<bool> done{false};  // the owner has written its part of dK/dV
  std::mutex add;                 // serializes helpers adding their parts
};

}  // namespace

// Threads claim whole (batch, kv head) groups, most work first, and own them: the owner of a group
// zeroes that kv head's dK/dV and accumulates straight into them (through a (Nk x d_pad) buffer of
// its own when D is not a multiple of kNR). A thread left without a group helps the group with the
// most work left, if that pays for a helper buffer: it claims tasks of that group into its own
// buffer and, once the owner is done, adds it into dK/dV under the group's lock. Helper buffers come
// from cpu::scratch (kept by the thread for its next call).
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
  const int group = p.heads / p.kv_heads, Tq = p.num_q_blocks;
  const int64_t group_tasks = static_cast<int64_t>(group) * Tq;
  // pairs[g * (group_tasks + 1) + t]: planned (query block, key block) pairs of group g's first t tasks.
  std::vector<int64_t> pairs(groups * (group_tasks + 1), 0);
  for (int64_t g = 0; g < groups; ++g) {
    const int b = static_cast<int>(g / p.kv_heads), kvh = static_cast<int>(g % p.kv_heads);
    int64_t* pre = pairs.data() + g * (group_tasks + 1);
    for (int hh = 0, t = 0; hh < group; ++hh) {
      const int32_t* cnt = p.kv_counts + b * p.cnt_batch_stride + (kvh * group + hh) * p.cnt_head_stride;
      for (int qb = 0; qb < Tq; ++qb, ++t) pre[t + 1] = pre[t] + cnt[qb];
    }
  }
  std::vector<int64_t> order(groups);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return pairs[(x + 1) * (group_tasks + 1) - 1] > pairs[(y + 1) * (group_tasks + 1) - 1];
  });
  // A helper takes about half of what is left; that should outweigh zeroing its buffer and adding it
  // in (~24 bytes per buffer element against ~10 bq bk D flops per block pair, at ~12 flops per byte).
  const double pair_flops = 10.0 * p.block_q * p.block_k * D;
  const double help_min_pairs = 2.0 * 12.0 * 24.0 * static_cast<double>(p.seqlen_k) * d_pad / pair_flops;

  const bool direct = d_pad == D;
  const int64_t acc_floats = static_cast<int64_t>(p.seqlen_k) * d_pad;
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), tasks));
  const int max_run_blocks = std::max(1, kMaxRunKeys / p.block_k);
  const int rows = std::min(p.block_q, p.seqlen_q);
  const int run_keys = static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(max_run_blocks) * p.block_k, 1, std::max(p.seqlen_k, 1)));
  std::unique_ptr<Group[]> state(new Group[groups]);
  std::atomic<int64_t> next_group{0};
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      Workspace ws(rows, D, d_pad, run_keys);
      Scratch buf;  // this thread's (Nk x d_pad) dK and dV accumulators, when not writing dK/dV directly
      auto buffers = [&] {
        if (!buf) buf = scratch(static_cast<size_t>(2 * acc_floats));
        std::fill(buf.get(), buf.get() + 2 * acc_floats, 0.f);
        return buf.get();
      };
      // Runs tasks of group g, claimed one at a time, into acc_k/acc_v (zeroed by `zero` before the
      // first one); returns how many it ran.
      auto run = [&](int64_t g, float*& acc_k, float*& acc_v, auto&& zero) {
        const int b = static_cast<int>(g / p.kv_heads), kvh = static_cast<int>(g % p.kv_heads);
        int64_t ran = 0;
        for (int64_t i = state[g].next.fetch_add(1); i < group_tasks; i = state[g].next.fetch_add(1), ++ran) {
          if (ran == 0) zero();
          run_query_block(bp, b, kvh * group + static_cast<int>(i / Tq), static_cast<int>(i % Tq), max_run_blocks,
                          ws, acc_k, acc_v);
        }
        return ran;
      };
      for (int64_t o = next_group.fetch_add(1); o < groups; o = next_group.fetch_add(1)) {
        const int64_t g = order[o];
        // Set even if a task throws, so that no helper waits forever.
        struct Done {
          std::atomic<bool>& flag;
          ~Done() { flag.store(true, std::memory_order_release); }
        } done{state[g].done};
        float* dk_g = dk + g * slab;
        float* dv_g = dv + g * slab;
        float* acc_k = direct ? dk_g : nullptr;
        float* acc_v = direct ? dv_g : nullptr;
        auto zero = [&] {
          if (direct) {
            std::fill(dk_g, dk_g + slab, 0.f);
            std::fill(dv_g, dv_g + slab, 0.f);
          } else {
            acc_k = buffers();
            acc_v = acc_k + acc_floats;
          }
        };
        if (run(g, acc_k, acc_v, zero) == 0) {  // helpers took every task: start from zero
          std::fill(dk_g, dk_g + slab, 0.f);
          std::fill(dv_g, dv_g + slab, 0.f);
        } else if (!direct) {
          for (int64_t r = 0; r < p.seqlen_k; ++r) {
            std::copy(acc_k + r * d_pad, acc_k + r * d_pad + D, dk_g + r * D);
            std::copy(acc_v + r * d_pad, acc_v + r * d_pad + D, dv_g + r * D);
          }
        }
      }
      // Every group has an owner now; help the one with the most work left while that pays.
      for (;;) {
        int64_t g = -1;
        double most = help_min_pairs;
        for (int64_t c = 0; c < groups; ++c) {
          const int64_t claimed = std::min(state[c].next.load(std::memory_order_relaxed), group_tasks);
          const int64_t* pre = pairs.data() + c * (group_tasks + 1);
          const double left = static_cast<double>(pre[group_tasks] - pre[claimed]);
          if (claimed < group_tasks && left >= most) most = left, g = c;
        }
        if (g < 0) break;
        float* acc_k = nullptr;
        float* acc_v = nullptr;
        auto zero = [&] {
          acc_k = buffers();
          acc_v = acc_k + acc_floats;
        };
        if (run(g, acc_k, acc_v, zero) == 0) continue;
        while (!state[g].done.load(std::memory_order_acquire)) std::this_thread::yield();
        std::lock_guard<std::mutex> lock(state[g].add);
        float* dk_g = dk + g * slab;
        float* dv_g = dv + g * slab;
        for (int64_t r = 0; r < p.seqlen_k; ++r)
          for (int d = 0; d < D; ++d) {
            dk_g[r * D + d] += acc_k[r * d_pad + d];
            dv_g[r * D + d] += acc_v[r * d_pad + d];
          }
      }
    }
  });
}

}  // namespace genaccel::cpu
