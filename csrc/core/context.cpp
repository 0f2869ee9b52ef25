#include "hive_gpu/context.hpp"

#include <algorithm>
#include <cctype>
#include <iterator>

#include "hive_gpu/backends.hpp"
#include "hive_gpu/engine.hpp"
#include "hive_gpu/error.hpp"
#include "hive_gpu/storage.hpp"

namespace hive_gpu {

const char* metric_name(Metric m) {
    static constexpr const char* kNames[] = {"cosine", "dot_product", "euclidean"};  // by Metric's value
    const auto i = static_cast<std::size_t>(m);
    return i < std::size(kNames) ? kNames[i] : "unknown";
}

Metric metric_from_name(const std::string& name) {
    std::string s = name;
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    if (s == "cosine") return Metric::Cosine;
    if (s == "dot" || s == "dot_product" || s == "dotproduct" || s == "ip" || s == "inner_product")
        return Metric::DotProduct;
    if (s == "euclidean" || s == "l2") return Metric::Euclidean;
    throw InvalidArgumentError("unknown metric '" + name + "'");
}

const char* dtype_name(Dtype d) {
    static constexpr const char* kNames[] = {"float32", "float16", "bfloat16"};  // by Dtype's value
    const auto i = static_cast<std::size_t>(d);
    return i < std::size(kNames) ? kNames[i] : "unknown";
}

Dtype dtype_from_name(const std::string& name) {
    std::string s;
    for (char c : name) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (s == "float32" || s == "fp32" || s == "f32") return Dtype::Float32;
    if (s == "float16" || s == "fp16" || s == "f16" || s == "half") return Dtype::Float16;
    if (s == "bfloat16" || s == "bf16") return Dtype::BFloat16;
    throw InvalidDtypeError("unknown storage dtype '" + name + "': expected float32, float16 or bfloat16");
}

std::shared_ptr<VectorStorage> Context::create_storage(std::size_t dimension, Metric metric, Dtype dtype) {
    if (dimension == 0 || dimension > kMaxDimension)
        throw InvalidArgumentError("dimension must be in [1, " + std::to_string(kMaxDimension) +
                                   "], got " + std::to_string(dimension));
    if (metric != Metric::Cosine && metric != Metric::DotProduct && metric != Metric::Euclidean)
        throw InvalidArgumentError("unknown metric");
    if (dtype != Dtype::Float32 && dtype != Dtype::Float16 && dtype != Dtype::BFloat16)
        throw InvalidDtypeError("unknown storage dtype code " + std::to_string(static_cast<int>(dtype)));
    return std::make_shared<VectorStorage>(shared_from_this(), make_engine(dimension, metric, dtype));
}

namespace {

// Preference order for "auto": the order of the hive_gpu_add_backend() calls in CMakeLists.txt.
std::vector<BackendEntry> entries() {
    std::vector<BackendEntry> e;
#define HIVE_GPU_ADD_ENTRY(name) e.push_back(name::backend_entry());
    HIVE_GPU_COMPILED_BACKENDS(HIVE_GPU_ADD_ENTRY)
#undef HIVE_GPU_ADD_ENTRY
    return e;
}

// Why CMake left a backend out of this build ("" for a backend it built, or an unknown name).
std::string build_reason(const std::string& backend) {
#define HIVE_GPU_BUILD_REASON(name, context, aliases, description, reason) \
    if (backend == #name) return reason;
    HIVE_GPU_KNOWN_BACKENDS(HIVE_GPU_BUILD_REASON)
#undef HIVE_GPU_BUILD_REASON
    return "";
}

const BackendEntry* find_entry(const std::vector<BackendEntry>& all, const std::string& name) {
    for (const auto& e : all)
        if (name == e.name) return &e;
    return nullptr;
}

// The one place a device id is checked: a backend's make_context gets a usable backend and an
// id in range.
std::shared_ptr<Context> make_checked(const BackendEntry& e, int device_id) {
    const std::string why = e.unavailable_reason();
    if (!why.empty()) throw NoDeviceError(std::string(e.name) + ": " + why);
    const int n = e.device_count();
    if (device_id < 0 || device_id >= n)
        throw InvalidDeviceIdError(std::string(e.name) + ": device id " + std::to_string(device_id) +
                                   " is out of range (" + std::to_string(n) + " device(s))");
    return e.make_context(device_id);
}

}  // namespace

std::vector<std::string> compiled_backends() {
    std::vector<std::string> names;
    for (const auto& e : entries()) names.emplace_back(e.name);
    return names;
}

int device_count(const std::string& backend) {
    auto all = entries();
    const BackendEntry* e = find_entry(all, backend);
    return e ? e->device_count() : 0;
}

std::string backend_unavailable_reason(const std::string& backend) {
    auto all = entries();
    const BackendEntry* e = find_entry(all, backend);
    if (!e) {
        const std::string why = build_reason(backend);
        return "backend '" + backend + "' is not compiled into this build of hive_gpu" + (why.empty() ? "" : ": " + why);
    }
    return e->unavailable_reason();
}

bool backend_emulated(const std::string& backend) {
    auto all = entries();
    const BackendEntry* e = find_entry(all, backend);
    return e && e->emulated && e->unavailable_reason().empty() && e->emulated();
}

bool backend_available(const std::string& backend) {
    return backend_unavailable_reason(backend).empty();
}

std::shared_ptr<Context> create_context(const std::string& backend, int device_id) {
    auto all = entries();
    if (backend == "auto") {
        for (const auto& e : all)
            if (e.unavailable_reason().empty() && !(e.emulated && e.emulated())) return make_checked(e, device_id);
        for (const auto& e : all)
            if (e.unavailable_reason().empty()) return make_checked(e, device_id);
        throw NoDeviceError("no backend is available");
    }
    const BackendEntry* e = find_entry(all, backend);
    if (!e) {
        std::string known;
        for (const auto& x : all) known += std::string(known.empty() ? "" : ", ") + x.name;
        throw InvalidArgumentError("backend '" + backend + "' is not compiled in (compiled: " +
                                   known + ")");
    }
    return make_checked(*e, device_id);
}

}  // namespace hive_gpu
