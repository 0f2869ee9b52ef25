// Runs a Metal compute grid on the CPU. The threads of one threadgroup are coroutines on
// one OS thread, switched at threadgroup_barrier(), so threadgroup memory and barriers
// behave as on the GPU; a barrier that not every thread of a group reaches is reported.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>

namespace metal_sim {

struct Group {
    std::uint32_t x, y, z;
};

// Calls body(lid, group) for every thread lid < threads of every threadgroup of the grid
// groups[0] x groups[1] x groups[2]. Throws std::runtime_error on a divergent barrier.
void run_grid(const std::uint32_t groups[3], std::uint32_t threads,
              const std::function<void(std::uint32_t lid, Group group)>& body);

}  // namespace metal_sim
