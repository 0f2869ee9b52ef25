#include "metal/metal_context.hpp"

#import <Foundation/Foundation.h>
#import <MetalPerformanceShaders/MetalPerformanceShaders.h>
#include <TargetConditionals.h>

#include <algorithm>
#include <string>
#include <vector>

#include "hive_gpu/backends.hpp"
#include "hive_gpu/error.hpp"
#include "metal/metal_engine.hpp"

namespace hive_gpu::metal {

namespace {

#include "metal_kernels.inc"

// select_segments keeps kMaxSegment keys and slots in threadgroup memory.
constexpr std::size_t kThreadgroupBytes = kMaxSegment * (sizeof(std::uint64_t) + sizeof(std::uint32_t));

std::string utf8(NSString* s) {
    const char* c = s ? [s UTF8String] : nullptr;
    return c ? std::string(c) : std::string();
}

// The devices of this machine, made once: the system default first (device 0), then on
// macOS every other GPU (eGPUs, the second GPU of dual-GPU MacBooks) in the system's order.
struct Devices {
    std::vector<id<MTLDevice>> list;
    std::string unavailable;
};

const Devices& devices() {
    // Never destroyed: releasing Objective-C objects from static destructors at exit is not
    // worth the risk.
    static const Devices* d = [] {
        auto* out = new Devices;
        @autoreleasepool {
            id<MTLDevice> preferred = MTLCreateSystemDefaultDevice();
            if (preferred) out->list.push_back(preferred);
#if TARGET_OS_OSX
            NSArray<id<MTLDevice>>* all = MTLCopyAllDevices();
            for (id<MTLDevice> dev in all) {
                if (preferred && dev.registryID == preferred.registryID) continue;
                out->list.push_back(dev);
            }
#endif
            if (out->list.empty())
                out->unavailable = "no Metal device (MTLCreateSystemDefaultDevice returned nil)";
            else if (out->list.front().maxThreadgroupMemoryLength < kThreadgroupBytes)
                out->unavailable = "device '" + utf8(out->list.front().name) + "' offers " +
                                   std::to_string(out->list.front().maxThreadgroupMemoryLength) +
                                   " bytes of threadgroup memory; the kernels need " +
                                   std::to_string(kThreadgroupBytes);
        }
        return out;
    }();
    return *d;
}

// "Apple 7" etc.: the highest GPU family the device reports. The enumerators are used by
// value (MTLGPUFamilyApple1 = 1001 ...) so that newer families need no newer SDK.
std::string gpu_family(id<MTLDevice> dev) {
    for (NSInteger f = 1012; f >= 1001; --f)
        if ([dev supportsFamily:static_cast<MTLGPUFamily>(f)]) return "Apple " + std::to_string(f - 1000);
    if ([dev supportsFamily:MTLGPUFamilyMac2]) return "Mac 2";
    return "";
}

}  // namespace

MetalContext::MetalContext(id<MTLDevice> device) : device_(device) {
    with_pool([&] {
        queue_ = [device_ newCommandQueue];
        if (!queue_) throw BackendError("metal: cannot create a command queue on '" + utf8(device_.name) + "'");
        max_buffer_ = static_cast<std::size_t>(device_.maxBufferLength);
        mps_ = MPSSupportsMTLDevice(device_);

        MTLCompileOptions* options = [[MTLCompileOptions alloc] init];
        // IEEE arithmetic: the kernels rely on -0 == +0 and on exact fma; fast math may drop both.
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
        options.fastMathEnabled = NO;
#pragma clang diagnostic pop
        NSError* error = nil;
        NSString* source = [NSString stringWithUTF8String:kMetalKernelSource];
        id<MTLLibrary> library = [device_ newLibraryWithSource:source options:options error:&error];
        if (!library)
            throw BackendError("metal: compiling the kernels failed: " +
                               (error ? utf8(error.localizedDescription) : std::string("no reason given")));
        for (int k = 0; k < kKernelCount; ++k) {
            const char* name = kernel_name(static_cast<Kernel>(k));
            id<MTLFunction> fn = [library newFunctionWithName:[NSString stringWithUTF8String:name]];
            if (!fn) throw BackendError(std::string("metal: kernel '") + name + "' is missing from the library");
            error = nil;
            id<MTLComputePipelineState> pso = [device_ newComputePipelineStateWithFunction:fn error:&error];
            if (!pso)
                throw BackendError(std::string("metal: building the pipeline of '") + name + "' failed: " +
                                   (error ? utf8(error.localizedDescription) : std::string("no reason given")));
            // Every dispatch uses kThreads threads per threadgroup.
            if (pso.maxTotalThreadsPerThreadgroup < kThreads)
                throw BackendError(std::string("metal: kernel '") + name + "' runs at most " +
                                   std::to_string(pso.maxTotalThreadsPerThreadgroup) +
                                   " threads per threadgroup on this device; it needs " + std::to_string(kThreads));
            pipelines_[k] = pso;
        }
    });
}

DeviceInfo MetalContext::device_info() const {
    DeviceInfo d;
    with_pool([&] {
        d.name = utf8(device_.name);
        d.backend = "Metal";
        d.vram_total = device_.recommendedMaxWorkingSetSize;
        d.vram_used = static_cast<std::uint64_t>(device_.currentAllocatedSize);
        d.vram_available = d.vram_total > d.vram_used ? d.vram_total - d.vram_used : 0;
        d.driver_version = "macOS " + utf8([[NSProcessInfo processInfo] operatingSystemVersionString]);
        const std::string family = gpu_family(device_);
        d.compute_capability = family.empty() ? "" : "GPU family " + family;
        if (device_.hasUnifiedMemory) d.compute_capability += family.empty() ? "unified memory" : ", unified memory";
        d.max_threads_per_block = static_cast<std::uint32_t>(device_.maxThreadsPerThreadgroup.width);
        d.max_shared_memory = device_.maxThreadgroupMemoryLength;
        d.device_id = static_cast<std::int64_t>(device_.registryID);
        // Metal names no bus address; vram_used is this process's allocations on the device.
        d.unknown = {"pci_bus_id"};
        if (d.compute_capability.empty()) d.unknown.push_back("compute_capability");
    });
    return d;
}

std::unique_ptr<Engine> MetalContext::make_engine(std::size_t dimension, Metric metric, Dtype dtype) {
    return std::make_unique<MetalEngine>(std::static_pointer_cast<MetalContext>(shared_from_this()),
                                         dimension, metric, dtype);
}

id<MTLBuffer> MetalContext::new_buffer(std::size_t bytes, const char* what) const {
    bytes = std::max<std::size_t>((bytes + 15) & ~std::size_t{15}, 16);
    if (bytes > max_buffer_)
        throw OutOfMemoryError(std::string("metal: ") + what + " needs " + std::to_string(bytes) +
                               " bytes, above the device's maxBufferLength of " + std::to_string(max_buffer_));
    id<MTLBuffer> b = [device_ newBufferWithLength:bytes options:MTLResourceStorageModeShared];
    if (!b)
        throw OutOfMemoryError(std::string("metal: cannot allocate ") + std::to_string(bytes) + " bytes for " + what);
    return b;
}

void MetalContext::check_working_set(std::uint64_t bytes, const char* what) const {
    const std::uint64_t limit = device_.recommendedMaxWorkingSetSize;
    const std::uint64_t used = static_cast<std::uint64_t>(device_.currentAllocatedSize);
    if (limit != 0 && (used > limit || bytes > limit - used))
        throw OutOfMemoryError(std::string("metal: ") + what + " needs " + std::to_string(bytes) +
                               " more bytes; the device's recommended working set is " + std::to_string(limit) +
                               " bytes, " + std::to_string(used) + " of them in use");
}

void MetalContext::run(id<MTLCommandBuffer> commands, const char* what) const {
    [commands commit];
    [commands waitUntilCompleted];
    if (commands.status == MTLCommandBufferStatusCompleted) return;
    NSError* error = commands.error;
    std::string why = error ? utf8(error.localizedDescription) : "status " + std::to_string(static_cast<long>(commands.status));
    if (error && [error.domain isEqualToString:MTLCommandBufferErrorDomain] &&
        error.code == MTLCommandBufferErrorOutOfMemory)
        throw OutOfMemoryError(std::string("metal: ") + what + ": " + why);
    throw BackendError(std::string("metal: ") + what + " failed: " + why);
}

BackendEntry backend_entry() {
    return BackendEntry{
        "metal",
        [] { return devices().unavailable.empty() ? static_cast<int>(devices().list.size()) : 0; },
        [] { return devices().unavailable; },
        [](int device_id) -> std::shared_ptr<Context> {
            // create_context has checked the id against device_count.
            id<MTLDevice> dev = devices().list[static_cast<std::size_t>(device_id)];
            if (dev.maxThreadgroupMemoryLength < kThreadgroupBytes)
                throw NoDeviceError("metal: device " + std::to_string(device_id) + " ('" + utf8(dev.name) +
                                    "') has too little threadgroup memory for the kernels");
            return std::make_shared<MetalContext>(dev);
        },
    };
}

}  // namespace hive_gpu::metal
