// genaccel XQuant ops: the group quantizer (quantize / dequantize of rows in groups along the last
// dim, codes bit-packed) and the fused products of rematerialisation (xquant_matmul, xquant_weighted_sum);
// schema, input checks (shared by CPU, CUDA and Meta), CPU and Meta registrations. Kernels:
// csrc/cpu/kvcache/xquant/quantize.cpp, matmul.cpp.
#include "ops/kvcache/xquant.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/common/capability.h"
#include "cpu/kvcache/xquant/matmul.h"
#include "cpu/kvcache/xquant/quantize.h"

namespace genaccel::ops {
namespace {
constexpr const char* kQuantizeOp = "xquant_quantize";
constexpr const char* kDequantizeOp = "xquant_dequantize";
constexpr const char* kMatmulOp = "xquant_matmul";
constexpr const char* kWeightedSumOp = "xquant_weighted_sum";

bool float_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf; }

void check_bits_group(int64_t bits, int64_t group_size, const char* op) {
  TORCH_CHECK(bits == 2 || bits == 3 || bits == 4 || bits == 8, op, ": bits must be 2, 3, 4 or 8, got ", bits);
  TORCH_CHECK(group_size >= 8 && group_size <= kXquantMaxGroup && group_size % 8 == 0, op,
              ": group_size must be a multiple of 8 in [8, ", kXquantMaxGroup, "], got ", group_size);
}

c10::SymInt ceil_div(const c10::SymInt& a, int64_t b) { return (a + (b - 1)) / b; }

DType to_dtype_enum(at::ScalarType t) {
  return t == at::kFloat ? DType::kFloat32 : t == at::kBFloat16 ? DType::kBFloat16 : DType::kFloat16;
}
}  // namespace

XquantQuantizeParams xquant_quantize_params(const at::Tensor& x, int64_t bits, int64_t group_size, bool fp16_zero,
                                            at::Tensor& codes, at::Tensor& scales, at::Tensor& zeros) {
  XquantQuantizeParams p{};
  p.x = x.const_data_ptr();
  p.x_dtype = to_dtype_enum(x.scalar_type());
  p.x_row_stride = x.stride(0);
  p.rows = x.size(0), p.k = x.size(1), p.bits = bits, p.group_size = group_size, p.fp16_zero = fp16_zero;
  p.codes = codes.mutable_data_ptr<uint8_t>();
  p.scales = reinterpret_cast<uint16_t*>(scales.mutable_data_ptr<at::Half>());
  p.zeros = zeros.mutable_data_ptr();
  p.code_row_bytes = codes.size(1), p.groups = scales.size(1), p.zero_row_bytes = zeros.size(1);
  return p;
}

XquantCodes xquant_codes(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros, int64_t bits,
                         int64_t group_size, int64_t cols) {
  XquantCodes x{};
  x.codes = codes.const_data_ptr<uint8_t>();
  x.scales = reinterpret_cast<const uint16_t*>(scales.const_data_ptr<at::Half>());
  x.zeros = zeros.const_data_ptr();
  x.fp16_zero = zeros.scalar_type() == at::kHalf;
  x.rows = codes.size(0), x.k = cols, x.bits = bits, x.group_size = group_size;
  x.code_row_bytes = codes.size(1), x.groups = scales.size(1), x.zero_row_bytes = zeros.size(1);
  return x;
}

XquantDequantizeParams xquant_dequantize_params(const at::Tensor& codes, const at::Tensor& scales,
                                                const at::Tensor& zeros, int64_t bits, int64_t group_size,
                                                at::Tensor& out) {
  XquantDequantizeParams p{};
  p.x = xquant_codes(codes, scales, zeros, bits, group_size, out.size(1));
  p.out = out.mutable_data_ptr();
  p.out_dtype = to_dtype_enum(out.scalar_type());
  return p;
}

XquantMatmulParams xquant_matmul_params(const XquantCodes& x, const at::Tensor& weight,
                                        const std::optional<at::Tensor>& bias, at::Tensor& out) {
  XquantMatmulParams p{};
  p.x = x;
  p.weight = weight.const_data_ptr();
  p.bias = bias ? bias->const_data_ptr() : nullptr;
  p.w_dtype = to_dtype_enum(weight.scalar_type());
  p.n = weight.size(0);
  p.out = out.mutable_data_ptr();
  return p;
}

XquantWeightedSumParams xquant_weighted_sum_params(const XquantCodes& x, const at::Tensor& a, at::Tensor& out) {
  XquantWeightedSumParams p{};
  p.x = x;
  p.a = a.const_data_ptr();
  p.a_dtype = to_dtype_enum(a.scalar_type());
  p.batch = a.size(0), p.m = a.size(1), p.tokens = a.size(2);
  p.out = out.mutable_data_ptr();
  return p;
}

void check_xquant_quantize_op(const at::Tensor& x, int64_t bits, int64_t group_size) {
  constexpr const char* op = kQuantizeOp;
  TORCH_CHECK(x.dim() == 2 && float_dtype(x.scalar_type()), op,
              ": x must be a 2-D (rows, K) float32, bfloat16 or float16 tensor, got ", x.scalar_type(), " of shape ",
              x.sym_sizes());
  check_bits_group(bits, group_size, op);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_xquant_quantize_outputs(const at::Tensor& x, int64_t bits,
                                                                             int64_t group_size, bool fp16_zero) {
  const c10::SymInt rows = x.sym_size(0), k = x.sym_size(1);
  const c10::SymInt groups = ceil_div(k, group_size);
  const auto bytes = x.options().dtype(at::kByte), halves = x.options().dtype(at::kHalf);
  return {at::empty_symint({rows, ceil_div(k * bits, 8)}, bytes), at::empty_symint({rows, groups}, halves),
          fp16_zero ? at::empty_symint({rows, groups}, halves)
                    : at::empty_symint({rows, ceil_div(groups * bits, 8)}, bytes)};
}

static void check_xquant_codes(const char* op, const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros,
                               int64_t bits, int64_t group_size, int64_t cols) {
  check_bits_group(bits, group_size, op);
  TORCH_CHECK(cols >= 0, op, ": cols must be >= 0, got ", cols);
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kByte, op,
              ": codes must be a 2-D (rows, bytes) uint8 tensor, got ", codes.scalar_type(), " of shape ",
              codes.sym_sizes());
  const c10::SymInt rows = codes.sym_size(0);
  const int64_t groups = (cols + group_size - 1) / group_size;
  TORCH_CHECK(codes.sym_size(1) == (cols * bits + 7) / 8, op, ": codes must have ceil(cols * bits / 8) = ",
              (cols * bits + 7) / 8, " bytes per row for cols = ", cols, " at ", bits, " bits, got ", codes.sym_size(1));
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.dim() == 2 && scales.sym_size(0) == rows &&
                  scales.sym_size(1) == groups,
              op, ": scales must be a float16 (rows, groups) = (", rows, ", ", groups, ") tensor, got ",
              scales.scalar_type(), " of shape ", scales.sym_sizes());
  const bool fp16_zero = zeros.scalar_type() == at::kHalf;
  TORCH_CHECK((fp16_zero || zeros.scalar_type() == at::kByte) && zeros.dim() == 2 && zeros.sym_size(0) == rows &&
                  zeros.sym_size(1) == (fp16_zero ? groups : (groups * bits + 7) / 8),
              op, ": zeros must be packed uint8 (rows, ceil(groups * bits / 8)) = (", rows, ", ",
              (groups * bits + 7) / 8, ") or float16 offsets (rows, groups) = (", rows, ", ", groups, "), got ",
              zeros.scalar_type(), " of shape ", zeros.sym_sizes());
  TORCH_CHECK(scales.device() == codes.device() && zeros.device() == codes.device(), op,
              ": codes, scales and zeros must be on one device, got ", codes.device(), ", ", scales.device(), ", ",
              zeros.device());
}

void check_xquant_dequantize_op(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros,
                                int64_t bits, int64_t group_size, int64_t cols, at::ScalarType dtype) {
  TORCH_CHECK(float_dtype(dtype), kDequantizeOp, ": dtype must be float32, bfloat16 or float16, got ", dtype);
  check_xquant_codes(kDequantizeOp, codes, scales, zeros, bits, group_size, cols);
}

void check_xquant_matmul_op(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros, int64_t bits,
                            int64_t group_size, int64_t cols, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
  constexpr const char* op = kMatmulOp;
  check_xquant_codes(op, codes, scales, zeros, bits, group_size, cols);
  TORCH_CHECK(weight.dim() == 2 && float_dtype(weight.scalar_type()) && weight.sym_size(1) == cols, op,
              ": weight must be a 2-D (N, cols = ", cols, ") float32, bfloat16 or float16 tensor, got ",
              weight.scalar_type(), " of shape ", weight.sym_sizes());
  TORCH_CHECK(weight.device() == codes.device(), op, ": weight must be on the codes' device ", codes.device(),
              ", got ", weight.device());
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->sym_size(0) == weight.sym_size(0) &&
                    bias->scalar_type() == weight.scalar_type(),
                op, ": bias must be a 1-D (N = ", weight.sym_size(0), ") tensor of weight's dtype ",
                weight.scalar_type(), ", got ", bias->scalar_type(), " of shape ", bias->sym_sizes());
    TORCH_CHECK(bias->device() == weight.device(), op, ": bias must be on weight's device ", weight.device(),
                ", got ", bias->device());
  }
}

void check_xquant_weighted_sum_op(const at::Tensor& a, const at::Tensor& codes, const at::Tensor& scales,
                                  const at::Tensor& zeros, int64_t bits, int64_t group_size, int64_t cols) {
  constexpr const char* op = kWeightedSumOp;
  check_xquant_codes(op, codes, scales, zeros, bits, group_size, cols);
  TORCH_CHECK(a.dim() == 3 && float_dtype(a.scalar_type()), op,
              ": a must be a 3-D (batch, M, tokens) float32, bfloat16 or float16 tensor, got ", a.scalar_type(),
              " of shape ", a.sym_sizes());
  TORCH_CHECK(a.sym_size(0) * a.sym_size(2) == codes.sym_size(0), op,
              ": codes must hold batch * tokens = ", a.sym_size(0) * a.sym_size(2), " rows for a of shape ",
              a.sym_sizes(), ", got ", codes.sym_size(0));
  TORCH_CHECK(a.device() == codes.device(), op, ": a must be on the codes' device ", codes.device(), ", got ",
              a.device());
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> xquant_quantize_cpu(const at::Tensor& x_in, int64_t bits,
                                                                   int64_t group_size, bool fp16_zero) {
  check_xquant_quantize_op(x_in, bits, group_size);
  cpu::check_capability(kQuantizeOp);
  auto x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  auto [codes, scales, zeros] = empty_xquant_quantize_outputs(x, bits, group_size, fp16_zero);
  if (x.numel() == 0) return {codes, scales, zeros};
  cpu::xquant_quantize(xquant_quantize_params(x, bits, group_size, fp16_zero, codes, scales, zeros));
  return {codes, scales, zeros};
}

at::Tensor xquant_dequantize_cpu(const at::Tensor& codes_in, const at::Tensor& scales_in, const at::Tensor& zeros_in,
                                 int64_t bits, int64_t group_size, int64_t cols, at::ScalarType dtype) {
  check_xquant_dequantize_op(codes_in, scales_in, zeros_in, bits, group_size, cols, dtype);
  auto codes = codes_in.contiguous(), scales = scales_in.contiguous(), zeros = zeros_in.contiguous();
  auto out = at::empty({codes.size(0), cols}, codes.options().dtype(dtype));
  if (out.numel() == 0) return out;
  cpu::xquant_dequantize(xquant_dequantize_params(codes, scales, zeros, bits, group_size, out));
  return out;
}

// 16-bit weights are converted to float32 first (a copy of the weight, never of X): the CPU GEMM is float32.
at::Tensor xquant_matmul_cpu(const at::Tensor& codes_in, const at::Tensor& scales_in, const at::Tensor& zeros_in,
                             int64_t bits, int64_t group_size, int64_t cols, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias) {
  check_xquant_matmul_op(codes_in, scales_in, zeros_in, bits, group_size, cols, weight, bias);
  cpu::check_capability(kMatmulOp);
  auto codes = codes_in.contiguous(), scales = scales_in.contiguous(), zeros = zeros_in.contiguous();
  const int64_t rows = codes.size(0), n = weight.size(0);
  if (rows == 0 || n == 0 || cols == 0) {
    auto out = at::zeros({rows, n}, weight.options());
    return bias ? out.add_(*bias) : out;
  }
  auto w = weight.to(at::kFloat).contiguous();
  std::optional<at::Tensor> b;
  if (bias) b = bias->to(at::kFloat).contiguous();
  auto out = at::empty({rows, n}, w.options());
  cpu::xquant_matmul(xquant_matmul_params(xquant_codes(codes, scales, zeros, bits, group_size, cols), w, b, out));
  return out.to(weight.scalar_type());
}

at::Tensor xquant_weighted_sum_cpu(const at::Tensor& a_in, const at::Tensor& codes_in, const at::Tensor& scales_in,
                                   const at::Tensor& zeros_in, int64_t bits, int64_t group_size, int64_t cols) {
  check_xquant_weighted_sum_op(a_in, codes_in, scales_in, zeros_in, bits, group_size, cols);
  cpu::check_capability(kWeightedSumOp);
  auto codes = codes_in.contiguous(), scales = scales_in.contiguous(), zeros = zeros_in.contiguous();
  auto a = a_in.to(at::kFloat).contiguous();
  auto out = at::zeros({a.size(0), a.size(1), cols}, a.options());
  if (out.numel() == 0 || a.size(2) == 0) return out.to(a_in.scalar_type());
  cpu::xquant_weighted_sum(xquant_weighted_sum_params(xquant_codes(codes, scales, zeros, bits, group_size, cols), a, out));
  return out.to(a_in.scalar_type());
}

at::Tensor xquant_matmul_meta(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros,
                              int64_t bits, int64_t group_size, int64_t cols, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias) {
  check_xquant_matmul_op(codes, scales, zeros, bits, group_size, cols, weight, bias);
  return at::empty_symint({codes.sym_size(0), weight.sym_size(0)}, weight.options());
}

at::Tensor xquant_weighted_sum_meta(const at::Tensor& a, const at::Tensor& codes, const at::Tensor& scales,
                                    const at::Tensor& zeros, int64_t bits, int64_t group_size, int64_t cols) {
  check_xquant_weighted_sum_op(a, codes, scales, zeros, bits, group_size, cols);
  return at::empty_symint({a.sym_size(0), a.sym_size(1), c10::SymInt(cols)}, a.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> xquant_quantize_meta(const at::Tensor& x, int64_t bits,
                                                                    int64_t group_size, bool fp16_zero) {
  check_xquant_quantize_op(x, bits, group_size);
  return empty_xquant_quantize_outputs(x, bits, group_size, fp16_zero);
}

at::Tensor xquant_dequantize_meta(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros,
                                  int64_t bits, int64_t group_size, int64_t cols, at::ScalarType dtype) {
  check_xquant_dequantize_op(codes, scales, zeros, bits, group_size, cols, dtype);
  return at::empty_symint({codes.sym_size(0), c10::SymInt(cols)}, codes.options().dtype(dtype));
}

}  // namespace
}  // namespace genaccel::ops

TORCH_LIBRARY_FRAGMENT(genaccel, m) {
  // Uniform asymmetric min-max quantization of x (rows, K) in groups of group_size consecutive
  // elements of a row (the last group may be shorter), bits in {2, 3, 4, 8}; the rules and the
  // layout are python/genaccel/kvcache/xquant/reference.py's: codes uint8 (rows, ceil(K bits / 8))
  // packed densely, scales float16 (rows, groups) rounded up, zeros packed b-bit uint8
  // (rows, ceil(groups bits / 8)) or, with fp16_zero, the group minima rounded down as float16
  // (rows, groups). A group holding a NaN or an infinity gets a NaN scale; a group whose range needs
  // a scale beyond float16 gets an infinite one (genaccel.quantize refuses both).
  m.def("xquant_quantize(Tensor x, int bits, int group_size, bool fp16_zero=False) "
        "-> (Tensor codes, Tensor scales, Tensor zeros)");
  // The inverse map to (rows, cols) values of `dtype`: s (q - z), or m + s q with float16 zeros.
  m.def("xquant_dequantize(Tensor codes, Tensor scales, Tensor zeros, int bits, int group_size, int cols, "
        "ScalarType dtype=float) -> Tensor");
  // dequantize(codes, ...) (rows, cols) @ weight.T (+ bias) -> (rows, N) of weight's dtype, float32
  // accumulation, without materialising the dequantized rows (tiles of them inside the GEMM). On CUDA
  // with a 16-bit weight the dequantized tiles are rounded to the weight's dtype, as
  // dequantize(...).to(weight.dtype) @ weight.T would be.
  m.def("xquant_matmul(Tensor codes, Tensor scales, Tensor zeros, int bits, int group_size, int cols, "
        "Tensor weight, Tensor? bias=None) -> Tensor");
  // a (batch, M, tokens) @ dequantize(codes, ...) viewed as (batch, tokens, cols) -> (batch, M, cols)
  // of a's dtype: the attention-weighted sum of cached rows (XQuant's absorbed value path).
  m.def("xquant_weighted_sum(Tensor a, Tensor codes, Tensor scales, Tensor zeros, int bits, int group_size, "
        "int cols) -> Tensor");
}

TORCH_LIBRARY_IMPL(genaccel, CPU, m) {
  m.impl("xquant_quantize", &genaccel::ops::xquant_quantize_cpu);
  m.impl("xquant_dequantize", &genaccel::ops::xquant_dequantize_cpu);
  m.impl("xquant_matmul", &genaccel::ops::xquant_matmul_cpu);
  m.impl("xquant_weighted_sum", &genaccel::ops::xquant_weighted_sum_cpu);
}

TORCH_LIBRARY_IMPL(genaccel, Meta, m) {
  m.impl("xquant_quantize", &genaccel::ops::xquant_quantize_meta);
  m.impl("xquant_dequantize", &genaccel::ops::xquant_dequantize_meta);
  m.impl("xquant_matmul", &genaccel::ops::xquant_matmul_meta);
  m.impl("xquant_weighted_sum", &genaccel::ops::xquant_weighted_sum_meta);
}
