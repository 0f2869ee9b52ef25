// hive_gpu._core._testing: hooks that only the tests call, kept out of the module's own
// namespace. Built into every build, since CI runs the tests against the normal wheel.
#include "core/id_index.hpp"
#include "cpu/screen.hpp"
#include "python/binding.hpp"

void bind_testing(py::module_& m) {
    py::module_ t = m.def_submodule("_testing", "test-only hooks; not part of the API");
    // The hash the id index places ids by (not stable across versions).
    t.def("id_hash", [](const std::string& id) { return hive_gpu::detail::hash_id(id); }, py::arg("id"));
    // How many CPU screens finished and how many gave up (cpu/screen.hpp).
    t.def("cpu_screen_counts", [] {
        const hive_gpu::cpu::ScreenCounts c = hive_gpu::cpu::screen_counts();
        return py::make_tuple(c.screened, c.abandoned);
    });
}
