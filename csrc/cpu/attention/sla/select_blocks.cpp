// Per row: the two thresholds by nth_element on the keys (linear time), then one ascending pass that
// writes the codes and, in block order, the critical ids (no sort of the selection).
#include "cpu/attention/sla/select_blocks.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "genaccel/attention/sla/select_blocks.h"

namespace genaccel::cpu {

void sla_block_select(const float* scores, int64_t rows, int64_t tk, int64_t n_crit, int64_t n_neg,
                      int8_t* codes, int32_t* indices) {
  using attention::sla_block_key;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(tk, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<uint64_t> keys(tk), work(tk);
    for (int64_t r = r0; r < r1; ++r) {
      const float* s = scores + r * tk;
      for (int64_t j = 0; j < tk; ++j) keys[j] = sla_block_key(s[j], uint32_t(j), uint32_t(tk));
      work = keys;
      std::nth_element(work.begin(), work.begin() + (n_crit - 1), work.end(), std::greater<>());
      const uint64_t critical_min = work[n_crit - 1];
      uint64_t negligible_max = 0;
      if (n_neg > 0) {
        // The n_crit largest are in front; the n_neg smallest are among the rest.
        std::nth_element(work.begin() + n_crit, work.begin() + (tk - n_neg), work.end(), std::greater<>());
        negligible_max = work[tk - n_neg];
      }
      int8_t* c = codes + r * tk;
      int32_t* idx = indices + r * n_crit;
      for (int64_t j = 0; j < tk; ++j) {
        const uint64_t key = keys[j];
        c[j] = key >= critical_min ? attention::kSlaCritical
               : (n_neg > 0 && key <= negligible_max) ? attention::kSlaNegligible
                                                      : attention::kSlaMarginal;
        if (c[j] == attention::kSlaCritical) *idx++ = static_cast<int32_t>(j);
      }
    }
  });
}

}  // namespace genaccel::cpu
