// The kernels built for one instruction set (flags set in cpu.cmake).
#define HIVE_GPU_KERNEL_NS isa_avx2
#define HIVE_GPU_KERNEL_ISA 1
#include "cpu/kernels_impl.inc"
