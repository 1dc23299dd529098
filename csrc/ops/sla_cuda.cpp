// CUDA registration of sla_fwd. The sparse branch is the block-sparse attention kernel over the
// critical blocks (csrc/cuda/attention); the linear branch runs as batched tensor-core GEMMs on
// cuBLAS (not yet fused into the attention mainloop):
//   h_j = phi(K_j)^T V_j, z_j = colsum phi(K_j)        per key block
//   H_i = sum_j M_ij h_j, Z_i = sum_j M_ij z_j         M = marginal mask (all ones with all_keys)
//   O^l_i = phi(Q_i) H_i / (phi(Q_i) . Z_i)
// Every product is a bf16 tensor-core GEMM, whatever the global TF32 setting. Precision: float32
// operands are split into bfloat16 parts (x0 + x1 + x2 keeps x's 24 significant
// bits) concatenated along the reduction dim, so one bf16 GEMM with float32 accumulation sums the
// part products (split_bmm): h_j and H_i come out as float32 sums would; O^l to ~2^-17 relative. H_i is summed over the marginal blocks directly:
// on a GEMM that costs what pre-aggregation would and cannot cancel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/attention_cuda.h"
#include "ops/sla.h"

namespace genaccel::ops {
namespace {

constexpr const char* kOp = "sla_fwd";
// Bytes of float32 H_i (Tq x D x D per head) materialised at once; larger problems run in chunks
// of (batch, kv head) pairs.
constexpr int64_t kMaxBlockSumBytes = int64_t{1} << 30;

// x ~= x[0] + x[1] + ...: bfloat16 parts, each the rounding of what the previous ones left.
std::vector<at::Tensor> bf16_parts(const at::Tensor& x, int parts) {
  std::vector<at::Tensor> out;
  at::Tensor rest = x.to(at::kFloat);
  for (int i = 0; i < parts; ++i) {
    out.push_back(rest.to(at::kBFloat16));
    if (i + 1 < parts) rest = rest - out.back().to(at::kFloat);
  }
  return out;
}

// a (C, M, K) x b (C, K, N) in float32 from bf16 parts: the sum of a_i b_j over i + j < order, as
// one bf16 GEMM with float32 accumulation (the chosen parts concatenated along K).
at::Tensor split_bmm(const at::Tensor& a, int a_parts, const at::Tensor& b, int b_parts, int order) {
  const auto as = bf16_parts(a, a_parts), bs = bf16_parts(b, b_parts);
  std::vector<at::Tensor> lhs, rhs;
  for (int i = 0; i < a_parts; ++i)
    for (int j = 0; j < b_parts && i + j < order; ++j) lhs.push_back(as[i]), rhs.push_back(bs[j]);
  return at::bmm(at::cat(lhs, 2), at::cat(rhs, 1), at::kFloat);
}

// (C, N, D) -> contiguous (C, T * block, D) with zero rows appended (zero features add nothing).
at::Tensor pad_rows(const at::Tensor& x, int64_t block) {
  const int64_t n = x.size(-2), t = (n + block - 1) / block;
  return t * block == n ? x.contiguous() : at::constant_pad_nd(x, {0, 0, 0, t * block - n});
}

// O^l and its denominator for the (batch, kv head) pairs of one chunk.
//   phi_q (C, G*Nq, D) f32, phi_k (C, Nk, D) f32, v (C, Nk, D) bf16/fp16, marginal (C, G*Tq, Tk) bool
void linear_branch(const at::Tensor& phi_q, const at::Tensor& phi_k, const at::Tensor& v,
                   const at::Tensor& marginal, int64_t group, int64_t block_q, int64_t block_k,
                   bool all_keys, at::Tensor out, at::Tensor denom) {
  const int64_t C = phi_k.size(0), D = phi_k.size(2), Tk = marginal.size(2);
  const int64_t Tq = marginal.size(1) / group, nq = phi_q.size(1) / group;
  // h_j = phi(K_j)^T V_j: phi(K) in three parts; V exact in one part (bf16) or two (fp16).
  auto kb = pad_rows(phi_k, block_k).view({C * Tk, block_k, D});
  auto vb = pad_rows(v, block_k).view({C * Tk, block_k, D});
  auto h = split_bmm(kb.transpose(1, 2), 3, vb, v.scalar_type() == at::kBFloat16 ? 1 : 2, 3);
  auto z = kb.sum(1);                                                        // (C*Tk, D)
  // H_i = sum_j M_ij h_j: (C, G*Tq, Tk) x (C, Tk, D*D), the 0/1 mask exact, h in three parts.
  auto Hi = split_bmm(marginal, 1, h.view({C, Tk, D * D}), 3, 3);
  auto Zi = split_bmm(marginal, 1, z.view({C, Tk, D}), 3, 3);               // (C, G*Tq, D)
  // O^l_i = phi(Q_i) H_i: (C*G*Tq, bq, D) x (C*G*Tq, D, D), two parts each (x0 + x1 holds x to
  // 2^-18 relative), order 2: q0 H0 + q1 H0 + q0 H1; the dropped terms are below 2^-17 of the
  // result, far under the bf16/fp16 output's rounding.
  auto qb = pad_rows(phi_q.reshape({C * group, nq, D}), block_q).view({C * group * Tq, block_q, D});
  auto num = split_bmm(qb, 2, Hi.view({C * group * Tq, D, D}), 2, 2);        // (C*G*Tq, bq, D)
  auto den = split_bmm(qb, 2, Zi.view({C * group * Tq, D, 1}), 2, 2).squeeze(-1);
  if (all_keys) den.add_(kSlaAllKeysEps);
  auto seen = den > 0;
  auto o = at::where(seen.unsqueeze(-1), num / at::where(seen, den, at::ones_like(den)).unsqueeze(-1),
                     at::zeros_like(num));
  out.view({C * group, nq, D}).copy_(o.view({C * group, Tq * block_q, D}).narrow(1, 0, nq));
  denom.view({C * group, nq}).copy_(den.view({C * group, Tq * block_q}).narrow(1, 0, nq));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& phi_q,
    const at::Tensor& phi_k, const at::Tensor& codes, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale,
    bool linear_over_all_keys) {
  check_sla_fwd_inputs(q, k, v, phi_q, phi_k, codes, kv_indices, kv_counts, block_q, block_k);
  TORCH_CHECK(std::isfinite(scale), kOp, ": scale must be finite, got ", scale);
  c10::cuda::CUDAGuard guard(q.device());
  auto [out_sparse, lse] =
      run_block_sparse_fwd_cuda(q, k, v, kv_indices, kv_counts, block_q, block_k, scale, kOp);
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), group = Hkv > 0 ? H / Hkv : 1;
  auto out_linear = at::empty({B, H, Nq, D}, q.options().dtype(at::kFloat));
  auto denom = at::zeros({B, H, Nq}, q.options().dtype(at::kFloat));
  if (out_linear.numel() == 0 || k.size(2) == 0) {
    out_linear.zero_();
    return {out_sparse, lse, out_linear.to(q.scalar_type()), denom};
  }
  const int64_t Tq = kv_indices.size(2), Tk = codes.size(3);
  // (B, Hkv, G*Tq, Tk): the query heads of one kv head share its h_j, so they form one GEMM.
  auto marginal = (linear_over_all_keys ? at::ones_like(codes, codes.options().dtype(at::kBool))
                                        : codes.eq(0))
                      .expand({B, H, Tq, Tk})
                      .reshape({B * Hkv, group * Tq, Tk});
  auto pq = phi_q.to(at::kFloat).reshape({B * Hkv, group * Nq, D});
  auto pk = phi_k.to(at::kFloat).reshape({B * Hkv, k.size(2), D});
  auto vv = v.reshape({B * Hkv, k.size(2), D});
  auto ol = out_linear.view({B * Hkv, group * Nq, D});
  auto dn = denom.view({B * Hkv, group * Nq});
  const int64_t pair_bytes = group * Tq * D * D * 4 * 3;  // H_i, its bf16 parts and their concat
  const int64_t chunk = std::max<int64_t>(1, kMaxBlockSumBytes / std::max<int64_t>(pair_bytes, 1));
  for (int64_t c0 = 0; c0 < B * Hkv; c0 += chunk) {
    const int64_t n = std::min(chunk, B * Hkv - c0);
    linear_branch(pq.narrow(0, c0, n), pk.narrow(0, c0, n), vv.narrow(0, c0, n),
                  marginal.narrow(0, c0, n), group, block_q, block_k, linear_over_all_keys,
                  ol.narrow(0, c0, n), dn.narrow(0, c0, n));
  }
  return {out_sparse, lse, out_linear.to(q.scalar_type()), denom};
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) { m.impl("sla_fwd", &genaccel::ops::sla_fwd_cuda); }
