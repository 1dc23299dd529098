// Small launch-side helpers shared by the CUDA attention launchers (.cu only).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>


namespace genaccel::cuda {

// cp.async and the 16-byte stores move 8 elements at a time, so every row must start on a 16-byte
// boundary: base pointer aligned and batch, head and row strides multiples of 8 elements.
inline bool rows_aligned(const void* base, int64_t batch_stride, int64_t head_stride,
                         int64_t row_stride) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && batch_stride % 8 == 0 &&
         head_stride % 8 == 0 && row_stride % 8 == 0;
}

// Kernels with more than the default 48 KB of dynamic shared memory must opt in. Per device and
// cheap; doing it on every launch keeps multi-GPU processes right.
template <class Kernel>
cudaError_t allow_smem(Kernel kernel, int bytes) {
  constexpr int kDefaultSmemLimit = 48 * 1024;
  if (bytes <= kDefaultSmemLimit) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

// Whether the wgmma kernels can run here: a device of compute capability 9.0 and a build with
// sm_90a code (GENACCEL_HAS_SM90A, set by CMake from GENACCEL_CUDA_ARCHS; elsewhere they are traps).
inline bool sm90_kernels_available() {
#if defined(GENACCEL_HAS_SM90A)
  int device = 0, major = 0, minor = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 &&
         minor == 0;
#else
  return false;
#endif
}

}  // namespace genaccel::cuda
