// The webgpu.h entry points the backend uses, resolved with dlopen at run time so that
// the library loads (and reports WebGPU unavailable) where no implementation is installed.
#pragma once

#include <string>

#include <webgpu.h>

namespace hive_gpu::webgpu {

#define HIVE_GPU_WGPU_PROCS(X)                                                                  \
    X(wgpuCreateInstance) X(wgpuInstanceRequestAdapter) X(wgpuInstanceProcessEvents)            \
    X(wgpuInstanceRelease) X(wgpuAdapterGetInfo) X(wgpuAdapterGetLimits) X(wgpuAdapterHasFeature)                        \
    X(wgpuAdapterInfoFreeMembers) X(wgpuAdapterRequestDevice) X(wgpuAdapterRelease)             \
    X(wgpuDeviceGetQueue) X(wgpuDeviceCreateBuffer) X(wgpuDeviceCreateShaderModule)             \
    X(wgpuDeviceCreateComputePipeline) X(wgpuDeviceCreateBindGroupLayout)                       \
    X(wgpuDeviceCreatePipelineLayout) X(wgpuDeviceCreateBindGroup)                              \
    X(wgpuDeviceCreateCommandEncoder) X(wgpuDevicePushErrorScope) X(wgpuDevicePopErrorScope)    \
    X(wgpuDeviceRelease) X(wgpuQueueSubmit) X(wgpuQueueWriteBuffer) X(wgpuQueueRelease)         \
    X(wgpuBufferMapAsync) X(wgpuBufferGetMappedRange) X(wgpuBufferGetConstMappedRange)          \
    X(wgpuBufferUnmap) X(wgpuBufferDestroy) X(wgpuBufferRelease)                                \
    X(wgpuCommandEncoderBeginComputePass) X(wgpuCommandEncoderCopyBufferToBuffer)               \
    X(wgpuCommandEncoderFinish) X(wgpuCommandEncoderRelease) X(wgpuComputePassEncoderSetPipeline) \
    X(wgpuComputePassEncoderSetBindGroup) X(wgpuComputePassEncoderDispatchWorkgroups)           \
    X(wgpuComputePassEncoderEnd) X(wgpuComputePassEncoderRelease) X(wgpuCommandBufferRelease)   \
    X(wgpuBindGroupRelease) X(wgpuBindGroupLayoutRelease) X(wgpuPipelineLayoutRelease)          \
    X(wgpuComputePipelineRelease) X(wgpuShaderModuleRelease)

struct Api {
#define HIVE_GPU_WGPU_MEMBER(name) decltype(&::name) name = nullptr;
    HIVE_GPU_WGPU_PROCS(HIVE_GPU_WGPU_MEMBER)
#undef HIVE_GPU_WGPU_MEMBER
    // wgpu-native's blocking wait (wgpu.h), the documented way to complete its buffer maps.
    // Null with other implementations (Dawn), which complete them in ProcessEvents.
    WGPUBool (*wgpuDevicePoll)(WGPUDevice, WGPUBool, const void*) = nullptr;
    std::string path;  // the library that was loaded
};

// The loaded implementation, or nullptr with the reason in *why. Loaded once per process.
// Search order: $HIVE_GPU_WEBGPU_LIBRARY, the `wgpu` package beside this module
// (../wgpu/resources), the library found at build time, then the loader's default paths.
const Api* load_api(std::string* why);

inline WGPUStringView view(const char* s) { return WGPUStringView{s, WGPU_STRLEN}; }
inline std::string str(WGPUStringView v) {
    if (!v.data) return {};
    return v.length == WGPU_STRLEN ? std::string(v.data) : std::string(v.data, v.length);
}

}  // namespace hive_gpu::webgpu
