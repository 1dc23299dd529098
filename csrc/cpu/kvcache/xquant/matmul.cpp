// XQuant's fused products on the CPU. X is dequantized a group of rows at a time into a thread's
// scratch and multiplied there with the register-blocked micro-kernel (cpu/common/microgemm.h), so the
// dequantized X never exists whole: the peak temporary is a row group per thread (at most 12 MB), not
// rows x k.
// - xquant_matmul: a work item is (a group of up to kRowGroup rows, a share of the output columns). Its
//   rows are dequantized once; then per block of kColBlock columns and kDepth-deep slice of k, the weight
//   slice is packed transposed in strips of kNR columns (as the micro-kernel streams B) and accumulated,
//   one kRowTile sub-tile at a time, into a C block. Large groups read the weight from memory fewer
//   times (at d = 4096 it is 64 MB, past the L3); groups are balanced over the threads, and columns are
//   split across items only when there are too few groups to keep every thread busy.
// - xquant_weighted_sum: a work item is (batch, a block of kColBlock columns of X); it walks the tokens
//   in tiles of kTokenTile, dequantizing each tile's columns straight into the micro-kernel's B layout
//   and accumulating a[:, tile] @ tile.
#include "cpu/kvcache/xquant/matmul.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/common/microgemm.h"
#include "cpu/common/scratch.h"
#include "cpu/kvcache/xquant/quantize.h"

namespace genaccel::cpu {
namespace {
constexpr int64_t kRowGroup = 768;   // rows of X per matmul item at most: the weight is read once per group
constexpr int64_t kGroupFloats = int64_t{3} << 20;  // and a thread's dequantized group at most 12 MB
constexpr int64_t kRowTile = 192;    // rows per sub-tile (32 micro-tiles): its A slice, 192 KB, stays in L2
constexpr int64_t kColBlock = 256;   // output columns per C block (a multiple of kNR)
constexpr int64_t kDepth = 256;      // k per packed weight slice: 256 x 256 floats = 256 KB
constexpr int64_t kTokenTile = 128;  // tokens per weighted-sum tile

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// w[c0 : c0 + width, k0 : k0 + depth]^T packed as strips of kNR columns, each (depth x kNR) contiguous,
// zeros past width: the micro-kernel then streams B rows 64 bytes apart (a 256-float row stride would
// map a strip's rows onto a few L1 sets).
void pack_weight(const float* w, int64_t k, int64_t c0, int64_t width, int64_t k0, int64_t depth, float* dst) {
  for (int64_t s0 = 0; s0 < width; s0 += kNR) {
    float* strip = dst + s0 * depth;
    for (int64_t j = 0; j < kNR; ++j) {
      if (s0 + j >= width) {
        for (int64_t d = 0; d < depth; ++d) strip[d * kNR + j] = 0.f;
        continue;
      }
      const float* src = w + (c0 + s0 + j) * k + k0;
      for (int64_t d = 0; d < depth; ++d) strip[d * kNR + j] = src[d];
    }
  }
}
}  // namespace

void xquant_matmul(const XquantMatmulParams& p) {
  const int64_t rows = p.x.rows, k = p.x.k, n = p.n;
  const float* w = static_cast<const float*>(p.weight);
  const float* bias = static_cast<const float*>(p.bias);
  float* out = static_cast<float*>(p.out);
  const int64_t threads = at::get_num_threads(), col_blocks = ceil_div(n, kColBlock);
  const int64_t k_pad = ceil_div(k, kDepth) * kDepth;
  // Balanced row groups: a multiple of the thread count when there are at least as many, so no thread
  // idles on a short last group; with fewer, the columns are split instead.
  int64_t groups = ceil_div(rows, std::max<int64_t>(kMR, std::min(kRowGroup, kGroupFloats / k_pad)));
  if (groups > threads) groups = ceil_div(groups, threads) * threads;
  const int64_t group_rows = std::min(rows, ceil_div(ceil_div(rows, groups), kMR) * kMR);
  groups = ceil_div(rows, group_rows);
  const int64_t splits = std::clamp<int64_t>(ceil_div(threads, groups), 1, col_blocks);
  const int64_t blocks_per_split = ceil_div(col_blocks, splits);
  at::parallel_for(0, groups * splits, 1, [&](int64_t i0, int64_t i1) {
    Scratch tile = scratch(static_cast<size_t>(group_rows * k_pad));
    Scratch packed = scratch(static_cast<size_t>(kDepth * kColBlock));
    Scratch c = scratch(static_cast<size_t>(group_rows * kColBlock));
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t r0 = item / splits * group_rows, m = std::min(group_rows, rows - r0);
      const int64_t b0 = item % splits * blocks_per_split, b1 = std::min(col_blocks, b0 + blocks_per_split);
      if (b0 >= b1) continue;
      // The group as k-slices of (m x kDepth): a slice's rows are 1 KB apart, not k floats.
      for (int64_t k0 = 0; k0 < k; k0 += kDepth)
        for (int64_t r = 0; r < m; ++r)
          dequantize_span(p.x, r0 + r, k0, std::min(k, k0 + kDepth), tile.get() + k0 * m + r * kDepth);
      for (int64_t cb = b0; cb < b1; ++cb) {
        const int64_t c0 = cb * kColBlock, width = std::min(kColBlock, n - c0);
        const int width_pad = round_up(static_cast<int>(width), kNR);
        for (int64_t k0 = 0; k0 < k; k0 += kDepth) {
          const int depth = static_cast<int>(std::min(kDepth, k - k0));
          pack_weight(w, k, c0, width, k0, depth, packed.get());
          // One packed slice serves the whole group, in sub-tiles whose A slice stays in L2 over all strips.
          for (int64_t s = 0; s < m; s += kRowTile) {
            const int ms = static_cast<int>(std::min(kRowTile, m - s));
            const float* a = tile.get() + k0 * m + s * kDepth;
            float* cs = c.get() + s * width_pad;
            for (int s0 = 0; s0 < width_pad; s0 += kNR) {
              const float* b = packed.get() + s0 * depth;
              if (k0 == 0) {
                micro_gemm<false>(ms, kNR, depth, a, kDepth, 1, b, kNR, cs + s0, width_pad);
              } else {
                micro_gemm<true>(ms, kNR, depth, a, kDepth, 1, b, kNR, cs + s0, width_pad);
              }
            }
          }
        }
        for (int64_t r = 0; r < m; ++r) {
          const float* src = c.get() + r * width_pad;
          float* dst = out + (r0 + r) * n + c0;
          for (int64_t j = 0; j < width; ++j) dst[j] = bias ? src[j] + bias[c0 + j] : src[j];
        }
      }
    }
  });
}

void xquant_weighted_sum(const XquantWeightedSumParams& p) {
  const int64_t k = p.x.k, m = p.m, tokens = p.tokens;
  const float* a = static_cast<const float*>(p.a);
  float* out = static_cast<float*>(p.out);
  const int64_t col_blocks = ceil_div(k, kColBlock);
  at::parallel_for(0, p.batch * col_blocks, 1, [&](int64_t i0, int64_t i1) {
    Scratch tile = scratch(static_cast<size_t>(kTokenTile * kColBlock));
    Scratch c = scratch(static_cast<size_t>(std::max<int64_t>(m, 1) * kColBlock));
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t b = item / col_blocks, c0 = item % col_blocks * kColBlock, width = std::min(kColBlock, k - c0);
      const int width_pad = round_up(static_cast<int>(width), kNR);
      for (int64_t t0 = 0; t0 < tokens; t0 += kTokenTile) {
        const int64_t nt = std::min(kTokenTile, tokens - t0);
        for (int64_t t = 0; t < nt; ++t) {
          float* row = tile.get() + t * width_pad;
          dequantize_span(p.x, b * tokens + t0 + t, c0, c0 + width, row);
          std::fill(row + width, row + width_pad, 0.f);
        }
        const float* at = a + b * m * tokens + t0;
        if (t0 == 0) {
          micro_gemm<false>(static_cast<int>(m), width_pad, static_cast<int>(nt), at, tokens, 1, tile.get(), width_pad,
                            c.get(), width_pad);
        } else {
          micro_gemm<true>(static_cast<int>(m), width_pad, static_cast<int>(nt), at, tokens, 1, tile.get(), width_pad,
                           c.get(), width_pad);
        }
      }
      for (int64_t i = 0; i < m; ++i) std::copy(c.get() + i * width_pad, c.get() + i * width_pad + width,
                                                out + (b * m + i) * k + c0);
    }
  });
}

}  // namespace genaccel::cpu
