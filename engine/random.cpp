#include "engine/random.h"

#include <cmath>

#include "engine/philox.h"

namespace kestrel {

double Generator::uniform() {
  const Philox4 r = philox4x32(seed_, advance(1));
  // 53 random bits -> [0, 1)
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 21) ^ (static_cast<uint64_t>(r.v[1]) >> 11);
  return static_cast<double>(bits & ((1ULL << 53) - 1)) / static_cast<double>(1ULL << 53);
}

int64_t Generator::randint(int64_t low, int64_t high) {
  if (high <= low) return low;
  const int64_t span = high - low;
  return low + std::min<int64_t>(static_cast<int64_t>(uniform() * static_cast<double>(span)), span - 1);
}

double Generator::normal() {
  const double u1 = 1.0 - uniform(), u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

Generator& default_generator() {
  static Generator g(0);
  return g;
}

void manual_seed(uint64_t seed) { default_generator().set_state(seed, 0); }

}  // namespace kestrel
