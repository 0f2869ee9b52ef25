// WebGPU context: one device on the process-wide adapter, the compiled kernels, and the
// helpers engines use to allocate, submit and read back. Every queue operation of every
// engine on a context runs under gpu_mutex(), which makes concurrent searches safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "hive_gpu/context.hpp"
#include "webgpu/wgpu_api.hpp"

namespace hive_gpu::webgpu {

// The library, one instance and the chosen adapter, made once per process. Adapter choice:
// high-performance power preference; HIVE_GPU_WEBGPU_BACKEND (vulkan, metal, d3d12, opengl)
// and HIVE_GPU_WEBGPU_ADAPTER (a substring of the adapter's name) narrow it.
struct Runtime {
    const Api* api = nullptr;
    WGPUInstance instance = nullptr;
    WGPUAdapter adapter = nullptr;
    WGPULimits limits{};
    DeviceInfo info;
    bool host_memory = false;  // a CPU adapter (lavapipe): "device" memory is host memory
    std::string unavailable;  // "" when usable
};
const Runtime& runtime();

enum class Kernel { ScoreGemv, ScoreGemm, Select, SelectSmall, ReduceSmall, Merge };

// How the scoring kernels read a page's rows (shaders/rows_*.wgsl). 16-bit rows take the same
// 8 bytes per 4 elements either way; F16 needs the device feature shader-f16.
enum class RowFormat { F32, F16, F16Packed, BF16Packed };

// An owned buffer: destroyed and released with its owner.
class Buffer {
   public:
    Buffer() = default;
    Buffer(const Api* api, WGPUBuffer b, std::uint64_t bytes) : api_(api), buffer_(b), bytes_(bytes) {}
    Buffer(Buffer&& o) noexcept { *this = std::move(o); }
    Buffer& operator=(Buffer&& o) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { reset(); }
    void reset();
    WGPUBuffer get() const { return buffer_; }
    std::uint64_t bytes() const { return bytes_; }
    explicit operator bool() const { return buffer_ != nullptr; }

   private:
    const Api* api_ = nullptr;
    WGPUBuffer buffer_ = nullptr;
    std::uint64_t bytes_ = 0;
};

class WgpuContext final : public Context {
   public:
    explicit WgpuContext(const Runtime& rt);
    ~WgpuContext() override;

    std::string backend() const override { return "webgpu"; }
    // The adapter's description; compute_capability ends in ", shader-f16" when this device
    // reads float16 rows natively.
    DeviceInfo device_info() const override;
    std::unique_ptr<Engine> make_engine(std::size_t dimension, Metric metric, Dtype dtype) override;

    const Api& api() const { return *rt_.api; }
    WGPUDevice device() const { return device_; }
    WGPUQueue queue() const { return queue_; }
    // The device's limits (the adapter's, all requested).
    const WGPULimits& limits() const { return rt_.limits; }
    std::mutex& gpu_mutex() const { return gpu_mutex_; }
    // True when the device was created with shader-f16 (float16 rows are read as f16). The
    // adapter's feature is requested unless HIVE_GPU_WEBGPU_NO_F16=1 was set when the context
    // was created, which forces the u32-packed path (tests cover both on one adapter).
    bool native_f16() const { return native_f16_; }
    // The scoring kernels' row format for rows of `dtype` on this device.
    RowFormat row_format(Dtype dtype) const;
    // Bytes a new allocation may still take, when knowable: host MemAvailable for CPU
    // adapters; 0 = unknown (GPU drivers report exhaustion themselves).
    std::uint64_t allocatable_bytes() const;

    // The calls below expect gpu_mutex() held.
    // Throws OutOfMemoryError when the device refuses the allocation.
    Buffer create_buffer(std::uint64_t bytes, WGPUBufferUsage usage, bool mapped_at_creation,
                         const char* what);
    WGPUCommandEncoder encoder();
    // Finishes, submits and releases the encoder.
    void submit(WGPUCommandEncoder encoder);
    // Blocks until the GPU has finished everything submitted.
    void wait_idle();
    // Maps a MapRead buffer (blocking) and returns its contents; unmap with unmap().
    const void* map_read(WGPUBuffer buffer, std::uint64_t bytes);
    void unmap(WGPUBuffer buffer) { api().wgpuBufferUnmap(buffer); }
    // Throws BackendError with the implementation's words if an error was reported.
    void throw_if_failed(const char* what);

    // `format` matters to the scoring kernels only.
    WGPUComputePipeline pipeline(Kernel kernel, Metric metric, std::uint32_t qn = 1,
                                 RowFormat format = RowFormat::F32);
    WGPUBindGroupLayout layout(Kernel kernel);
    // One bind group over whole buffers (uniform: `uniform` bytes at `uniform_offset`).
    WGPUBindGroup bind_group(Kernel kernel, const std::vector<WGPUBuffer>& storage,
                             WGPUBuffer uniform, std::uint64_t uniform_offset,
                             std::uint64_t uniform_bytes);

   private:
    void wait_until(const bool& done, const char* what);
    static void on_error(WGPUDevice const*, WGPUErrorType type, WGPUStringView message, void* self, void*);
    static void on_lost(WGPUDevice const*, WGPUDeviceLostReason reason, WGPUStringView message, void* self, void*);

    const Runtime& rt_;
    WGPUDevice device_ = nullptr;
    WGPUQueue queue_ = nullptr;
    mutable std::mutex gpu_mutex_;
    std::mutex error_mutex_;  // the callbacks may run on the implementation's threads
    std::string error_;
    bool lost_ = false;
    bool native_f16_ = false;
    std::map<std::pair<Kernel, RowFormat>, WGPUShaderModule> modules_;
    std::map<Kernel, WGPUBindGroupLayout> layouts_;
    std::map<Kernel, WGPUPipelineLayout> pipeline_layouts_;
    std::map<std::tuple<Kernel, Metric, std::uint32_t, RowFormat>, WGPUComputePipeline> pipelines_;
};

}  // namespace hive_gpu::webgpu
