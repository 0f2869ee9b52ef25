// The screen of single-query searches: which rows can hold the exact top k, found by
// reading only the hi plane (half the bytes of the rows) under a proven error bound.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "hive_gpu/types.hpp"

namespace hive_gpu::cpu {

class ThreadPool;

// The store as the screen reads it.
struct ScreenRows {
    const std::uint16_t* hi;  // n * d elements, then kPlaneSlack zeros
    std::size_t n;
    std::size_t d;
    Metric metric;
    const float* factors;  // 1/|x| (Cosine) or |x|^2 (Euclidean); unused for DotProduct
    const float* norms;    // |x| rounded up (DotProduct, Euclidean)
    // A filtered search: only rows whose bit is set exist for the screen (null: every row).
    const std::uint64_t* mask = nullptr;
};

// Up to this many queries a search reads every row once, bound by memory bandwidth, and the
// screen halves what it reads; more queries are compute bound and share each row anyway.
inline constexpr std::size_t kScreenMaxQueries = 3;

// Whether a search of nq queries for k of n rows of dimension d takes the screen.
// HIVE_GPU_CPU_SCREEN=off never screens, =always screens every search of up to
// kScreenMaxQueries queries (the tests use it on small stores); read once.
bool screen_wanted(std::size_t n, std::size_t d, std::size_t nq, std::size_t k);

// Screens every row for queries[0, nq) (nq <= kScreenMaxQueries; Cosine: query_factor[q]
// = 1/|q| as the exact kernel uses it, all nonzero). On success candidates[q] lists, in
// ascending slot order, rows that include every row of query q's exact top k, whatever the
// tie order; the caller scores them exactly. Returns false when the candidates outgrow what
// re-scoring them could save (near-ties everywhere): the caller then scans every row.
bool screen(const ScreenRows& rows, ThreadPool& pool, const float* queries,
            const float* query_factor, std::size_t nq, std::size_t k,
            std::vector<std::vector<std::size_t>>& candidates);

// How many screens finished and how many were abandoned, since the process started (tests).
struct ScreenCounts {
    std::uint64_t screened;
    std::uint64_t abandoned;
};
ScreenCounts screen_counts();

}  // namespace hive_gpu::cpu
