// CPU block-sparse attention forward (FlashAttention-style, float32).
//
// Work unit: one (batch, head, query block); threads take units from a shared counter, so rows with
// many key blocks do not leave a thread idle behind a static split. A unit walks its planned key
// blocks in order, merging adjacent ones into runs of up to kMaxRunKeys keys, and keeps everything
// transposed -- queries along the vector lanes:
//   S^T (keys x queries)  = K (keys x D) . (scale*Q)^T      Q^T packed once per unit
//   online softmax down the columns of S^T                  per-query max/sum are plain vector ops
//                                                           (column max taken in the GEMM epilogue)
//   O^T (D x queries)    += V^T (D x keys) . P^T            V^T is V read with swapped strides
// so K and V are read in place (no packing, no padding of partial key blocks: a run is just the
// key range it covers) and the per-query rescale of O^T is one vector multiply per row.
// Skipped blocks cost nothing: only planned blocks are touched.
#include "cpu/attention/block_sparse/fwd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/common/microgemm.h"

namespace genaccel::cpu {
namespace {

constexpr int kMaxRunKeys = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Per-thread scratch, allocated once per thread per call, for the largest query block (a unit
// uses the first round_up(its rows, kNR) query columns).
// pack_keys: rows of the K and V packing buffers (variable-size blocks only, else 0).
struct Workspace {
  int q_pad;
  std::vector<float> qt, st, ot, colmax, row_max, row_sum, corr, kpack, vpack;
  Workspace(int block_q, int head_dim, int run_keys, int pack_keys)
      : q_pad(round_up(block_q, kNR)),
        qt(static_cast<size_t>(head_dim) * q_pad),
        st(static_cast<size_t>(run_keys) * q_pad),
        ot(static_cast<size_t>(head_dim) * q_pad),
        colmax(q_pad),
        row_max(q_pad),
        row_sum(q_pad),
        corr(q_pad),
        kpack(static_cast<size_t>(pack_keys) * head_dim),
        vpack(static_cast<size_t>(pack_keys) * head_dim) {}
};

// Online-softmax update over a run, in log2 units: st is (n x q_pad) scores (one query per column)
// and colmax their per-column maximum. Turns st into 2^(st - m) in place and adds it to the running
// sum per query. The reference max m of a query is raised only when a score exceeds it by more than
// kRescaleMargin (then the earlier sum and the query's column of ot are rescaled); otherwise weights
// up to 2^kRescaleMargin accumulate against the stale max, which float32 holds as well. With sparse
// masks most runs are a single 64-key block, and rescaling the D x q_pad output after each of them
// cost as much as its softmax. lse = (m + log2(sum)) * ln 2 stays exact for any m.
constexpr float kRescaleMargin = 8.f;

void softmax_update(float* st, const float* colmax, int n, int q_pad, Workspace& ws, float* ot, int D) {
  float* mx = ws.row_max.data();
  float* sum = ws.row_sum.data();
  float* corr = ws.corr.data();
  bool rescale = false;
  for (int c = 0; c < q_pad; c += 8) {
    const f32x8 m_old = load8(mx + c), cm = load8(colmax + c);
    const i32x8 raise = cm > m_old + kRescaleMargin;  // every lane on the first run (m_old = -inf)
    const bool any = any8(raise);
    rescale |= any;
    store8(corr + c, any ? select8(raise, exp2_8(m_old - cm), splat8(1.f)) : splat8(1.f));
    if (any) store8(mx + c, select8(raise, cm, m_old));
  }
  if (rescale) {
    for (int c = 0; c < q_pad; c += 8) store8(sum + c, load8(sum + c) * load8(corr + c));
    for (int d = 0; d < D; ++d) {
      float* row = ot + d * q_pad;
      for (int c = 0; c < q_pad; c += 8) store8(row + c, load8(row + c) * load8(corr + c));
    }
  }
  for (int c = 0; c < q_pad; c += 8) {
    const f32x8 m = load8(mx + c);
    f32x8 acc = load8(sum + c);
    for (int r = 0; r < n; ++r) {
      float* x = st + r * q_pad + c;
      const f32x8 e = exp2_8(load8(x) - m);
      store8(x, e);
      acc += e;
    }
    store8(sum + c, acc);
  }
}

// Sparse masks visit key blocks in no order the hardware prefetcher can follow: ask for the next
// block's K and V rows (into L2) while this run computes.
void prefetch_block(const attention::BlockSparseFwdParams& p, int b, int h, const float* k, const float* v,
                    int block) {
  const auto keys = attention::key_blocks_tokens(p, b, h, block, block + 1);
  const int64_t k0 = keys.begin, rows = keys.end - keys.begin;
  const int64_t row_bytes = static_cast<int64_t>(p.head_dim) * sizeof(float);
  for (int64_t r = 0; r < rows; ++r) {
    const char* kr = reinterpret_cast<const char*>(k + (k0 + r) * p.k_row_stride);
    const char* vr = reinterpret_cast<const char*>(v + (k0 + r) * p.v_row_stride);
    for (int64_t off = 0; off < row_bytes; off += 64) {
      __builtin_prefetch(kr + off, 0, 2);
      __builtin_prefetch(vr + off, 0, 2);
    }
  }
}

void run_query_block(const attention::BlockSparseFwdParams& p, int64_t task, int max_run_blocks,
                     Workspace& ws) {
  const int qb = static_cast<int>(task % p.num_q_blocks);
  const int h = static_cast<int>((task / p.num_q_blocks) % p.heads);
  const int b = static_cast<int>(task / (static_cast<int64_t>(p.num_q_blocks) * p.heads));
  const int kvh = h / (p.heads / p.kv_heads);
  const int D = p.head_dim;
  const auto queries = attention::query_block_tokens(p, b, h, qb);
  const int q0 = queries.begin, m = queries.end - queries.begin;
  if (m == 0) return;  // an empty variable-size block
  // The unit's own width, not the largest block's: a variable-size block (an SVG2 cluster) is often
  // far smaller than the largest, and every GEMM and softmax pass runs over q_pad query columns.
  const int q_pad = round_up(m, kNR);

  float* out = static_cast<float*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride +
               static_cast<int64_t>(q0) * p.o_row_stride;
  float* lse = p.lse + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q + q0;
  const int32_t* blocks = p.kv_indices + b * p.idx_batch_stride + h * p.idx_head_stride +
                          static_cast<int64_t>(qb) * p.max_kv_blocks;
  const int count = p.kv_counts[b * p.cnt_batch_stride + h * p.cnt_head_stride + qb];
  if (count == 0) {  // no selected key: zeros, lse = -inf
    for (int i = 0; i < m; ++i) std::fill(out + i * p.o_row_stride, out + i * p.o_row_stride + D, 0.f);
    std::fill(lse, lse + m, kNegInf);
    return;
  }
  const float* k = static_cast<const float*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const float* v = static_cast<const float*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;

  // (scale*log2(e)*Q)^T: scores in log2 units, so every exponential is one exp2. Padding columns
  // are zero (their results are computed and never written out).
  const float scale_log2 = p.scale * kLog2e;
  const float* q = static_cast<const float*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride +
                   static_cast<int64_t>(q0) * p.q_row_stride;
  float* qt = ws.qt.data();
  for (int d = 0; d < D; ++d) {
    float* row = qt + d * q_pad;
    for (int i = 0; i < m; ++i) row[i] = q[i * p.q_row_stride + d] * scale_log2;
    std::fill(row + m, row + q_pad, 0.f);
  }
  float* ot = ws.ot.data();
  std::fill(ot, ot + static_cast<size_t>(D) * q_pad, 0.f);
  std::fill(ws.row_max.begin(), ws.row_max.end(), kNegInf);
  std::fill(ws.row_sum.begin(), ws.row_sum.end(), 0.f);

  const bool pack = !ws.kpack.empty();
  for (int j = 0; j < count;) {
    // A run of keys: adjacent uniform blocks read in place, or (variable-size blocks, e.g. SVG2's
    // clusters of a few dozen keys each) the selected blocks' rows copied into one packed run of up
    // to kMaxRunKeys keys, so that the GEMMs see long runs rather than one short cluster at a time.
    const float *kr, *vr;
    int64_t k_stride, v_stride;
    int n;
    if (!pack) {
      const int first = blocks[j];
      int nblocks = 1;
      while (j + nblocks < count && nblocks < max_run_blocks && blocks[j + nblocks] == first + nblocks) ++nblocks;
      j += nblocks;
      const auto keys = attention::key_blocks_tokens(p, b, h, first, first + nblocks);
      n = keys.end - keys.begin;
      kr = k + static_cast<int64_t>(keys.begin) * p.k_row_stride;
      vr = v + static_cast<int64_t>(keys.begin) * p.v_row_stride;
      k_stride = p.k_row_stride;
      v_stride = p.v_row_stride;
    } else {
      const auto head = attention::key_blocks_tokens(p, b, h, blocks[j], blocks[j] + 1);
      int end = j + 1;
      n = head.end - head.begin;
      bool contiguous = true;
      int last_end = head.end;
      while (end < count) {
        const auto next = attention::key_blocks_tokens(p, b, h, blocks[end], blocks[end] + 1);
        const int len = next.end - next.begin;
        if (n + len > kMaxRunKeys) break;
        contiguous &= next.begin == last_end || len == 0;
        if (len > 0) last_end = next.end;
        n += len;
        ++end;
      }
      if (contiguous) {  // one range of keys (a single block, possibly longer than kMaxRunKeys)
        kr = k + static_cast<int64_t>(head.begin) * p.k_row_stride;
        vr = v + static_cast<int64_t>(head.begin) * p.v_row_stride;
        k_stride = p.k_row_stride;
        v_stride = p.v_row_stride;
      } else {
        float* kp = ws.kpack.data();
        float* vp = ws.vpack.data();
        for (int t = j; t < end; ++t) {
          const auto keys = attention::key_blocks_tokens(p, b, h, blocks[t], blocks[t] + 1);
          for (int r = keys.begin; r < keys.end; ++r, kp += D, vp += D) {
            std::copy_n(k + static_cast<int64_t>(r) * p.k_row_stride, D, kp);
            std::copy_n(v + static_cast<int64_t>(r) * p.v_row_stride, D, vp);
          }
        }
        kr = ws.kpack.data();
        vr = ws.vpack.data();
        k_stride = v_stride = D;
      }
      j = end;
    }
    if (j < count) prefetch_block(p, b, h, k, v, blocks[j]);
    if (n == 0) continue;  // empty variable-size key blocks
    float* st = ws.st.data();
    micro_gemm<false, true>(n, q_pad, D, kr, k_stride, 1, qt, q_pad, st, q_pad, ws.colmax.data());
    softmax_update(st, ws.colmax.data(), n, q_pad, ws, ot, D);
    micro_gemm<true>(D, q_pad, n, vr, 1, v_stride, st, q_pad, ot, q_pad);
  }

  for (int i = 0; i < m; ++i) {
    float* o = out + static_cast<int64_t>(i) * p.o_row_stride;
    if (ws.row_sum[i] == 0.f) {  // every listed key block was empty (variable-size blocks): no key
      std::fill(o, o + D, 0.f);
      lse[i] = kNegInf;
      continue;
    }
    const float inv = 1.f / ws.row_sum[i];
    for (int d = 0; d < D; ++d) o[d] = ot[d * q_pad + i] * inv;
    lse[i] = (ws.row_max[i] + std::log2(ws.row_sum[i])) * kLn2;
  }
}

}  // namespace

void block_sparse_fwd_f32(const attention::BlockSparseFwdParams& p) {
  const int64_t tasks = static_cast<int64_t>(p.batch) * p.heads * p.num_q_blocks;
  if (tasks == 0) return;
  const int max_run_blocks = std::max(1, kMaxRunKeys / p.block_k);
  // Scratch is sized by what a unit can actually hold: a block larger than its sequence is the
  // whole sequence.
  const int rows = std::min(p.block_q, p.seqlen_q);
  // Variable-size key blocks pack runs of up to kMaxRunKeys keys; a block longer than that is one run.
  const bool pack = p.k_offsets != nullptr;
  const int64_t run_max = pack ? std::max<int64_t>(kMaxRunKeys, p.block_k)
                               : static_cast<int64_t>(max_run_blocks) * p.block_k;
  const int run_keys = static_cast<int>(std::clamp<int64_t>(run_max, 1, std::max(p.seqlen_k, 1)));
  const int pack_keys = pack ? std::min(kMaxRunKeys, run_keys) : 0;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), tasks);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    Workspace ws(rows, p.head_dim, run_keys, pack_keys);
    for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) run_query_block(p, t, max_run_blocks, ws);
  });
}

}  // namespace genaccel::cpu
