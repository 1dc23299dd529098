#include "cpu/attention/block_sparse/delta.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace genaccel::cpu {

void attention_delta_f32(const attention::AttentionDeltaParams& p) {
  const int64_t total = p.batch * p.heads * p.rows;
  const auto* dout = static_cast<const float*>(p.dout);
  const auto* out = static_cast<const float*>(p.out);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(p.dim, 1));
  at::parallel_for(0, total, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r % p.rows, bh = r / p.rows, h = bh % p.heads, b = bh / p.heads;
      const float* d = dout + b * p.do_batch_stride + h * p.do_head_stride + n * p.do_row_stride;
      const float* o = out + b * p.o_batch_stride + h * p.o_head_stride + n * p.o_row_stride;
      // Eight partial sums: independent chains the compiler vectorises.
      float acc[8] = {};
      int64_t c = 0;
      for (; c + 8 <= p.dim; c += 8)
        for (int j = 0; j < 8; ++j) acc[j] += d[c + j] * o[c + j];
      for (; c < p.dim; ++c) acc[0] += d[c] * o[c];
      p.delta[r] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  });
}

}  // namespace genaccel::cpu
