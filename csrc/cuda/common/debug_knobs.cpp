#include "cuda/common/debug_knobs.h"

#include <cstdlib>
#include <cstring>

namespace genaccel::cuda {
namespace {

DebugKnobs read_knobs() {
  const char* one_stream = std::getenv("GENACCEL_SLA_ONE_STREAM");
  const char* chunk = std::getenv("GENACCEL_SLA_CHUNK_BYTES");
  const long long bytes = chunk != nullptr ? std::atoll(chunk) : 0;
  return {one_stream != nullptr && std::strcmp(one_stream, "1") == 0, bytes > 0 ? bytes : int64_t{1} << 30};
}

// Read while the library loads: a later change of the environment has no effect.
const DebugKnobs kKnobs = read_knobs();

}  // namespace

const DebugKnobs& debug_knobs() { return kKnobs; }

}  // namespace genaccel::cuda
