// genaccel attention ops: schemas, input checks, and the CPU registration.
// CUDA registration: attention_cuda.cpp. Kernels: csrc/cpu/attention, csrc/cuda/attention.
#include "ops/attention/block_sparse.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "cpu/attention/block_sparse/delta.h"
#include "cpu/attention/block_sparse/bwd.h"
#include "cpu/attention/block_sparse/fwd.h"
#include "cpu/common/capability.h"

namespace genaccel::ops {

namespace {
constexpr const char* kOp = "block_sparse_attn_fwd";

void check_qkv(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (B, H, N, D), got shape ", t.sym_sizes());
  auto dt = t.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16, op, ": ", name,
              " must be float32, float16 or bfloat16, got ", dt);
}
}  // namespace

at::Tensor last_dim_contiguous(const at::Tensor& t) {
  // Rows must also not overlap (a BLAS leading dimension >= the row length): an expanded tensor
  // with row stride 0 is copied too.
  const bool ok = (t.stride(-1) == 1 || t.size(-1) <= 1) && t.stride(-2) >= t.size(-1);
  return ok ? t : t.contiguous();
}

namespace {

// Variable-size block offsets: int32, 3-D (B or 1, H or 1, blocks + 1) with blocks >= 1, on q's device.
void check_offsets_shape(const at::Tensor& o, const char* name, const c10::SymInt& B, const c10::SymInt& H,
                         const at::Device& device, const char* op) {
  TORCH_CHECK(o.scalar_type() == at::kInt && o.dim() == 3 && (o.sym_size(0) == B || o.sym_size(0) == 1) &&
                  (o.sym_size(1) == H || o.sym_size(1) == 1) && o.sym_size(2) >= 2,
              op, ": ", name, " must be int32 of shape (", B, " or 1, ", H, " or 1, blocks + 1) with blocks >= 1, got ",
              o.scalar_type(), " ", o.sym_sizes());
  TORCH_CHECK(o.device() == device, op, ": ", name, " must be on the device of q (", device, "), got ", o.device());
}

// Their values: from 0 to n along the last dim, non-decreasing, no block longer than `block` (the
// block_q / block_k argument, which bounds the kernels' scratch).
void check_offsets_values(const at::Tensor& o, const char* name, int64_t n, int64_t block, const char* block_name,
                          const char* op) {
  auto sizes = o.diff(1, -1);
  const bool ends = (o.select(-1, 0) == 0).all().item<bool>() && (o.select(-1, -1) == n).all().item<bool>();
  TORCH_CHECK(ends, op, ": ", name, " must start at 0 and end at the sequence length ", n, " in every row");
  TORCH_CHECK((sizes >= 0).all().item<bool>(), op, ": ", name, " must be non-decreasing");
  const int64_t largest = sizes.max().item<int64_t>();
  TORCH_CHECK(largest <= block, op, ": ", name, " has a block of ", largest, " tokens, more than ", block_name, "=",
              block, " (pass the largest block size)");
}

}  // namespace

void check_block_sparse_fwd_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                   int64_t block_q, int64_t block_k, const char* op, const BlockOffsets& offsets) {
  check_qkv(q, "q", op);
  check_qkv(k, "k", op);
  check_qkv(v, "v", op);
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k, v must share one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
              v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": q, k, v must be on one device, got ", q.device(), ", ", k.device(), ", ", v.device());
  const c10::SymInt B = q.sym_size(0), H = q.sym_size(1), Nq = q.sym_size(2), D = q.sym_size(3);
  TORCH_CHECK(k.sym_size(0) == B && v.sym_size(0) == B, op, ": batch of k ", k.sym_size(0), " and v ", v.sym_size(0),
              " must equal batch of q ", B);
  TORCH_CHECK(k.sym_size(1) == v.sym_size(1), op, ": k and v must have the same number of heads, got ",
              k.sym_size(1), " and ", v.sym_size(1));
  TORCH_CHECK(k.sym_size(2) == v.sym_size(2), op, ": k and v must have the same length, got ", k.sym_size(2),
              " and ", v.sym_size(2));
  TORCH_CHECK(k.sym_size(3) == D && v.sym_size(3) == D, op, ": head dim of k ", k.sym_size(3), " and v ",
              v.sym_size(3), " must equal head dim of q ", D);
  const c10::SymInt Hkv = k.sym_size(1);
  TORCH_CHECK(Hkv > 0 ? H % Hkv == 0 : H == 0, op, ": query heads ", H,
              " must be a multiple of key/value heads ", Hkv, " (GQA)");
  TORCH_CHECK(D >= 1 && D <= 256, op, ": head dim must be in [1, 256], got ", D);
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(block_q >= 1 && block_k >= 1 && block_q <= kIntMax && block_k <= kIntMax, op,
              ": block_q and block_k must be in [1, 2^31 - 1], got (", block_q, ", ", block_k, ")");
  const c10::SymInt Nk = k.sym_size(2);
  TORCH_CHECK(B * H <= kIntMax, op, ": q's batch x heads must be below 2^31 (the kernels count them in int32), got ",
              B, " x ", H);
  TORCH_CHECK(Nq <= kIntMax && Nk <= kIntMax, op, ": q and k must have fewer than 2^31 tokens (sequence lengths), got Nq=", Nq,
              ", Nk=", Nk);
  const c10::SymInt Tq = offsets.q.defined() ? offsets.q.sym_size(-1) - 1 : (Nq + block_q - 1) / block_q;
  if (offsets.q.defined()) check_offsets_shape(offsets.q, "q_block_offsets", B, H, q.device(), op);
  if (offsets.k.defined()) check_offsets_shape(offsets.k, "k_block_offsets", B, H, q.device(), op);

  TORCH_CHECK(kv_indices.scalar_type() == at::kInt && kv_counts.scalar_type() == at::kInt, op,
              ": kv_indices and kv_counts must be int32, got ", kv_indices.scalar_type(), " and ",
              kv_counts.scalar_type());
  TORCH_CHECK(kv_indices.device() == q.device() && kv_counts.device() == q.device(), op,
              ": kv_indices and kv_counts must be on the device of q (", q.device(), "), got ",
              kv_indices.device(), " and ", kv_counts.device());
  TORCH_CHECK(kv_indices.dim() == 4, op, ": kv_indices must be 4-D (B or 1, H or 1, Tq, max_kv), got shape ",
              kv_indices.sym_sizes());
  TORCH_CHECK(kv_counts.dim() == 3, op, ": kv_counts must be 3-D (B or 1, H or 1, Tq), got shape ",
              kv_counts.sym_sizes());
  const c10::SymInt Bi = kv_indices.sym_size(0), Hi = kv_indices.sym_size(1);
  TORCH_CHECK((Bi == B || Bi == 1) && (Hi == H || Hi == 1) && kv_indices.sym_size(2) == Tq, op,
              ": kv_indices must have shape (", B, " or 1, ", H, " or 1, ", Tq, ", max_kv) for Nq=", Nq,
              (offsets.q.defined() ? " and q_block_offsets" : " and block_q="),
              (offsets.q.defined() ? std::string() : std::to_string(block_q)), ", got ", kv_indices.sym_sizes());
  TORCH_CHECK(kv_counts.sym_size(0) == Bi && kv_counts.sym_size(1) == Hi && kv_counts.sym_size(2) == Tq, op,
              ": kv_counts must have shape ", kv_indices.sym_sizes().slice(0, 3), ", got ", kv_counts.sym_sizes());
}

void check_block_sparse_fwd_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                   int64_t block_q, int64_t block_k, const char* op, bool check_plan,
                                   const BlockOffsets& offsets) {
  check_block_sparse_fwd_shapes(q, k, v, kv_indices, kv_counts, block_q, block_k, op, offsets);
  if (!plan_values_checked(q, check_plan)) return;
  const int64_t Nk = k.size(2);
  const int64_t Tk = offsets.num_k_blocks(Nk, block_k).expect_int();
  if (offsets.q.defined()) check_offsets_values(offsets.q, "q_block_offsets", q.size(2), block_q, "block_q", op);
  if (offsets.k.defined()) check_offsets_values(offsets.k, "k_block_offsets", Nk, block_k, "block_k", op);
  if (kv_counts.numel() == 0) return;
  const auto [counts, used] = counts_and_used(kv_indices, kv_counts);
  if (block_plan_invalid(kv_indices, counts, used, Tk).item<bool>())
    raise_block_plan_error(kv_indices, kv_counts, Tk, Nk, block_k, op);
}

std::pair<at::Tensor, at::Tensor> counts_and_used(const at::Tensor& kv_indices, const at::Tensor& kv_counts) {
  const int64_t max_kv = kv_indices.size(3);
  auto counts = kv_counts.to(at::kLong);
  auto used = at::arange(max_kv, counts.options()).view({1, 1, 1, max_kv}) < counts.unsqueeze(-1);
  return {counts, used};
}

at::Tensor block_plan_invalid(const at::Tensor& kv_indices, const at::Tensor& counts, const at::Tensor& used,
                              int64_t num_k_blocks) {
  auto bad_index = used & ((kv_indices < 0) | (kv_indices >= num_k_blocks));
  auto bad_count = (counts < 0) | (counts > kv_indices.size(3));
  return bad_index.any().logical_or(bad_count.any());
}

void raise_block_plan_error(const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t num_k_blocks,
                            int64_t Nk, int64_t block_k, const char* op) {
  auto [counts, used] = counts_and_used(kv_indices, kv_counts);
  const int64_t max_kv = kv_indices.size(3);
  TORCH_CHECK(!((counts < 0) | (counts > max_kv)).any().item<bool>(), op, ": kv_counts must lie in [0, ", max_kv,
              "] (the last dim of kv_indices), got values in [", counts.min().item<int64_t>(), ", ",
              counts.max().item<int64_t>(), "]");
  auto bad_vals = kv_indices.masked_select(used & ((kv_indices < 0) | (kv_indices >= num_k_blocks)));
  TORCH_CHECK(bad_vals.numel() == 0, op, ": kv_indices must lie in [0, ", num_k_blocks, ") (key blocks of Nk=", Nk,
              ", block_k=", block_k, ") for every counted entry; found ", bad_vals.numel(), " out of range, e.g. ",
              bad_vals.numel() ? bad_vals[0].item<int>() : 0);
  TORCH_CHECK(false, op, ": internal error: the block plan was flagged invalid but no entry is out of range");
}

// Every counted entry (qb, kb) becomes the key kb * Tq + qb, sorted per plan (batch, head), so each
// key block's query blocks are one ascending run; its start is found by binary search.
std::tuple<at::Tensor, at::Tensor> key_major_plan(const at::Tensor& kv_indices,
                                                  const at::Tensor& kv_counts, int64_t num_k_blocks) {
  const int64_t Bi = kv_indices.size(0), Hi = kv_indices.size(1);
  const int64_t Tq = kv_indices.size(2), max_kv = kv_indices.size(3);
  auto opts = kv_indices.options().dtype(at::kLong);
  auto used = at::arange(max_kv, opts).view({1, 1, 1, max_kv}) < kv_counts.unsqueeze(-1);
  auto query_block = at::arange(Tq, opts).view({1, 1, Tq, 1});
  auto key = at::where(used, kv_indices.to(at::kLong) * Tq + query_block,
                       num_k_blocks * Tq);
  auto sorted = std::get<0>(key.view({Bi, Hi, Tq * max_kv}).sort(-1));
  auto bounds = (at::arange(num_k_blocks + 1, opts) * Tq).expand({Bi, Hi, num_k_blocks + 1});
  auto offsets = at::searchsorted(sorted, bounds.contiguous(), /*out_int32=*/true);
  return {offsets, sorted.remainder(Tq).to(at::kInt)};
}


namespace {
constexpr const char* kKeyMajorOp = "block_sparse_key_major_plan";

void check_key_major_plan_inputs(const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t num_k_blocks) {
  constexpr const char* op = kKeyMajorOp;
  TORCH_CHECK(kv_indices.scalar_type() == at::kInt && kv_counts.scalar_type() == at::kInt && kv_indices.dim() == 4 &&
                  kv_counts.dim() == 3 && kv_counts.sym_sizes() == kv_indices.sym_sizes().slice(0, 3) &&
                  kv_counts.device() == kv_indices.device(),
              op, ": kv_indices (Bi, Hi, Tq, max_kv) and kv_counts (Bi, Hi, Tq) must be int32 on one device, got ",
              kv_indices.scalar_type(), " ", kv_indices.sym_sizes(), " on ", kv_indices.device(), " and ",
              kv_counts.scalar_type(), " ", kv_counts.sym_sizes(), " on ", kv_counts.device());
  TORCH_CHECK(num_k_blocks >= 0 && num_k_blocks * kv_indices.sym_size(2) < (int64_t{1} << 31), op,
              ": num_k_blocks must be in [0, 2^31 / Tq), got ", num_k_blocks);
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> block_sparse_key_major_plan(const at::Tensor& kv_indices,
                                                               const at::Tensor& kv_counts, int64_t num_k_blocks) {
  constexpr const char* op = kKeyMajorOp;
  check_key_major_plan_inputs(kv_indices, kv_counts, num_k_blocks);
  if (kv_counts.numel() > 0) {
    const auto [counts, used] = counts_and_used(kv_indices, kv_counts);
    TORCH_CHECK(!block_plan_invalid(kv_indices, counts, used, num_k_blocks).item<bool>(), op,
                ": kv_counts must lie in [0, max_kv] and the entries of kv_indices they count in [0, num_k_blocks=",
                num_k_blocks, ")");
  }
  return key_major_plan(kv_indices.contiguous(), kv_counts.contiguous(), num_k_blocks);
}

void check_key_major_plan(const KeyMajor& km, const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                          const c10::SymInt& num_k_blocks, bool check_values, const char* op) {
  if (!km.offsets.defined() && !km.queries.defined()) return;
  TORCH_CHECK(km.offsets.defined() && km.queries.defined(), op,
              ": key_major_offsets and key_major_queries come together (from block_sparse_key_major_plan)");
  const c10::SymInt Bi = kv_indices.sym_size(0), Hi = kv_indices.sym_size(1);
  for (const auto* t : {&km.offsets, &km.queries})
    TORCH_CHECK(t->scalar_type() == at::kInt && t->dim() == 3 && t->sym_size(0) == Bi && t->sym_size(1) == Hi &&
                    t->device() == kv_indices.device(),
                op, ": key_major_offsets / key_major_queries must be int32 (", Bi, ", ", Hi, ", .) on ",
                kv_indices.device(), " like kv_indices, got ", t->scalar_type(), " ", t->sym_sizes(), " on ", t->device());
  TORCH_CHECK(km.offsets.sym_size(2) == num_k_blocks + 1, op, ": key_major_offsets must have ", num_k_blocks + 1,
              " entries per plan row (key blocks + 1), got ", km.offsets.sym_size(2));
  if (!check_values) return;
  auto [offsets, queries] = key_major_plan(kv_indices, kv_counts, num_k_blocks.expect_int());
  TORCH_CHECK(at::equal(offsets, km.offsets) && queries.size(2) <= km.queries.size(2) &&
                  at::equal(queries, km.queries.narrow(2, 0, queries.size(2))),
              op, ": key_major_offsets / key_major_queries are not the key-major form of kv_indices / kv_counts "
              "(make them with block_sparse_key_major_plan, or genaccel.attention.BlockSparsePlan)");
}

at::Tensor cpu_float32(const at::Tensor& t) {
  return last_dim_contiguous(t.scalar_type() == at::kFloat ? t : t.to(at::kFloat));
}

attention::BlockSparseFwdParams make_block_sparse_fwd_params(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, const at::Tensor& out, const at::Tensor& lse, int64_t block_q,
    int64_t block_k, double scale, const BlockOffsets& offsets) {
  attention::BlockSparseFwdParams p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
  p.kv_indices = kv_indices.const_data_ptr<int32_t>();
  p.kv_counts = kv_counts.const_data_ptr<int32_t>();
  p.idx_batch_stride = kv_indices.size(0) == 1 ? 0 : kv_indices.stride(0);
  p.idx_head_stride = kv_indices.size(1) == 1 ? 0 : kv_indices.stride(1);
  p.cnt_batch_stride = kv_counts.size(0) == 1 ? 0 : kv_counts.stride(0);
  p.cnt_head_stride = kv_counts.size(1) == 1 ? 0 : kv_counts.stride(1);
  p.max_kv_blocks = static_cast<int>(kv_indices.size(3));
  p.q_batch_stride = q.stride(0), p.q_head_stride = q.stride(1), p.q_row_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_head_stride = k.stride(1), p.k_row_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_head_stride = v.stride(1), p.v_row_stride = v.stride(2);
  p.o_batch_stride = out.stride(0), p.o_head_stride = out.stride(1), p.o_row_stride = out.stride(2);
  p.batch = static_cast<int>(q.size(0));
  p.heads = static_cast<int>(q.size(1));
  p.kv_heads = static_cast<int>(k.size(1));
  p.seqlen_q = static_cast<int>(q.size(2));
  p.seqlen_k = static_cast<int>(k.size(2));
  p.head_dim = static_cast<int>(q.size(3));
  p.block_q = static_cast<int>(block_q);
  p.block_k = static_cast<int>(block_k);
  p.num_q_blocks = static_cast<int>(kv_indices.size(2));
  p.num_k_blocks = static_cast<int>(offsets.k.defined() ? offsets.k.size(-1) - 1 : (k.size(2) + block_k - 1) / block_k);
  p.scale = static_cast<float>(scale);
  // Offsets (checked contiguous in their last dim) broadcast over batch/heads of size 1.
  if (offsets.q.defined()) {
    p.q_offsets = offsets.q.const_data_ptr<int32_t>();
    p.qoff_batch_stride = offsets.q.size(0) == 1 ? 0 : offsets.q.stride(0);
    p.qoff_head_stride = offsets.q.size(1) == 1 ? 0 : offsets.q.stride(1);
  }
  if (offsets.k.defined()) {
    p.k_offsets = offsets.k.const_data_ptr<int32_t>();
    p.koff_batch_stride = offsets.k.size(0) == 1 ? 0 : offsets.k.stride(0);
    p.koff_head_stride = offsets.k.size(1) == 1 ? 0 : offsets.k.stride(1);
  }
  return p;
}

attention::BlockSparseBwdParams make_block_sparse_bwd_params(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& delta, const at::Tensor& lse, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
    int64_t block_q, int64_t block_k, double scale, const BlockOffsets& offsets) {
  attention::BlockSparseBwdParams p{};
  // The forward params' out/lse slots: lse is read (saved from the forward); out carries dq's layout.
  p.fwd = make_block_sparse_fwd_params(q, k, v, kv_indices, kv_counts, dq, lse, block_q, block_k, scale, offsets);
  p.dout = dout.const_data_ptr();
  p.do_batch_stride = dout.stride(0), p.do_head_stride = dout.stride(1), p.do_row_stride = dout.stride(2);
  p.delta = delta.const_data_ptr<float>();
  p.dq = dq.mutable_data_ptr();
  p.dk = dk.mutable_data_ptr();
  p.dv = dv.mutable_data_ptr();
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_block_sparse_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& delta, const at::Tensor& lse, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale, const char* op,
    const BlockOffsets& offsets) {
  auto dq = at::empty(q.sizes(), q.options());
  auto dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  const auto p = make_block_sparse_bwd_params(dout, q, k, v, delta, lse, kv_indices, kv_counts, dq, dk, dv, block_q,
                                              block_k, scale, offsets);
  run_with_block_scratch(p.fwd, op, [&] { cpu::block_sparse_bwd_f32(p); });
  return {dq, dk, dv};
}

void raise_block_scratch_error(const attention::BlockSparseFwdParams& p, const char* op) {
  const int64_t rows = std::min(p.block_q, p.seqlen_q), keys = std::min(p.block_k, std::max(p.seqlen_k, 1));
  TORCH_CHECK(false, op, ": out of memory for the CPU kernel's per-thread scratch of about ",
              static_cast<double>(rows) * keys * 4 / (1 << 30), " GiB (min(block_q, Nq) = ", rows,
              " by min(block_k, Nk) = ", keys, " floats) with block_q=", p.block_q, ", block_k=", p.block_k,
              ": use smaller blocks");
}

void check_scale(double scale, const char* op) {
  TORCH_CHECK(std::isfinite(static_cast<float>(scale)), op, ": scale must be finite in float32 (|scale| < 3.4e38), got ",
              scale);
}

attention::Backend check_block_sparse_attn_fwd_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                                  int64_t block_q, int64_t block_k, double scale, bool check_plan,
                                                  c10::string_view backend, const BlockOffsets& offsets,
                                                  const KeyMajor& key_major) {
  check_block_sparse_fwd_inputs(q, k, v, kv_indices, kv_counts, block_q, block_k, kOp, check_plan, offsets);
  // Passed through for the backward, which checks their values: shapes only.
  check_key_major_plan(key_major, kv_indices, kv_counts, offsets.num_k_blocks(k.sym_size(2), block_k), false, kOp);
  check_scale(scale, kOp);
  return parse_attention_backend(backend, kOp);
}

attention::Backend check_block_sparse_attn_bwd_op(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor& delta, const at::Tensor& lse,
                                                  const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                                  int64_t block_q, int64_t block_k, double scale, bool check_plan,
                                                  c10::string_view backend, const BlockOffsets& offsets,
                                                  const KeyMajor& key_major) {
  constexpr const char* op = "block_sparse_attn_bwd";
  check_block_sparse_fwd_inputs(q, k, v, kv_indices, kv_counts, block_q, block_k, op, check_plan, offsets);
  check_scale(scale, op);
  check_qkv(dout, "dout", op);
  TORCH_CHECK(dout.sym_sizes() == q.sym_sizes() && dout.device() == q.device(), op,
              ": dout must match q in shape and device, got ", dout.sym_sizes(), " on ", dout.device());
  const auto rows = q.sym_sizes().slice(0, 3);
  for (const auto* t : {&delta, &lse})
    TORCH_CHECK(t->sym_sizes() == rows && t->scalar_type() == at::kFloat && t->device() == q.device(), op,
                ": delta and lse must be float32 of shape ", rows, " on the device of q (", q.device(), "), got ",
                t->scalar_type(), " ", t->sym_sizes(), " on ", t->device());
  // The CUDA backward walks the key-major lists (their values checked like the plan's); the CPU
  // backward walks the query-major plan, so there they are checked for shape only.
  check_key_major_plan(key_major, kv_indices, kv_counts, offsets.num_k_blocks(k.sym_size(2), block_k),
                       q.is_cuda() && plan_values_checked(q, check_plan), op);
  return parse_attention_backend(backend, op);
}

attention::Backend parse_attention_backend(c10::string_view backend, const char* op) {
  // "auto" is sm80 until the wgmma kernels have passed a GPU check (CHANGELOG.md).
  if (backend == "auto" || backend == "sm80") return attention::Backend::kSm80;
  if (backend == "sm90") return attention::Backend::kSm90;
  TORCH_CHECK(false, op, ": backend must be 'auto', 'sm80' or 'sm90', got '", std::string(backend), "'");
}

void check_attention_delta_inputs(const at::Tensor& dout, const at::Tensor& out) {
  constexpr const char* op = "attention_delta";
  check_qkv(dout, "dout", op);
  check_qkv(out, "out", op);
  TORCH_CHECK(dout.sym_sizes() == out.sym_sizes(), op, ": dout and out must have one shape, got ", dout.sym_sizes(),
              " and ", out.sym_sizes());
  TORCH_CHECK(dout.device() == out.device(), op, ": dout and out must be on one device, got ", dout.device(),
              " and ", out.device());
}

attention::AttentionDeltaParams make_attention_delta_params(const at::Tensor& dout, const at::Tensor& out,
                                                            const at::Tensor& delta) {
  attention::AttentionDeltaParams p{};
  p.dout = dout.const_data_ptr();
  p.out = out.const_data_ptr();
  p.delta = delta.mutable_data_ptr<float>();
  p.do_batch_stride = dout.stride(0), p.do_head_stride = dout.stride(1), p.do_row_stride = dout.stride(2);
  p.o_batch_stride = out.stride(0), p.o_head_stride = out.stride(1), p.o_row_stride = out.stride(2);
  p.batch = out.size(0), p.heads = out.size(1), p.rows = out.size(2), p.dim = out.size(3);
  return p;
}

namespace {

at::Tensor attention_delta_meta(const at::Tensor& dout, const at::Tensor& out) {
  check_attention_delta_inputs(dout, out);
  return at::empty_symint({out.sym_size(0), out.sym_size(1), out.sym_size(2)}, out.options().dtype(at::kFloat));
}

at::Tensor attention_delta_cpu(const at::Tensor& dout, const at::Tensor& out) {
  check_attention_delta_inputs(dout, out);
  auto delta = at::empty({out.size(0), out.size(1), out.size(2)}, out.options().dtype(at::kFloat));
  cpu::attention_delta_f32(make_attention_delta_params(cpu_float32(dout), cpu_float32(out), delta));
  return delta;
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attn_fwd_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& kv_indices_in, const at::Tensor& kv_counts_in, int64_t block_q,
    int64_t block_k, double scale, bool check_plan, c10::string_view backend,
    const std::optional<at::Tensor>& q_block_offsets, const std::optional<at::Tensor>& k_block_offsets,
    const std::optional<at::Tensor>& key_major_offsets, const std::optional<at::Tensor>& key_major_queries) {
  const auto offsets = BlockOffsets::of(q_block_offsets, k_block_offsets);
  check_block_sparse_attn_fwd_op(q_in, k_in, v_in, kv_indices_in, kv_counts_in, block_q, block_k, scale, check_plan,
                                 backend, offsets, KeyMajor::of(key_major_offsets, key_major_queries));
  cpu::check_capability(kOp);  // the CPU has one kernel, whatever the backend
  auto q = cpu_float32(q_in), k = cpu_float32(k_in), v = cpu_float32(v_in);
  auto kv_indices = kv_indices_in.contiguous(), kv_counts = kv_counts_in.contiguous();
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options());
  if (out.numel() > 0) {
    auto p = make_block_sparse_fwd_params(q, k, v, kv_indices, kv_counts, out, lse, block_q,
                                          block_k, scale, offsets.contiguous());
    run_with_block_scratch(p, kOp, [&] { cpu::block_sparse_fwd_f32(p); });
  } else {
    lse.fill_(-std::numeric_limits<float>::infinity());
  }
  return {q_in.scalar_type() == at::kFloat ? out : out.to(q_in.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attn_bwd_cpu(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& delta_in, const at::Tensor& lse_in, const at::Tensor& kv_indices_in,
    const at::Tensor& kv_counts_in, int64_t block_q, int64_t block_k, double scale, bool check_plan,
    c10::string_view backend, const std::optional<at::Tensor>& q_block_offsets,
    const std::optional<at::Tensor>& k_block_offsets, const std::optional<at::Tensor>& key_major_offsets,
    const std::optional<at::Tensor>& key_major_queries) {
  constexpr const char* op = "block_sparse_attn_bwd";
  const auto offsets = BlockOffsets::of(q_block_offsets, k_block_offsets);
  check_block_sparse_attn_bwd_op(dout_in, q_in, k_in, v_in, delta_in, lse_in, kv_indices_in, kv_counts_in, block_q,
                                 block_k, scale, check_plan, backend, offsets,
                                 KeyMajor::of(key_major_offsets, key_major_queries));
  cpu::check_capability(op);  // the CPU has one kernel, whatever the backend
  auto q = cpu_float32(q_in), k = cpu_float32(k_in), v = cpu_float32(v_in);
  auto [dq, dk, dv] = run_block_sparse_bwd_cpu(cpu_float32(dout_in), q, k, v, delta_in.contiguous(),
                                               lse_in.contiguous(), kv_indices_in.contiguous(),
                                               kv_counts_in.contiguous(), block_q, block_k, scale, op,
                                               offsets.contiguous());
  return {dq.to(q_in.scalar_type()), dk.to(k_in.scalar_type()), dv.to(v_in.scalar_type())};
}

// The Meta kernels (shapes for torch.compile, FakeTensor and the meta device): the ops' own checks,
// but for the values, then uninitialised outputs of the kernels' shapes (contiguous, as they return).
std::tuple<at::Tensor, at::Tensor> block_sparse_attn_fwd_meta(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale, bool check_plan,
    c10::string_view backend, const std::optional<at::Tensor>& q_block_offsets,
    const std::optional<at::Tensor>& k_block_offsets, const std::optional<at::Tensor>& key_major_offsets,
    const std::optional<at::Tensor>& key_major_queries) {
  check_block_sparse_attn_fwd_op(q, k, v, kv_indices, kv_counts, block_q, block_k, scale, check_plan, backend,
                                 BlockOffsets::of(q_block_offsets, k_block_offsets),
                                 KeyMajor::of(key_major_offsets, key_major_queries));
  return {at::empty_symint(q.sym_sizes(), q.options()),
          at::empty_symint(q.sym_sizes().slice(0, 3), q.options().dtype(at::kFloat))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attn_bwd_meta(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& delta, const at::Tensor& lse, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale, bool check_plan,
    c10::string_view backend, const std::optional<at::Tensor>& q_block_offsets,
    const std::optional<at::Tensor>& k_block_offsets, const std::optional<at::Tensor>& key_major_offsets,
    const std::optional<at::Tensor>& key_major_queries) {
  check_block_sparse_attn_bwd_op(dout, q, k, v, delta, lse, kv_indices, kv_counts, block_q, block_k, scale,
                                 check_plan, backend, BlockOffsets::of(q_block_offsets, k_block_offsets),
                                 KeyMajor::of(key_major_offsets, key_major_queries));
  return {at::empty_symint(q.sym_sizes(), q.options()), at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(v.sym_sizes(), v.options())};
}

std::tuple<at::Tensor, at::Tensor> block_sparse_key_major_plan_meta(const at::Tensor& kv_indices,
                                                                    const at::Tensor& kv_counts, int64_t num_k_blocks) {
  check_key_major_plan_inputs(kv_indices, kv_counts, num_k_blocks);
  const auto bi = kv_indices.sym_size(0), hi = kv_indices.sym_size(1);
  return {at::empty_symint({bi, hi, num_k_blocks + 1}, kv_indices.options()),
          at::empty_symint({bi, hi, kv_indices.sym_size(2) * kv_indices.sym_size(3)}, kv_indices.options())};
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_FRAGMENT(genaccel, m) {
  // The plan in key-major order for the CUDA backward (KeyMajor): made once with the plan
  // (genaccel.attention.BlockSparsePlan) and handed to every backward instead of a sort per call.
  m.def("block_sparse_key_major_plan(Tensor kv_indices, Tensor kv_counts, int num_k_blocks) "
        "-> (Tensor offsets, Tensor queries)");
  m.def("attention_delta(Tensor dout, Tensor out) -> Tensor");
  m.def(
      "block_sparse_attn_fwd(Tensor q, Tensor k, Tensor v, Tensor kv_indices, Tensor kv_counts, "
      "int block_q, int block_k, float scale, bool check_plan=True, str backend=\"auto\", "
      "Tensor? q_block_offsets=None, Tensor? k_block_offsets=None, Tensor? key_major_offsets=None, "
      "Tensor? key_major_queries=None) -> (Tensor out, Tensor lse)");
  m.def(
      "block_sparse_attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor delta, Tensor lse, "
      "Tensor kv_indices, Tensor kv_counts, int block_q, int block_k, float scale, bool check_plan=True, "
      "str backend=\"auto\", Tensor? q_block_offsets=None, Tensor? k_block_offsets=None, "
      "Tensor? key_major_offsets=None, Tensor? key_major_queries=None) "
      "-> (Tensor dq, Tensor dk, Tensor dv)");
}

TORCH_LIBRARY_IMPL(genaccel, CPU, m) {
  m.impl("attention_delta", &genaccel::ops::attention_delta_cpu);
  m.impl("block_sparse_attn_fwd", &genaccel::ops::block_sparse_attn_fwd_cpu);
  m.impl("block_sparse_attn_bwd", &genaccel::ops::block_sparse_attn_bwd_cpu);
  m.impl("block_sparse_key_major_plan", &genaccel::ops::block_sparse_key_major_plan);
}

TORCH_LIBRARY_IMPL(genaccel, Meta, m) {
  m.impl("attention_delta", &genaccel::ops::attention_delta_meta);
  m.impl("block_sparse_attn_fwd", &genaccel::ops::block_sparse_attn_fwd_meta);
  m.impl("block_sparse_attn_bwd", &genaccel::ops::block_sparse_attn_bwd_meta);
  m.impl("block_sparse_key_major_plan", &genaccel::ops::block_sparse_key_major_plan_meta);
}
