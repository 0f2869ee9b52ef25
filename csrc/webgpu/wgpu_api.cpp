#include "webgpu/wgpu_api.hpp"

#include <cstdlib>
#include <mutex>
#include <vector>

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace hive_gpu::webgpu {

namespace {

#if defined(_WIN32)
using Handle = HMODULE;
Handle open_library(const std::string& p) { return LoadLibraryA(p.c_str()); }
void* symbol(Handle h, const char* name) { return reinterpret_cast<void*>(GetProcAddress(h, name)); }
std::string last_error() { return "LoadLibrary error " + std::to_string(GetLastError()); }
std::string module_dir() { return {}; }
const char* const kDefaultNames[] = {"wgpu_native.dll", "webgpu_dawn.dll"};
const char* const kWheelName = "wgpu_native-release.dll";
#else
using Handle = void*;
Handle open_library(const std::string& p) { return dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL); }
void* symbol(Handle h, const char* name) { return dlsym(h, name); }
std::string last_error() {
    const char* e = dlerror();
    return e ? e : "unknown dlopen error";
}
// Folder of the binary holding this code (the Python extension, or the user's program).
std::string module_dir() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&load_api), &info) == 0 || !info.dli_fname) return {};
    std::string p = info.dli_fname;
    auto slash = p.find_last_of('/');
    return slash == std::string::npos ? std::string(".") : p.substr(0, slash);
}
#if defined(__APPLE__)
const char* const kDefaultNames[] = {"libwgpu_native.dylib", "libwebgpu_dawn.dylib"};
const char* const kWheelName = "libwgpu_native-release.dylib";
#else
const char* const kDefaultNames[] = {"libwgpu_native.so", "libwebgpu_dawn.so"};
const char* const kWheelName = "libwgpu_native-release.so";
#endif
#endif

std::vector<std::string> candidates() {
    std::vector<std::string> c;
    if (const char* env = std::getenv("HIVE_GPU_WEBGPU_LIBRARY"); env && *env) c.emplace_back(env);
    std::string dir = module_dir();
    if (!dir.empty()) c.push_back(dir + "/../wgpu/resources/" + kWheelName);
#ifdef HIVE_GPU_WEBGPU_LIBRARY_HINT
    c.emplace_back(HIVE_GPU_WEBGPU_LIBRARY_HINT);
#endif
    for (const char* n : kDefaultNames) c.emplace_back(n);
    return c;
}

const Api* load(std::string* why) {
    static Api api;
    std::string tried;
    for (const auto& path : candidates()) {
        Handle h = open_library(path);
        if (!h) {
            tried += "\n  " + path + ": " + last_error();
            continue;
        }
        std::string missing;
#define HIVE_GPU_WGPU_RESOLVE(name)                                                  \
    api.name = reinterpret_cast<decltype(api.name)>(symbol(h, #name));               \
    if (!api.name) missing += std::string(missing.empty() ? "" : ", ") + #name;
        HIVE_GPU_WGPU_PROCS(HIVE_GPU_WGPU_RESOLVE)
#undef HIVE_GPU_WGPU_RESOLVE
        if (!missing.empty()) {
            tried += "\n  " + path + ": not a current webgpu.h implementation (missing " + missing + ")";
            continue;  // the handle stays open: closing libraries with threads is unsafe
        }
        api.wgpuDevicePoll = reinterpret_cast<decltype(api.wgpuDevicePoll)>(symbol(h, "wgpuDevicePoll"));
        api.path = path;
        return &api;
    }
    *why = "no WebGPU implementation could be loaded (pip install wgpu, or set "
           "HIVE_GPU_WEBGPU_LIBRARY to libwgpu_native or Dawn's libwebgpu_dawn); tried:" + tried;
    return nullptr;
}

}  // namespace

const Api* load_api(std::string* why) {
    static std::once_flag once;
    static const Api* api = nullptr;
    static std::string reason;
    std::call_once(once, [] { api = load(&reason); });
    if (!api && why) *why = reason;
    return api;
}

}  // namespace hive_gpu::webgpu
