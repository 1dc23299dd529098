// genaccel SLA ops (sparse-linear attention): schema, input checks, CPU registration.
// The sparse branch is the block-sparse attention kernel over the critical blocks; the linear
// branch is csrc/cpu/attention/sla_linear_fwd.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cpu/attention/block_sparse_fwd.h"
#include "cpu/attention/sla_linear_fwd.h"
#include "cpu/capability.h"
#include "genaccel/cpu/microgemm.h"
#include "ops/attention.h"
#include "ops/sla.h"

namespace genaccel::ops {
namespace {
constexpr const char* kOp = "sla_fwd";
}  // namespace

void check_sla_fwd_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& phi_q, const at::Tensor& phi_k, const at::Tensor& codes,
                          const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t block_q,
                          int64_t block_k) {
  check_block_sparse_fwd_inputs(q, k, v, kv_indices, kv_counts, block_q, block_k);
  TORCH_CHECK(phi_q.sizes() == q.sizes() && phi_k.sizes() == k.sizes(), kOp,
              ": phi_q / phi_k must have the shapes of q ", q.sizes(), " / k ", k.sizes(), ", got ",
              phi_q.sizes(), " / ", phi_k.sizes());
  for (const auto* t : {&phi_q, &phi_k}) {
    auto dt = t->scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, kOp,
                ": phi_q and phi_k must be float32, float16 or bfloat16, got ", dt);
    TORCH_CHECK(t->device() == q.device(), kOp, ": phi_q and phi_k must be on the device of q (",
                q.device(), "), got ", t->device());
  }
  const int64_t Tq = kv_indices.size(2), Tk = (k.size(2) + block_k - 1) / block_k;
  TORCH_CHECK(codes.scalar_type() == at::kChar, kOp, ": codes must be int8, got ", codes.scalar_type());
  TORCH_CHECK(codes.device() == q.device(), kOp, ": codes must be on the device of q, got ", codes.device());
  TORCH_CHECK(codes.dim() == 4 && (codes.size(0) == q.size(0) || codes.size(0) == 1) &&
                  (codes.size(1) == q.size(1) || codes.size(1) == 1) && codes.size(2) == Tq &&
                  codes.size(3) == Tk,
              kOp, ": codes must have shape (", q.size(0), " or 1, ", q.size(1), " or 1, ", Tq, ", ", Tk,
              "), got ", codes.sizes());
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_fwd_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& phi_q_in,
    const at::Tensor& phi_k_in, const at::Tensor& codes_in, const at::Tensor& kv_indices_in,
    const at::Tensor& kv_counts_in, int64_t block_q, int64_t block_k, double scale,
    bool linear_over_all_keys) {
  check_sla_fwd_inputs(q_in, k_in, v_in, phi_q_in, phi_k_in, codes_in, kv_indices_in, kv_counts_in,
                       block_q, block_k);
  TORCH_CHECK(std::isfinite(scale), kOp, ": scale must be finite, got ", scale);
  cpu::check_capability(kOp);
  auto q = cpu_float32(q_in), k = cpu_float32(k_in), v = cpu_float32(v_in), phi_q = cpu_float32(phi_q_in), phi_k = cpu_float32(phi_k_in);
  auto codes = codes_in.contiguous();
  auto kv_indices = kv_indices_in.contiguous(), kv_counts = kv_counts_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  auto out_sparse = at::empty({B, H, Nq, D}, q.options());
  auto lse = at::empty({B, H, Nq}, q.options());
  auto out_linear = at::empty({B, H, Nq, D}, q.options());
  auto denom = at::empty({B, H, Nq}, q.options());
  if (out_sparse.numel() > 0) {
    cpu::block_sparse_fwd_f32(make_block_sparse_fwd_params(q, k, v, kv_indices, kv_counts, out_sparse,
                                                           lse, block_q, block_k, scale));
    // V's columns padded to the micro-kernel width: the linear branch streams V rows as GEMM B.
    const int64_t d_pad = (D + cpu::kNR - 1) / cpu::kNR * cpu::kNR;
    auto v_pad = d_pad == D ? v : at::constant_pad_nd(v, {0, d_pad - D});
    attention::SlaLinearFwdParams p{};
    p.phi_q = phi_q.const_data_ptr<float>();
    p.phi_k = phi_k.const_data_ptr<float>();
    p.v = v_pad.const_data_ptr<float>();
    p.out = out_linear.mutable_data_ptr<float>();
    p.denom = denom.mutable_data_ptr<float>();
    p.codes = codes.const_data_ptr<int8_t>();
    p.codes_batch_stride = codes.size(0) == 1 ? 0 : codes.stride(0);
    p.codes_head_stride = codes.size(1) == 1 ? 0 : codes.stride(1);
    p.pq_batch_stride = phi_q.stride(0), p.pq_head_stride = phi_q.stride(1), p.pq_row_stride = phi_q.stride(2);
    p.pk_batch_stride = phi_k.stride(0), p.pk_head_stride = phi_k.stride(1), p.pk_row_stride = phi_k.stride(2);
    p.v_batch_stride = v_pad.stride(0), p.v_head_stride = v_pad.stride(1), p.v_row_stride = v_pad.stride(2);
    p.batch = static_cast<int>(B);
    p.heads = static_cast<int>(H);
    p.kv_heads = static_cast<int>(k.size(1));
    p.seqlen_q = static_cast<int>(Nq);
    p.seqlen_k = static_cast<int>(k.size(2));
    p.head_dim = static_cast<int>(D);
    p.d_pad = static_cast<int>(d_pad);
    p.block_q = static_cast<int>(block_q);
    p.block_k = static_cast<int>(block_k);
    p.num_q_blocks = static_cast<int>(kv_indices.size(2));
    p.num_k_blocks = static_cast<int>(codes.size(3));
    p.all_keys = linear_over_all_keys;
    p.eps = kSlaAllKeysEps;
    cpu::sla_linear_fwd_f32(p);
  } else {
    lse.fill_(-std::numeric_limits<float>::infinity());
    denom.zero_();
  }
  const auto dt = q_in.scalar_type();
  return {out_sparse.to(dt), lse, out_linear.to(dt), denom};
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_FRAGMENT(genaccel, m) {
  m.def(
      "sla_fwd(Tensor q, Tensor k, Tensor v, Tensor phi_q, Tensor phi_k, Tensor codes, "
      "Tensor kv_indices, Tensor kv_counts, int block_q, int block_k, float scale, "
      "bool linear_over_all_keys) -> (Tensor out_sparse, Tensor lse, Tensor out_linear, Tensor denom)");
}

TORCH_LIBRARY_IMPL(genaccel, CPU, m) { m.impl("sla_fwd", &genaccel::ops::sla_fwd_cpu); }
