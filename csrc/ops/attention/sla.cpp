// genaccel SLA ops (sparse-linear attention): schema, input checks, CPU registration.
// The sparse branch is the block-sparse attention kernel (forward and backward) over the critical
// blocks; the linear branch is csrc/cpu/attention/sla/linear_{fwd,bwd}.cpp, on feature maps that
// the ops compute themselves (csrc/cpu/attention/sla/feature_map.cpp) into reused scratch: phi(q)
// and phi(k) never become tensors, and the backward recomputes them.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <utility>

#include "cpu/attention/block_sparse/fwd.h"
#include "cpu/attention/sla/select_blocks.h"
#include "cpu/attention/sla/feature_map.h"
#include "cpu/attention/sla/linear_bwd.h"
#include "cpu/attention/sla/linear_fwd.h"
#include "cpu/common/capability.h"
#include "cpu/common/scratch.h"
#include "cpu/common/microgemm.h"
#include "ops/attention/block_sparse.h"
#include "ops/attention/sla.h"

namespace genaccel::ops {
namespace {
constexpr const char* kOp = "sla_fwd";
constexpr const char* kBwdOp = "sla_bwd";

// Checks of the inputs sla_fwd and sla_bwd share; errors start with `op`.
void check_sla_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& codes, const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                      int64_t block_q, int64_t block_k, const std::optional<at::Tensor>& proj_weight,
                      bool check_plan) {
  check_block_sparse_fwd_shapes(q, k, v, kv_indices, kv_counts, block_q, block_k, op);
  if (proj_weight.has_value()) {
    const auto& w = *proj_weight;
    const auto D = q.sym_size(3);
    TORCH_CHECK(w.is_floating_point() && w.dim() == 2 && w.sym_size(0) == D && w.sym_size(1) == D, op,
                ": proj_weight must be a floating-point (D, D) = (", D, ", ", D, ") tensor, got ", w.scalar_type(), " ",
                w.sym_sizes());
    TORCH_CHECK(w.device() == q.device(), op, ": proj_weight must be on the device of q (", q.device(), "), got ",
                w.device());
  }
  {
    const auto Tq = kv_indices.sym_size(2), Tk = (k.sym_size(2) + block_k - 1) / block_k;
    TORCH_CHECK(codes.scalar_type() == at::kChar, op, ": codes must be int8, got ", codes.scalar_type());
    TORCH_CHECK(codes.device() == q.device(), op, ": codes must be on the device of q, got ", codes.device());
    TORCH_CHECK(codes.dim() == 4 && (codes.sym_size(0) == q.sym_size(0) || codes.sym_size(0) == 1) &&
                    (codes.sym_size(1) == q.sym_size(1) || codes.sym_size(1) == 1) && codes.sym_size(2) == Tq &&
                    codes.sym_size(3) == Tk,
                op, ": codes must have shape (", q.sym_size(0), " or 1, ", q.sym_size(1), " or 1, ", Tq, ", ", Tk,
                "), got ", codes.sym_sizes());
  }
  if (!plan_values_checked(q, check_plan) || kv_counts.numel() == 0) return;
  const int64_t Tq = kv_indices.size(2), Tk = (k.size(2) + block_k - 1) / block_k;
  // Three conditions on the values, read back in one device-to-host copy (one sync per op call):
  // codes in {-1, 0, 1}, the plan's index ranges, and that it lists exactly the critical blocks of
  // the codes (a listed marginal block would be counted by both branches, an unlisted critical one
  // by neither).
  const auto [counts, used] = counts_and_used(kv_indices, kv_counts);
  auto plan_invalid = block_plan_invalid(kv_indices, counts, used, Tk);
  auto inconsistent = at::zeros_like(plan_invalid);
  auto bad_codes = at::zeros_like(plan_invalid);
  if (codes.numel() > 0) {
    bad_codes = codes.lt(-1).logical_or_(codes.gt(1)).any();
    const int64_t B = q.size(0), H = q.size(1), M = kv_indices.size(3);
    auto idx = kv_indices.to(at::kLong).expand({B, H, Tq, M});
    // How often each row lists each block (out-of-range entries, flagged above, into a spare column
    // Tk): exactly once for every critical block and never for another, so duplicates fail too.
    auto slot = at::where(used & (idx >= 0) & (idx < Tk), idx, Tk);
    auto listed = at::zeros({B, H, Tq, Tk + 1}, codes.options().dtype(at::kInt))
                      .scatter_add_(-1, slot, used.to(at::kInt).expand({B, H, Tq, M}));
    inconsistent = listed.narrow(-1, 0, Tk).ne(codes.eq(1).expand({B, H, Tq, Tk})).any();
  }
  const auto flags = at::stack({bad_codes, plan_invalid, inconsistent}).cpu();
  const bool* flag = flags.const_data_ptr<bool>();
  TORCH_CHECK(!flag[0], op, ": codes must be -1 (negligible), 0 (marginal) or 1 (critical), got ",
              codes.min().item<int>(), " to ", codes.max().item<int>());
  if (flag[1]) raise_block_plan_error(kv_indices, kv_counts, Tk, k.size(2), block_k, op);
  TORCH_CHECK(!flag[2], op, ": kv_indices / kv_counts must list exactly the critical blocks of codes "
              "(code 1) of every query block, as sla_block_map returns them");
}

}  // namespace

SlaOptions check_sla_fwd_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& codes,
                            const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t block_q,
                            int64_t block_k, double scale, c10::string_view feature_map,
                            const std::optional<at::Tensor>& proj_weight, bool check_plan,
                            c10::string_view precision, c10::string_view backend) {
  check_sla_inputs(kOp, q, k, v, codes, kv_indices, kv_counts, block_q, block_k, proj_weight, check_plan);
  check_scale(scale, kOp);
  return {parse_sla_feature_map(std::string(feature_map), kOp), parse_sla_precision(precision, kOp),
          parse_attention_backend(backend, kOp)};
}

at::Tensor no_proj_weight_grad(const at::Tensor& q) { return at::empty({0}, q.options().dtype(at::kFloat)); }

attention::SlaFeatureMap parse_sla_feature_map(const std::string& name, const char* op) {
  if (name == "softmax") return attention::SlaFeatureMap::kSoftmax;
  if (name == "elu") return attention::SlaFeatureMap::kElu;
  TORCH_CHECK(name == "relu", op, ": feature_map must be one of softmax, elu, relu, got '", name, "'");
  return attention::SlaFeatureMap::kRelu;
}

void check_sla_select_blocks_inputs(const at::Tensor& scores, int64_t n_critical, int64_t n_negligible) {
  constexpr const char* op = "sla_select_blocks";
  TORCH_CHECK(scores.dim() == 4 && scores.scalar_type() == at::kFloat, op,
              ": scores must be a 4-D (B, H, Tq, Tk) float32 tensor, got ", scores.scalar_type(), " ",
              scores.sym_sizes());
  const auto tk = scores.sym_size(3);
  TORCH_CHECK(tk >= 1 && tk < (int64_t{1} << 30), op, ": scores need 1 to 2^30 - 1 key blocks per row, got ", tk);
  TORCH_CHECK(n_critical >= 1 && tk >= n_critical, op, ": n_critical must be in [1, ", tk, "], got ", n_critical);
  TORCH_CHECK(n_negligible >= 0 && tk - n_critical >= n_negligible, op, ": n_negligible must be in [0, ",
              tk - n_critical, "] (Tk - n_critical), got ", n_negligible);
}

std::tuple<at::Tensor, at::Tensor> empty_select_blocks_outputs(const at::Tensor& scores, int64_t n_critical) {
  return {at::empty_symint(scores.sym_sizes(), scores.options().dtype(at::kChar)),
          at::empty_symint({scores.sym_size(0), scores.sym_size(1), scores.sym_size(2), n_critical},
                           scores.options().dtype(at::kInt))};
}

MatmulPrecision parse_sla_precision(c10::string_view precision, const char* op) {
  if (precision == "tf32") return MatmulPrecision::kTF32;
  if (precision == "fp32") return MatmulPrecision::kFloat32;
  TORCH_CHECK(false, op, ": precision must be 'tf32' or 'fp32', got '", std::string(precision), "'");
}

SlaOptions check_sla_bwd_op(
    const at::Tensor& grad_sparse, const at::Tensor& grad_linear, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& codes, const at::Tensor& kv_indices, const at::Tensor& kv_counts,
    const at::Tensor& out_sparse, const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& out_linear,
    const at::Tensor& denom, int64_t block_q, int64_t block_k, double scale, c10::string_view feature_map,
    const std::optional<at::Tensor>& proj_weight, bool check_plan, c10::string_view precision,
    c10::string_view backend) {
  check_sla_inputs(kBwdOp, q, k, v, codes, kv_indices, kv_counts, block_q, block_k, proj_weight, check_plan);
  check_scale(scale, kBwdOp);
  const std::pair<const at::Tensor*, const char*> like_q[] = {
      {&grad_sparse, "grad_sparse"}, {&grad_linear, "grad_linear"}, {&out_sparse, "out_sparse"},
      {&out_linear, "out_linear"}};
  for (const auto& [t, name] : like_q) {
    auto dt = t->scalar_type();
    TORCH_CHECK(t->sym_sizes() == q.sym_sizes(), kBwdOp, ": ", name, " must have the shape of q ", q.sym_sizes(),
                ", got ", t->sym_sizes());
    TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, kBwdOp, ": ", name,
                " must be float32, float16 or bfloat16, got ", dt);
    TORCH_CHECK(t->device() == q.device(), kBwdOp, ": ", name, " must be on the device of q (",
                q.device(), "), got ", t->device());
  }
  const auto rows = q.sym_sizes().slice(0, 3);
  const std::pair<const at::Tensor*, const char*> per_row[] = {
      {&lse, "lse"}, {&delta, "delta"}, {&denom, "denom"}};
  for (const auto& [t, name] : per_row)
    TORCH_CHECK(t->sym_sizes() == rows && t->scalar_type() == at::kFloat && t->device() == q.device(), kBwdOp,
                ": ", name, " must be float32 of shape ", rows, " on the device of q (", q.device(), "), got ",
                t->scalar_type(), " ", t->sym_sizes(), " on ", t->device());
  return {parse_sla_feature_map(std::string(feature_map), kBwdOp), parse_sla_precision(precision, kBwdOp),
          parse_attention_backend(backend, kBwdOp)};
}

namespace {

// V's columns zero-padded to the micro-kernel width: the linear branch streams V rows as GEMM B.
at::Tensor pad_columns(const at::Tensor& v) {
  const int64_t D = v.size(3), d_pad = (D + cpu::kNR - 1) / cpu::kNR * cpu::kNR;
  return d_pad == D ? v : at::constant_pad_nd(v, {0, d_pad - D});
}

// The linear-branch params from float32 tensors with contiguous last dims (v_pad: pad_columns(v));
// out/denom are left to the caller.
attention::SlaLinearFwdParams make_sla_linear_params(const at::Tensor& phi_q, const at::Tensor& phi_k,
                                                     const at::Tensor& v_pad, const at::Tensor& codes,
                                                     int64_t num_q_blocks, int64_t block_q, int64_t block_k,
                                                     bool linear_over_all_keys) {
  attention::SlaLinearFwdParams p{};
  p.phi_q = phi_q.const_data_ptr<float>();
  p.phi_k = phi_k.const_data_ptr<float>();
  p.v = v_pad.const_data_ptr<float>();
  p.codes = codes.const_data_ptr<int8_t>();
  p.codes_batch_stride = codes.size(0) == 1 ? 0 : codes.stride(0);
  p.codes_head_stride = codes.size(1) == 1 ? 0 : codes.stride(1);
  p.pq_batch_stride = phi_q.stride(0), p.pq_head_stride = phi_q.stride(1), p.pq_row_stride = phi_q.stride(2);
  p.pk_batch_stride = phi_k.stride(0), p.pk_head_stride = phi_k.stride(1), p.pk_row_stride = phi_k.stride(2);
  p.v_batch_stride = v_pad.stride(0), p.v_head_stride = v_pad.stride(1), p.v_row_stride = v_pad.stride(2);
  p.batch = static_cast<int>(phi_q.size(0));
  p.heads = static_cast<int>(phi_q.size(1));
  p.kv_heads = static_cast<int>(phi_k.size(1));
  p.seqlen_q = static_cast<int>(phi_q.size(2));
  p.seqlen_k = static_cast<int>(phi_k.size(2));
  p.head_dim = static_cast<int>(phi_q.size(3));
  p.d_pad = static_cast<int>(v_pad.size(3));
  p.block_q = static_cast<int>(block_q);
  p.block_k = static_cast<int>(block_k);
  p.num_q_blocks = static_cast<int>(num_q_blocks);
  p.num_k_blocks = static_cast<int>(codes.size(3));
  p.all_keys = linear_over_all_keys;
  p.eps = kSlaAllKeysEps;
  return p;
}

cpu::FeatureRows rows_of(const at::Tensor& x) {
  return {x.const_data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2),
          x.size(0), x.size(1), x.size(2), x.size(3)};
}

// phi(x) of a float32 x with a contiguous last dim, in scratch that `memory` holds (reused by the
// next call on this thread), seen as a contiguous tensor.
at::Tensor feature_map_into(const at::Tensor& x, attention::SlaFeatureMap f, cpu::Scratch& memory) {
  memory = cpu::scratch(static_cast<size_t>(x.numel()));
  cpu::sla_feature_map_f32(rows_of(x), f, memory.get());
  return at::from_blob(memory.get(), x.sizes(), x.options());
}

// The values the linear branch runs on: V W^T with a projection (float32 v; in scratch that
// `memory` holds, as feature_map_into), else V. O^l is linear in V, so the branch over V W^T yields
// Proj(O^l) without its bias, O^l W^T: projecting the keys' values costs what projecting the output
// would and leaves no pass over the output behind.
at::Tensor projected_values(const at::Tensor& v, const std::optional<at::Tensor>& proj_weight, cpu::Scratch& memory) {
  if (!proj_weight.has_value()) return v;
  memory = cpu::scratch(static_cast<size_t>(v.numel()));
  auto out = at::from_blob(memory.get(), v.sizes(), v.options());
  at::matmul_out(out, v, proj_weight->to(v.options()).t());
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_fwd_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& codes_in,
    const at::Tensor& kv_indices_in, const at::Tensor& kv_counts_in, int64_t block_q, int64_t block_k,
    double scale, c10::string_view feature_map, bool linear_over_all_keys,
    const std::optional<at::Tensor>& proj_weight, bool check_plan, c10::string_view precision,
    c10::string_view backend) {
  const NoAutocast no_autocast;
  // The CPU kernels compute in float32 with one kernel, whatever the precision and backend.
  const auto fmap = check_sla_fwd_op(q_in, k_in, v_in, codes_in, kv_indices_in, kv_counts_in, block_q, block_k,
                                     scale, feature_map, proj_weight, check_plan, precision, backend)
                        .feature_map;
  cpu::check_capability(kOp);
  auto q = cpu_float32(q_in), k = cpu_float32(k_in), v = cpu_float32(v_in);
  auto codes = codes_in.contiguous();
  auto kv_indices = kv_indices_in.contiguous(), kv_counts = kv_counts_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), Nq = q.size(2), D = q.size(3);
  auto out_sparse = at::empty({B, H, Nq, D}, q.options());
  auto lse = at::empty({B, H, Nq}, q.options());
  auto out_linear = at::empty({B, H, Nq, D}, q.options());
  auto denom = at::empty({B, H, Nq}, q.options());
  if (out_sparse.numel() > 0) {
    const auto sparse = make_block_sparse_fwd_params(q, k, v, kv_indices, kv_counts, out_sparse, lse, block_q,
                                                     block_k, scale);
    run_with_block_scratch(sparse, kOp, [&] { cpu::block_sparse_fwd_f32(sparse); });
    cpu::Scratch phi_q_memory, phi_k_memory, values_memory;
    auto phi_q = feature_map_into(q, fmap, phi_q_memory), phi_k = feature_map_into(k, fmap, phi_k_memory);
    auto v_pad = pad_columns(projected_values(v, proj_weight, values_memory));
    auto p = make_sla_linear_params(phi_q, phi_k, v_pad, codes, kv_indices.size(2), block_q, block_k,
                                    linear_over_all_keys);
    p.out = out_linear.mutable_data_ptr<float>();
    p.denom = denom.mutable_data_ptr<float>();
    cpu::sla_linear_fwd_f32(p);
  } else {
    lse.fill_(-std::numeric_limits<float>::infinity());
    denom.zero_();
  }
  const auto dt = q_in.scalar_type();
  return {out_sparse.to(dt), lse, out_linear.to(dt), denom};
}

std::tuple<at::Tensor, at::Tensor> sla_select_blocks_cpu(const at::Tensor& scores_in, int64_t n_critical,
                                                        int64_t n_negligible) {
  check_sla_select_blocks_inputs(scores_in, n_critical, n_negligible);
  cpu::check_capability("sla_select_blocks");
  auto scores = scores_in.contiguous();
  const int64_t tk = scores.size(3), rows = scores.numel() / tk;
  auto [codes, indices] = empty_select_blocks_outputs(scores, n_critical);
  cpu::sla_block_select(scores.const_data_ptr<float>(), rows, tk, n_critical, n_negligible,
                        codes.mutable_data_ptr<int8_t>(), indices.mutable_data_ptr<int32_t>());
  return {codes, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_bwd_cpu(
    const at::Tensor& grad_sparse_in, const at::Tensor& grad_linear_in, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& codes_in,
    const at::Tensor& kv_indices_in, const at::Tensor& kv_counts_in, const at::Tensor& out_sparse_in,
    const at::Tensor& lse_in, const at::Tensor& delta_in, const at::Tensor& out_linear_in,
    const at::Tensor& denom_in, int64_t block_q, int64_t block_k, double scale,
    c10::string_view feature_map, bool linear_over_all_keys, const std::optional<at::Tensor>& proj_weight,
    bool check_plan, c10::string_view precision, c10::string_view backend) {
  const NoAutocast no_autocast;
  const auto fmap = check_sla_bwd_op(grad_sparse_in, grad_linear_in, q_in, k_in, v_in, codes_in, kv_indices_in,
                                     kv_counts_in, out_sparse_in, lse_in, delta_in, out_linear_in, denom_in, block_q,
                                     block_k, scale, feature_map, proj_weight, check_plan, precision, backend)
                        .feature_map;
  cpu::check_capability(kBwdOp);

  auto q = cpu_float32(q_in), k = cpu_float32(k_in), v = cpu_float32(v_in);
  auto grad_sparse = cpu_float32(grad_sparse_in), grad_linear = cpu_float32(grad_linear_in);
  auto out_linear = cpu_float32(out_linear_in).contiguous();
  auto lse = lse_in.contiguous(), delta = delta_in.contiguous(), denom = denom_in.contiguous();
  auto codes = codes_in.contiguous();
  auto kv_indices = kv_indices_in.contiguous(), kv_counts = kv_counts_in.contiguous();
  // Sparse branch: dq, dk and dv of the block-sparse backward.
  auto [dq, dk, dv] = run_block_sparse_bwd_cpu(grad_sparse, q, k, v, delta, lse, kv_indices, kv_counts,
                                               block_q, block_k, scale, kBwdOp);

  // Linear branch, on phi (and V W^T) recomputed: writes d_phi_q, d_phi_k and adds its dV into dv
  // (with a projection its d(V W^T) into dv_proj first, then dV = d(V W^T) W and dW = d(V W^T)^T V);
  // then the gradients through phi are added into dq and dk.
  cpu::Scratch phi_q_memory, phi_k_memory, values_memory, dv_proj_memory;
  auto phi_q = feature_map_into(q, fmap, phi_q_memory), phi_k = feature_map_into(k, fmap, phi_k_memory);
  cpu::Scratch d_phi_q = cpu::scratch(static_cast<size_t>(q.numel()));
  cpu::Scratch d_phi_k = cpu::scratch(static_cast<size_t>(k.numel()));
  auto v_pad = pad_columns(projected_values(v, proj_weight, values_memory));
  auto dv_proj = dv;
  if (proj_weight.has_value()) {
    dv_proj_memory = cpu::scratch(static_cast<size_t>(dv.numel()));
    dv_proj = at::from_blob(dv_proj_memory.get(), dv.sizes(), dv.options()).zero_();
  }
  attention::SlaLinearBwdParams lp{};
  lp.fwd = make_sla_linear_params(phi_q, phi_k, v_pad, codes, kv_indices.size(2), block_q, block_k,
                                  linear_over_all_keys);
  lp.out = out_linear.const_data_ptr<float>();
  lp.denom = denom.const_data_ptr<float>();
  lp.dout = grad_linear.const_data_ptr<float>();
  lp.do_batch_stride = grad_linear.stride(0), lp.do_head_stride = grad_linear.stride(1);
  lp.do_row_stride = grad_linear.stride(2);
  lp.d_phi_q = d_phi_q.get();
  lp.d_phi_k = d_phi_k.get();
  lp.dv = dv_proj.mutable_data_ptr<float>();
  cpu::sla_linear_bwd_f32(lp);
  auto d_proj_weight = no_proj_weight_grad(q);
  if (proj_weight.has_value()) {
    const int64_t D = q.size(3);
    auto w = proj_weight->to(at::kFloat);
    auto dv_proj_rows = dv_proj.view({-1, D});
    dv.view({-1, D}).addmm_(dv_proj_rows, w);
    d_proj_weight = dv_proj_rows.t().mm(v.reshape({-1, D})).to(proj_weight->scalar_type());
  }
  cpu::sla_feature_map_bwd_f32(rows_of(q), fmap, d_phi_q.get(), dq.mutable_data_ptr<float>());
  cpu::sla_feature_map_bwd_f32(rows_of(k), fmap, d_phi_k.get(), dk.mutable_data_ptr<float>());

  return {dq.to(q_in.scalar_type()), dk.to(k_in.scalar_type()), dv.to(v_in.scalar_type()), d_proj_weight};
}

// The Meta kernels (shapes for torch.compile, FakeTensor and the meta device): the ops' own checks,
// but for the values, then uninitialised outputs of the kernels' shapes (contiguous, as they return).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_fwd_meta(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& codes,
    const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale,
    c10::string_view feature_map, bool linear_over_all_keys, const std::optional<at::Tensor>& proj_weight,
    bool check_plan, c10::string_view precision, c10::string_view backend) {
  check_sla_fwd_op(q, k, v, codes, kv_indices, kv_counts, block_q, block_k, scale, feature_map, proj_weight,
                   check_plan, precision, backend);
  const auto rows = q.sym_sizes().slice(0, 3);
  const auto stats = q.options().dtype(at::kFloat);
  return {at::empty_symint(q.sym_sizes(), q.options()), at::empty_symint(rows, stats),
          at::empty_symint(q.sym_sizes(), q.options()), at::empty_symint(rows, stats)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_bwd_meta(
    const at::Tensor& grad_sparse, const at::Tensor& grad_linear, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& codes, const at::Tensor& kv_indices, const at::Tensor& kv_counts,
    const at::Tensor& out_sparse, const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& out_linear,
    const at::Tensor& denom, int64_t block_q, int64_t block_k, double scale, c10::string_view feature_map,
    bool linear_over_all_keys, const std::optional<at::Tensor>& proj_weight, bool check_plan,
    c10::string_view precision, c10::string_view backend) {
  check_sla_bwd_op(grad_sparse, grad_linear, q, k, v, codes, kv_indices, kv_counts, out_sparse, lse, delta,
                   out_linear, denom, block_q, block_k, scale, feature_map, proj_weight, check_plan, precision,
                   backend);
  return {at::empty_symint(q.sym_sizes(), q.options()), at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(v.sym_sizes(), v.options()),
          proj_weight.has_value() ? at::empty_symint(proj_weight->sym_sizes(), proj_weight->options())
                                  : no_proj_weight_grad(q)};
}

std::tuple<at::Tensor, at::Tensor> sla_select_blocks_meta(const at::Tensor& scores, int64_t n_critical,
                                                         int64_t n_negligible) {
  check_sla_select_blocks_inputs(scores, n_critical, n_negligible);
  return empty_select_blocks_outputs(scores, n_critical);
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_FRAGMENT(genaccel, m) {
  // out_linear is O^l W^T with proj_weight W (Proj(O^l) less its bias), else O^l. check_plan=False
  // trusts the plan's values on CUDA (no host sync; for plans from sla_block_map, and for the
  // backward of a forward that checked them); the CPU checks them always.
  m.def(
      "sla_fwd(Tensor q, Tensor k, Tensor v, Tensor codes, Tensor kv_indices, Tensor kv_counts, "
      "int block_q, int block_k, float scale, str feature_map, bool linear_over_all_keys, "
      "Tensor? proj_weight=None, bool check_plan=True, str precision=\"tf32\", str backend=\"auto\") "
      "-> (Tensor out_sparse, Tensor lse, Tensor out_linear, Tensor denom)");
  // d_proj_weight is empty without proj_weight.
  m.def(
      "sla_bwd(Tensor grad_sparse, Tensor grad_linear, Tensor q, Tensor k, Tensor v, Tensor codes, "
      "Tensor kv_indices, Tensor kv_counts, Tensor out_sparse, Tensor lse, Tensor delta, "
      "Tensor out_linear, Tensor denom, int block_q, int block_k, float scale, str feature_map, "
      "bool linear_over_all_keys, Tensor? proj_weight=None, bool check_plan=True, str precision=\"tf32\", "
      "str backend=\"auto\") "
      "-> (Tensor dq, Tensor dk, Tensor dv, Tensor d_proj_weight)");
  // SLA's block classification from the pooled scores (B, H, Tq, Tk) float32: per row the
  // n_critical highest scores are critical (code 1), the n_negligible lowest negligible (-1), the
  // rest marginal (0); ties to the lower block index, NaN lowest. kv_indices (B, H, Tq, n_critical)
  // int32 lists the critical blocks of each row in ascending order.
  m.def("sla_select_blocks(Tensor scores, int n_critical, int n_negligible) -> (Tensor codes, Tensor kv_indices)");
}

TORCH_LIBRARY_IMPL(genaccel, CPU, m) {
  m.impl("sla_fwd", &genaccel::ops::sla_fwd_cpu);
  m.impl("sla_bwd", &genaccel::ops::sla_bwd_cpu);
  m.impl("sla_select_blocks", &genaccel::ops::sla_select_blocks_cpu);
}

TORCH_LIBRARY_IMPL(genaccel, Meta, m) {
  m.impl("sla_fwd", &genaccel::ops::sla_fwd_meta);
  m.impl("sla_bwd", &genaccel::ops::sla_bwd_meta);
  m.impl("sla_select_blocks", &genaccel::ops::sla_select_blocks_meta);
}
