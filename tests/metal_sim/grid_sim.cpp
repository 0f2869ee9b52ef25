#include "grid_sim.hpp"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <vector>

#include "metal/msl_shim.hpp"

namespace metal_sim {
namespace {

constexpr std::size_t kStackBytes = 256 * 1024;

struct Fiber {
    ucontext_t context;
    char* stack = nullptr;  // kStackBytes, owned by run_grid's pool
    bool done = false;
};

// The group being run on this OS thread.
struct Scheduler {
    ucontext_t main;
    std::vector<Fiber> fibers;
    std::uint32_t current = 0;
    Group group{};
    const std::function<void(std::uint32_t, Group)>* body = nullptr;
    std::exception_ptr error;
};

thread_local Scheduler* active = nullptr;

void fiber_entry() {
    Scheduler& s = *active;
    const std::uint32_t lid = s.current;
    try {
        (*s.body)(lid, s.group);
    } catch (...) {
        if (!s.error) s.error = std::current_exception();
    }
    s.fibers[lid].done = true;
    // Returning would end the OS thread through uc_link; switch back explicitly instead.
    swapcontext(&s.fibers[lid].context, &s.main);
}

// Points the fiber at fiber_entry on its own stack. Kept out of run_grid so that
// getcontext's setjmp-like return cannot clobber run_grid's loop variables.
void reset_fiber(Fiber& f) {
    f.done = false;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_entry, 0);
}

}  // namespace

void run_grid(const std::uint32_t groups[3], std::uint32_t threads,
              const std::function<void(std::uint32_t, Group)>& body) {
    // Stacks are kept for the next grid: allocating them per dispatch dominated run time.
    thread_local std::vector<std::unique_ptr<char[]>> stacks;
    while (stacks.size() < threads) stacks.emplace_back(new char[kStackBytes]);
    Scheduler s;
    s.body = &body;
    s.fibers.resize(threads);
    for (std::uint32_t t = 0; t < threads; ++t) s.fibers[t].stack = stacks[t].get();
    Scheduler* outer = active;
    active = &s;
    for (std::uint32_t gz = 0; gz < groups[2]; ++gz)
        for (std::uint32_t gy = 0; gy < groups[1]; ++gy)
            for (std::uint32_t gx = 0; gx < groups[0]; ++gx) {
                s.group = {gx, gy, gz};
                for (auto& f : s.fibers) reset_fiber(f);
                // Round robin: every live thread runs to its next barrier or to its end.
                for (;;) {
                    std::uint32_t finished = 0;
                    for (std::uint32_t t = 0; t < threads; ++t) {
                        if (s.fibers[t].done) {
                            ++finished;
                            continue;
                        }
                        s.current = t;
                        swapcontext(&s.main, &s.fibers[t].context);
                        if (s.fibers[t].done) ++finished;
                    }
                    if (s.error) {
                        active = outer;
                        std::rethrow_exception(s.error);
                    }
                    if (finished == threads) break;
                    if (finished != 0) {
                        active = outer;
                        throw std::runtime_error("threadgroup_barrier not reached by every thread of a threadgroup");
                    }
                }
            }
    active = outer;
}

}  // namespace metal_sim

void msl::threadgroup_barrier(msl::mem_flags) {
    metal_sim::Scheduler* s = metal_sim::active;
    if (s == nullptr) {
        std::fprintf(stderr, "threadgroup_barrier outside a simulated threadgroup\n");
        std::abort();
    }
    swapcontext(&s->fibers[s->current].context, &s->main);
}
