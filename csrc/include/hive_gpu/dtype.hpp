// The storage dtype of a VectorStorage: how an engine keeps its rows. Queries, scores and
// everything read back are float32; rows are rounded once, at insert, to nearest even.
// The host conversions here are the reference every engine's device conversion must match
// bit for bit (tests compare against them).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace hive_gpu {

// The value is the file format's dtype code (docs/format.md): never renumber.
enum class Dtype : std::uint8_t { Float32 = 0, Float16 = 1, BFloat16 = 2 };

const char* dtype_name(Dtype d);                 // "float32" | "float16" | "bfloat16"
Dtype dtype_from_name(const std::string& name);  // also "fp32"/"f32", "fp16"/"f16"/"half", "bf16"; else InvalidDtypeError

constexpr std::size_t dtype_size(Dtype d) { return d == Dtype::Float32 ? 4 : 2; }

// Largest finite magnitude of each dtype. A float32 value whose magnitude exceeds it does not
// fit and is refused (NonFiniteValueError) rather than stored as infinity.
inline constexpr float kFloat16Max = 65504.0f;
inline constexpr float kBFloat16Max = 3.38953139e38f;  // 0x7F7F0000
inline constexpr float dtype_max(Dtype d) {
    return d == Dtype::Float16 ? kFloat16Max : d == Dtype::BFloat16 ? kBFloat16Max : 3.40282347e38f;
}

inline std::uint32_t float_bits(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float bits_float(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// bfloat16: the top half of a float32, rounded to nearest even. Input must be finite and fit.
inline std::uint16_t float_to_bf16(float f) {
    const std::uint32_t u = float_bits(f);
    return static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_to_float(std::uint16_t h) { return bits_float(static_cast<std::uint32_t>(h) << 16); }

// IEEE binary16, rounded to nearest even (subnormals kept). Input must be finite and fit.
inline std::uint16_t float_to_f16(float f) {
    const std::uint32_t u = float_bits(f);
    const std::uint32_t sign = (u >> 16) & 0x8000u;
    const std::uint32_t a = u & 0x7FFFFFFFu;
    if (a >= 0x38800000u) {  // |f| >= 2^-14: normal half (or overflow, which the caller refused)
        const std::uint32_t r = a + 0x0FFFu + ((a >> 13) & 1u) - 0x38000000u;  // rebias 127 -> 15
        return static_cast<std::uint16_t>(sign | (r >> 13));
    }
    if (a < 0x33000000u) return static_cast<std::uint16_t>(sign);  // below half the smallest subnormal
    // Subnormal half: value = m * 2^-24 with m = round(|f| * 2^24).
    const std::uint32_t e = a >> 23;
    const std::uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14 + (113 - e) with e in [102, 112]
    const std::uint32_t half_ulp = 1u << (shift - 1);
    const std::uint32_t rest = mant & ((1u << shift) - 1u);
    std::uint32_t m = mant >> shift;
    if (rest > half_ulp || (rest == half_ulp && (m & 1u))) ++m;
    return static_cast<std::uint16_t>(sign | m);
}
inline float f16_to_float(std::uint16_t h) {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t e = (h >> 10) & 0x1Fu;
    const std::uint32_t m = h & 0x3FFu;
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float32
        const float v = static_cast<float>(m) * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (e == 31) return bits_float(sign | 0x7F800000u | (m << 13));
    return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

// One element of `d` (at p) as float32.
inline float load_as_float(const void* p, Dtype d) {
    switch (d) {
        case Dtype::Float16: { std::uint16_t h; std::memcpy(&h, p, 2); return f16_to_float(h); }
        case Dtype::BFloat16: { std::uint16_t h; std::memcpy(&h, p, 2); return bf16_to_float(h); }
        default: { float f; std::memcpy(&f, p, 4); return f; }
    }
}

}  // namespace hive_gpu
