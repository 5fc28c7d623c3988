// A small seeded generator whose stream is fixed by this file alone (not by
// the standard library, libtorch version or device), for anything that must
// reproduce byte for byte from a seed: initial weights, sampling, data
// splits. Header-only, so that the libtorch targets can use it on a bare GPU
// node too.
#pragma once

#include <cstdint>

namespace tunefleet {

// SplitMix64. Not thread-safe; one per stream.
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
  // Uniform in [0, n), n > 0, without modulo bias.
  uint64_t Below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do {
      x = Next();
    } while (x >= limit);
    return x % n;
  }

 private:
  uint64_t state_;
};

}  // namespace tunefleet
