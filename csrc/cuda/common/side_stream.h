// A second CUDA stream joined back into the caller's (SideStream).
#pragma once
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace genaccel::cuda {

// A second stream for work independent of the caller's until a join (e.g. SLA's memory-bound linear
// branch beside its compute-bound sparse kernels: each uses what the other leaves idle). The side
// stream waits for the caller's work issued before construction only. Work issued under `guard()`
// runs on the side stream; join() makes the caller's stream wait for it. Tensors the side stream
// allocates belong to it; those it writes that the caller's stream allocated (outputs, gradients)
// are only read after the join, and are declared before the SideStream so that they outlive the
// join of its destructor when an error unwinds. With `enabled` false everything stays on the
// caller's stream.
class SideStream {
 public:
  SideStream(c10::DeviceIndex device, bool enabled);
  // Joins on the way out too: if an error unwinds past the side stream's work, the caller's stream
  // must still not reuse the outputs that work writes. (A destructor must not throw.)
  ~SideStream();
  c10::cuda::CUDAStreamGuard guard() const { return c10::cuda::CUDAStreamGuard(side_); }
  void join();

 private:
  c10::cuda::CUDAStream main_, side_;
  bool joined_ = false;
};

}  // namespace genaccel::cuda
