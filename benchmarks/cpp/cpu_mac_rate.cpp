// Multiply-adds per second of one core, float32 FMA against the 16-bit integer multiply-add
// (vpmaddwd, then vpaddd into 32-bit sums): whether an integer screen of 16-bit rows could
// out-run float32 arithmetic on an AVX2 CPU without AVX-512 FP16/BF16 or VNNI. Eight
// independent accumulators per loop, each with its own operand, so neither the latency nor
// a hoisted product is what is timed.
//
//   cpu_mac_rate            (x86-64 with AVX2 and FMA; elsewhere it says so and exits 77)
#include <chrono>
#include <cstdio>

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

int main() {
    constexpr long kSteps = 200000000;
    __m256 f[8];
    const __m256 fb = _mm256_set1_ps(0.5f), fc = _mm256_set1_ps(0.5f);  // converges to 1: no infinities
    for (int i = 0; i < 8; ++i) f[i] = _mm256_set1_ps(static_cast<float>(i));
    auto t0 = std::chrono::steady_clock::now();
    for (long n = 0; n < kSteps; ++n) {
        for (int i = 0; i < 8; ++i) f[i] = _mm256_fmadd_ps(f[i], fb, fc);
    }
    auto t1 = std::chrono::steady_clock::now();
    const double fma_s = std::chrono::duration<double>(t1 - t0).count();
    float fsum = 0.0f;
    for (int i = 0; i < 8; ++i) fsum += _mm256_cvtss_f32(f[i]);

    __m256i acc[8], w[8];
    __m256i x = _mm256_set1_epi16(3);
    const __m256i flip = _mm256_set1_epi16(5);
    for (int i = 0; i < 8; ++i) {
        acc[i] = _mm256_set1_epi32(i);
        w[i] = _mm256_set1_epi16(static_cast<short>(i + 1));
    }
    t0 = std::chrono::steady_clock::now();
    for (long n = 0; n < kSteps; ++n) {
        for (int i = 0; i < 8; ++i) acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(x, w[i]));
        x = _mm256_xor_si256(x, flip);
    }
    t1 = std::chrono::steady_clock::now();
    const double mad_s = std::chrono::duration<double>(t1 - t0).count();
    int isum = 0;
    for (int i = 0; i < 8; ++i) isum += _mm256_extract_epi32(acc[i], 0);

    const double fma_rate = kSteps * 8.0 * 8.0 / fma_s, mad_rate = kSteps * 8.0 * 16.0 / mad_s;
    std::printf("float32 FMA:            %6.1f G multiply-adds/s\n", fma_rate / 1e9);
    std::printf("int16 vpmaddwd+vpaddd:  %6.1f G multiply-adds/s (%.2fx)\n", mad_rate / 1e9, mad_rate / fma_rate);
    std::printf("(checksums %g %d)\n", static_cast<double>(fsum), isum);
    return 0;
}
#else
int main() {
    std::printf("cpu_mac_rate: needs x86-64 with AVX2 and FMA\n");
    return 77;
}
#endif
