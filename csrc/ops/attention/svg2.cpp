// genaccel SVG2 ops: batched k-means over the tokens of each (batch, head) and the cluster
// permutation of whole D-rows; schema, input checks (shared by CPU, CUDA and Meta), CPU and Meta
// registrations. Kernels: csrc/cpu/attention/svg2/{kmeans,permute}.cpp.
#include "ops/attention/svg2.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>

#include "cpu/attention/svg2/kmeans.h"
#include "cpu/attention/svg2/permute.h"
#include "cpu/common/capability.h"
#include "ops/attention/block_sparse.h"

namespace genaccel::ops {
namespace {
constexpr const char* kKmeansOp = "svg2_kmeans";
constexpr const char* kPermuteOp = "svg2_permute";
constexpr const char* kUnpermuteOp = "svg2_unpermute";
constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();

bool kmeans_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }
bool permute_dtype(at::ScalarType t) { return kmeans_dtype(t) || t == at::kDouble; }

// B * H and N below 2^31 (the kernels count heads and tokens in int32, labels and perm are int32).
void check_sizes(const at::Tensor& x, const char* op, const char* name) {
  const c10::SymInt B = x.sym_size(0), H = x.sym_size(1), N = x.sym_size(2);
  TORCH_CHECK(B * H <= kIntMax, op, ": ", name, "'s batch x heads must be below 2^31, got ", B, " x ", H);
  TORCH_CHECK(N <= kIntMax, op, ": ", name, " must have fewer than 2^31 tokens (dim 2), got ", N);
}
}  // namespace

void check_svg2_kmeans_op(const at::Tensor& x, const at::Tensor& init, int64_t iters, double tol) {
  constexpr const char* op = kKmeansOp;
  TORCH_CHECK(x.dim() == 4 && kmeans_dtype(x.scalar_type()), op,
              ": x must be a 4-D (B, H, N, D) float32, bfloat16 or float16 tensor, got ", x.scalar_type(), " of shape ",
              x.sym_sizes());
  TORCH_CHECK(init.dim() == 4 && init.scalar_type() == at::kFloat, op,
              ": init_centroids must be a 4-D (B, H, C, D) float32 tensor, got ", init.scalar_type(), " of shape ",
              init.sym_sizes());
  TORCH_CHECK(init.device() == x.device(), op, ": init_centroids must be on the device of x (", x.device(), "), got ",
              init.device());
  check_sizes(x, op, "x");
  const c10::SymInt B = x.sym_size(0), H = x.sym_size(1), N = x.sym_size(2), D = x.sym_size(3);
  TORCH_CHECK(D <= kSvg2MaxHeadDim, op, ": x's head dim (dim 3) must be at most ", kSvg2MaxHeadDim, ", got ", D);
  TORCH_CHECK(init.sym_size(0) == B && init.sym_size(1) == H && init.sym_size(3) == D, op,
              ": init_centroids must have shape (B, H, C, D) = (", B, ", ", H, ", C, ", D, ") to match x, got ",
              init.sym_sizes());
  const c10::SymInt C = init.sym_size(2);
  TORCH_CHECK(C >= 1 && C <= N, op, ": init_centroids must hold 1 to N = ", N,
              " centroids per (batch, head) (dim 2, the number of clusters), got ", C);
  TORCH_CHECK(iters >= 0 && iters <= kIntMax, op, ": iters must be in [0, 2^31 - 1], got ", iters);
  TORCH_CHECK(std::isfinite(static_cast<float>(tol)), op, ": tol must be finite in float32 (|tol| < 3.4e38), got ",
              tol);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_svg2_kmeans_outputs(const at::Tensor& x,
                                                                                    const at::Tensor& init) {
  const auto ints = x.options().dtype(at::kInt);
  return {at::empty_symint({x.sym_size(0), x.sym_size(1), x.sym_size(2)}, ints),
          at::empty_symint(init.sym_sizes(), init.options().memory_format(at::MemoryFormat::Contiguous)),
          at::empty_symint({init.sym_size(0), init.sym_size(1), init.sym_size(2)}, ints),
          at::empty_symint({x.sym_size(0), x.sym_size(1)}, ints)};
}

void check_svg2_permute_op(const at::Tensor& x, const at::Tensor& perm, const char* op, const char* name) {
  TORCH_CHECK(x.dim() == 4 && permute_dtype(x.scalar_type()), op, ": ", name,
              " must be a 4-D (B, H, N, D) float32, float64, bfloat16 or float16 tensor, got ", x.scalar_type(),
              " of shape ", x.sym_sizes());
  TORCH_CHECK(perm.scalar_type() == at::kInt && perm.dim() == 3, op, ": perm must be a 3-D (B, H, N) int32 tensor, got ",
              perm.scalar_type(), " of shape ", perm.sym_sizes());
  TORCH_CHECK(perm.device() == x.device(), op, ": perm must be on the device of ", name, " (", x.device(), "), got ",
              perm.device());
  check_sizes(x, op, name);
  TORCH_CHECK(perm.sym_sizes() == x.sym_sizes().slice(0, 3), op, ": perm must have shape (B, H, N) = ",
              x.sym_sizes().slice(0, 3), " to match ", name, ", got ", perm.sym_sizes());
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> svg2_kmeans_cpu(const at::Tensor& x_in,
                                                                          const at::Tensor& init_in, int64_t iters,
                                                                          double tol) {
  check_svg2_kmeans_op(x_in, init_in, iters, tol);
  cpu::check_capability(kKmeansOp);
  auto x = cpu_float32(x_in);
  auto init = init_in.contiguous();
  auto [labels, centroids, counts, iters_run] = empty_svg2_kmeans_outputs(x, init);
  if (labels.numel() == 0 && centroids.numel() == 0) return {labels, centroids, counts.zero_(), iters_run.zero_()};
  cpu::Svg2KmeansParams p{};
  p.x = x.const_data_ptr<float>();
  p.x_batch_stride = x.stride(0), p.x_head_stride = x.stride(1), p.x_row_stride = x.stride(2);
  p.init = init.const_data_ptr<float>();
  p.centroids = centroids.mutable_data_ptr<float>();
  p.labels = labels.mutable_data_ptr<int32_t>();
  p.counts = counts.mutable_data_ptr<int32_t>();
  p.iters_run = iters_run.mutable_data_ptr<int32_t>();
  p.batch = x.size(0), p.heads = x.size(1), p.n = x.size(2), p.c = init.size(2), p.d = x.size(3);
  p.iters = iters;
  p.tol = static_cast<float>(tol);
  cpu::svg2_kmeans_f32(p);
  return {labels, centroids, counts, iters_run};
}

// Raises naming op and perm unless every (batch, head) row of perm (contiguous, CPU) is a permutation.
void check_perm_values_cpu(const at::Tensor& perm, const char* op) {
  if (perm.numel() == 0) return;
  const int64_t n = perm.size(2), bh = perm.numel() / n;
  int32_t value = 0;
  bool out_of_range = false;
  const int64_t bad = cpu::svg2_first_bad_perm(perm.const_data_ptr<int32_t>(), bh, n, &value, &out_of_range);
  if (bad < 0) return;
  const int64_t b = bad / perm.size(1), h = bad % perm.size(1);
  TORCH_CHECK(!out_of_range, op, ": perm must hold a permutation of 0..N-1 per (batch, head); perm[", b, ", ", h,
              "] has the entry ", value, " outside [0, N = ", n, ")");
  TORCH_CHECK(false, op, ": perm must hold a permutation of 0..N-1 per (batch, head); perm[", b, ", ", h,
              "] repeats the entry ", value);
}

at::Tensor move_rows_cpu(const at::Tensor& x_in, const at::Tensor& perm_in, bool scatter, const char* op,
                         const char* name) {
  check_svg2_permute_op(x_in, perm_in, op, name);
  auto perm = perm_in.contiguous();
  check_perm_values_cpu(perm, op);
  auto x = last_dim_contiguous(x_in);
  auto out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  const int64_t es = x.element_size();
  cpu::svg2_move_rows(static_cast<const char*>(x.const_data_ptr()), x.stride(0) * es, x.stride(1) * es,
                      x.stride(2) * es, static_cast<char*>(out.mutable_data_ptr()), perm.const_data_ptr<int32_t>(),
                      x.size(0), x.size(1), x.size(2), x.size(3) * es, scatter);
  return out;
}

// check_perm only matters on CUDA (a host sync there); the CPU checks the values always.
at::Tensor svg2_permute_cpu(const at::Tensor& x, const at::Tensor& perm, bool /*check_perm*/) {
  return move_rows_cpu(x, perm, false, kPermuteOp, "x");
}
at::Tensor svg2_unpermute_cpu(const at::Tensor& y, const at::Tensor& perm, bool /*check_perm*/) {
  return move_rows_cpu(y, perm, true, kUnpermuteOp, "y");
}

// The Meta kernels: the ops' checks (not the values), then outputs of the kernels' shapes.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> svg2_kmeans_meta(const at::Tensor& x,
                                                                           const at::Tensor& init, int64_t iters,
                                                                           double tol) {
  check_svg2_kmeans_op(x, init, iters, tol);
  return empty_svg2_kmeans_outputs(x, init);
}
at::Tensor svg2_permute_meta(const at::Tensor& x, const at::Tensor& perm, bool) {
  check_svg2_permute_op(x, perm, kPermuteOp, "x");
  return at::empty_symint(x.sym_sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
}
at::Tensor svg2_unpermute_meta(const at::Tensor& y, const at::Tensor& perm, bool) {
  check_svg2_permute_op(y, perm, kUnpermuteOp, "y");
  return at::empty_symint(y.sym_sizes(), y.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_FRAGMENT(genaccel, m) {
  // Euclidean Lloyd k-means of the N tokens (rows) of x (B, H, N, D) per (batch, head), from
  // init_centroids (B, H, C, D) float32, 1 <= C <= N; computed in float32. At most `iters` updates;
  // a (batch, head) stops after the first update whose largest centroid move (L2) is below tol (no
  // early stop for tol <= 0). Empty clusters keep their centroid. labels (B, H, N) int32 come from a
  // final assignment against the returned centroids (B, H, C, D) float32 (ties: the lowest index);
  // counts (B, H, C) int32 is their histogram, iters_run (B, H) int32 the updates each ran. A
  // (batch, head) whose x or init holds a NaN or an infinity gets labels -1, centroids NaN, counts
  // and iters_run 0.
  m.def(
      "svg2_kmeans(Tensor x, Tensor init_centroids, int iters=50, float tol=1e-4) "
      "-> (Tensor labels, Tensor centroids, Tensor counts, Tensor iters_run)");
  // out[b, h, i] = x[b, h, perm[b, h, i]] (rows of D elements); perm (B, H, N) int32, a permutation
  // of 0..N-1 per (batch, head). check_perm=False trusts perm on CUDA (no host sync); the CPU checks
  // it always.
  m.def("svg2_permute(Tensor x, Tensor perm, bool check_perm=True) -> Tensor");
  // The inverse: out[b, h, perm[b, h, i]] = y[b, h, i].
  m.def("svg2_unpermute(Tensor y, Tensor perm, bool check_perm=True) -> Tensor");
}

TORCH_LIBRARY_IMPL(genaccel, CPU, m) {
  m.impl("svg2_kmeans", &genaccel::ops::svg2_kmeans_cpu);
  m.impl("svg2_permute", &genaccel::ops::svg2_permute_cpu);
  m.impl("svg2_unpermute", &genaccel::ops::svg2_unpermute_cpu);
}

TORCH_LIBRARY_IMPL(genaccel, Meta, m) {
  m.impl("svg2_kmeans", &genaccel::ops::svg2_kmeans_meta);
  m.impl("svg2_permute", &genaccel::ops::svg2_permute_meta);
  m.impl("svg2_unpermute", &genaccel::ops::svg2_unpermute_meta);
}
