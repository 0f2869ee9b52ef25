// The kernels built for one instruction set (flags set in cpu.cmake).
#define HIVE_GPU_KERNEL_NS isa_generic
#define HIVE_GPU_KERNEL_ISA 0
#include "cpu/kernels_impl.inc"
