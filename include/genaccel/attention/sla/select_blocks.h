// Torch-free core of SLA's block selection (op sla_select_blocks), shared by the CPU kernel and the
// CUDA kernel: the sort key of one block score. Per row of scores, the n_critical largest keys are
// the critical blocks and the n_negligible smallest the negligible ones.
#pragma once
#include <cstdint>
#include <cstring>

#include "genaccel/common/host_device.h"

namespace genaccel::attention {

// Codes of sla_block_map / sla_select_blocks.
constexpr int8_t kSlaCritical = 1, kSlaMarginal = 0, kSlaNegligible = -1;

// A key per score of a row of tk scores, all distinct, whose descending order is the order of the
// float64 reference's stable descending sort (sla_block_map_reference): larger scores first, equal
// scores (-0.0 and +0.0 included) by lower block index j, NaN after everything (as torch.sort puts
// it). High word: the float's order mapped onto unsigned integers; low word: tk - 1 - j.
GENACCEL_HOST_DEVICE inline uint64_t sla_block_key(float score, uint32_t j, uint32_t tk) {
  uint32_t bits;
#if defined(__CUDA_ARCH__)
  bits = __float_as_uint(score);
#else
  std::memcpy(&bits, &score, sizeof bits);
#endif
  uint32_t ordered;
  if (score != score) {
    ordered = 0;                                   // NaN: below -inf
  } else if ((bits & 0x7FFFFFFFu) == 0) {
    ordered = 0x80000000u;                         // -0.0 ranks as +0.0
  } else {
    ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // negatives reversed, below positives
  }
  return (static_cast<uint64_t>(ordered) << 32) | (tk - 1 - j);
}

}  // namespace genaccel::attention
