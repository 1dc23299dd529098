// Microbenchmark of the CUDA block-sparse attention forward launcher, without torch.
//
//   block_sparse_fwd_bench [B H N D density block runs]   (defaults: 1 16 16384 128 0.1 128 50)
//
// bf16 q/k/v (B, H, N, D) with uniform values are made on the device; a random block mask with the
// given density (each (query block, key block) pair kept with that probability, per batch and head)
// becomes index lists on the host, with block_q = block_k = block. After warm-up it prints the
// median time of `runs` launches (CUDA events) and the effective TFLOP/s over the kept blocks
// (4 * rows * keys * D per kept block pair). It also recomputes a few output rows on the host in
// double precision from the same bf16 inputs and prints the largest error, so a timing never
// comes from a broken kernel unnoticed.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cuda/attention/block_sparse/fwd.h"

namespace {

using genaccel::DType;
using genaccel::attention::BlockSparseFwdParams;

#define CHECK_CUDA(expr)                                                                   \
  do {                                                                                     \
    const cudaError_t err_ = (expr);                                                       \
    if (err_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,                   \
                   cudaGetErrorString(err_));                                              \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

// Uniform values in [-1, 1) from a hash of (seed, index): reproducible, and no host->device copy of
// gigabytes of inputs.
__global__ void fill_uniform(__nv_bfloat16* x, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 0x9E3779B1u ^ seed ^ static_cast<uint32_t>(i >> 32);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    x[i] = __float2bfloat16(static_cast<float>(h >> 8) * (2.f / 16777216.f) - 1.f);
  }
}

__nv_bfloat16* random_device_tensor(int64_t n, uint32_t seed) {
  __nv_bfloat16* x = nullptr;
  CHECK_CUDA(cudaMalloc(&x, n * sizeof(__nv_bfloat16)));
  fill_uniform<<<1024, 256>>>(x, n, seed);
  CHECK_CUDA(cudaGetLastError());
  return x;
}

std::vector<float> to_host_float(const __nv_bfloat16* x, int64_t n) {
  std::vector<__nv_bfloat16> raw(n);
  CHECK_CUDA(cudaMemcpy(raw.data(), x, n * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost));
  std::vector<float> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat162float(raw[i]);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const int B = argc > 1 ? std::atoi(argv[1]) : 1;
  const int H = argc > 2 ? std::atoi(argv[2]) : 16;
  const int N = argc > 3 ? std::atoi(argv[3]) : 16384;
  const int D = argc > 4 ? std::atoi(argv[4]) : 128;
  const double density = argc > 5 ? std::atof(argv[5]) : 0.1;
  const int block = argc > 6 ? std::atoi(argv[6]) : 128;
  const int runs = argc > 7 ? std::atoi(argv[7]) : 50;
  if (B < 1 || H < 1 || N < 1 || D < 1 || block < 1 || runs < 1 || density < 0 || density > 1) {
    std::fprintf(stderr, "usage: %s [B H N D density block runs]\n", argv[0]);
    return 2;
  }
  const int T = (N + block - 1) / block;  // query blocks = key blocks

  // Index lists of a random block mask, one per (batch, head, query block), ascending.
  std::mt19937 gen(1234);
  std::bernoulli_distribution keep(density);
  std::vector<int32_t> indices(static_cast<size_t>(B) * H * T * T, 0), counts(static_cast<size_t>(B) * H * T);
  double flops = 0;
  int64_t kept = 0;
  for (int bh = 0; bh < B * H; ++bh)
    for (int qb = 0; qb < T; ++qb) {
      const int rows = std::min(block, N - qb * block);
      int32_t* list = &indices[(static_cast<size_t>(bh) * T + qb) * T];
      int c = 0;
      for (int kb = 0; kb < T; ++kb)
        if (keep(gen)) {
          list[c++] = kb;
          flops += 4.0 * rows * std::min(block, N - kb * block) * D;
        }
      counts[static_cast<size_t>(bh) * T + qb] = c;
      kept += c;
    }

  const int64_t n_qkv = static_cast<int64_t>(B) * H * N * D;
  __nv_bfloat16* q = random_device_tensor(n_qkv, 1);
  __nv_bfloat16* k = random_device_tensor(n_qkv, 2);
  __nv_bfloat16* v = random_device_tensor(n_qkv, 3);
  __nv_bfloat16* out = nullptr;
  float* lse = nullptr;
  int32_t *d_indices = nullptr, *d_counts = nullptr;
  CHECK_CUDA(cudaMalloc(&out, n_qkv * sizeof(__nv_bfloat16)));
  CHECK_CUDA(cudaMalloc(&lse, static_cast<int64_t>(B) * H * N * sizeof(float)));
  CHECK_CUDA(cudaMalloc(&d_indices, indices.size() * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(&d_counts, counts.size() * sizeof(int32_t)));
  CHECK_CUDA(cudaMemcpy(d_indices, indices.data(), indices.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(d_counts, counts.data(), counts.size() * sizeof(int32_t), cudaMemcpyHostToDevice));

  BlockSparseFwdParams p{};
  p.q = q, p.k = k, p.v = v, p.out = out, p.lse = lse;
  p.kv_indices = d_indices, p.kv_counts = d_counts;
  p.idx_batch_stride = static_cast<int64_t>(H) * T * T, p.idx_head_stride = static_cast<int64_t>(T) * T;
  p.cnt_batch_stride = static_cast<int64_t>(H) * T, p.cnt_head_stride = T;
  p.max_kv_blocks = T;
  const int64_t row = D, head = static_cast<int64_t>(N) * D, batch = H * head;
  p.q_batch_stride = p.k_batch_stride = p.v_batch_stride = p.o_batch_stride = batch;
  p.q_head_stride = p.k_head_stride = p.v_head_stride = p.o_head_stride = head;
  p.q_row_stride = p.k_row_stride = p.v_row_stride = p.o_row_stride = row;
  p.batch = B, p.heads = H, p.kv_heads = H;
  p.seqlen_q = p.seqlen_k = N, p.head_dim = D;
  p.block_q = p.block_k = block;
  p.num_q_blocks = T;
  p.num_k_blocks = T;
  p.scale = 1.f / std::sqrt(static_cast<float>(D));

  if (const char* why = genaccel::cuda::block_sparse_fwd_unsupported(p, DType::kBFloat16, genaccel::attention::Backend::kSm80)) {
    std::fprintf(stderr, "unsupported configuration: %s\n", why);
    return 2;
  }

  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  const auto launch = [&] {
    CHECK_CUDA(static_cast<cudaError_t>(genaccel::cuda::block_sparse_fwd(p, DType::kBFloat16, genaccel::attention::Backend::kSm80, stream)));
  };
  for (int i = 0; i < 5; ++i) launch();
  CHECK_CUDA(cudaStreamSynchronize(stream));

  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  std::vector<float> ms(runs);
  for (int i = 0; i < runs; ++i) {
    CHECK_CUDA(cudaEventRecord(start, stream));
    launch();
    CHECK_CUDA(cudaEventRecord(stop, stream));
    CHECK_CUDA(cudaEventSynchronize(stop));
    CHECK_CUDA(cudaEventElapsedTime(&ms[i], start, stop));
  }
  std::nth_element(ms.begin(), ms.begin() + runs / 2, ms.end());
  const double median_ms = ms[runs / 2];

  // Spot check of a few rows against a double-precision softmax over the same kept keys.
  const std::vector<float> hq = to_host_float(q, n_qkv), hk = to_host_float(k, n_qkv),
                           hv = to_host_float(v, n_qkv), hout = to_host_float(out, n_qkv);
  std::vector<float> hlse(static_cast<size_t>(B) * H * N);
  CHECK_CUDA(cudaMemcpy(hlse.data(), lse, hlse.size() * sizeof(float), cudaMemcpyDeviceToHost));
  std::uniform_int_distribution<int64_t> pick(0, static_cast<int64_t>(B) * H * N - 1);
  double max_out_err = 0, max_lse_err = 0;
  for (int sample = 0; sample < 32; ++sample) {
    const int64_t r = pick(gen);  // row of the (B*H*N) flattening
    const int64_t bh = r / N, i = r % N, qb = i / block;
    const float* qi = &hq[r * D];
    const int c = counts[bh * T + qb];
    const int32_t* list = &indices[(bh * T + qb) * T];
    std::vector<double> logits, acc(D, 0.0);
    double mx = -INFINITY;
    for (int j = 0; j < c; ++j)
      for (int key = list[j] * block; key < std::min(N, (list[j] + 1) * block); ++key) {
        double dot = 0;
        for (int d = 0; d < D; ++d) dot += double(qi[d]) * hk[(bh * N + key) * D + d];
        logits.push_back(dot * p.scale);
        mx = std::max(mx, logits.back());
      }
    double sum = 0;
    size_t n = 0;
    for (int j = 0; j < c; ++j)
      for (int key = list[j] * block; key < std::min(N, (list[j] + 1) * block); ++key, ++n) {
        const double w = std::exp(logits[n] - mx);
        sum += w;
        for (int d = 0; d < D; ++d) acc[d] += w * hv[(bh * N + key) * D + d];
      }
    for (int d = 0; d < D; ++d) {
      const double ref = sum > 0 ? acc[d] / sum : 0.0;
      const double err = std::fabs(ref - hout[r * D + d]);
      max_out_err = std::isnan(err) ? INFINITY : std::max(max_out_err, err);
    }
    const double ref_lse = sum > 0 ? mx + std::log(sum) : -INFINITY;
    const double lse_err = (sum > 0 || hlse[r] != -INFINITY) ? std::fabs(ref_lse - hlse[r]) : 0.0;
    max_lse_err = std::isnan(lse_err) ? INFINITY : std::max(max_lse_err, lse_err);
  }

  const double kept_fraction = static_cast<double>(kept) / (static_cast<double>(B) * H * T * T);
  std::printf("B=%d H=%d N=%d D=%d block=%d density=%.4f (kept %.4f): %.4f ms, %.1f TFLOP/s "
              "over kept blocks | spot check of 32 rows: max |out err| %.3g, max |lse err| %.3g\n",
              B, H, N, D, block, density, kept_fraction, median_ms, flops / (median_ms * 1e9),
              max_out_err, max_lse_err);

  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  CHECK_CUDA(cudaStreamDestroy(stream));
  for (void* ptr : {static_cast<void*>(q), static_cast<void*>(k), static_cast<void*>(v),
                    static_cast<void*>(out), static_cast<void*>(lse), static_cast<void*>(d_indices),
                    static_cast<void*>(d_counts)})
    CHECK_CUDA(cudaFree(ptr));
  return 0;
}
