// Input checks and parameter packing shared by the CPU and CUDA registrations of the attention ops.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <new>
#include <optional>
#include <tuple>
#include <utility>

#include "genaccel/attention/block_sparse/params.h"

namespace genaccel::ops {

// Variable-size blocks of the block-sparse ops (their q_block_offsets / k_block_offsets arguments):
// int32 token offsets (B or 1, H or 1, blocks + 1) per side; an undefined tensor for uniform blocks.
struct BlockOffsets {
  at::Tensor q, k;
  static BlockOffsets of(const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k) {
    return {q.value_or(at::Tensor()), k.value_or(at::Tensor())};
  }
  bool any() const { return q.defined() || k.defined(); }
  // As the kernels read them: contiguous rows (undefined stays undefined).
  BlockOffsets contiguous() const {
    return {q.defined() ? q.contiguous() : q, k.defined() ? k.contiguous() : k};
  }
  // The number of key blocks: the offsets', or ceil(Nk / block_k) (symbolic in the Meta kernels).
  c10::SymInt num_k_blocks(const c10::SymInt& Nk, int64_t block_k) const {
    return k.defined() ? k.sym_size(-1) - 1 : (Nk + block_k - 1) / block_k;
  }
};

// Checks q/k/v/kv_indices/kv_counts of block_sparse_attn_fwd (ranks, shapes, dtypes, devices,
// index ranges) and raises a c10::Error naming `op` (the op being called) and the argument on the
// first violation. The index ranges cost one host sync on CUDA; with check_plan false they are
// taken on trust there (the ops' check_plan argument; the CUDA kernels skip out-of-range entries
// and clamp counts, so a wrong plan cannot make them read out of bounds). The CPU checks them
// always: it costs no sync, and the CPU kernels index with the plan unguarded.
void check_block_sparse_fwd_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                   int64_t block_q, int64_t block_k,
                                   const char* op = "block_sparse_attn_fwd", bool check_plan = true,
                                   const BlockOffsets& offsets = {});

// The softmax scale of the attention ops: finite in float32, the precision the kernels use it in (a
// finite double above float32's range would become inf there).
void check_scale(double scale, const char* op);

// Whether the plan's values must be checked: always on the CPU, on CUDA unless the caller vouches,
// never on the meta device (no values: the Meta kernels check the rest).
inline bool plan_values_checked(const at::Tensor& q, bool check_plan) {
  return !q.is_meta() && (check_plan || q.device().is_cpu());
}

// All of those checks but the index ranges (no device sync).
void check_block_sparse_fwd_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                   int64_t block_q, int64_t block_k, const char* op,
                                   const BlockOffsets& offsets = {});

// kv_counts as int64 and which (query block, slot) entries of kv_indices they count (bool, shaped
// like kv_indices).
std::pair<at::Tensor, at::Tensor> counts_and_used(const at::Tensor& kv_indices, const at::Tensor& kv_counts);

// The index ranges' part of those checks, for callers that fold it with their own into one host
// sync: a 0-dim bool tensor on the device of kv_indices, true when a count (counts, used: from
// counts_and_used) lies outside [0, max_kv] or a counted entry outside [0, num_k_blocks). Shapes must
// have been checked.
at::Tensor block_plan_invalid(const at::Tensor& kv_indices, const at::Tensor& counts, const at::Tensor& used,
                              int64_t num_k_blocks);

// Raises the error that explains an invalid plan (syncs; for the error path).
[[noreturn]] void raise_block_plan_error(const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                         int64_t num_k_blocks, int64_t Nk, int64_t block_k, const char* op);

// The plan in key-major order (attention::KeyMajorPlan, op block_sparse_key_major_plan), for the
// CUDA backward's dK/dV kernel that walks, per key block, the query blocks that list it: offsets
// (Bi, Hi, Tk + 1) into queries (Bi, Hi, Tq * max_kv), both int32; undefined tensors when absent.
struct KeyMajor {
  at::Tensor offsets, queries;
  static KeyMajor of(const std::optional<at::Tensor>& offsets, const std::optional<at::Tensor>& queries) {
    return {offsets.value_or(at::Tensor()), queries.value_or(at::Tensor())};
  }
};
std::tuple<at::Tensor, at::Tensor> key_major_plan(const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                                  int64_t num_k_blocks);

// Op block_sparse_key_major_plan: checks the plan, then key_major_plan.
std::tuple<at::Tensor, at::Tensor> block_sparse_key_major_plan(const at::Tensor& kv_indices,
                                                               const at::Tensor& kv_counts, int64_t num_k_blocks);

// Checks key-major lists handed to an op: shapes always, and with check_values that they equal
// key_major_plan's (a sort and a host sync).
void check_key_major_plan(const KeyMajor& km, const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                          const c10::SymInt& num_k_blocks, bool check_values, const char* op);

// Every check of op block_sparse_attn_fwd's arguments, shared by its CPU, CUDA and Meta kernels: the
// inputs (check_block_sparse_fwd_inputs), the key-major lists' shapes, the scale and the backend
// (returned).
attention::Backend check_block_sparse_attn_fwd_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                  const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                                  int64_t block_q, int64_t block_k, double scale, bool check_plan,
                                                  c10::string_view backend, const BlockOffsets& offsets,
                                                  const KeyMajor& key_major);

// Likewise for block_sparse_attn_bwd: those of the forward, plus dout, delta and lse.
attention::Backend check_block_sparse_attn_bwd_op(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                                  const at::Tensor& v, const at::Tensor& delta, const at::Tensor& lse,
                                                  const at::Tensor& kv_indices, const at::Tensor& kv_counts,
                                                  int64_t block_q, int64_t block_k, double scale, bool check_plan,
                                                  c10::string_view backend, const BlockOffsets& offsets,
                                                  const KeyMajor& key_major);

// Fills the torch-free params from tensors whose last dim is contiguous; out/lse must be
// contiguous (B, H, Nq, D) / (B, H, Nq).
attention::BlockSparseFwdParams make_block_sparse_fwd_params(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, const at::Tensor& out, const at::Tensor& lse, int64_t block_q,
    int64_t block_k, double scale, const BlockOffsets& offsets = {});

// Fills the torch-free backward params (tensors as for make_block_sparse_fwd_params; dout with a
// contiguous last dim, delta/lse/dq/dk/dv contiguous).
attention::BlockSparseBwdParams make_block_sparse_bwd_params(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& delta, const at::Tensor& lse, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv,
    int64_t block_q, int64_t block_k, double scale, const BlockOffsets& offsets = {});

// The CPU block-sparse backward on float32 tensors with contiguous last dims (delta, lse, kv_indices,
// kv_counts contiguous; inputs already checked): float32 (dq, dk, dv) shaped like q, k, v.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_block_sparse_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& delta, const at::Tensor& lse, const at::Tensor& kv_indices,
    const at::Tensor& kv_counts, int64_t block_q, int64_t block_k, double scale, const char* op,
    const BlockOffsets& offsets = {});

// Runs `kernel`, a CPU block-sparse kernel of problem p, whose per-thread scratch grows with
// min(block_q, Nq) x min(block_k, Nk) floats: an allocation failure becomes an error that names the
// block sizes and the memory, instead of a bare std::bad_alloc.
[[noreturn]] void raise_block_scratch_error(const attention::BlockSparseFwdParams& p, const char* op);
template <class Kernel>
void run_with_block_scratch(const attention::BlockSparseFwdParams& p, const char* op, Kernel&& kernel) {
  try {
    kernel();
  } catch (const std::bad_alloc&) {
    raise_block_scratch_error(p, op);
  }
}

// The ops' `backend` argument ("auto", "sm80" or "sm90": which CUDA kernels run); raises naming `op`
// otherwise. The CPU validates it and runs its one kernel.
attention::Backend parse_attention_backend(c10::string_view backend, const char* op);

// Checks dout and out of attention_delta: 4-D (B, H, N, D) of one shape, floating point (float32,
// float16, bfloat16), on one device.
void check_attention_delta_inputs(const at::Tensor& dout, const at::Tensor& out);

// The torch-free params of attention_delta from dout and out of one dtype with contiguous last dims
// (last_dim_contiguous) and delta contiguous float32 (B, H, N).
attention::AttentionDeltaParams make_attention_delta_params(const at::Tensor& dout, const at::Tensor& out,
                                                            const at::Tensor& delta);

// The CPU kernels compute in float32 throughout: half inputs are widened once (an O(N*D) pass, small
// against the attention itself), and the result is laid out as last_dim_contiguous.
at::Tensor cpu_float32(const at::Tensor& t);

// Returns t itself when its last dim is contiguous and its rows do not overlap, else a contiguous copy.
at::Tensor last_dim_contiguous(const at::Tensor& t);

}  // namespace genaccel::ops
