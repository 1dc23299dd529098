// LiteMLA on the CPU: a work item is one (batch, head). It walks the positions twice in tiles of kPosTile:
// first accumulating the state S = V K'^T (d x d) and the key sums (the appended ones-row of V) with the
// micro-kernel (cpu/common/microgemm.h), then producing each tile's outputs [S; ksum] Q' and dividing by
// the last row. Scratch is a few tiles per thread, whatever N is.
#include "cpu/autoencoder/dcae/lite_mla.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/common/microgemm.h"
#include "cpu/common/scratch.h"

namespace genaccel::cpu {
namespace {
constexpr int64_t kPosTile = 256;  // positions per tile (a multiple of kNR)
}

void dcae_lite_mla(const DcaeLiteMlaParams& p) {
  const float* qkv = static_cast<const float*>(p.qkv);
  float* out = static_cast<float*>(p.out);
  const int64_t d = p.head_dim, n = p.n, d_pad = (d + kNR - 1) / kNR * kNR;
  at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t i0, int64_t i1) {
    Scratch keys = scratch(static_cast<size_t>(kPosTile * d_pad));  // a tile of ReLU(k)^T, (positions, d_pad)
    Scratch state = scratch(static_cast<size_t>((d + 1) * d_pad));  // [S; ksum], (d + 1, d_pad)
    Scratch queries = scratch(static_cast<size_t>(d * kPosTile));   // a tile of ReLU(q), (d, kPosTile)
    Scratch o = scratch(static_cast<size_t>((d + 1) * kPosTile));   // [S; ksum] ReLU(q) of the tile
    for (int64_t item = i0; item < i1; ++item) {
      const float* q = qkv + item * 3 * d * n;  // item = batch * heads + head: heads are consecutive
      const float* k = q + d * n;
      const float* v = k + d * n;
      float* ksum = state.get() + d * d_pad;
      std::fill(state.get(), state.get() + (d + 1) * d_pad, 0.f);
      for (int64_t t0 = 0; t0 < n; t0 += kPosTile) {
        const int64_t m = std::min(kPosTile, n - t0);
        for (int64_t t = 0; t < m; ++t) {
          float* row = keys.get() + t * d_pad;
          for (int64_t j = 0; j < d; ++j) row[j] = std::max(k[j * n + t0 + t], 0.f);
          std::fill(row + d, row + d_pad, 0.f);
        }
        for (int64_t t = 0; t < m; ++t)
          for (int64_t j = 0; j < d; ++j) ksum[j] += keys.get()[t * d_pad + j];
        micro_gemm<true>(static_cast<int>(d), static_cast<int>(d_pad), static_cast<int>(m), v + t0, n, 1, keys.get(),
                         d_pad, state.get(), d_pad);
      }
      for (int64_t t0 = 0; t0 < n; t0 += kPosTile) {
        const int64_t m = std::min(kPosTile, n - t0), m_pad = (m + kNR - 1) / kNR * kNR;
        for (int64_t j = 0; j < d; ++j) {
          float* row = queries.get() + j * m_pad;
          for (int64_t t = 0; t < m; ++t) row[t] = std::max(q[j * n + t0 + t], 0.f);
          std::fill(row + m, row + m_pad, 0.f);
        }
        micro_gemm<false>(static_cast<int>(d + 1), static_cast<int>(m_pad), static_cast<int>(d), state.get(), d_pad, 1,
                          queries.get(), m_pad, o.get(), m_pad);
        const float* den = o.get() + d * m_pad;
        for (int64_t i = 0; i < d; ++i) {
          float* dst = out + (item * d + i) * n + t0;
          for (int64_t t = 0; t < m; ++t) dst[t] = o.get()[i * m_pad + t] / (den[t] + p.eps);
        }
      }
    }
  });
}

}  // namespace genaccel::cpu
