// CUDA registration of sla_fwd, sla_bwd and sla_mask_matmul. The sparse branch is the block-sparse
// attention kernels over the critical blocks (csrc/cuda/attention/block_sparse_{fwd,bwd}.cu); the
// linear branch runs as batched cuBLAS GEMMs between per-token row kernels
// (csrc/cuda/attention/sla_linear.cu), not yet fused into the attention mainloop, on a second stream
// beside the sparse branch (SideStream).
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
// The sums over the mask ((Tq x Tk) x (Tk x D W) per head) run on bf16 tensor cores with float32
// accumulation, the summed h_j split into two bf16 parts (accurate to 2^-16; three, exact, with
// GENACCEL_SLA_FLOAT32_GEMMS=1 and in op sla_mask_matmul): mask_matmul. They add the marginal blocks
// directly, which on a GEMM costs what pre-aggregation would, without its cancellation. The other
// products (per block, 64 x D x W) run on TF32 tensor cores with float32 accumulation (tf32_bmm).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "cuda/attention/sla_block_select.h"
#include "cuda/attention/sla_linear.h"
#include "genaccel/env_flag.h"
#include "ops/attention_cuda.h"
#include "ops/sla.h"

namespace genaccel::ops {
namespace {

constexpr const char* kOp = "sla_fwd";
constexpr const char* kBwdOp = "sla_bwd";
// Columns of v_aug beyond D: the ones column, then zeros up to a 16-byte row.
constexpr int64_t kAugColumns = 4;

// Pairs of (batch, kv head) per chunk, so that the linear branch's buffers of one chunk
// (LinearShape::bytes_per_pair each) stay within GENACCEL_SLA_CHUNK_BYTES (default 1 GiB; the tests
// set it small to cover chunking).
int64_t pairs_per_chunk(int64_t bytes_per_pair) {
  const char* env = std::getenv("GENACCEL_SLA_CHUNK_BYTES");
  const int64_t limit = env != nullptr && std::atoll(env) > 0 ? std::atoll(env) : int64_t{1} << 30;
  return std::max<int64_t>(1, limit / std::max<int64_t>(bytes_per_pair, 1));
}

void check_launch(int err, const char* what, const char* op = kOp) {
  TORCH_CHECK(err == 0, op, " (CUDA): ", what, " launch failed with cudaError ", err);
}

// The linear branch's row kernels take head dims 32, 64, 96 and 128 (the sparse branch pads those
// below 128 to its kernels' 64 or 128).
void check_row_head_dim(const at::Tensor& q, const char* op) {
  TORCH_CHECK(cuda::sla_row_head_dim(q.size(3)), op, " (CUDA): the linear branch's kernels take head dims 32, 64, 96 "
              "and 128, got ", q.size(3), " (the CPU kernels take any head dim up to 256)");
}

// GENACCEL_SLA_FLOAT32_GEMMS=1: the linear branch at float32 accuracy (see tf32_gemm, mask_matmul).
bool float32_gemms() { return env_flag("GENACCEL_SLA_FLOAT32_GEMMS"); }

// A row-major float32 matrix operand of tf32_gemm: element (i, j) at data[i * ld + j] (of its
// transpose with `transposed`), batch entries batch_stride floats apart.
struct Matrix {
  const float* data;
  int64_t ld;
  bool transposed = false;
  int64_t batch_stride = 0;
};

// c = op(a) op(b) + beta c, row-major, `batch` times: op(a) M x K, op(b) K x N, c M x N with leading
// dim ldc, batch entries c_stride apart; on TF32 tensor cores, accumulating in float32. TF32 rather
// than float32 because every operand here derives from half-precision q, k, v and every result is
// rounded to bf16/fp16: TF32 rounds an operand by at most 2^-11 (V and the augmentation columns are
// exact in it), a quarter of one bf16 rounding, while float32 GEMMs run on CUDA cores at ~1/7 of the
// TF32 tensor-core peak (H100/H200 datasheets: 67 vs 495 TFLOP/s) and took 1.1 ms of the forward
// and 2.5 ms of the backward at B1 H12 N32760 D128 on an H200. A float model of this branch with
// TF32 operands moves O^l by ~1e-4 and the gradients by ~1e-3 relative, before their bf16 rounding.
// GENACCEL_SLA_FLOAT32_GEMMS=1 keeps them float32 (TF32 then only where torch.backends.cuda.matmul
// allows it), for strict float32 or to compare the two.
void tf32_gemm(int64_t batch, int64_t M, int64_t N, int64_t K, Matrix a, Matrix b, float* c, int64_t ldc,
               int64_t c_stride, float beta) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(batch <= kIntMax && M <= kIntMax && N <= kIntMax && K <= kIntMax && a.ld <= kIntMax &&
                  b.ld <= kIntMax && ldc <= kIntMax,
              "SLA (CUDA): a linear-branch GEMM is too large for cuBLAS: ", batch, " x ", M, " x ", N, " x ", K,
              " (lower GENACCEL_SLA_CHUNK_BYTES)");
  TORCH_INTERNAL_ASSERT(a.ld >= (a.transposed ? M : K) && b.ld >= (b.transposed ? K : N) && ldc >= N);
  if (batch == 0 || M == 0 || N == 0) return;
  const auto compute = float32_gemms() ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
  const float alpha = 1.f;
  // Row-major c (M x N) is column-major c^T (N x M) = op(b)^T op(a)^T, so cuBLAS takes b first.
  TORCH_CUDABLAS_CHECK(cublasGemmStridedBatchedEx(
      at::cuda::getCurrentCUDABlasHandle(), b.transposed ? CUBLAS_OP_T : CUBLAS_OP_N,
      a.transposed ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K),
      &alpha, b.data, CUDA_R_32F, static_cast<int>(b.ld), b.batch_stride, a.data, CUDA_R_32F,
      static_cast<int>(a.ld), a.batch_stride, &beta, c, CUDA_R_32F, static_cast<int>(ldc), c_stride,
      static_cast<int>(batch), compute, CUBLAS_GEMM_DEFAULT));
}

// Batched op(a) op(b) of contiguous float32 tensors (tf32_gemm): a is (batch, M, K), or
// (batch, K, M) with ta; b is (batch, K, N), or (batch, N, K) with tb.
at::Tensor tf32_bmm(const at::Tensor& a, bool ta, const at::Tensor& b, bool tb) {
  TORCH_INTERNAL_ASSERT(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.is_contiguous() &&
                        b.is_contiguous() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat);
  const int64_t batch = a.size(0), M = a.size(ta ? 2 : 1), K = a.size(ta ? 1 : 2), N = b.size(tb ? 1 : 2);
  TORCH_INTERNAL_ASSERT(b.size(tb ? 2 : 1) == K);
  auto c = at::empty({batch, M, N}, a.options());
  if (c.numel() == 0) return c;
  if (K == 0) return c.zero_();
  tf32_gemm(batch, M, N, K, {a.const_data_ptr<float>(), ta ? M : K, ta, M * K},
            {b.const_data_ptr<float>(), tb ? K : N, tb, K * N}, c.mutable_data_ptr<float>(), N, M * N, 0.f);
  return c;
}

// mask (C, M, K) bool @ x (C, K, E) float32 on bf16 tensor cores with float32 accumulation: x split
// into `parts` bf16 parts stacked along K (the 0/1 mask is exact in bf16), so the GEMM sums x to
// within 2^-16 |x| per term with two parts (already ~100x finer than the TF32 rounding of the
// products that made x) and exactly with three, at 2/3 of their cost. Takes x by value so that
// callers can hand over its memory, released once split.
at::Tensor mask_matmul(const at::Tensor& mask, at::Tensor x, int parts, const char* op) {
  const int64_t C = x.size(0), K = x.size(1), E = x.size(2);
  x = x.contiguous();
  auto split = at::empty({C, parts * K, E}, x.options().dtype(at::kBFloat16));
  check_launch(cuda::split_bf16_rows(x.const_data_ptr<float>(), split.mutable_data_ptr(), C, K, E, parts,
                                     c10::cuda::getCurrentCUDAStream().stream()),
               "bf16 split", op);
  x = at::Tensor();
  auto m = mask.to(at::kBFloat16);
  return at::bmm(at::cat(std::vector<at::Tensor>(parts, m), 2), split, at::kFloat);
}

// The linear branch's mask sums: two parts, three under GENACCEL_SLA_FLOAT32_GEMMS=1.
at::Tensor branch_mask_matmul(const at::Tensor& mask, at::Tensor x, const char* op) {
  return mask_matmul(mask, std::move(x), float32_gemms() ? cuda::kSplitParts : 2, op);
}

at::Tensor sla_mask_matmul_cuda(const at::Tensor& mask, const at::Tensor& x) {
  check_sla_mask_matmul_inputs(mask, x);
  c10::cuda::CUDAGuard guard(x.device());
  return mask_matmul(mask, x, cuda::kSplitParts, "sla_mask_matmul");
}

// The two branches are independent until the backward adds them up, so the linear branch (small
// GEMMs and memory-bound row kernels) runs on a second stream while the block-sparse kernels
// (compute-bound) run on the caller's: each can use what the other leaves idle. Constructed before
// the sparse branch is launched: the side stream waits for the caller's work so far only. Work
// issued under `guard()` runs on the side stream; join() makes the caller's stream wait for it.
// Tensors the side stream allocates belong to it; those it writes that the caller's stream
// allocated (outputs, gradients) are only read after the join, and are declared before the
// SideStream so that they outlive the join of its destructor when an error unwinds.
// GENACCEL_SLA_ONE_STREAM=1 keeps everything on the caller's stream (to compare, or to debug).
class SideStream {
 public:
  explicit SideStream(c10::DeviceIndex device)
      : main_(c10::cuda::getCurrentCUDAStream(device)),
        side_(env_flag("GENACCEL_SLA_ONE_STREAM") ? main_ : c10::cuda::getStreamFromPool(false, device)) {
    if (side_ != main_) {
      at::cuda::CUDAEvent fork;
      fork.record(main_);
      fork.block(side_);
    }
  }
  // Joins on the way out too: if an error unwinds past the side stream's work, the caller's stream
  // must still not reuse the outputs that work writes. (A destructor must not throw.)
  ~SideStream() {
    try {
      join();
    } catch (...) {
    }
  }
  c10::cuda::CUDAStreamGuard guard() const { return c10::cuda::CUDAStreamGuard(side_); }
  void join() {
    if (side_ == main_ || joined_) return;
    at::cuda::CUDAEvent done;
    done.record(side_);
    done.block(main_);
    joined_ = true;
  }

 private:
  c10::cuda::CUDAStream main_, side_;
  bool joined_ = false;
};

// The projection weight as a contiguous float32 tensor, or an undefined one without projection.
at::Tensor float32_projection(const std::optional<at::Tensor>& proj_weight) {
  return proj_weight.has_value() ? proj_weight->to(at::kFloat).contiguous() : at::Tensor();
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

  LinearShape(const at::Tensor& q, const at::Tensor& k, int64_t tq, int64_t tk, int64_t bq, int64_t bk,
              attention::SlaFeatureMap f)
      : pairs(k.size(0) * k.size(1)), group(q.size(1) / k.size(1)), nq(q.size(2)), nk(k.size(2)),
        D(q.size(3)), W(q.size(3) + kAugColumns), block_q(bq), block_k(bk), Tq(tq), Tk(tk), fmap(f),
        dtype(to_dtype(q.scalar_type())) {}
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
    tf32_gemm(1, n * rows, s.D, s.D, {out.v_raw.const_data_ptr<float>(), s.W},
              {proj.const_data_ptr<float>(), s.D, /*transposed=*/true}, out.v_aug.mutable_data_ptr<float>(), s.W, 0,
              0.f);
  }
  auto h = tf32_bmm(out.phi_k.view({n * s.Tk, s.block_k, s.D}), true, out.v_aug.view({n * s.Tk, s.block_k, s.W}),
                    false)
               .view({n, s.Tk, s.D * s.W});
  out.H = branch_mask_matmul(marginal.narrow(0, c0, n), std::move(h), op).view({n * s.group * s.Tq, s.D, s.W});
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
  auto num = tf32_bmm(phi_q.view({seqs * s.Tq, s.block_q, s.D}), false, keys.H, false);   // (.., bq, W)
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
  auto d_phi_q = tf32_bmm(g_augb, false, keys.H, true);                        // (.., bq, D)
  keys.H = at::Tensor();
  auto dH = tf32_bmm(phi_qb, true, g_augb, false).view({n, s.group * s.Tq, s.D * s.W});
  auto dh = branch_mask_matmul(marginal.narrow(0, c0, n).transpose(1, 2), std::move(dH), kBwdOp)
                .view({n * s.Tk, s.D, s.W});
  auto d_phi_k = tf32_bmm(keys.v_aug.view({n * s.Tk, s.block_k, s.W}), false, dh, true);   // (.., bk, D)
  auto dv_aug = tf32_bmm(keys.phi_k.view({n * s.Tk, s.block_k, s.D}), false, dh, false);   // (.., bk, W)
  // With a projection dv_aug holds d(V W^T): dW += d(V W^T)^T V, and dV = d(V W^T) W.
  int64_t dv_ld = s.W;
  if (proj.defined()) {
    const int64_t key_rows = n * rows_k;
    tf32_gemm(1, s.D, s.D, key_rows, {dv_aug.const_data_ptr<float>(), s.W, /*transposed=*/true},
              {keys.v_raw.const_data_ptr<float>(), s.W}, d_proj.mutable_data_ptr<float>(), s.D, 0, 1.f);
    auto dv_rows = at::empty({key_rows, s.D}, dv_aug.options());
    tf32_gemm(1, key_rows, s.D, s.D, {dv_aug.const_data_ptr<float>(), s.W}, {proj.const_data_ptr<float>(), s.D},
              dv_rows.mutable_data_ptr<float>(), s.D, 0, 0.f);
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

std::tuple<at::Tensor, at::Tensor> sla_select_blocks_cuda(const at::Tensor& scores_in, int64_t n_critical,
                                                         int64_t n_negligible) {
  check_sla_select_blocks_inputs(scores_in, n_critical, n_negligible);
  c10::cuda::CUDAGuard guard(scores_in.device());
  auto scores = scores_in.contiguous();
  const int64_t tk = scores.size(3), rows = scores.numel() / tk;
  auto [codes, indices] = empty_select_blocks_outputs(scores, n_critical);
  const int64_t scratch_keys = cuda::sla_block_select_scratch(rows, tk);
  auto scratch = at::empty({scratch_keys}, scores.options().dtype(at::kLong));
  check_launch(cuda::sla_block_select(scores.const_data_ptr<float>(), rows, tk, n_critical, n_negligible,
                                      codes.mutable_data_ptr<int8_t>(), indices.mutable_data_ptr<int32_t>(),
                                      scratch_keys > 0 ? static_cast<uint64_t*>(scratch.data_ptr()) : nullptr,
                                      c10::cuda::getCurrentCUDAStream().stream()),
               "block selection", "sla_select_blocks");
  return {codes, indices};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& codes,
    const at::Tensor& kv_indices, const at::Tensor& kv_counts, int64_t block_q, int64_t block_k,
    double scale, c10::string_view feature_map_name, bool linear_over_all_keys,
    const std::optional<at::Tensor>& proj_weight, bool check_plan) {
  const NoAutocast no_autocast;
  check_sla_fwd_inputs(q_in, k_in, v_in, codes, kv_indices, kv_counts, block_q, block_k, proj_weight, check_plan);
  check_row_head_dim(q_in, kOp);
  const auto fmap = parse_sla_feature_map(std::string(feature_map_name), kOp);
  TORCH_CHECK(std::isfinite(scale), kOp, ": scale must be finite, got ", scale);
  c10::cuda::CUDAGuard guard(q_in.device());
  const int64_t B = q_in.size(0), H = q_in.size(1), Nq = q_in.size(2), D = q_in.size(3);
  auto out_linear = at::empty({B, H, Nq, D}, q_in.options());
  auto denom = at::empty({B, H, Nq}, q_in.options().dtype(at::kFloat));
  const float eps = linear_over_all_keys ? kSlaAllKeysEps : 0.f;
  if (out_linear.numel() == 0 || k_in.size(2) == 0) {
    out_linear.zero_();
    denom.fill_(eps);
    auto [out_sparse, lse] =
        run_block_sparse_fwd_cuda(q_in, k_in, v_in, kv_indices, kv_counts, block_q, block_k, scale, kOp);
    return {out_sparse, lse, out_linear, denom};
  }
  SideStream side(q_in.device().index());
  auto [out_sparse, lse] =
      run_block_sparse_fwd_cuda(q_in, k_in, v_in, kv_indices, kv_counts, block_q, block_k, scale, kOp);
  {
    const auto on_side = side.guard();
    auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    const LinearShape s(q, k, kv_indices.size(2), codes.size(3), block_q, block_k, fmap);
    auto marginal = marginal_mask(codes, s, B, H, linear_over_all_keys);
    const auto proj = float32_projection(proj_weight);
    const int64_t chunk = pairs_per_chunk(s.bytes_per_pair(false, proj.defined()));
    for (int64_t c0 = 0; c0 < s.pairs; c0 += chunk)
      linear_forward(q, k, v, marginal, proj, s, c0, std::min(chunk, s.pairs - c0), eps, out_linear, denom);
  }
  side.join();
  return {out_sparse, lse, out_linear, denom};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sla_bwd_cuda(
    const at::Tensor& grad_sparse, const at::Tensor& grad_linear, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& codes, const at::Tensor& kv_indices, const at::Tensor& kv_counts,
    const at::Tensor& out_sparse, const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& out_linear,
    const at::Tensor& denom, int64_t block_q, int64_t block_k, double scale, c10::string_view feature_map_name,
    bool linear_over_all_keys, const std::optional<at::Tensor>& proj_weight, bool check_plan) {
  const NoAutocast no_autocast;
  check_sla_bwd_inputs(grad_sparse, grad_linear, q_in, k_in, v_in, codes, kv_indices, kv_counts, out_sparse, lse,
                       delta, out_linear, denom, block_q, block_k, scale, feature_map_name, linear_over_all_keys,
                       proj_weight, check_plan);
  check_row_head_dim(q_in, kBwdOp);
  const auto fmap = parse_sla_feature_map(std::string(feature_map_name), kBwdOp);
  c10::cuda::CUDAGuard guard(q_in.device());
  const auto proj = float32_projection(proj_weight);
  auto d_proj = proj.defined() ? at::zeros_like(proj) : no_proj_weight_grad(q_in);
  const auto with_d_proj = [&](std::tuple<at::Tensor, at::Tensor, at::Tensor> grads) {
    auto& [dq, dk, dv] = grads;
    return std::make_tuple(dq, dk, dv, proj.defined() ? d_proj.to(proj_weight->scalar_type()) : d_proj);
  };
  const auto sparse = [&] {
    return run_block_sparse_bwd_cuda(grad_sparse, q_in, k_in, v_in, delta, lse, kv_indices, kv_counts, block_q,
                                     block_k, scale, kBwdOp);
  };
  if (q_in.numel() == 0 || k_in.numel() == 0) return with_d_proj(sparse());
  // Sparse branch on the caller's stream; its outputs are fresh contiguous tensors that the linear
  // branch, computed meanwhile on the side stream, adds into once they are complete (declared
  // before `side`, see SideStream).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  SideStream side(q_in.device().index());
  grads = sparse();
  auto& [dq, dk, dv] = grads;
  c10::cuda::CUDAEvent sparse_done;
  sparse_done.record(c10::cuda::getCurrentCUDAStream());
  {
    const auto on_side = side.guard();
    const auto dt = q_in.scalar_type();  // shared by k and v (checked)
    auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
    auto grad = grad_linear.to(dt).contiguous(), out = out_linear.to(dt).contiguous();
    const LinearShape s(q, k, kv_indices.size(2), codes.size(3), block_q, block_k, fmap);
    auto marginal = marginal_mask(codes, s, q.size(0), q.size(1), linear_over_all_keys);
    auto den = denom.contiguous();
    const int64_t chunk = pairs_per_chunk(s.bytes_per_pair(true, proj.defined()));
    for (int64_t c0 = 0; c0 < s.pairs; c0 += chunk)
      linear_backward(q, k, v, grad, out, den, marginal, proj, s, c0, std::min(chunk, s.pairs - c0), dq, dk, dv,
                      d_proj, sparse_done);
  }
  side.join();
  return with_d_proj(std::move(grads));
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_IMPL(genaccel, CUDA, m) {
  m.impl("sla_fwd", &genaccel::ops::sla_fwd_cuda);
  m.impl("sla_bwd", &genaccel::ops::sla_bwd_cuda);
  m.impl("sla_mask_matmul", &genaccel::ops::sla_mask_matmul_cuda);
  m.impl("sla_select_blocks", &genaccel::ops::sla_select_blocks_cuda);
}
