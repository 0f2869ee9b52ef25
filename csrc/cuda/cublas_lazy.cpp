#include "cuda/cublas_lazy.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <type_traits>
#include <mutex>
#include <vector>

namespace hive_gpu::cuda::lazy {

namespace {

struct Loaded {
    CublasApi api;
    bool ok = false;
    std::string reason;
};

// Folder of the binary that holds this code (the Python module, or a C++ program).
std::string own_folder() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&own_folder), &info) == 0 || info.dli_fname == nullptr) return "";
    std::string path = info.dli_fname;
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? "" : path.substr(0, slash);
}

Loaded load() {
    Loaded r;
    // Where cuBLAS may be, in order: the nvidia-cublas wheel beside the installed package;
    // the loader's own search (LD_LIBRARY_PATH, the system's library folders); a CUDA
    // toolkit (CUDA_PATH, /usr/local/cuda); the folder it was found in at build time.
    std::vector<std::string> candidates;
    const std::string here = own_folder();
    if (!here.empty()) candidates.push_back(here + "/../nvidia/cu13/lib/libcublas.so.13");
    candidates.push_back("libcublas.so.13");
    if (const char* cuda = std::getenv("CUDA_PATH")) candidates.push_back(std::string(cuda) + "/lib64/libcublas.so.13");
    candidates.push_back("/usr/local/cuda/lib64/libcublas.so.13");
#ifdef HIVE_GPU_CUBLAS_LIBRARY_HINT
    candidates.push_back(HIVE_GPU_CUBLAS_LIBRARY_HINT);
#endif
    void* h = nullptr;
    std::string errors;
    for (const auto& c : candidates) {
        h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (h) break;
        const char* e = dlerror();
        errors += "\n  " + (e ? std::string(e) : c + ": not found");
    }
    if (!h) {
        r.reason = "cuBLAS (libcublas.so.13) could not be loaded; pip install nvidia-cublas "
                   "(the `cuda` extra) or install the CUDA toolkit. Tried:" + errors;
        return r;
    }
    auto sym = [&](auto& fn, const char* name) {
        fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
        if (!fn) r.reason += std::string(r.reason.empty() ? "" : ", ") + name;
    };
    sym(r.api.create, "cublasCreate_v2");
    sym(r.api.destroy, "cublasDestroy_v2");
    sym(r.api.set_stream, "cublasSetStream_v2");
    sym(r.api.set_math_mode, "cublasSetMathMode");
    sym(r.api.set_workspace, "cublasSetWorkspace_v2");
    sym(r.api.sgemm, "cublasSgemm_v2");
    sym(r.api.gemm_ex, "cublasGemmEx");
    if (!r.reason.empty()) {
        r.reason = "the loaded cuBLAS lacks " + r.reason;
        return r;
    }
    r.ok = true;
    return r;
}

const Loaded& loaded() {
    static const Loaded l = load();
    return l;
}

}  // namespace

const CublasApi* cublas() { return loaded().ok ? &loaded().api : nullptr; }

std::string cublas_unavailable_reason() { return loaded().reason; }

}  // namespace hive_gpu::cuda::lazy
