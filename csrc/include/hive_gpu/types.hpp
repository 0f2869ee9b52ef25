// Plain value types shared by the core, every backend and the bindings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "hive_gpu/dtype.hpp"

namespace hive_gpu {

enum class Metric : int {
    Cosine = 0,      // score = cosine similarity, higher is better
    DotProduct = 1,  // score = inner product, higher is better
    Euclidean = 2,   // score = L2 distance (not squared), lower is better
};

const char* metric_name(Metric m);
Metric metric_from_name(const std::string& name);  // "cosine" | "dot" | "dot_product" | "euclidean" | "l2"

// True when a larger score ranks first.
constexpr bool higher_is_better(Metric m) { return m != Metric::Euclidean; }

// A metadata value: str, int, float, bool or a list of str (tags). The order of the
// alternatives is the type code of the file format (docs/format.md): never reorder it.
using MetaTags = std::vector<std::string>;
using MetaValue = std::variant<std::string, std::int64_t, double, bool, MetaTags>;
enum class MetaType : std::uint8_t { Str = 0, Int = 1, Float = 2, Bool = 3, Tags = 4 };
inline MetaType meta_type(const MetaValue& v) { return static_cast<MetaType>(v.index()); }
const char* meta_type_name(MetaType t);  // "str", "int", "float", "bool", "list of str"

using Metadata = std::map<std::string, MetaValue>;

struct Vector {
    std::string id;
    std::vector<float> data;
    Metadata metadata;
};

struct SearchHit {
    std::string id;
    float score;  // see Metric
    Metadata metadata;
};

// Result of a batched search: row-major [nq][k] arrays, best first in every row.
struct BatchResult {
    std::size_t nq = 0;
    std::size_t k = 0;  // columns actually returned: min(requested k, vector count)
    std::vector<float> scores;
    std::vector<std::string> ids;
    std::vector<std::int64_t> slots;  // engine slots of the hits (valid until the next write)
};

// What a context knows of its device. Fields the API cannot expose are 0 / empty and
// listed in `unknown` by name, so nobody mistakes a missing number for a real one.
struct DeviceInfo {
    std::string name;
    std::string backend;
    std::uint64_t vram_total = 0;
    std::uint64_t vram_available = 0;
    std::uint64_t vram_used = 0;
    std::string driver_version;
    std::string compute_capability;
    std::uint32_t max_threads_per_block = 0;
    std::uint64_t max_shared_memory = 0;
    std::int64_t device_id = 0;
    std::string pci_bus_id;
    std::vector<std::string> unknown;
};

// Memory-pool knobs and counters. Backends without a device pool report their host use.
struct PoolConfig {
    std::uint64_t release_threshold = 0;  // bytes kept cached after a sync (0 = release all)
    std::uint64_t max_bytes = 0;          // hard cap on pooled bytes (0 = no cap beyond the device)
};

// config.max_bytes caps scratch handed out by the pool plus rows_bytes together.
struct PoolStats {
    std::uint64_t reserved_bytes = 0;  // held from the device by the pool
    std::uint64_t used_bytes = 0;      // handed out right now
    std::uint64_t peak_bytes = 0;
    std::uint64_t allocations = 0;     // pool allocations served
    std::uint64_t device_allocations = 0;  // times the pool had to ask the device
    std::uint64_t rows_bytes = 0;      // device memory of the stored rows (outside the pool)
    PoolConfig config;
};

}  // namespace hive_gpu
