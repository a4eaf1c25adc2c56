// Environment switches (KESTREL_NO_AVX512, KESTREL_CPU_NO_CACHE, ...).
#pragma once
#include <cstdlib>
#include <cstring>

namespace kestrel {

// On when the variable is set to anything but "" or "0".
inline bool env_switch(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

}  // namespace kestrel
