// Limits the core checks on every write, in a header of their own so that an engine can
// apply the same rules (its device-side row checks) without the storage's header.
#pragma once

#include <cstddef>

namespace hive_gpu {

inline constexpr std::size_t kMaxIdBytes = 4096;
inline constexpr std::size_t kMaxDimension = 1u << 20;
// Squared norms above this could overflow float32 distance arithmetic.
inline constexpr double kMaxSquaredNorm = 3.4028234663852886e38 / 4.0;

}  // namespace hive_gpu
