#include "cuda/common/side_stream.h"

#include <ATen/cuda/CUDAEvent.h>

namespace genaccel::cuda {

SideStream::SideStream(c10::DeviceIndex device, bool enabled)
    : main_(c10::cuda::getCurrentCUDAStream(device)),
      side_(enabled ? c10::cuda::getStreamFromPool(false, device) : main_) {
  if (side_ != main_) {
    at::cuda::CUDAEvent fork;
    fork.record(main_);
    fork.block(side_);
  }
}

SideStream::~SideStream() {
  try {
    join();
  } catch (...) {
  }
}

void SideStream::join() {
  if (side_ == main_ || joined_) return;
  at::cuda::CUDAEvent done;
  done.record(side_);
  done.block(main_);
  joined_ = true;
}

}  // namespace genaccel::cuda
