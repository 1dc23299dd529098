// SLA's linear branch on CUDA: batched cuBLAS GEMMs between per-token row kernels (linear_rows.cu),
// not yet fused into the attention mainloop.
//
// V is augmented with a column of ones, v_aug = [V, 1, 0, 0, 0] (W = D + 4 columns, 16-byte rows),
// so that one product carries the linear branch's matrix and vector sums together:
//   h_j = phi(K_j)^T v_aug_j = [phi(K_j)^T V_j, z_j]     per key block, D x W, float32
//   H_i = sum_j M_ij h_j = [H_i, Z_i]                    M = marginal mask (all ones with all_keys)
//   phi(Q_i) H_i = [numerator, denominator]              O^l_i = numerator / denominator
// Backward, with g_aug = [dO^l / den, -<dO^l, O^l> / den, 0...] per row (the gradient of the
// augmented numerator row):
//   dphi(Q_i) = g_aug_i H_i^T,  dH_i = phi(Q_i)^T g_aug_i,  dh_j = sum_i M_ij dH_i,
//   dphi(K_j) = v_aug_j dh_j^T,  [dV_j, .] = phi(K_j) dh_j,  then the gradients through phi.
// The sums over the mask run as mask_matmul; the per-block products (64 x D x W) as gemm_f32 with the
// op's precision: TF32 by default, since every operand derives from half-precision q, k, v and every
// result is rounded to bf16/fp16 (TF32's 2^-11 is a quarter of one bf16 rounding; docs/sla.md).
#include "cuda/attention/sla/linear_branch.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "cuda/attention/sla/linear_rows.h"
#include "cuda/common/blas.h"
#include "cuda/common/debug_knobs.h"
#include "cuda/common/torch_util.h"
#include "ops/attention/sla.h"

namespace genaccel::ops {
namespace {

constexpr const char* kOp = "sla_fwd";
constexpr const char* kBwdOp = "sla_bwd";
// Columns of v_aug beyond D: the ones column, then zeros up to a 16-byte row.
constexpr int64_t kAugColumns = 4;

// Pairs of (batch, kv head) per chunk, so that the linear branch's buffers of one chunk
// (LinearShape::bytes_per_pair each) stay within the GENACCEL_SLA_CHUNK_BYTES knob (default 1 GiB).
int64_t pairs_per_chunk(int64_t bytes_per_pair) {
  const int64_t limit = cuda::debug_knobs().sla_chunk_bytes;
  return std::max<int64_t>(1, limit / std::max<int64_t>(bytes_per_pair, 1));
}

void check_launch(int err, const char* what, const char* op = kOp) {
  TORCH_CHECK(err == 0, op, " (CUDA): ", what, " launch failed with cudaError ", err);
}

// mask (C, M, K) bool @ x (C, K, E) float32 on bf16 tensor cores with float32 accumulation: x split
// into bf16 parts stacked along K (the 0/1 mask is exact in bf16), two parts summing x to within
// 2^-16 |x| per term (already ~100x finer than the TF32 rounding of the products that made x), three
// (exact) with precision fp32, at 3/2 the cost. The marginal blocks are added directly, which on a
// GEMM costs what pre-aggregation would, without its cancellation. Takes x by value so that callers
// can hand over its memory, released once split. An item of x holding a NaN or inf (from one in k,
// v or the gradients) is left out of the GEMM, where the mask's zeros would spread it to every
// output (0 * NaN = NaN), and makes NaN exactly the outputs whose mask selects it (all E of their
// elements: coarser than the one element it holds, but the same rows, at one pass over x).
at::Tensor mask_matmul(const at::Tensor& mask, at::Tensor x, MatmulPrecision precision, const char* op) {
  const int parts = precision == MatmulPrecision::kFloat32 ? cuda::kSplitParts : 2;
  const int64_t C = x.size(0), K = x.size(1), E = x.size(2);
  const auto non_finite = x.isfinite().all(-1).logical_not_();  // (C, K)
  x = x.masked_fill(non_finite.unsqueeze(-1), 0.f);
  auto split = at::empty({C, parts * K, E}, x.options().dtype(at::kBFloat16));
  check_launch(cuda::split_bf16_rows(x.const_data_ptr<float>(), split.mutable_data_ptr(), C, K, E, parts,
                                     c10::cuda::getCurrentCUDAStream().stream()),
               "bf16 split", op);
  x = at::Tensor();
  auto m = mask.to(at::kBFloat16);
  auto out = at::bmm(at::cat(std::vector<at::Tensor>(parts, m), 2), split, at::kFloat);
  const auto hits = at::bmm(m, non_finite.to(at::kBFloat16).unsqueeze(-1), at::kFloat);  // (C, M, 1) counts
  return out.masked_fill_(hits.gt(0), std::numeric_limits<float>::quiet_NaN());
}

// Row `row` of a contiguous (..., D) tensor (the first row of a chunk's sequences).
void* row_address(const at::Tensor& t, int64_t row) {
  return static_cast<char*>(t.data_ptr()) + row * t.size(-1) * t.element_size();
}

// The shapes of one SLA problem's linear branch, seen as B * Hkv (batch, kv head) pairs whose G
// query heads share the kv head's h_j (so they form one GEMM).
struct LinearShape {
  int64_t pairs, group, nq, nk, D, W, block_q, block_k, Tq, Tk;
  attention::SlaFeatureMap fmap;
  DType dtype;
  MatmulPrecision precision;

  LinearShape(const at::Tensor& q, const at::Tensor& k, int64_t tq, int64_t tk, int64_t bq, int64_t bk,
              attention::SlaFeatureMap f, MatmulPrecision p)
      : pairs(k.size(0) * k.size(1)), group(q.size(1) / k.size(1)), nq(q.size(2)), nk(k.size(2)),
        D(q.size(3)), W(q.size(3) + kAugColumns), block_q(bq), block_k(bk), Tq(tq), Tk(tk), fmap(f),
        dtype(to_dtype(q.scalar_type())), precision(p) {}
  // Bytes per pair of the linear branch's buffers, all counted as if alive at once (a bound): the
  // per-block sums h_j (float32) with its three bf16 parts, H_i, and in the backward dH_i with its
  // parts (dh_j reuses h_j's share); and the float32 rows, per key phi(K), v_aug (v_raw with a
  // projection) and in the backward dphi(K), d v_aug (dV with a projection), per query phi(Q) and
  // the numerator (the backward: g_aug, dphi(Q)).
  int64_t bytes_per_pair(bool backward, bool projection) const {
    const int64_t block_sums = (10 * Tk + (backward ? 14 : 4) * group * Tq) * D * W;
    const int64_t key_cols = D + W + (projection ? W : 0) + (backward ? D + W + (projection ? D : 0) : 0);
    const int64_t query_cols = D + W + (backward ? D : 0);
    return block_sums + 4 * (Tk * block_k * key_cols + group * Tq * block_q * query_cols);
  }
};

// marginal (B, H, Tq, Tk) as (pairs, G * Tq, Tk): all ones with all_keys.
at::Tensor marginal_mask(const at::Tensor& codes, const LinearShape& s, int64_t B, int64_t H, bool all_keys) {
  return (all_keys ? at::ones_like(codes, codes.options().dtype(at::kBool)) : codes.eq(0))
      .expand({B, H, s.Tq, s.Tk})
      .reshape({s.pairs, s.group * s.Tq, s.Tk});
}

// phi(K) (n, Tk * bk, D) and v_aug (n, Tk * bk, W) of the n pairs from c0, and H_i = [H_i, Z_i]
// (n * G * Tq, D, W) summed over their marginal blocks. With a projection W (float32 D x D) the
// branch runs on the values V W^T: v_aug = [V W^T, 1, 0...] (O^l is linear in V, so it yields
// O^l W^T), and v_raw = [V, 1, 0...] is kept for the backward's dW.
struct KeySide {
  at::Tensor phi_k, v_aug, H, v_raw;
};

KeySide key_side(const at::Tensor& k, const at::Tensor& v, const at::Tensor& marginal, const at::Tensor& proj,
                 const LinearShape& s, int64_t c0, int64_t n, const char* op) {
  const int64_t rows = s.Tk * s.block_k;
  auto opts = k.options().dtype(at::kFloat);
  KeySide out{at::empty({n, rows, s.D}, opts), at::empty({n, rows, s.W}, opts), {}, {}};
  check_launch(cuda::sla_feature_rows(row_address(k, c0 * s.nk), row_address(v, c0 * s.nk),
                                      out.phi_k.mutable_data_ptr<float>(), out.v_aug.mutable_data_ptr<float>(),
                                      s.dtype, s.fmap, n, s.nk, rows, s.D, s.W,
                                      c10::cuda::getCurrentCUDAStream().stream()),
               "key rows", op);
  if (proj.defined()) {
    out.v_raw = std::move(out.v_aug);
    out.v_aug = at::empty_like(out.v_raw);
    out.v_aug.narrow(2, s.D, s.W - s.D).copy_(out.v_raw.narrow(2, s.D, s.W - s.D));
    cuda::gemm_f32(1, n * rows, s.D, s.D, {out.v_raw.const_data_ptr<float>(), s.W},
                   {proj.const_data_ptr<float>(), s.D, /*transposed=*/true}, out.v_aug.mutable_data_ptr<float>(), s.W,
                   0, 0.f, s.precision, op);
  }
  auto h = cuda::bmm_f32(out.phi_k.view({n * s.Tk, s.block_k, s.D}), true,
                         out.v_aug.view({n * s.Tk, s.block_k, s.W}), false, s.precision, op)
               .view({n, s.Tk, s.D * s.W});
  out.H = mask_matmul(marginal.narrow(0, c0, n), std::move(h), s.precision, op)
              .view({n * s.group * s.Tq, s.D, s.W});
  return out;
}

// O^l (O^l W^T with a projection) and its denominator for the pairs [c0, c0 + n): q, k, v
// contiguous; out (pairs * G, nq, D) and denom (pairs * G, nq) contiguous.
void linear_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& marginal,
                    const at::Tensor& proj, const LinearShape& s, int64_t c0, int64_t n, float eps,
                    const at::Tensor& out, const at::Tensor& denom) {
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  auto keys = key_side(k, v, marginal, proj, s, c0, n, kOp);
  keys.v_raw = at::Tensor();
  const int64_t seqs = n * s.group, rows = s.Tq * s.block_q, first_row = c0 * s.group * s.nq;
  auto phi_q = at::empty({seqs, rows, s.D}, q.options().dtype(at::kFloat));
  check_launch(cuda::sla_feature_rows(row_address(q, first_row), nullptr, phi_q.mutable_data_ptr<float>(), nullptr,
                                      s.dtype, s.fmap, seqs, s.nq, rows, s.D, s.W, stream),
               "query rows");
  auto num = cuda::bmm_f32(phi_q.view({seqs * s.Tq, s.block_q, s.D}), false, keys.H, false, s.precision,
                           kOp);  // (.., bq, W)
  check_launch(cuda::sla_linear_normalize(num.const_data_ptr<float>(), s.W, row_address(out, first_row),
                                          denom.mutable_data_ptr<float>() + first_row, s.dtype, seqs, s.nq, rows,
                                          s.D, eps, stream),
               "normalisation");
}

// Adds the linear branch's gradients of the pairs [c0, c0 + n) into dq, dk, dv (contiguous, in the
// dtypes of q, k, v, holding the sparse branch's gradients) and, with a projection, into d_proj
// (float32 D x D): q, k, v, grad (= dO^l), out (= O^l) contiguous, denom (pairs * G, nq).
void linear_backward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad,
                     const at::Tensor& out, const at::Tensor& denom, const at::Tensor& marginal,
                     const at::Tensor& proj, const LinearShape& s, int64_t c0, int64_t n, const at::Tensor& dq,
                     const at::Tensor& dk, const at::Tensor& dv, const at::Tensor& d_proj,
                     c10::cuda::CUDAEvent& sparse_done) {
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  auto keys = key_side(k, v, marginal, proj, s, c0, n, kBwdOp);
  const int64_t seqs = n * s.group, rows_q = s.Tq * s.block_q, rows_k = s.Tk * s.block_k;
  const int64_t first_q = c0 * s.group * s.nq, first_k = c0 * s.nk;
  auto opts = q.options().dtype(at::kFloat);
  auto phi_q = at::empty({seqs, rows_q, s.D}, opts), g_aug = at::empty({seqs, rows_q, s.W}, opts);
  check_launch(cuda::sla_query_grad_rows(row_address(q, first_q), row_address(grad, first_q), row_address(out, first_q),
                                         denom.const_data_ptr<float>() + first_q, phi_q.mutable_data_ptr<float>(),
                                         g_aug.mutable_data_ptr<float>(), s.dtype, s.fmap, seqs, s.nq, rows_q, s.D,
                                         s.W, stream),
               "query gradient rows", kBwdOp);
  auto phi_qb = phi_q.view({seqs * s.Tq, s.block_q, s.D});
  auto g_augb = g_aug.view({seqs * s.Tq, s.block_q, s.W});
  const auto P = s.precision;
  auto d_phi_q = cuda::bmm_f32(g_augb, false, keys.H, true, P, kBwdOp);  // (.., bq, D)
  keys.H = at::Tensor();
  auto dH = cuda::bmm_f32(phi_qb, true, g_augb, false, P, kBwdOp).view({n, s.group * s.Tq, s.D * s.W});
  auto dh = mask_matmul(marginal.narrow(0, c0, n).transpose(1, 2), std::move(dH), P, kBwdOp)
                .view({n * s.Tk, s.D, s.W});
  auto d_phi_k = cuda::bmm_f32(keys.v_aug.view({n * s.Tk, s.block_k, s.W}), false, dh, true, P, kBwdOp);  // (.., bk, D)
  auto dv_aug = cuda::bmm_f32(keys.phi_k.view({n * s.Tk, s.block_k, s.D}), false, dh, false, P, kBwdOp);  // (.., bk, W)
  // With a projection dv_aug holds d(V W^T): dW += d(V W^T)^T V, and dV = d(V W^T) W.
  int64_t dv_ld = s.W;
  if (proj.defined()) {
    const int64_t key_rows = n * rows_k;
    cuda::gemm_f32(1, s.D, s.D, key_rows, {dv_aug.const_data_ptr<float>(), s.W, /*transposed=*/true},
                   {keys.v_raw.const_data_ptr<float>(), s.W}, d_proj.mutable_data_ptr<float>(), s.D, 0, 1.f, P,
                   kBwdOp);
    auto dv_rows = at::empty({key_rows, s.D}, dv_aug.options());
    cuda::gemm_f32(1, key_rows, s.D, s.D, {dv_aug.const_data_ptr<float>(), s.W}, {proj.const_data_ptr<float>(), s.D},
                   dv_rows.mutable_data_ptr<float>(), s.D, 0, 0.f, P, kBwdOp);
    dv_aug = std::move(dv_rows);
    dv_ld = s.D;
  }
  // Into the sparse branch's gradients, in place (once they are there): sequences of `rows` rows from
  // row `first`.
  sparse_done.block(c10::cuda::getCurrentCUDAStream());
  auto add = [&](const at::Tensor& grads, int64_t first, const float* phi, const at::Tensor& d, int64_t ld,
                 int64_t sq, int64_t rows, int64_t padded, const char* what) {
    void* p = row_address(grads, first);
    check_launch(cuda::sla_add_grad_rows(p, phi, d.const_data_ptr<float>(), ld, p, to_dtype(grads.scalar_type()), s.fmap, sq, rows,
                                         padded, s.D, stream),
                 what, kBwdOp);
  };
  add(dq, first_q, phi_q.const_data_ptr<float>(), d_phi_q, s.D, seqs, s.nq, rows_q, "dq rows");
  add(dk, first_k, keys.phi_k.const_data_ptr<float>(), d_phi_k, s.D, n, s.nk, rows_k, "dk rows");
  add(dv, first_k, nullptr, dv_aug, dv_ld, n, s.nk, rows_k, "dv rows");
}

}  // namespace

at::Tensor float32_projection(const std::optional<at::Tensor>& proj_weight) {
  return proj_weight.has_value() ? proj_weight->to(at::kFloat).contiguous() : at::Tensor();
}

void sla_linear_forward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& codes,
                             int64_t Tq, int64_t block_q, int64_t block_k, attention::SlaFeatureMap fmap,
                             bool all_keys, const at::Tensor& proj, MatmulPrecision precision,
                             const at::Tensor& out_linear, const at::Tensor& denom) {
  const LinearShape s(q, k, Tq, codes.size(3), block_q, block_k, fmap, precision);
  auto marginal = marginal_mask(codes, s, q.size(0), q.size(1), all_keys);
  const float eps = all_keys ? kSlaAllKeysEps : 0.f;
  const int64_t chunk = pairs_per_chunk(s.bytes_per_pair(false, proj.defined()));
  for (int64_t c0 = 0; c0 < s.pairs; c0 += chunk)
    linear_forward(q, k, v, marginal, proj, s, c0, std::min(chunk, s.pairs - c0), eps, out_linear, denom);
}

void sla_linear_backward_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& grad,
                              const at::Tensor& out, const at::Tensor& denom, const at::Tensor& codes, int64_t Tq,
                              int64_t block_q, int64_t block_k, attention::SlaFeatureMap fmap, bool all_keys,
                              const at::Tensor& proj, MatmulPrecision precision, const at::Tensor& dq,
                              const at::Tensor& dk, const at::Tensor& dv, const at::Tensor& d_proj,
                              at::cuda::CUDAEvent& sparse_done) {
  const LinearShape s(q, k, Tq, codes.size(3), block_q, block_k, fmap, precision);
  auto marginal = marginal_mask(codes, s, q.size(0), q.size(1), all_keys);
  const int64_t chunk = pairs_per_chunk(s.bytes_per_pair(true, proj.defined()));
  for (int64_t c0 = 0; c0 < s.pairs; c0 += chunk)
    linear_backward(q, k, v, grad, out, denom, marginal, proj, s, c0, std::min(chunk, s.pairs - c0), dq, dk, dv,
                    d_proj, sparse_done);
}

}  // namespace genaccel::ops
