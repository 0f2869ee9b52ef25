#include "webgpu/wgpu_context.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "hive_gpu/backends.hpp"
#include "hive_gpu/error.hpp"
#include "webgpu/wgpu_engine.hpp"

namespace hive_gpu::webgpu {

namespace {

#include "shaders.inc"

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
}

const char* backend_type_name(WGPUBackendType t) {
    switch (t) {
        case WGPUBackendType_Vulkan: return "Vulkan";
        case WGPUBackendType_Metal: return "Metal";
        case WGPUBackendType_D3D12: return "D3D12";
        case WGPUBackendType_D3D11: return "D3D11";
        case WGPUBackendType_OpenGL: return "OpenGL";
        case WGPUBackendType_OpenGLES: return "OpenGLES";
        case WGPUBackendType_WebGPU: return "WebGPU";
        default: return "unknown";
    }
}

const char* adapter_type_name(WGPUAdapterType t) {
    switch (t) {
        case WGPUAdapterType_DiscreteGPU: return "discrete GPU";
        case WGPUAdapterType_IntegratedGPU: return "integrated GPU";
        case WGPUAdapterType_CPU: return "CPU";
        default: return "unknown";
    }
}

WGPUBackendType backend_from_env(std::string* why) {
    const char* env = std::getenv("HIVE_GPU_WEBGPU_BACKEND");
    if (!env || !*env) return WGPUBackendType_Undefined;
    std::string b = lower(env);
    if (b == "vulkan") return WGPUBackendType_Vulkan;
    if (b == "metal") return WGPUBackendType_Metal;
    if (b == "d3d12" || b == "dx12") return WGPUBackendType_D3D12;
    if (b == "opengl" || b == "gl") return WGPUBackendType_OpenGL;
    if (b == "opengles" || b == "gles") return WGPUBackendType_OpenGLES;
    *why = std::string("HIVE_GPU_WEBGPU_BACKEND='") + env + "' is not one of vulkan, metal, d3d12, opengl, opengles";
    return WGPUBackendType_Undefined;
}

// Waiting for the GPU: yield for the first polls (short kernels finish within them), then
// sleep in steps of 20 us so that a long search does not burn a core.
void back_off(unsigned spins) {
    if (spins < 256)
        std::this_thread::yield();
    else
        std::this_thread::sleep_for(std::chrono::microseconds(20));
}

// Runs ProcessEvents (and wgpu-native's poll) until `done` is set by a callback.
void pump(const Api& api, WGPUInstance instance, WGPUDevice device, const bool& done) {
    while (!done) {
        if (device && api.wgpuDevicePoll) api.wgpuDevicePoll(device, false, nullptr);
        api.wgpuInstanceProcessEvents(instance);
        if (!done) std::this_thread::yield();
    }
}

struct AdapterRequest {
    bool done = false;
    WGPUAdapter adapter = nullptr;
    std::string message;
};

WGPUAdapter request_adapter(const Api& api, WGPUInstance instance, WGPUBackendType backend,
                            std::string* message) {
    WGPURequestAdapterOptions options{};
    options.featureLevel = WGPUFeatureLevel_Core;
    options.powerPreference = WGPUPowerPreference_HighPerformance;
    options.backendType = backend;
    AdapterRequest req;
    WGPURequestAdapterCallbackInfo cb{};
    cb.mode = WGPUCallbackMode_AllowProcessEvents;
    cb.callback = [](WGPURequestAdapterStatus status, WGPUAdapter adapter, WGPUStringView msg,
                     void* u1, void*) {
        auto* r = static_cast<AdapterRequest*>(u1);
        if (status == WGPURequestAdapterStatus_Success) r->adapter = adapter;
        r->message = str(msg);
        r->done = true;
    };
    cb.userdata1 = &req;
    api.wgpuInstanceRequestAdapter(instance, &options, cb);
    pump(api, instance, nullptr, req.done);
    *message = req.message;
    return req.adapter;
}

Runtime make_runtime() {
    Runtime rt;
    std::string why;
    rt.api = load_api(&why);
    if (!rt.api) {
        rt.unavailable = why;
        return rt;
    }
    const Api& api = *rt.api;
    WGPUBackendType backend = backend_from_env(&why);
    if (!why.empty()) {
        rt.unavailable = why;
        return rt;
    }
    rt.instance = api.wgpuCreateInstance(nullptr);
    if (!rt.instance) {
        rt.unavailable = "wgpuCreateInstance failed (" + api.path + ")";
        return rt;
    }
    std::string message;
    rt.adapter = request_adapter(api, rt.instance, backend, &message);
    if (!rt.adapter) {
        rt.unavailable = "no WebGPU adapter found (no Vulkan, Metal or D3D12 driver?)" +
                         (message.empty() ? std::string() : ": " + message);
        return rt;
    }
    WGPUAdapterInfo ai{};
    if (api.wgpuAdapterGetInfo(rt.adapter, &ai) != WGPUStatus_Success) {
        rt.unavailable = "wgpuAdapterGetInfo failed";
        return rt;
    }
    DeviceInfo& d = rt.info;
    d.name = str(ai.device).empty() ? str(ai.description) : str(ai.device);
    d.backend = std::string("WebGPU/") + backend_type_name(ai.backendType);
    d.driver_version = str(ai.description);
    std::string arch = str(ai.architecture);
    d.compute_capability = std::string(adapter_type_name(ai.adapterType)) +
                           (arch.empty() ? "" : ", " + arch) + ", vendor " + str(ai.vendor);
    rt.host_memory = ai.adapterType == WGPUAdapterType_CPU;
    api.wgpuAdapterInfoFreeMembers(ai);
    if (const char* want = std::getenv("HIVE_GPU_WEBGPU_ADAPTER"); want && *want) {
        if (lower(d.name).find(lower(want)) == std::string::npos) {
            rt.unavailable = std::string("HIVE_GPU_WEBGPU_ADAPTER='") + want +
                             "' does not match the adapter found ('" + d.name + "')";
            return rt;
        }
    }
    if (api.wgpuAdapterGetLimits(rt.adapter, &rt.limits) != WGPUStatus_Success) {
        rt.unavailable = "wgpuAdapterGetLimits failed";
        return rt;
    }
    rt.limits.nextInChain = nullptr;
    d.max_threads_per_block = rt.limits.maxComputeInvocationsPerWorkgroup;
    d.max_shared_memory = rt.limits.maxComputeWorkgroupStorageSize;
    d.device_id = 0;
    // webgpu.h exposes no memory sizes and no bus address; never guess them.
    d.unknown = {"vram_total", "vram_available", "vram_used", "pci_bus_id"};
    if (d.driver_version.empty()) d.unknown.push_back("driver_version");
    // The kernels need 24 KiB of workgroup memory and 256 invocations per workgroup.
    if (rt.limits.maxComputeWorkgroupStorageSize < 24576 ||
        rt.limits.maxComputeInvocationsPerWorkgroup < 256) {
        rt.unavailable = "adapter '" + d.name + "' offers too little workgroup memory or too few invocations";
    }
    return rt;
}

}  // namespace

const Runtime& runtime() {
    static const Runtime rt = make_runtime();
    return rt;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
    if (this != &o) {
        reset();
        api_ = o.api_;
        buffer_ = o.buffer_;
        bytes_ = o.bytes_;
        o.buffer_ = nullptr;
        o.bytes_ = 0;
    }
    return *this;
}

void Buffer::reset() {
    if (buffer_) {
        api_->wgpuBufferDestroy(buffer_);
        api_->wgpuBufferRelease(buffer_);
    }
    buffer_ = nullptr;
    bytes_ = 0;
}

struct DeviceRequest {
    bool done = false;
    WGPUDevice device = nullptr;
    std::string message;
};

WgpuContext::WgpuContext(const Runtime& rt) : rt_(rt) {
    const Api& a = api();
    WGPUDeviceDescriptor desc{};
    desc.label = view("hive_gpu");
    desc.requiredLimits = &rt_.limits;  // large stores need the adapter's full buffer sizes
    desc.defaultQueue.label = view("hive_gpu queue");
    desc.uncapturedErrorCallbackInfo.callback = &WgpuContext::on_error;
    desc.uncapturedErrorCallbackInfo.userdata1 = this;
    desc.deviceLostCallbackInfo.mode = WGPUCallbackMode_AllowSpontaneous;
    desc.deviceLostCallbackInfo.callback = &WgpuContext::on_lost;
    desc.deviceLostCallbackInfo.userdata1 = this;
    // shader-f16 lets float16 rows be read as f16; HIVE_GPU_WEBGPU_NO_F16=1 forces the
    // u32-packed path that every device runs.
    const char* no_f16 = std::getenv("HIVE_GPU_WEBGPU_NO_F16");
    const bool want_f16 = !(no_f16 && std::string(no_f16) == "1") &&
                          a.wgpuAdapterHasFeature(rt_.adapter, WGPUFeatureName_ShaderF16);
    const WGPUFeatureName f16_feature = WGPUFeatureName_ShaderF16;
    if (want_f16) {
        desc.requiredFeatureCount = 1;
        desc.requiredFeatures = &f16_feature;
    }
    DeviceRequest req;
    WGPURequestDeviceCallbackInfo cb{};
    cb.mode = WGPUCallbackMode_AllowProcessEvents;
    cb.callback = [](WGPURequestDeviceStatus status, WGPUDevice device, WGPUStringView msg, void* u1,
                     void*) {
        auto* r = static_cast<DeviceRequest*>(u1);
        if (status == WGPURequestDeviceStatus_Success) r->device = device;
        r->message = str(msg);
        r->done = true;
    };
    cb.userdata1 = &req;
    a.wgpuAdapterRequestDevice(rt_.adapter, &desc, cb);
    pump(a, rt_.instance, nullptr, req.done);
    if (!req.device) throw NoDeviceError("webgpu: requesting a device failed: " + req.message);
    device_ = req.device;
    queue_ = a.wgpuDeviceGetQueue(device_);
    native_f16_ = want_f16;
}

DeviceInfo WgpuContext::device_info() const {
    DeviceInfo d = rt_.info;
    if (native_f16_) d.compute_capability += ", shader-f16";
    return d;
}

RowFormat WgpuContext::row_format(Dtype dtype) const {
    switch (dtype) {
        case Dtype::Float16: return native_f16_ ? RowFormat::F16 : RowFormat::F16Packed;
        case Dtype::BFloat16: return RowFormat::BF16Packed;
        default: return RowFormat::F32;
    }
}

WgpuContext::~WgpuContext() {
    const Api& a = api();
    for (auto& [k, p] : pipelines_) a.wgpuComputePipelineRelease(p);
    for (auto& [k, l] : pipeline_layouts_) a.wgpuPipelineLayoutRelease(l);
    for (auto& [k, l] : layouts_) a.wgpuBindGroupLayoutRelease(l);
    for (auto& [k, m] : modules_) a.wgpuShaderModuleRelease(m);
    if (queue_) a.wgpuQueueRelease(queue_);
    if (device_) a.wgpuDeviceRelease(device_);
}

std::uint64_t WgpuContext::allocatable_bytes() const {
    if (!rt_.host_memory) return 0;
    // A software adapter fills allocations page by page; past this the host would swap.
    std::ifstream f("/proc/meminfo");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind("MemAvailable:", 0) == 0) {
            std::istringstream in(line.substr(13));
            std::uint64_t kb = 0;
            in >> kb;
            return kb * 1024;
        }
    }
    return 0;
}

void WgpuContext::on_error(WGPUDevice const*, WGPUErrorType type, WGPUStringView message, void* self, void*) {
    auto* ctx = static_cast<WgpuContext*>(self);
    std::lock_guard<std::mutex> lock(ctx->error_mutex_);
    if (ctx->error_.empty())
        ctx->error_ = std::string(type == WGPUErrorType_OutOfMemory ? "out of memory: " : "") + str(message);
}

void WgpuContext::on_lost(WGPUDevice const*, WGPUDeviceLostReason reason, WGPUStringView message, void* self, void*) {
    if (reason == WGPUDeviceLostReason_Destroyed || reason == WGPUDeviceLostReason_CallbackCancelled) return;
    auto* ctx = static_cast<WgpuContext*>(self);
    std::lock_guard<std::mutex> lock(ctx->error_mutex_);
    ctx->lost_ = true;
    ctx->error_ = "device lost: " + str(message);
}

void WgpuContext::throw_if_failed(const char* what) {
    std::string e;
    {
        std::lock_guard<std::mutex> lock(error_mutex_);
        e.swap(error_);
        if (lost_) error_ = e;  // a lost device stays lost
    }
    if (!e.empty()) throw BackendError(std::string("webgpu: ") + what + ": " + e);
}

std::unique_ptr<Engine> WgpuContext::make_engine(std::size_t dimension, Metric metric, Dtype dtype) {
    return std::make_unique<WgpuEngine>(std::static_pointer_cast<WgpuContext>(shared_from_this()),
                                        dimension, metric, dtype);
}

struct ScopeResult {
    bool done = false;
    WGPUErrorType type = WGPUErrorType_NoError;
    std::string message;
};

Buffer WgpuContext::create_buffer(std::uint64_t bytes, WGPUBufferUsage usage, bool mapped_at_creation,
                                  const char* what) {
    const Api& a = api();
    bytes = std::max<std::uint64_t>((bytes + 3) & ~std::uint64_t{3}, 4);
    if (bytes > limits().maxBufferSize)
        throw OutOfMemoryError(std::string("webgpu: ") + what + " needs " + std::to_string(bytes) +
                               " bytes, above the device's maxBufferSize of " +
                               std::to_string(limits().maxBufferSize));
    // Two scopes: implementations report a failed allocation as an out-of-memory error or,
    // as wgpu-native does for "Not enough memory left", as a validation error.
    a.wgpuDevicePushErrorScope(device_, WGPUErrorFilter_Validation);
    a.wgpuDevicePushErrorScope(device_, WGPUErrorFilter_OutOfMemory);
    WGPUBufferDescriptor desc{};
    desc.label = view(what);
    desc.usage = usage;
    desc.size = bytes;
    desc.mappedAtCreation = mapped_at_creation ? 1 : 0;
    WGPUBuffer b = a.wgpuDeviceCreateBuffer(device_, &desc);
    Buffer owned(&a, b, bytes);
    auto pop = [&] {
        ScopeResult res;
        WGPUPopErrorScopeCallbackInfo cb{};
        cb.mode = WGPUCallbackMode_AllowProcessEvents;
        cb.callback = [](WGPUPopErrorScopeStatus status, WGPUErrorType type, WGPUStringView msg, void* u1, void*) {
            auto* r = static_cast<ScopeResult*>(u1);
            r->type = status == WGPUPopErrorScopeStatus_Success ? type : WGPUErrorType_Unknown;
            r->message = str(msg);
            r->done = true;
        };
        cb.userdata1 = &res;
        a.wgpuDevicePopErrorScope(device_, cb);
        wait_until(res.done, what);
        return res;
    };
    const ScopeResult oom = pop();
    const ScopeResult validation = pop();
    auto lower = [](std::string m) {
        for (char& c : m) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        return m;
    };
    const bool memory_message = lower(validation.message).find("memory") != std::string::npos;
    if (!b || oom.type != WGPUErrorType_NoError ||
        (validation.type != WGPUErrorType_NoError && memory_message)) {
        const std::string& m = oom.type != WGPUErrorType_NoError ? oom.message : validation.message;
        throw OutOfMemoryError(std::string("webgpu: cannot allocate ") + std::to_string(bytes) +
                               " bytes for " + what + (m.empty() ? "" : ": " + m));
    }
    if (validation.type != WGPUErrorType_NoError)
        throw BackendError(std::string("webgpu: creating a buffer for ") + what + ": " + validation.message);
    return owned;
}

WGPUCommandEncoder WgpuContext::encoder() {
    WGPUCommandEncoderDescriptor d{};
    return api().wgpuDeviceCreateCommandEncoder(device_, &d);
}

void WgpuContext::submit(WGPUCommandEncoder enc) {
    const Api& a = api();
    WGPUCommandBufferDescriptor d{};
    WGPUCommandBuffer cmd = a.wgpuCommandEncoderFinish(enc, &d);
    a.wgpuCommandEncoderRelease(enc);
    a.wgpuQueueSubmit(queue_, 1, &cmd);
    a.wgpuCommandBufferRelease(cmd);
}

void WgpuContext::wait_until(const bool& done, const char* what) {
    const Api& a = api();
    // Never wgpuDevicePoll(wait=true): on some Vulkan drivers (Mesa's lavapipe among them) its
    // fence wait can miss the wake-up and block forever after the work has finished. A
    // non-blocking poll with a short back-off sees the completion either way.
    for (unsigned spins = 0; !done; ++spins) {
        {
            std::lock_guard<std::mutex> lock(error_mutex_);
            if (lost_) break;
        }
        if (a.wgpuDevicePoll) a.wgpuDevicePoll(device_, false, nullptr);
        a.wgpuInstanceProcessEvents(rt_.instance);
        if (!done) back_off(spins);
    }
    if (!done) throw_if_failed(what);
}

struct MapResult {
    bool done = false;
    WGPUMapAsyncStatus status = WGPUMapAsyncStatus_Error;
    std::string message;
};

void WgpuContext::wait_idle() {
    // wgpu-native's non-blocking poll reports whether the queue is empty (see wait_until for
    // why it is never asked to block); Dawn (no poll) gets a map of a probe buffer instead.
    const Api& a = api();
    if (a.wgpuDevicePoll) {
        for (unsigned spins = 0; !a.wgpuDevicePoll(device_, false, nullptr); ++spins) {
            {
                std::lock_guard<std::mutex> lock(error_mutex_);
                if (lost_) break;
            }
            back_off(spins);
        }
        return;
    }
    Buffer probe = create_buffer(4, WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst, false, "fence");
    map_read(probe.get(), 4);
    unmap(probe.get());
}

const void* WgpuContext::map_read(WGPUBuffer buffer, std::uint64_t bytes) {
    const Api& a = api();
    MapResult res;
    WGPUBufferMapCallbackInfo cb{};
    cb.mode = WGPUCallbackMode_AllowProcessEvents;
    cb.callback = [](WGPUMapAsyncStatus status, WGPUStringView msg, void* u1, void*) {
        auto* r = static_cast<MapResult*>(u1);
        r->status = status;
        r->message = str(msg);
        r->done = true;
    };
    cb.userdata1 = &res;
    a.wgpuBufferMapAsync(buffer, WGPUMapMode_Read, 0, static_cast<std::size_t>(bytes), cb);
    wait_until(res.done, "reading back results");
    throw_if_failed("GPU work");
    if (res.status != WGPUMapAsyncStatus_Success)
        throw BackendError("webgpu: mapping a result buffer failed: " + res.message);
    const void* p = a.wgpuBufferGetConstMappedRange(buffer, 0, static_cast<std::size_t>(bytes));
    if (!p) throw BackendError("webgpu: mapped range unavailable");
    return p;
}

WGPUBindGroupLayout WgpuContext::layout(Kernel kernel) {
    auto it = layouts_.find(kernel);
    if (it != layouts_.end()) return it->second;
    std::vector<WGPUBufferBindingType> types;
    const auto ro = WGPUBufferBindingType_ReadOnlyStorage, rw = WGPUBufferBindingType_Storage,
               uni = WGPUBufferBindingType_Uniform;
    switch (kernel) {
        case Kernel::ScoreGemv:
        case Kernel::ScoreGemm: types = {ro, ro, ro, ro, rw, ro, uni}; break;
        case Kernel::Select:
        case Kernel::SelectSmall: types = {ro, ro, rw, ro, uni}; break;
        case Kernel::ReduceSmall:
        case Kernel::Merge: types = {ro, rw, uni}; break;
    }
    std::vector<WGPUBindGroupLayoutEntry> entries(types.size());
    for (std::size_t i = 0; i < types.size(); ++i) {
        entries[i] = WGPUBindGroupLayoutEntry{};
        entries[i].binding = static_cast<std::uint32_t>(i);
        entries[i].visibility = WGPUShaderStage_Compute;
        entries[i].buffer.type = types[i];
    }
    WGPUBindGroupLayoutDescriptor d{};
    d.entryCount = entries.size();
    d.entries = entries.data();
    WGPUBindGroupLayout l = api().wgpuDeviceCreateBindGroupLayout(device_, &d);
    layouts_[kernel] = l;
    WGPUPipelineLayoutDescriptor pd{};
    pd.bindGroupLayoutCount = 1;
    pd.bindGroupLayouts = &l;
    pipeline_layouts_[kernel] = api().wgpuDeviceCreatePipelineLayout(device_, &pd);
    return l;
}

WGPUComputePipeline WgpuContext::pipeline(Kernel kernel, Metric metric, std::uint32_t qn, RowFormat format) {
    const bool scores = kernel == Kernel::ScoreGemv || kernel == Kernel::ScoreGemm;
    if (!scores) format = RowFormat::F32;  // only the scoring kernels read rows
    auto key = std::make_tuple(kernel, metric, qn, format);
    auto it = pipelines_.find(key);
    if (it != pipelines_.end()) return it->second;
    const Api& a = api();
    layout(kernel);
    const auto module_key = std::make_pair(kernel, format);
    if (!modules_.count(module_key)) {
        const char* body = kernel == Kernel::ScoreGemv   ? kShader_score_gemv
                           : kernel == Kernel::ScoreGemm ? kShader_score_gemm
                           : kernel == Kernel::Select    ? kShader_select
                           : kernel == Kernel::SelectSmall ? kShader_select_small
                           : kernel == Kernel::ReduceSmall ? kShader_reduce_small
                                                         : kShader_merge;
        // The row format goes first: rows_f16.wgsl opens with `enable f16;`, which must
        // precede every declaration.
        const char* rows = !scores                          ? ""
                           : format == RowFormat::F16       ? kShader_rows_f16
                           : format == RowFormat::F16Packed ? kShader_rows_f16_packed
                           : format == RowFormat::BF16Packed ? kShader_rows_bf16_packed
                                                             : kShader_rows_f32;
        std::string code = std::string(rows) + kShader_common + body;
        WGPUShaderSourceWGSL src{};
        src.chain.sType = WGPUSType_ShaderSourceWGSL;
        src.code = WGPUStringView{code.data(), code.size()};
        WGPUShaderModuleDescriptor md{};
        md.nextInChain = &src.chain;
        md.label = view("hive_gpu kernel");
        modules_[module_key] = a.wgpuDeviceCreateShaderModule(device_, &md);
    }
    std::vector<WGPUConstantEntry> constants(1);
    constants[0] = WGPUConstantEntry{};
    constants[0].key = view("METRIC");
    constants[0].value = static_cast<double>(static_cast<int>(metric));
    if (kernel == Kernel::ScoreGemv) {
        WGPUConstantEntry c{};
        c.key = view("QN");
        c.value = qn;
        constants.push_back(c);
    }
    WGPUComputePipelineDescriptor d{};
    d.label = view("hive_gpu pipeline");
    d.layout = pipeline_layouts_[kernel];
    d.compute.module = modules_[module_key];
    d.compute.entryPoint = view("main");
    d.compute.constantCount = constants.size();
    d.compute.constants = constants.data();
    WGPUComputePipeline p = a.wgpuDeviceCreateComputePipeline(device_, &d);
    throw_if_failed("compiling a kernel");
    if (!p) throw BackendError("webgpu: compiling a kernel failed");
    pipelines_[key] = p;
    return p;
}

WGPUBindGroup WgpuContext::bind_group(Kernel kernel, const std::vector<WGPUBuffer>& storage,
                                      WGPUBuffer uniform, std::uint64_t uniform_offset,
                                      std::uint64_t uniform_bytes) {
    std::vector<WGPUBindGroupEntry> entries(storage.size() + 1);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        entries[i] = WGPUBindGroupEntry{};
        entries[i].binding = static_cast<std::uint32_t>(i);
        if (i < storage.size()) {
            entries[i].buffer = storage[i];
            entries[i].size = WGPU_WHOLE_SIZE;
        } else {
            entries[i].buffer = uniform;
            entries[i].offset = uniform_offset;
            entries[i].size = uniform_bytes;
        }
    }
    WGPUBindGroupDescriptor d{};
    d.layout = layout(kernel);
    d.entryCount = entries.size();
    d.entries = entries.data();
    return api().wgpuDeviceCreateBindGroup(device_, &d);
}

BackendEntry backend_entry() {
    return BackendEntry{
        "webgpu",
        [] { return runtime().unavailable.empty() ? 1 : 0; },
        [] { return runtime().unavailable; },
        // One adapter (device id 0, checked by create_context); HIVE_GPU_WEBGPU_ADAPTER and
        // HIVE_GPU_WEBGPU_BACKEND choose it.
        [](int) -> std::shared_ptr<Context> { return std::make_shared<WgpuContext>(runtime()); },
        [] { return runtime().unavailable.empty() && runtime().host_memory; },
    };
}

}  // namespace hive_gpu::webgpu
