// XQuant's group quantizer on the CPU: one row per work item (parallel over rows); per group the
// min / max, the float16 scale rounded up (and the fp16 offset rounded down), the codes, then the
// row's codes packed 8 at a time (8 b-bit codes are exactly b bytes).
#include "cpu/kvcache/xquant/quantize.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace genaccel::cpu {
namespace {

// A row of n elements to float (load) and back (store): the dtype switch once per row, not per element.
template <class T>
void load_as(const void* base, int64_t n, float* out) {
  const T* src = static_cast<const T*>(base);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(src[i]);
}
void load_row(const void* base, DType t, int64_t n, float* out) {
  if (t == DType::kFloat32) return load_as<float>(base, n, out);
  if (t == DType::kBFloat16) return load_as<c10::BFloat16>(base, n, out);
  load_as<c10::Half>(base, n, out);
}

template <class T>
void store_as(const float* v, int64_t n, void* base) {
  T* dst = static_cast<T*>(base);
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(v[i]);
}
void store_row(const float* v, int64_t n, DType t, void* base) {
  if (t == DType::kFloat32) return store_as<float>(v, n, base);
  if (t == DType::kBFloat16) return store_as<c10::BFloat16>(v, n, base);
  store_as<c10::Half>(v, n, base);
}

uint16_t half_bits(float v) { return c10::Half(v).x; }
float half_value(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

// The next float16 above (up = true) or below a finite one, by its bit pattern.
uint16_t half_step(uint16_t h, bool up) {
  const bool negative = h & 0x8000;
  if ((h & 0x7fff) == 0) return up ? 0x0001 : 0x8001;  // +-0 -> the smallest subnormal of that side
  return (up != negative) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h - 1);
}

// The smallest float16 >= v and the largest float16 <= v (inf where v is beyond the float16 range).
// v is a double: the scale's quotient is computed in double, as the float64 reference computes it, so
// that both round it to the same float16 (the float16 rounding of v via float lands on a neighbour).
uint16_t half_up(double v) {
  uint16_t h = half_bits(static_cast<float>(v));
  return static_cast<double>(half_value(h)) < v ? half_step(h, true) : h;
}
uint16_t half_down(double v) {
  uint16_t h = half_bits(static_cast<float>(v));
  return static_cast<double>(half_value(h)) > v ? half_step(h, false) : h;
}

// Packs n <= 8 codes (each < 2^bits) into ceil(n bits / 8) bytes at out, little-endian.
void pack8(const uint8_t* q, int64_t n, int64_t bits, uint8_t* out) {
  uint64_t word = 0;
  for (int64_t i = 0; i < n; ++i) word |= static_cast<uint64_t>(q[i]) << (i * bits);
  const int64_t nbytes = (n * bits + 7) / 8;
  for (int64_t b = 0; b < nbytes; ++b) out[b] = static_cast<uint8_t>(word >> (8 * b));
}

void pack_row(const uint8_t* q, int64_t n, int64_t bits, uint8_t* out) {
  for (int64_t c = 0; c < n; c += 8) pack8(q + c, std::min<int64_t>(8, n - c), bits, out + (c / 8) * bits);
}

// Codes c .. c + n - 1 (n <= 8, c a multiple of 8) of a packed row.
void unpack8(const uint8_t* row, int64_t c, int64_t n, int64_t bits, uint8_t* q) {
  const uint8_t* src = row + (c / 8) * bits;
  uint64_t word = 0;
  const int64_t nbytes = (n * bits + 7) / 8;
  for (int64_t b = 0; b < nbytes; ++b) word |= static_cast<uint64_t>(src[b]) << (8 * b);
  const uint64_t mask = (uint64_t{1} << bits) - 1;
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<uint8_t>((word >> (i * bits)) & mask);
}

}  // namespace

// The quotients (scale, x / s) are taken in double: float32 inputs and float16 scales make them the
// float64 reference's exactly, so the codes agree with it also next to rounding ties.
void xquant_quantize(const XquantQuantizeParams& p) {
  const double levels = static_cast<double>((1 << p.bits) - 1);
  const int64_t element_bytes = p.x_dtype == DType::kFloat32 ? 4 : 2;
  at::parallel_for(0, p.rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> x(static_cast<size_t>(p.k));
    std::vector<uint8_t> q(static_cast<size_t>(p.k)), z(static_cast<size_t>(p.groups));
    for (int64_t r = r0; r < r1; ++r) {
      load_row(static_cast<const char*>(p.x) + r * p.x_row_stride * element_bytes, p.x_dtype, p.k, x.data());
      for (int64_t g = 0; g < p.groups; ++g) {
        const int64_t a = g * p.group_size, b = std::min(p.k, a + p.group_size);
        float mn = std::numeric_limits<float>::infinity(), mx = -mn;
        bool finite = true;
        for (int64_t j = a; j < b; ++j) {
          finite = finite && std::isfinite(x[j]);
          mn = std::min(mn, x[j]);
          mx = std::max(mx, x[j]);
        }
        uint16_t s_bits;
        if (!finite) {  // NaN scale: the caller refuses it (genaccel.quantize), dequantize yields NaN
          s_bits = 0x7e00;
          std::fill(q.begin() + a, q.begin() + b, 0);
          z[g] = 0;
          if (p.fp16_zero) static_cast<uint16_t*>(p.zeros)[r * p.groups + g] = 0x7e00;
        } else if (p.fp16_zero) {
          const uint16_t m_bits = half_down(mn);
          const double m = half_value(m_bits);
          s_bits = half_up((mx - m) / levels);
          const double s = half_value(s_bits);
          for (int64_t j = a; j < b; ++j)
            q[j] = s > 0 ? static_cast<uint8_t>(std::clamp(std::nearbyint((x[j] - m) / s), 0.0, levels)) : 0;
          static_cast<uint16_t*>(p.zeros)[r * p.groups + g] = m_bits;
        } else if (mn == mx) {  // constant group: s = |c| with (z, q) = (0, 1), (1, 0) or zeros
          s_bits = half_bits(std::fabs(mn));
          z[g] = mn < 0 ? 1 : 0;
          std::fill(q.begin() + a, q.begin() + b, static_cast<uint8_t>(mn > 0 ? 1 : 0));
        } else {
          const double lo = std::min(mn, 0.0f), hi = std::max(mx, 0.0f);
          s_bits = half_up((hi - lo) / levels);
          const double s = half_value(s_bits);
          const double zf = std::clamp(std::nearbyint(-lo / s), 0.0, levels);
          z[g] = static_cast<uint8_t>(zf);
          for (int64_t j = a; j < b; ++j)
            q[j] = static_cast<uint8_t>(std::clamp(std::nearbyint(x[j] / s) + zf, 0.0, levels));
        }
        p.scales[r * p.groups + g] = s_bits;
      }
      pack_row(q.data(), p.k, p.bits, p.codes + r * p.code_row_bytes);
      if (!p.fp16_zero) pack_row(z.data(), p.groups, p.bits, static_cast<uint8_t*>(p.zeros) + r * p.zero_row_bytes);
    }
  });
}

// Per group x_hat = a + s q with a = -s z (integer zero point; s (q - z) and s q - s z are both exact
// in float32: a float16 times an integer below 2^8) or a = the float16 offset.
void dequantize_span(const XquantCodes& x, int64_t r, int64_t c0, int64_t c1, float* out) {
  const uint8_t* codes = x.codes + r * x.code_row_bytes;
  const uint8_t* zrow = x.fp16_zero ? nullptr : static_cast<const uint8_t*>(x.zeros) + r * x.zero_row_bytes;
  const uint16_t* offsets = x.fp16_zero ? static_cast<const uint16_t*>(x.zeros) + r * x.groups : nullptr;
  const uint16_t* scales = x.scales + r * x.groups;
  uint8_t q[8];
  for (int64_t g = c0 / x.group_size; g * x.group_size < c1; ++g) {
    const float s = half_value(scales[g]);
    float a;
    if (x.fp16_zero) {
      a = half_value(offsets[g]);
    } else {
      unpack8(zrow, g / 8 * 8, 1 + g % 8, x.bits, q);  // the zero points of g's word, up to g
      a = -s * static_cast<float>(q[g % 8]);
    }
    const int64_t begin = std::max(c0, g * x.group_size), end = std::min(c1, (g + 1) * x.group_size);
    for (int64_t c = begin; c < end; c += 8) {  // group_size % 8 == 0: chunks stay in the group
      const int64_t n = std::min<int64_t>(8, end - c);
      unpack8(codes, c, n, x.bits, q);
      for (int64_t i = 0; i < n; ++i) out[c - c0 + i] = a + s * static_cast<float>(q[i]);
    }
  }
}

void xquant_dequantize(const XquantDequantizeParams& p) {
  at::parallel_for(0, p.x.rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> out(static_cast<size_t>(p.x.k));
    const int64_t out_bytes = p.out_dtype == DType::kFloat32 ? 4 : 2;
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_span(p.x, r, 0, p.x.k, out.data());
      store_row(out.data(), p.x.k, p.out_dtype, static_cast<char*>(p.out) + r * p.x.k * out_bytes);
    }
  });
}

}  // namespace genaccel::cpu
