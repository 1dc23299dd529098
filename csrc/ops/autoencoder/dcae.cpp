// genaccel DC-AE ops: the chunk-causal 3-D convolution of DC-AE-V, the parameter-free space <-> channel
// shortcuts of every DC-AE and LiteMLA's linear attention; schema, input checks (shared by CPU, CUDA and
// Meta), CPU and Meta registrations. Kernels: csrc/cpu/autoencoder/dcae/conv.cpp, shuffle.cpp,
// lite_mla.cpp.
#include "ops/autoencoder/dcae.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "cpu/autoencoder/dcae/conv.h"
#include "cpu/autoencoder/dcae/lite_mla.h"
#include "cpu/autoencoder/dcae/shuffle.h"
#include "cpu/common/capability.h"

namespace genaccel::ops {
namespace {
constexpr const char* kConvOp = "dcae_chunk_causal_conv3d";
constexpr const char* kToChannelOp = "dcae_space_to_channel";
constexpr const char* kToSpaceOp = "dcae_channel_to_space";
constexpr const char* kLiteMlaOp = "dcae_lite_mla";
constexpr int64_t kMaxHeadDim = 256;

bool float_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

DType to_dtype_enum(at::ScalarType t) {
  return t == at::kFloat ? DType::kFloat32 : t == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat16;
}

// The largest kernel extent and shuffle factor taken: far past any autoencoder's, small enough that
// no size arithmetic overflows.
constexpr int64_t kMaxKernel = 63;
constexpr int64_t kMaxFactor = 64;
constexpr int64_t kMaxChannels = int64_t{1} << 20;
}  // namespace

void check_dcae_chunk_causal_conv3d_op(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t chunk_size,
                                       const std::optional<at::Tensor>& cache) {
  constexpr const char* op = kConvOp;
  TORCH_CHECK(x.dim() == 5 && float_dtype(x.scalar_type()), op,
              ": x must be a 5-D (B, C, T, H, W) float32, bfloat16 or float16 tensor, got ", x.scalar_type(),
              " of shape ", x.sym_sizes());
  TORCH_CHECK(weight.dim() == 5 && weight.scalar_type() == x.scalar_type() && weight.sym_size(1) == x.sym_size(1),
              op, ": weight must be a 5-D (Cout, Cin = ", x.sym_size(1), ", kt, kh, kw) tensor of x's dtype ",
              x.scalar_type(), ", got ", weight.scalar_type(), " of shape ", weight.sym_sizes());
  TORCH_CHECK(weight.device() == x.device(), op, ": weight must be on x's device ", x.device(), ", got ",
              weight.device());
  for (int d = 2; d < 5; ++d) {
    const auto k = weight.sym_size(d);
    TORCH_CHECK(k >= 1 && k <= kMaxKernel && k % 2 == 1, op, ": weight's kernel sizes (kt, kh, kw) must be odd and in [1, ",
                kMaxKernel, "] (same padding), got ", weight.sym_sizes().slice(2));
  }
  TORCH_CHECK(chunk_size >= 1, op, ": chunk_size must be >= 1, got ", chunk_size);
  const c10::SymInt p = (weight.sym_size(2) - 1) / 2;
  TORCH_CHECK(p <= chunk_size, op, ": chunk_size must be >= the temporal half-kernel (kt - 1) / 2 = ", p,
              " (the left halo comes from the previous chunk only), got ", chunk_size);
  TORCH_CHECK(x.sym_size(2) % chunk_size == 0, op, ": x's frame count T must be a multiple of chunk_size ",
              chunk_size, " (no silent bidirectional fallback), got T = ", x.sym_size(2));
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->sym_size(0) == weight.sym_size(0) && bias->scalar_type() == x.scalar_type(),
                op, ": bias must be a 1-D (Cout = ", weight.sym_size(0), ") tensor of x's dtype ", x.scalar_type(),
                ", got ", bias->scalar_type(), " of shape ", bias->sym_sizes());
    TORCH_CHECK(bias->device() == x.device(), op, ": bias must be on x's device ", x.device(), ", got ",
                bias->device());
  }
  if (cache) {
    TORCH_CHECK(cache->dim() == 5 && cache->scalar_type() == x.scalar_type() && cache->sym_size(0) == x.sym_size(0) &&
                    cache->sym_size(1) == x.sym_size(1) && cache->sym_size(2) == p &&
                    cache->sym_size(3) == x.sym_size(3) && cache->sym_size(4) == x.sym_size(4),
                op, ": cache must be the previous input's last p frames, (B, Cin, p, H, W) = (", x.sym_size(0), ", ",
                x.sym_size(1), ", ", p, ", ", x.sym_size(3), ", ", x.sym_size(4), ") of x's dtype ", x.scalar_type(),
                ", got ", cache->scalar_type(), " of shape ", cache->sym_sizes());
    TORCH_CHECK(cache->device() == x.device(), op, ": cache must be on x's device ", x.device(), ", got ",
                cache->device());
  }
}

DcaeChunkConvParams dcae_chunk_conv_params(const at::Tensor& x, const at::Tensor& weight,
                                           const std::optional<at::Tensor>& bias, int64_t chunk_size,
                                           const std::optional<at::Tensor>& cache, at::Tensor& y) {
  DcaeChunkConvParams p{};
  p.x = x.const_data_ptr();
  p.cache = cache ? cache->const_data_ptr() : nullptr;
  p.weight = weight.const_data_ptr();
  p.bias = bias ? bias->const_data_ptr() : nullptr;
  p.y = y.mutable_data_ptr();
  p.dtype = to_dtype_enum(x.scalar_type());
  p.batch = x.size(0), p.cin = x.size(1), p.frames = x.size(2), p.height = x.size(3), p.width = x.size(4);
  p.cout = weight.size(0), p.kt = weight.size(2), p.kh = weight.size(3), p.kw = weight.size(4);
  p.chunk = chunk_size;
  return p;
}

void check_dcae_shuffle_op(const char* op, const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels,
                           bool to_channel) {
  TORCH_CHECK((x.dim() == 4 || x.dim() == 5) && float_dtype(x.scalar_type()), op,
              ": x must be a 4-D (B, C, H, W) or 5-D (B, C, T, H, W) float32, bfloat16 or float16 tensor, got ",
              x.scalar_type(), " of shape ", x.sym_sizes());
  TORCH_CHECK(r >= 1 && r <= kMaxFactor, op, ": r must be in [1, ", kMaxFactor, "], got ", r);
  TORCH_CHECK(rt >= 1 && rt <= kMaxFactor, op, ": rt must be in [1, ", kMaxFactor, "], got ", rt);
  TORCH_CHECK(x.dim() == 5 || rt == 1, op, ": rt must be 1 for a 4-D (image) x, got ", rt);
  TORCH_CHECK(out_channels >= 1 && out_channels <= kMaxChannels, op, ": out_channels must be in [1, ", kMaxChannels,
              "], got ", out_channels);
  const c10::SymInt c = x.sym_size(1);
  const int64_t phases = rt * r * r;
  if (to_channel) {
    const int nd = static_cast<int>(x.dim());
    TORCH_CHECK(x.sym_size(nd - 2) % r == 0 && x.sym_size(nd - 1) % r == 0, op,
                ": x's height and width must be multiples of r = ", r, ", got ", x.sym_sizes());
    TORCH_CHECK(nd == 4 || x.sym_size(2) % rt == 0, op, ": x's frame count T must be a multiple of rt = ", rt,
                ", got ", x.sym_size(2));
    TORCH_CHECK(out_channels <= c * phases && (c * phases) % out_channels == 0, op,
                ": out_channels must divide C * rt * r * r = ", c * phases,
                " (the unshuffled channels are averaged in equal groups), got ", out_channels);
  } else {
    TORCH_CHECK(c >= 1 && (out_channels * phases) % c == 0, op, ": x's channel count C must divide out_channels * rt * r * r = ",
                out_channels * phases, " (each channel is repeated a whole number of times), got C = ", c);
  }
}

std::vector<c10::SymInt> dcae_shuffle_out_shape(const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels,
                                                bool to_channel) {
  std::vector<c10::SymInt> shape(x.sym_sizes().begin(), x.sym_sizes().end());
  const size_t nd = shape.size();
  shape[1] = c10::SymInt(out_channels);
  for (size_t d = nd - 2; d < nd; ++d) shape[d] = to_channel ? shape[d] / r : shape[d] * r;
  if (nd == 5) shape[2] = to_channel ? shape[2] / rt : shape[2] * rt;
  return shape;
}

DcaeShuffleParams dcae_shuffle_params(const at::Tensor& x, at::Tensor& y, int64_t r, int64_t rt, bool to_channel) {
  const at::Tensor& fine = to_channel ? x : y;
  const at::Tensor& coarse = to_channel ? y : x;
  DcaeShuffleParams p{};
  p.x = x.const_data_ptr();
  p.y = y.mutable_data_ptr();
  p.dtype = to_dtype_enum(x.scalar_type());
  const int nd = static_cast<int>(fine.dim());
  p.batch = fine.size(0), p.c_fine = fine.size(1), p.c_coarse = coarse.size(1);
  p.frames = nd == 5 ? fine.size(2) : 1, p.height = fine.size(nd - 2), p.width = fine.size(nd - 1);
  p.r = r, p.rt = rt;
  return p;
}

void check_dcae_lite_mla_op(const at::Tensor& qkv, int64_t head_dim, double eps) {
  constexpr const char* op = kLiteMlaOp;
  TORCH_CHECK(qkv.dim() == 4 && float_dtype(qkv.scalar_type()), op,
              ": qkv must be a 4-D (B, 3 heads head_dim, H, W) float32, bfloat16 or float16 tensor, got ",
              qkv.scalar_type(), " of shape ", qkv.sym_sizes());
  TORCH_CHECK(head_dim >= 1 && head_dim <= kMaxHeadDim, op, ": head_dim must be in [1, ", kMaxHeadDim, "], got ",
              head_dim);
  TORCH_CHECK(qkv.sym_size(1) % (3 * head_dim) == 0, op, ": qkv's channel count must be a multiple of 3 head_dim = ",
              3 * head_dim, " (q, k, v per head), got ", qkv.sym_size(1));
  TORCH_CHECK(std::isfinite(eps) && eps >= 0 && eps <= 1e30, op, ": eps must be finite and >= 0, got ", eps);
}

DcaeLiteMlaParams dcae_lite_mla_params(const at::Tensor& qkv, int64_t head_dim, double eps, at::Tensor& out) {
  DcaeLiteMlaParams p{};
  p.qkv = qkv.const_data_ptr();
  p.out = out.mutable_data_ptr();
  p.dtype = to_dtype_enum(qkv.scalar_type());
  p.batch = qkv.size(0), p.heads = qkv.size(1) / (3 * head_dim), p.head_dim = head_dim;
  p.n = qkv.size(2) * qkv.size(3);
  p.eps = static_cast<float>(eps);
  return p;
}

namespace {

// 16-bit tensors are converted to float32 around the float32 kernels (the CPU has no 16-bit FMA).
at::Tensor as_float(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

at::Tensor dcae_chunk_causal_conv3d_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                        const std::optional<at::Tensor>& bias_in, int64_t chunk_size,
                                        const std::optional<at::Tensor>& cache_in) {
  check_dcae_chunk_causal_conv3d_op(x_in, weight_in, bias_in, chunk_size, cache_in);
  cpu::check_capability(kConvOp);
  auto x = as_float(x_in), weight = as_float(weight_in);
  std::optional<at::Tensor> bias, cache;
  if (bias_in) bias = as_float(*bias_in);
  if (cache_in) cache = as_float(*cache_in);
  auto y = at::empty({x.size(0), weight.size(0), x.size(2), x.size(3), x.size(4)}, x.options());
  if (y.numel() > 0) cpu::dcae_chunk_causal_conv3d(dcae_chunk_conv_params(x, weight, bias, chunk_size, cache, y));
  return y.to(x_in.scalar_type());
}

at::Tensor dcae_shuffle_cpu(const char* op, const at::Tensor& x_in, int64_t r, int64_t rt, int64_t out_channels,
                            bool to_channel) {
  check_dcae_shuffle_op(op, x_in, r, rt, out_channels, to_channel);
  cpu::check_capability(op);
  auto x = as_float(x_in);
  auto y = at::empty_symint(dcae_shuffle_out_shape(x, r, rt, out_channels, to_channel), x.options());
  if (y.numel() > 0) cpu::dcae_shuffle(dcae_shuffle_params(x, y, r, rt, to_channel), to_channel);
  return y.to(x_in.scalar_type());
}

at::Tensor dcae_space_to_channel_cpu(const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels) {
  return dcae_shuffle_cpu(kToChannelOp, x, r, rt, out_channels, true);
}

at::Tensor dcae_channel_to_space_cpu(const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels) {
  return dcae_shuffle_cpu(kToSpaceOp, x, r, rt, out_channels, false);
}

at::Tensor dcae_lite_mla_cpu(const at::Tensor& qkv_in, int64_t head_dim, double eps) {
  check_dcae_lite_mla_op(qkv_in, head_dim, eps);
  cpu::check_capability(kLiteMlaOp);
  auto qkv = as_float(qkv_in);
  auto out = at::empty({qkv.size(0), qkv.size(1) / 3, qkv.size(2), qkv.size(3)}, qkv.options());
  if (out.numel() > 0) cpu::dcae_lite_mla(dcae_lite_mla_params(qkv, head_dim, eps, out));
  return out.to(qkv_in.scalar_type());
}

at::Tensor dcae_lite_mla_meta(const at::Tensor& qkv, int64_t head_dim, double eps) {
  check_dcae_lite_mla_op(qkv, head_dim, eps);
  return at::empty_symint({qkv.sym_size(0), qkv.sym_size(1) / 3, qkv.sym_size(2), qkv.sym_size(3)}, qkv.options());
}

at::Tensor dcae_chunk_causal_conv3d_meta(const at::Tensor& x, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, int64_t chunk_size,
                                         const std::optional<at::Tensor>& cache) {
  check_dcae_chunk_causal_conv3d_op(x, weight, bias, chunk_size, cache);
  return at::empty_symint({x.sym_size(0), weight.sym_size(0), x.sym_size(2), x.sym_size(3), x.sym_size(4)},
                          x.options());
}

at::Tensor dcae_space_to_channel_meta(const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels) {
  check_dcae_shuffle_op(kToChannelOp, x, r, rt, out_channels, true);
  return at::empty_symint(dcae_shuffle_out_shape(x, r, rt, out_channels, true), x.options());
}

at::Tensor dcae_channel_to_space_meta(const at::Tensor& x, int64_t r, int64_t rt, int64_t out_channels) {
  check_dcae_shuffle_op(kToSpaceOp, x, r, rt, out_channels, false);
  return at::empty_symint(dcae_shuffle_out_shape(x, r, rt, out_channels, false), x.options());
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_FRAGMENT(genaccel, m) {
  // The chunk-causal 3-D convolution of DC-AE-V (params.h has the exact rule): stride 1, same spatial
  // padding, frames bidirectional inside a chunk of chunk_size and causal across chunks; the left halo
  // of the first chunk is `cache` (the previous call's last (kt - 1) / 2 input frames) or zeros. No
  // padded copy of x is made. -> y (B, Cout, T, H, W) of x's dtype.
  m.def("dcae_chunk_causal_conv3d(Tensor x, Tensor weight, Tensor? bias, int chunk_size, Tensor? cache=None) "
        "-> Tensor");
  // pixel_unshuffle by (rt, r, r), then the mean of groups of consecutive channels -> out_channels.
  m.def("dcae_space_to_channel(Tensor x, int r, int rt, int out_channels) -> Tensor");
  // repeat_interleave of the channels to out_channels * rt * r * r, then pixel_shuffle by (rt, r, r).
  m.def("dcae_channel_to_space(Tensor x, int r, int rt, int out_channels) -> Tensor");
  // LiteMLA's ReLU linear attention on per-head grouped qkv (B, heads * [q | k | v] of head_dim, H, W)
  // -> (B, heads * head_dim, H, W): (sum_m v_m k'_m . q'_n) / (sum_m k'_m . q'_n + eps), float32 inside.
  m.def("dcae_lite_mla(Tensor qkv, int head_dim=32, float eps=1e-15) -> Tensor");
}

TORCH_LIBRARY_IMPL(genaccel, CPU, m) {
  m.impl("dcae_chunk_causal_conv3d", &genaccel::ops::dcae_chunk_causal_conv3d_cpu);
  m.impl("dcae_space_to_channel", &genaccel::ops::dcae_space_to_channel_cpu);
  m.impl("dcae_channel_to_space", &genaccel::ops::dcae_channel_to_space_cpu);
  m.impl("dcae_lite_mla", &genaccel::ops::dcae_lite_mla_cpu);
}

TORCH_LIBRARY_IMPL(genaccel, Meta, m) {
  m.impl("dcae_chunk_causal_conv3d", &genaccel::ops::dcae_chunk_causal_conv3d_meta);
  m.impl("dcae_space_to_channel", &genaccel::ops::dcae_space_to_channel_meta);
  m.impl("dcae_channel_to_space", &genaccel::ops::dcae_channel_to_space_meta);
  m.impl("dcae_lite_mla", &genaccel::ops::dcae_lite_mla_meta);
}
