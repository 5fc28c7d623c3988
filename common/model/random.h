// A small seeded generator whose stream is fixed by this file alone (not by
// the libtorch version or device), for initial weights and sampling that must
// reproduce byte for byte from a seed.
#pragma once

#include <cstdint>

namespace tunefleet::model {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // Uniform in [-bound, bound).
  float Symmetric(double bound) { return static_cast<float>((2.0 * Uniform() - 1.0) * bound); }

 private:
  uint64_t state_;
};

}  // namespace tunefleet::model
