// The switches genaccel reads from the environment (GENACCEL_SLA_FLOAT32_GEMMS, GENACCEL_ATTENTION_SM90,
// ...): on when set to exactly "1". Read at each call, so that tests and benchmarks can flip them
// within one process.
#pragma once
#include <cstdlib>
#include <cstring>

namespace genaccel {

inline bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && std::strcmp(value, "1") == 0;
}

}  // namespace genaccel
