// DC-AE's space <-> channel shortcuts on the CPU as direct index maps (no unshuffled intermediate): a
// work item is one output row (batch, channel, frame, row), whose elements are gathered from the input.
#include "cpu/autoencoder/dcae/shuffle.h"

#include <ATen/Parallel.h>

namespace genaccel::cpu {

void dcae_shuffle(const DcaeShuffleParams& p, bool to_channel) {
  const float* x = static_cast<const float*>(p.x);
  float* y = static_cast<float*>(p.y);
  const int64_t r = p.r, rt = p.rt, g = p.c_fine * rt * r * r / p.c_coarse;
  const int64_t T = p.frames, H = p.height, W = p.width, Tc = T / rt, Hc = H / r, Wc = W / r;
  if (to_channel) {
    // y (batch, c_coarse, Tc, Hc, Wc): the mean of unshuffled channels [o g, o g + g).
    const float inv = 1.f / static_cast<float>(g);
    at::parallel_for(0, p.batch * p.c_coarse * Tc * Hc, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t row = i0; row < i1; ++row) {
        const int64_t hc = row % Hc, tc = row / Hc % Tc, o = row / (Hc * Tc) % p.c_coarse, b = row / (Hc * Tc * p.c_coarse);
        float* dst = y + row * Wc;
        for (int64_t wc = 0; wc < Wc; ++wc) dst[wc] = 0.f;
        for (int64_t u = o * g; u < o * g + g; ++u) {
          const int64_t dw = u % r, dh = u / r % r, dt = u / (r * r) % rt, c = u / (r * r * rt);
          const float* src = x + (((b * p.c_fine + c) * T + tc * rt + dt) * H + hc * r + dh) * W + dw;
          for (int64_t wc = 0; wc < Wc; ++wc) dst[wc] += src[wc * r];
        }
        for (int64_t wc = 0; wc < Wc; ++wc) dst[wc] *= inv;
      }
    });
    return;
  }
  // y (batch, c_fine, T, H, W): element (c, t, h, w) is coarse channel u / g of its unshuffled channel u.
  at::parallel_for(0, p.batch * p.c_fine * T * H, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t row = i0; row < i1; ++row) {
      const int64_t h = row % H, t = row / H % T, c = row / (H * T) % p.c_fine, b = row / (H * T * p.c_fine);
      float* dst = y + row * W;
      for (int64_t dw = 0; dw < r; ++dw) {
        const int64_t u = ((c * rt + t % rt) * r + h % r) * r + dw;
        const float* src = x + (((b * p.c_coarse + u / g) * Tc + t / rt) * Hc + h / r) * Wc;
        for (int64_t wc = 0; wc < Wc; ++wc) dst[wc * r + dw] = src[wc];
      }
    }
  });
}

}  // namespace genaccel::cpu
