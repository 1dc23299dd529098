// CPU block-sparse attention forward (FlashAttention-style, float32).
//
// Work unit: one (batch, head, query block). Its planned key blocks are walked in order; adjacent
// blocks are merged into runs of up to kMaxRunKeys keys so that dense stretches of the mask become
// large matrix products. Per run: S = scale * Q K^T (sgemm), online-softmax update of the running
// row max / row sum (at::vec), O += P V (sgemm). Skipped blocks cost nothing: only planned blocks
// are ever touched. Threads take work units from a shared counter, so rows with many blocks do not
// leave a thread idle behind a static split.
#include "cpu/attention/block_sparse_fwd.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "genaccel/cpu/sgemm.h"

namespace genaccel::cpu {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int kMaxRunKeys = 512;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Online-softmax update of one score row s[0, n): turns s into exp(s - m_new) in place, and returns
// the factor exp(m_old - m_new) by which earlier partial sums and outputs must be rescaled.
float softmax_row_update(float* s, int n, float& row_max, float& row_sum) {
  const int nv = n - n % Vec::size();
  float mx = kNegInf;
  if (nv > 0) {
    Vec vmax(kNegInf);
    for (int j = 0; j < nv; j += Vec::size()) vmax = at::vec::maximum(vmax, Vec::loadu(s + j));
    mx = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  }
  for (int j = nv; j < n; ++j) mx = std::max(mx, s[j]);
  const float m_new = std::max(row_max, mx);
  Vec vm(m_new), vsum(0.f);
  for (int j = 0; j < nv; j += Vec::size()) {
    Vec e = (Vec::loadu(s + j) - vm).exp_u20();
    e.store(s + j);
    vsum = vsum + e;
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vsum);
  for (int j = nv; j < n; ++j) {
    s[j] = std::exp(s[j] - m_new);
    sum += s[j];
  }
  const float correction = row_max == kNegInf ? 0.f : std::exp(row_max - m_new);
  row_sum = row_sum * correction + sum;
  row_max = m_new;
  return correction;
}

void scale_row(float* x, int n, float a) {
  const int nv = n - n % Vec::size();
  Vec va(a);
  for (int j = 0; j < nv; j += Vec::size()) (Vec::loadu(x + j) * va).store(x + j);
  for (int j = nv; j < n; ++j) x[j] *= a;
}

struct Workspace {
  std::vector<float> scores, acc, row_max, row_sum;
  Workspace(int block_q, int run_keys, int head_dim)
      : scores(static_cast<size_t>(block_q) * run_keys),
        acc(static_cast<size_t>(block_q) * head_dim),
        row_max(block_q),
        row_sum(block_q) {}
};

void run_query_block(const attention::BlockSparseFwdParams& p, int64_t task, int run_keys,
                     Workspace& ws) {
  const int qb = static_cast<int>(task % p.num_q_blocks);
  const int h = static_cast<int>((task / p.num_q_blocks) % p.heads);
  const int b = static_cast<int>(task / (static_cast<int64_t>(p.num_q_blocks) * p.heads));
  const int kvh = h / (p.heads / p.kv_heads);
  const int D = p.head_dim;
  const int q0 = qb * p.block_q;
  const int m = std::min(p.block_q, p.seqlen_q - q0);

  const float* q = static_cast<const float*>(p.q) + b * p.q_batch_stride + h * p.q_head_stride +
                   static_cast<int64_t>(q0) * p.q_row_stride;
  const float* k = static_cast<const float*>(p.k) + b * p.k_batch_stride + kvh * p.k_head_stride;
  const float* v = static_cast<const float*>(p.v) + b * p.v_batch_stride + kvh * p.v_head_stride;
  float* out = static_cast<float*>(p.out) + b * p.o_batch_stride + h * p.o_head_stride +
               static_cast<int64_t>(q0) * p.o_row_stride;
  float* lse = p.lse + (static_cast<int64_t>(b) * p.heads + h) * p.seqlen_q + q0;
  const int32_t* blocks = p.kv_indices + b * p.idx_batch_stride + h * p.idx_head_stride +
                          static_cast<int64_t>(qb) * p.max_kv_blocks;
  const int count = p.kv_counts[b * p.cnt_batch_stride + h * p.cnt_head_stride + qb];

  float* acc = ws.acc.data();
  std::fill(acc, acc + static_cast<size_t>(m) * D, 0.f);
  std::fill(ws.row_max.begin(), ws.row_max.begin() + m, kNegInf);
  std::fill(ws.row_sum.begin(), ws.row_sum.begin() + m, 0.f);

  for (int j = 0; j < count;) {
    // Merge the run of adjacent ascending blocks starting at j.
    const int first = blocks[j];
    int last = first;
    ++j;
    while (j < count && blocks[j] == last + 1 && (last + 2 - first) * p.block_k <= run_keys) {
      ++last;
      ++j;
    }
    const int k0 = first * p.block_k;
    const int n = std::min((last + 1) * p.block_k, p.seqlen_k) - k0;
    float* s = ws.scores.data();
    sgemm_abt(m, n, D, p.scale, q, p.q_row_stride, k + k0 * p.k_row_stride, p.k_row_stride, s, n);
    for (int i = 0; i < m; ++i) {
      const float c = softmax_row_update(s + static_cast<int64_t>(i) * n, n, ws.row_max[i], ws.row_sum[i]);
      if (c != 1.f) scale_row(acc + static_cast<int64_t>(i) * D, D, c);
    }
    sgemm_ab_acc(m, D, n, s, n, v + k0 * p.v_row_stride, p.v_row_stride, acc, D);
  }

  for (int i = 0; i < m; ++i) {
    float* o = out + static_cast<int64_t>(i) * p.o_row_stride;
    const float l = ws.row_sum[i];
    if (l > 0.f) {
      const float inv = 1.f / l;
      const float* a = acc + static_cast<int64_t>(i) * D;
      for (int d = 0; d < D; ++d) o[d] = a[d] * inv;
      lse[i] = ws.row_max[i] + std::log(l);
    } else {  // no selected key: zeros, lse = -inf
      std::fill(o, o + D, 0.f);
      lse[i] = kNegInf;
    }
  }
}

}  // namespace

void block_sparse_fwd_f32(const attention::BlockSparseFwdParams& p) {
  const int64_t tasks = static_cast<int64_t>(p.batch) * p.heads * p.num_q_blocks;
  if (tasks == 0) return;
  const int run_keys = std::max(kMaxRunKeys - kMaxRunKeys % p.block_k, p.block_k);
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), tasks);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    Workspace ws(p.block_q, run_keys, p.head_dim);
    for (int64_t t = next.fetch_add(1); t < tasks; t = next.fetch_add(1)) run_query_block(p, t, run_keys, ws);
  });
}

}  // namespace genaccel::cpu
