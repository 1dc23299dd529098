// Device helpers shared by XQuant's CUDA kernels (quantize.cu, matmul.cu): element conversions, the
// packed little-endian code words and the dequantization of one word of 8 codes (the arithmetic of the
// CPU kernel, csrc/cpu/kvcache/xquant/quantize.cpp, with the _rn intrinsics so that no build flag changes it).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "genaccel/common/float_convert.cuh"
#include "genaccel/kvcache/xquant/params.h"

namespace genaccel::cuda::xquant {

inline bool valid_layout(int64_t bits, int64_t group_size) {
  return (bits == 2 || bits == 3 || bits == 4 || bits == 8) && group_size >= 8 && group_size % 8 == 0;
}

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ float half_value(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// The little-endian word of nbytes <= 8 bytes at src.
__device__ __forceinline__ uint64_t read_word(const uint8_t* src, int nbytes) {
  uint64_t word = 0;
  for (int b = 0; b < nbytes; ++b) word |= static_cast<uint64_t>(src[b]) << (8 * b);
  return word;
}

// Elements [c, c + 8) of row r of x dequantized (s (q - z), or m + s q with fp16 zeros); those at or past x.k, and all 8 unless r < x.rows and c < x.k, are 0. c is a multiple of 8.
__device__ __forceinline__ void dequantize_word(const XquantCodes& x, bool valid_row, int64_t r, int64_t c,
                                                float (&v)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = 0.f;
  if (!valid_row || c >= x.k) return;
  const int bits = static_cast<int>(x.bits);
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  const int count = static_cast<int>(min64(8, x.k - c));
  const uint64_t word = read_word(x.codes + r * x.code_row_bytes + (c / 8) * bits, (count * bits + 7) / 8);
  const int64_t g = c / x.group_size;  // the word's 8 elements share a group
  const float s = half_value(x.scales[r * x.groups + g]);
  if (x.fp16_zero) {
    const float m = half_value(static_cast<const uint16_t*>(x.zeros)[r * x.groups + g]);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float q = static_cast<float>((word >> (i * bits)) & mask);
      if (i < count) v[i] = __fmaf_rn(s, q, m);  // s q is exact: the same as an unfused m + s q
    }
  } else {
    const int64_t zc = (g / 8) * 8;  // the 8 packed zero points around g
    const int zcount = static_cast<int>(min64(8, x.groups - zc));
    const uint8_t* zsrc = static_cast<const uint8_t*>(x.zeros) + r * x.zero_row_bytes + (zc / 8) * bits;
    const uint64_t zword = read_word(zsrc, (zcount * bits + 7) / 8);
    const float z = static_cast<float>((zword >> ((g - zc) * bits)) & mask);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float q = static_cast<float>((word >> (i * bits)) & mask);
      if (i < count) v[i] = __fmul_rn(s, __fsub_rn(q, z));
    }
  }
}

}  // namespace genaccel::cuda::xquant
