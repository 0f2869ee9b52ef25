// What the C++ benchmarks share: a fast generator and the median of timed calls.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace bench {

struct Rng {  // xorshift64*: the rows of 10M x 128 in a few seconds
    std::uint64_t s;
    std::uint64_t next() {
        s ^= s >> 12, s ^= s << 25, s ^= s >> 27;
        return s * 2685821657736338717ull;
    }
    float uniform() { return static_cast<float>(next() >> 40) * 0x1p-24f * 2.0f - 1.0f; }
};

// Median wall milliseconds of `runs` calls, after 3 untimed ones.
template <typename F>
double median_ms(int runs, F&& call) {
    for (int i = 0; i < 3; ++i) call();
    std::vector<double> t;
    for (int i = 0; i < runs; ++i) {
        const auto a = std::chrono::steady_clock::now();
        call();
        t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

}  // namespace bench
