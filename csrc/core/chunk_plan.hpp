// Rows kept in chunks of at most `rows_per_chunk` rows, every chunk full but the last (GPU
// backends whose buffers have a size limit: WebGPU, Metal). What reserve(rows) must allocate.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace hive_gpu {

struct ChunkGrowth {
    std::size_t last_to = 0;         // new capacity of the last chunk (0: it stays as it is)
    std::vector<std::size_t> fresh;  // capacities of the chunks to add after it
};

inline ChunkGrowth plan_chunks(std::size_t chunks, std::size_t last_capacity, std::size_t rows_per_chunk,
                               std::size_t rows) {
    ChunkGrowth g;
    std::size_t base = chunks * rows_per_chunk;  // rows the existing chunks would hold when full
    if (chunks > 0 && last_capacity < rows_per_chunk)
        g.last_to = std::min(rows_per_chunk, rows - (base - rows_per_chunk));
    for (; base < rows; base += rows_per_chunk) g.fresh.push_back(std::min(rows_per_chunk, rows - base));
    return g;
}

// Rows the chunks can hold together (each chunk type has a `capacity` in rows).
template <class Chunk>
std::size_t chunk_capacity(const std::vector<Chunk>& chunks) {
    std::size_t c = 0;
    for (const auto& ch : chunks) c += ch.capacity;
    return c;
}

}  // namespace hive_gpu
