// XQuant's group quantizer on CUDA (ops xquant_quantize / xquant_dequantize), with the CPU kernel's
// float32 arithmetic (csrc/cpu/kvcache/xquant/quantize.cpp) operation for operation, so that both give
// the same bytes:
// - quantize: a warp per (row, group): min / max (first occurrence on ties, as the CPU's sequential
//   std::min / std::max: it decides the sign of a zero extreme) and finiteness by warp shuffles, the
//   scale and zero point (every lane computes the same), then each lane codes chunks of 8 elements and
//   writes their `bits` bytes (8 b-bit codes are exactly b bytes; group_size is a multiple of 8, so every
//   group starts on a byte). Groups of a row share the bytes of the packed b-bit zero points: the warps
//   write them unpacked to a scratch (rows, groups), a second kernel packs each row 8 at a time.
// - dequantize: a thread per (row, 8 elements), all of one group (group_size is a multiple of 8).
// The arithmetic uses the _rn intrinsics, so that no build flag (fast math, FMA contraction) changes it:
// IEEE division, one rounding per operation. The dequantizer's products s q and s (q - z) are exact in
// float32 (an 11-bit float16 significand times a code of at most 8 bits), so m + s q rounds once fused
// or not (the CPU kernel's build fuses it: -mfma with GNU C++'s -ffp-contract=fast).
#include "cuda/kvcache/xquant/quantize.h"

#include "cuda/kvcache/xquant/codes.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace genaccel::cuda {
namespace {
using namespace xquant;  // codes.cuh

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // the loops are grid-stride: any count is covered

unsigned blocks_for(int64_t n, int64_t per) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + per - 1) / per, kMaxBlocks)));
}

// float16 as bit patterns, as the CPU's half_bits / half_value / half_step / half_up / half_down.
__device__ __forceinline__ uint16_t half_bits(float v) { return __half_as_ushort(__float2half_rn(v)); }

// The next float16 above (up = true) or below a finite one, by its bit pattern.
__device__ __forceinline__ uint16_t half_step(uint16_t h, bool up) {
  const bool negative = (h & 0x8000) != 0;
  if ((h & 0x7fff) == 0) return up ? uint16_t{0x0001} : uint16_t{0x8001};
  return (up != negative) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h - 1);
}
// The smallest float16 >= v and the largest float16 <= v (inf where v is beyond the float16 range).
// v is a double, as on the CPU: the quotients are taken in double, where they equal the float64
// reference's, and the float16 rounding of v via float lands on a neighbour that the test corrects.
__device__ __forceinline__ uint16_t half_up(double v) {
  const uint16_t h = half_bits(__double2float_rn(v));
  return static_cast<double>(half_value(h)) < v ? half_step(h, true) : h;
}
__device__ __forceinline__ uint16_t half_down(double v) {
  const uint16_t h = half_bits(__double2float_rn(v));
  return static_cast<double>(half_value(h)) > v ? half_step(h, false) : h;
}

// std::clamp(v, lo, hi) (a NaN passes through), then the CPU's static_cast<uint8_t> of the float:
// truncation, NaN -> 0 (as x86's cvttss2si and the device's cvt.rzi give).
__device__ __forceinline__ double clamp_levels(double v, double levels) {
  return v < 0.0 ? 0.0 : (levels < v ? levels : v);
}
__device__ __forceinline__ uint32_t to_code(double v) { return static_cast<uint8_t>(__double2int_rz(v)); }

__device__ __forceinline__ void write_word(uint8_t* dst, uint64_t word, int nbytes) {
  for (int b = 0; b < nbytes; ++b) dst[b] = static_cast<uint8_t>(word >> (8 * b));
}

// How a group's codes are made: a group with a NaN / inf (codes 0), fp16 offset, constant group
// (zero "int"), min-max with an integer zero point.
enum class Mode : int { kNonFinite, kOffset, kConstant, kInteger };

template <class T>
__global__ void __launch_bounds__(kThreads) quantize_kernel(XquantQuantizeParams p) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int bits = static_cast<int>(p.bits);
  const double levels = static_cast<double>((1 << bits) - 1);
  const int64_t items = p.rows * p.groups;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarps;
  const T* x = static_cast<const T*>(p.x);
  // item is warp-uniform: the whole warp runs every iteration (the shuffles need all 32 lanes).
  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; item < items; item += warps) {
    const int64_t r = item / p.groups, g = item % p.groups;
    const int64_t a = g * p.group_size;
    const int n = static_cast<int>(min64(p.group_size, p.k - a));
    const T* xg = x + r * p.x_row_stride + a;

    // min / max with the index of their first occurrence (NaN never enters; such a group is non-finite).
    float mn = INFINITY, mx = -INFINITY;
    int mn_at = 0x7fffffff, mx_at = 0x7fffffff;
    bool finite = true;
    for (int j = lane; j < n; j += 32) {
      const float v = to_float(xg[j]);
      finite = finite && isfinite(v);
      if (v < mn) {
        mn = v;
        mn_at = j;
      }
      if (mx < v) {
        mx = v;
        mx_at = j;
      }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const float o_mn = __shfl_xor_sync(kFullMask, mn, offset), o_mx = __shfl_xor_sync(kFullMask, mx, offset);
      const int o_mn_at = __shfl_xor_sync(kFullMask, mn_at, offset);
      const int o_mx_at = __shfl_xor_sync(kFullMask, mx_at, offset);
      if (o_mn < mn || (o_mn == mn && o_mn_at < mn_at)) {
        mn = o_mn;
        mn_at = o_mn_at;
      }
      if (mx < o_mx || (o_mx == mx && o_mx_at < mx_at)) {
        mx = o_mx;
        mx_at = o_mx_at;
      }
    }
    finite = __all_sync(kFullMask, finite);

    // The group's scale and zero point, on every lane alike (the CPU's branches, in its order).
    Mode mode;
    uint16_t s_bits, m_bits = 0;
    double s = 0.0, m = 0.0, zf = 0.0;
    uint32_t z_code = 0, const_code = 0;
    if (!finite) {
      mode = Mode::kNonFinite;
      s_bits = 0x7e00;
      m_bits = 0x7e00;
    } else if (p.fp16_zero) {
      mode = Mode::kOffset;
      m_bits = half_down(mn);
      m = half_value(m_bits);
      s_bits = half_up(__ddiv_rn(__dsub_rn(mx, m), levels));
      s = half_value(s_bits);
    } else if (mn == mx) {  // constant group: s = |c| with (z, q) = (0, 1), (1, 0) or zeros
      mode = Mode::kConstant;
      s_bits = half_bits(fabsf(mn));
      z_code = mn < 0.0f ? 1u : 0u;
      const_code = mn > 0.0f ? 1u : 0u;
    } else {
      mode = Mode::kInteger;
      const double lo = 0.0f < mn ? 0.0f : mn;  // std::min(mn, 0.0f), std::max(mx, 0.0f)
      const double hi = mx < 0.0f ? 0.0f : mx;
      s_bits = half_up(__ddiv_rn(__dsub_rn(hi, lo), levels));
      s = half_value(s_bits);
      zf = clamp_levels(rint(__ddiv_rn(-lo, s)), levels);
      z_code = to_code(zf);
    }
    if (lane == 0) {
      p.scales[item] = s_bits;  // (rows, groups) contiguous: item = r * groups + g
      if (p.fp16_zero) {
        static_cast<uint16_t*>(p.zeros)[item] = m_bits;
      } else {
        p.zero_codes[item] = static_cast<uint8_t>(z_code);
      }
    }

    // The codes, 8 elements (bits bytes) per lane at a time; the group's last chunk may be shorter.
    uint8_t* crow = p.codes + r * p.code_row_bytes + (a / 8) * bits;
    for (int c = lane * 8; c < n; c += 32 * 8) {
      const int count = min(8, n - c);
      uint64_t word = 0;
      for (int i = 0; i < count; ++i) {
        uint32_t q = 0;
        if (mode == Mode::kConstant) {
          q = const_code;
        } else if (mode == Mode::kOffset) {
          const float v = to_float(xg[c + i]);
          q = s > 0.0 ? to_code(clamp_levels(rint(__ddiv_rn(__dsub_rn(v, m), s)), levels)) : 0u;
        } else if (mode == Mode::kInteger) {
          const float v = to_float(xg[c + i]);
          q = to_code(clamp_levels(__dadd_rn(rint(__ddiv_rn(v, s)), zf), levels));
        }
        word |= static_cast<uint64_t>(q) << (i * bits);
      }
      write_word(crow + (c / 8) * bits, word, (count * bits + 7) / 8);
    }
  }
}

// The b-bit zero points of zero_codes (rows, groups) packed into zeros (rows, row_bytes): a thread per
// (row, 8 groups).
__global__ void __launch_bounds__(kThreads)
    pack_zeros_kernel(const uint8_t* __restrict__ zero_codes, uint8_t* __restrict__ zeros, int64_t rows,
                      int64_t groups, int64_t row_bytes, int bits) {
  const int64_t chunks = (groups + 7) / 8, total = rows * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < total; t += stride) {
    const int64_t r = t / chunks, c = (t % chunks) * 8;
    const int count = static_cast<int>(min64(8, groups - c));
    const uint8_t* src = zero_codes + r * groups + c;
    uint64_t word = 0;
    for (int i = 0; i < count; ++i) word |= static_cast<uint64_t>(src[i]) << (i * bits);
    write_word(zeros + r * row_bytes + (c / 8) * bits, word, (count * bits + 7) / 8);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads) dequantize_kernel(XquantDequantizeParams p) {
  const int64_t chunks = (p.x.k + 7) / 8, total = p.x.rows * chunks;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  T* out = static_cast<T*>(p.out);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < total; t += stride) {
    const int64_t r = t / chunks, c = (t % chunks) * 8;
    const int count = static_cast<int>(min64(8, p.x.k - c));
    float v[8];
    dequantize_word(p.x, true, r, c, v);
    for (int i = 0; i < count; ++i) out[r * p.x.k + c + i] = from_float<T>(v[i]);
  }
}

template <class T>
int launch_quantize(const XquantQuantizeParams& p, cudaStream_t stream) {
  quantize_kernel<T><<<blocks_for(p.rows * p.groups, kWarps), kThreads, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.fp16_zero) return err;
  pack_zeros_kernel<<<blocks_for(p.rows * ((p.groups + 7) / 8), kThreads), kThreads, 0, stream>>>(
      p.zero_codes, static_cast<uint8_t*>(p.zeros), p.rows, p.groups, p.zero_row_bytes, static_cast<int>(p.bits));
  return cudaGetLastError();
}

template <class T>
int launch_dequantize(const XquantDequantizeParams& p, cudaStream_t stream) {
  dequantize_kernel<T><<<blocks_for(p.x.rows * ((p.x.k + 7) / 8), kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int xquant_quantize_cuda(const XquantQuantizeParams& p, void* stream_ptr) {
  if (!valid_layout(p.bits, p.group_size)) return cudaErrorInvalidValue;
  if (p.rows <= 0 || p.k <= 0 || p.groups <= 0) return cudaSuccess;
  if (!p.fp16_zero && p.zero_codes == nullptr) return cudaErrorInvalidValue;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.x_dtype) {
    case DType::kFloat32: return launch_quantize<float>(p, stream);
    case DType::kFloat16: return launch_quantize<__half>(p, stream);
    case DType::kBFloat16: return launch_quantize<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

int xquant_dequantize_cuda(const XquantDequantizeParams& p, void* stream_ptr) {
  if (!valid_layout(p.x.bits, p.x.group_size)) return cudaErrorInvalidValue;
  if (p.x.rows <= 0 || p.x.k <= 0) return cudaSuccess;
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (p.out_dtype) {
    case DType::kFloat32: return launch_dequantize<float>(p, stream);
    case DType::kFloat16: return launch_dequantize<__half>(p, stream);
    case DType::kBFloat16: return launch_dequantize<__nv_bfloat16>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace genaccel::cuda
