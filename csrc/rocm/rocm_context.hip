// The ROCm context is the CUDA context compiled by HIP (csrc/cuda/cuda_context.cu, listed in
// this folder's CMakeLists.txt: the stream-ordered memory pool, the pinned staging buffers,
// make_engine() returning the shared engine). What differs is here: the backend entry, and
// device_info() from hipGetDeviceProperties & co (rocm_device.hip).
#include "cuda/cuda_context.hpp"

#include <memory>
#include <string>

#include "hive_gpu/backends.hpp"
#include "hive_gpu/error.hpp"
#include "rocm/rocm_device.hpp"

namespace hive_gpu {

DeviceInfo cuda::CudaContext::device_info() const { return rocm::describe_device(device()); }

namespace rocm {

// The context class of this backend (backend() says "rocm" in a HIP build).
using RocmContext = cuda::CudaContext;

BackendEntry backend_entry() {
    return BackendEntry{
        "rocm",
        [] { return probe().count; },
        [] { return probe().reason; },
        // create_context has checked the id against device_count.
        [](int device_id) -> std::shared_ptr<Context> { return std::make_shared<RocmContext>(device_id); },
    };
}

}  // namespace rocm
}  // namespace hive_gpu
