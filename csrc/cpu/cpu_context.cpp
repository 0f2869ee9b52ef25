#include "cpu/cpu_context.hpp"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "cpu/cpu_engine.hpp"
#include "cpu/kernels.hpp"
#include "hive_gpu/backends.hpp"
#include "hive_gpu/error.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace hive_gpu::cpu {

namespace {

std::string cpu_model_name() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("model name", 0) == 0) {
            auto pos = line.find(':');
            if (pos != std::string::npos) return line.substr(line.find_first_not_of(" \t", pos + 1));
        }
    }
    return "CPU";
}

// Bytes from /proc/meminfo's "key:  N kB" line, 0 when absent.
std::uint64_t meminfo_bytes(const std::string& key) {
    std::ifstream f("/proc/meminfo");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind(key + ":", 0) == 0) {
            std::istringstream in(line.substr(key.size() + 1));
            std::uint64_t kb = 0;
            in >> kb;
            return kb * 1024;
        }
    }
    return 0;
}

std::string isa_name() {
#if defined(__x86_64__) || defined(_M_X64)
    std::string s = "x86-64";
#if defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f")) s += " avx512f";
    else if (__builtin_cpu_supports("avx2")) s += " avx2";
    if (__builtin_cpu_supports("fma")) s += " fma";
#endif
    return s;
#elif defined(__aarch64__) || defined(_M_ARM64)
    return "arm64 neon";
#else
    return "generic";
#endif
}

int default_threads() {
    if (const char* env = std::getenv("HIVE_GPU_CPU_THREADS")) {
        const int t = std::atoi(env);
        if (t > 0) return std::min(t, 1024);
    }
    return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

CpuContext::CpuContext(int threads)
    : threads_(threads > 0 ? threads : default_threads()),
      pool_(std::make_unique<ThreadPool>(static_cast<unsigned>(threads_))) {}

DeviceInfo CpuContext::device_info() const {
    DeviceInfo d;
    d.name = cpu_model_name();
    d.backend = "CPU";
    d.vram_total = meminfo_bytes("MemTotal");
    d.vram_available = meminfo_bytes("MemAvailable");
    d.vram_used = d.vram_total > d.vram_available ? d.vram_total - d.vram_available : 0;
    if (d.vram_total == 0) d.unknown.insert(d.unknown.end(), {"vram_total", "vram_available", "vram_used"});
    d.compute_capability = isa_name() + " (kernels: " + kernels().name + ")";
    d.max_threads_per_block = static_cast<std::uint32_t>(threads_);
    d.device_id = 0;
    d.unknown.insert(d.unknown.end(), {"driver_version", "max_shared_memory", "pci_bus_id"});
    return d;
}

PoolStats CpuContext::pool_stats() const {
    PoolStats s;
    s.rows_bytes = rows_bytes_.load();
    std::lock_guard<std::mutex> lock(config_mutex_);
    s.config = config_;
    return s;
}

void CpuContext::set_pool_config(const PoolConfig& config) {
    std::lock_guard<std::mutex> lock(config_mutex_);
    config_ = config;
}

void CpuContext::charge(std::uint64_t bytes, const char* what) {
    std::uint64_t cap;
    {
        std::lock_guard<std::mutex> lock(config_mutex_);
        cap = config_.max_bytes;
    }
    const std::uint64_t now = rows_bytes_.fetch_add(bytes) + bytes;
    if (cap != 0 && now > cap) {
        rows_bytes_.fetch_sub(bytes);
        throw OutOfMemoryError("cpu: the context's memory cap of " + std::to_string(cap) +
                               " bytes would be exceeded by " + std::to_string(bytes) + " bytes for " + what +
                               " (see set_pool_config)");
    }
}

std::unique_ptr<Engine> CpuContext::make_engine(std::size_t dimension, Metric metric, Dtype dtype) {
    return std::make_unique<CpuEngine>(std::static_pointer_cast<CpuContext>(shared_from_this()),
                                       dimension, metric, dtype);
}

std::shared_ptr<Context> make_context(int threads) { return std::make_shared<CpuContext>(threads); }

BackendEntry backend_entry() {
    return BackendEntry{
        "cpu",
        [] { return 1; },
        [] { return std::string(); },
        [](int) { return make_context(0); },
    };
}

}  // namespace hive_gpu::cpu
