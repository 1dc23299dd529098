// CUDA registration of sla_fwd and sla_mask_matmul. The sparse branch is the block-sparse attention
// kernel over the critical blocks (csrc/cuda/attention/block_sparse_fwd.cu); the linear branch runs
// as batched cuBLAS GEMMs around two elementwise kernels (csrc/cuda/attention/sla_linear.cu), not
// yet fused into the attention mainloop:
//   h_j = phi(K_j)^T V_j, z_j = colsum phi(K_j)        per key block, float32
//   H_i = sum_j M_ij h_j, Z_i = sum_j M_ij z_j         M = marginal mask (all ones with all_keys)
//   O^l_i = phi(Q_i) H_i / (phi(Q_i) . Z_i)
// H_i is the big product ((Tq x Tk) x (Tk x D^2) per head): mask_matmul below runs it on bf16 tensor
// cores at float32 accuracy (op sla_mask_matmul; the CUDA backward's transposed sums use it too). It
// sums the marginal blocks directly: on a GEMM that costs what pre-aggregation would, without its
// cancellation. The other products are float32 cuBLAS GEMMs (TF32 only where the user enabled it).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "cuda/attention/sla_linear.h"
#include "ops/attention_cuda.h"
#include "ops/sla.h"

namespace genaccel::ops {
namespace {

constexpr const char* kOp = "sla_fwd";
// Bytes of per-block sums (h, its bf16 parts, H_i) materialised at once; larger problems run in
// chunks of (batch, kv head) pairs.
constexpr int64_t kMaxBlockSumBytes = int64_t{1} << 30;

// (C, N, D) -> contiguous (C, T * block, D) with zero rows appended (zero features add nothing).
at::Tensor pad_rows(const at::Tensor& x, int64_t block) {
  const int64_t n = x.size(-2), t = (n + block - 1) / block;
  return t * block == n ? x.contiguous() : at::constant_pad_nd(x, {0, 0, 0, t * block - n});
}

void check_launch(int err, const char* what, const char* op = kOp) {
  TORCH_CHECK(err == 0, op, " (CUDA): ", what, " launch failed with cudaError ", err);
}

// mask (C, M, K) bool @ x (C, K, E) float32 on bf16 tensor cores with float32 accuracy: x split into
// three bf16 parts stacked along K (x = x0 + x1 + x2 keeps x's 24 significant bits; the 0/1 mask is
// exact in bf16), so the float32-accumulated GEMM is the float32 sum. Takes x by value so that
// callers can hand over its memory, released once split.
at::Tensor mask_matmul(const at::Tensor& mask, at::Tensor x, const char* op = kOp) {
  const int64_t C = x.size(0), K = x.size(1), E = x.size(2);
  x = x.contiguous();
  auto parts = at::empty({C, 3 * K, E}, x.options().dtype(at::kBFloat16));
  check_launch(cuda::split_bf16_rows(x.const_data_ptr<float>(), parts.mutable_data_ptr(), C, K, E, 3,
                                     c10::cuda::getCurrentCUDAStream().stream()),
               "bf16 split", op);
  x = at::Tensor();
  auto m = mask.to(at::kBFloat16);
  return at::bmm(at::cat({m, m, m}, 2), parts, at::kFloat);
}

at::Tensor sla_mask_matmul_cuda(const at::Tensor& mask, const at::Tensor& x) {
  check_sla_mask_matmul_inputs(mask, x);
  c10::cuda::CUDAGuard guard(x.device());
  return mask_matmul(mask, x, "sla_mask_matmul");
}

// O^l (in the dtype of `out`) and its denominator for the (batch, kv head) pairs of one chunk:
//   phi_q (C, G*Nq, D) f32, phi_k (C, Nk, D) f32, v (C, Nk, D), marginal (C, G*Tq, Tk) bool,
//   out (C, G*Nq, D) and denom (C, G*Nq) contiguous.
void linear_branch(const at::Tensor& phi_q, const at::Tensor& phi_k, const at::Tensor& v,
                   const at::Tensor& marginal, int64_t group, int64_t block_q, int64_t block_k,
                   float eps, const at::Tensor& out, const at::Tensor& denom) {
  const int64_t C = phi_k.size(0), D = phi_k.size(2), Tk = marginal.size(2);
  const int64_t Tq = marginal.size(1) / group, nq = phi_q.size(1) / group;
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  auto kb = pad_rows(phi_k, block_k).view({C * Tk, block_k, D});
  auto vb = pad_rows(v.to(at::kFloat), block_k).view({C * Tk, block_k, D});
  auto h = at::bmm(kb.transpose(1, 2), vb).view({C, Tk, D * D});
  auto z = kb.sum(1).view({C, Tk, D});
  auto Hi = mask_matmul(marginal, std::move(h));                            // (C, G*Tq, D*D)
  auto Zi = at::bmm(marginal.to(at::kFloat), z);                             // (C, G*Tq, D)
  auto qb = pad_rows(phi_q.reshape({C * group, nq, D}), block_q).view({C * group * Tq, block_q, D});
  auto num = at::bmm(qb, Hi.view({C * group * Tq, D, D}));                   // (C*G*Tq, bq, D)
  auto den = at::bmm(qb, Zi.view({C * group * Tq, D, 1}));                   // (C*G*Tq, bq, 1)
  const DType dtype = out.scalar_type() == at::kHalf ? DType::kFloat16 : DType::kBFloat16;
  check_launch(cuda::sla_linear_normalize(num.const_data_ptr<float>(), den.const_data_ptr<float>(),
                                          out.mutable_data_ptr(), denom.mutable_data_ptr<float>(), dtype,
                                          C * group, nq, Tq * block_q, D, eps, stream),
               "normalisation");
}

// phi(x) in float32 (see the CPU version, csrc/cpu/attention/sla_feature_map.cpp).
at::Tensor feature_map(const at::Tensor& x, attention::SlaFeatureMap f) {
  switch (f) {
    case attention::SlaFeatureMap::kSoftmax:
      return at::softmax(x, -1, at::kFloat);
    case attention::SlaFeatureMap::kElu: {
      auto xf = x.to(at::kFloat);
      return at::where(xf > 0, xf + 1, at::exp(xf));
    }
    case attention::SlaFeatureMap::kRelu:
      break;
  }
  return at::relu(x.to(at::kFloat));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& codes,
    const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t block_q, int64_t block_k,
    double scale, c10::string_view feature_map_name, bool linear_over_all_keys) {
  check_sla_fwd_inputs(q, k, v, codes, kv_indices, kv_counts, block_q, block_k);
  const auto fmap = parse_sla_feature_map(std::string(feature_map_name), kOp);
  TORCH_CHECK(std::isfinite(scale), kOp, ": scale must be finite, got ", scale);
  c10::cuda::CUDAGuard guard(q.device());
  auto [out_sparse, lse] =
      run_block_sparse_fwd_cuda(q, k, v, kv_indices, kv_counts, block_q, block_k, scale, kOp);
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), group = Hkv > 0 ? H / Hkv : 1;
  auto out_linear = at::empty({B, H, Nq, D}, q.options());
  auto denom = at::empty({B, H, Nq}, q.options().dtype(at::kFloat));
  if (out_linear.numel() == 0 || k.size(2) == 0) {
    out_linear.zero_();
    denom.fill_(linear_over_all_keys ? kSlaAllKeysEps : 0.f);
    return {out_sparse, lse, out_linear, denom};
  }
  const int64_t Tq = kv_indices.size(2), Tk = codes.size(3);
  // (B, Hkv, G*Tq, Tk): the query heads of one kv head share its h_j, so they form one GEMM.
  auto marginal = (linear_over_all_keys ? at::ones_like(codes, codes.options().dtype(at::kBool))
                                        : codes.eq(0))
                      .expand({B, H, Tq, Tk})
                      .reshape({B * Hkv, group * Tq, Tk});
  auto pq = feature_map(q, fmap).reshape({B * Hkv, group * Nq, D});
  auto pk = feature_map(k, fmap).reshape({B * Hkv, k.size(2), D});
  auto vv = v.reshape({B * Hkv, k.size(2), D});
  auto ol = out_linear.view({B * Hkv, group * Nq, D});
  auto dn = denom.view({B * Hkv, group * Nq});
  const int64_t pair_bytes = (Tk * 10 + group * Tq * 4) * D * D;  // h + its parts, then H_i
  const int64_t chunk = std::max<int64_t>(1, kMaxBlockSumBytes / std::max<int64_t>(pair_bytes, 1));
  for (int64_t c0 = 0; c0 < B * Hkv; c0 += chunk) {
    const int64_t n = std::min(chunk, B * Hkv - c0);
    linear_branch(pq.narrow(0, c0, n), pk.narrow(0, c0, n), vv.narrow(0, c0, n),
                  marginal.narrow(0, c0, n), group, block_q, block_k,
                  linear_over_all_keys ? kSlaAllKeysEps : 0.f, ol.narrow(0, c0, n), dn.narrow(0, c0, n));
  }
  return {out_sparse, lse, out_linear, denom};
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("sla_fwd", &genaccel::ops::sla_fwd_cuda);
  m.impl("sla_mask_matmul", &genaccel::ops::sla_mask_matmul_cuda);
}
