// Small tensor-side helpers of the CUDA registrations and runners of every family.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "genaccel/common/dtype.h"

namespace genaccel::ops {

// The kernels' element type of a tensor dtype (float32 for anything but half and bfloat16).
inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

// Raises naming the op when a torch-free launcher returned a cudaError (err != 0).
inline void check_launch(int err, const char* what, const char* op) {
  TORCH_CHECK(err == 0, op, " (CUDA): ", what, " launch failed with cudaError ", err);
}

}  // namespace genaccel::ops
