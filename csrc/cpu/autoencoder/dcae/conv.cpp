// The chunk-causal 3-D convolution on the CPU, as one small GEMM per kernel tap over a halo tile, so
// neither a padded copy of the video nor an im2col matrix is made.
// A work item is (batch, output frame, a tile of th x tw output pixels, a block of output channels). For
// each input frame the frame's taps may read (chunk rule: never the next chunk; before frame 0 the cache
// or nothing), the item copies that frame's tile plus its spatial halo into scratch, Cin planes of
// (th + kh - 1) rows of Wp = tw + kw - 1 floats, zeros outside the image. Output pixels are computed on
// that Wp-wide grid (the kw - 1 columns past tw are discarded), because then tap (dh, dw) reads every
// plane at the one offset dh * Wp + dw: the B operand of the micro-kernel (cpu/common/microgemm.h) is the
// plane itself, with Cin rows, and A is the tap's (Cout x Cin) weight slice, packed once per call.
#include "cpu/autoencoder/dcae/conv.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/common/microgemm.h"
#include "cpu/common/scratch.h"

namespace genaccel::cpu {
namespace {
constexpr int64_t kTileWidth = 64;      // output columns per tile
constexpr int64_t kTilePositions = 512;  // about th x Wp output positions per tile: C block and B strips stay in L2
constexpr int64_t kCoutBlock = 128;     // output channels per item

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

void dcae_chunk_causal_conv3d(const DcaeChunkConvParams& p) {
  const float* x = static_cast<const float*>(p.x);
  const float* cache = static_cast<const float*>(p.cache);
  const float* weight = static_cast<const float*>(p.weight);
  const float* bias = static_cast<const float*>(p.bias);
  float* y = static_cast<float*>(p.y);
  const int64_t cin = p.cin, cout = p.cout, T = p.frames, H = p.height, W = p.width;
  const int64_t kt = p.kt, kh = p.kh, kw = p.kw, pt = (kt - 1) / 2, ph = (kh - 1) / 2, pw = (kw - 1) / 2;
  const int64_t taps = kt * kh * kw, plane_hw = H * W;

  // The weight as taps x (Cout x Cin), so a tap's slice is a plain row-major A operand.
  Scratch packed = scratch(static_cast<size_t>(taps * cout * cin));
  at::parallel_for(0, taps * cout, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t tap = i / cout, co = i % cout;
      for (int64_t ci = 0; ci < cin; ++ci) packed.get()[i * cin + ci] = weight[(co * cin + ci) * taps + tap];
    }
  });

  const int64_t tw = std::min(W, kTileWidth), wp = tw + kw - 1;
  // Row tiles of equal height, so the last one is not mostly empty.
  const int64_t th = ceil_div(H, ceil_div(H, std::clamp<int64_t>(kTilePositions / wp, 1, H)));
  const int64_t positions = th * wp, positions_pad = ceil_div(positions, kNR) * kNR;
  // A plane: the halo rows, then slack that the last padded strip may read (zeros).
  const int64_t plane = (th + kh - 1) * wp + (positions_pad - positions) + kw;
  const int64_t h_tiles = ceil_div(H, th), w_tiles = ceil_div(W, tw), co_blocks = ceil_div(cout, kCoutBlock);
  const int64_t items = p.batch * T * h_tiles * w_tiles * co_blocks;

  at::parallel_for(0, items, 1, [&](int64_t i0, int64_t i1) {
    Scratch halo = scratch(static_cast<size_t>(kt * cin * plane));
    Scratch c = scratch(static_cast<size_t>(std::min(cout, kCoutBlock) * positions_pad));
    for (int64_t item = i0; item < i1; ++item) {
      int64_t rest = item;
      const int64_t cb = rest % co_blocks;
      rest /= co_blocks;
      const int64_t wt = rest % w_tiles;
      rest /= w_tiles;
      const int64_t ht = rest % h_tiles;
      rest /= h_tiles;
      const int64_t t = rest % T, b = rest / T;
      const int64_t co0 = cb * kCoutBlock, mc = std::min(kCoutBlock, cout - co0);
      const int64_t h0 = ht * th, w0 = wt * tw, rows = std::min(th, H - h0), cols = std::min(tw, W - w0);
      const int64_t chunk_end = (t / p.chunk + 1) * p.chunk;
      const int64_t used = ceil_div(rows * wp, kNR) * kNR;  // the positions this tile computes

      for (int64_t r = 0; r < mc; ++r)
        std::fill(c.get() + r * positions_pad, c.get() + (r + 1) * positions_pad, bias ? bias[co0 + r] : 0.f);
      for (int64_t dt = 0; dt < kt; ++dt) {
        const int64_t tt = t + dt - pt;
        const float* frame = nullptr;  // input frame tt of batch b, channel 0; null: zeros (no taps)
        int64_t channel_stride = 0;
        if (tt >= chunk_end) continue;
        if (tt >= 0) {
          frame = x + ((b * cin) * T + tt) * plane_hw, channel_stride = T * plane_hw;
        } else if (cache != nullptr) {
          frame = cache + ((b * cin) * pt + tt + pt) * plane_hw, channel_stride = pt * plane_hw;
        } else {
          continue;
        }
        float* tile = halo.get() + dt * cin * plane;
        for (int64_t ci = 0; ci < cin; ++ci) {
          float* dst = tile + ci * plane;
          const float* src = frame + ci * channel_stride;
          std::fill(dst, dst + plane, 0.f);
          for (int64_t i = 0; i < rows + kh - 1; ++i) {
            const int64_t hh = h0 + i - ph;
            if (hh < 0 || hh >= H) continue;
            const int64_t j0 = std::max<int64_t>(0, pw - w0), j1 = std::min(cols + kw - 1, W - w0 + pw);
            for (int64_t j = j0; j < j1; ++j) dst[i * wp + j] = src[hh * W + w0 + j - pw];
          }
        }
        for (int64_t dh = 0; dh < kh; ++dh)
          for (int64_t dw = 0; dw < kw; ++dw) {
            const float* a = packed.get() + ((dt * kh + dh) * kw + dw) * cout * cin + co0 * cin;
            micro_gemm<true>(static_cast<int>(mc), static_cast<int>(used), static_cast<int>(cin), a, cin, 1,
                             tile + dh * wp + dw, plane, c.get(), positions_pad);
          }
      }
      for (int64_t r = 0; r < mc; ++r)
        for (int64_t i = 0; i < rows; ++i) {
          const float* src = c.get() + r * positions_pad + i * wp;
          std::copy(src, src + cols, y + (((b * cout + co0 + r) * T + t) * H + h0 + i) * W + w0);
        }
    }
  });
}

}  // namespace genaccel::cpu
