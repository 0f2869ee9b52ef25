// CRC-32C (Castagnoli), the checksum of every section of a saved store.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hive_gpu {

// Continue a CRC over `len` more bytes; start with crc = 0.
std::uint32_t crc32c(std::uint32_t crc, const void* data, std::size_t len);

}  // namespace hive_gpu
