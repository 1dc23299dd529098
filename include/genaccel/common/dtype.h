// The element types the kernels take, as a torch-free enum shared by every family's params structs.
#pragma once

namespace genaccel {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

}  // namespace genaccel

namespace genaccel {

// How float32 GEMMs run on CUDA (an op's `precision` argument): TF32 tensor cores (operands rounded
// to 10 mantissa bits, float32 accumulation) or exact float32.
enum class MatmulPrecision : int { kTF32 = 0, kFloat32 = 1 };

}  // namespace genaccel
