// The debugging knobs of the CUDA ops: the only environment variables the library reads, once, when
// it loads (docs/env.md). Kernel choice and numerics are op arguments (backend=, precision=).
#pragma once
#include <cstdint>

namespace genaccel::cuda {

struct DebugKnobs {
  bool sla_one_stream;      // GENACCEL_SLA_ONE_STREAM=1: SLA's linear branch on the caller's stream
  int64_t sla_chunk_bytes;  // GENACCEL_SLA_CHUNK_BYTES: bound on its buffers per chunk (default 1 GiB)
};

const DebugKnobs& debug_knobs();

}  // namespace genaccel::cuda
