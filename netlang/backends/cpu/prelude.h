// netlang C prelude: what the kernel layer's C rendering needs (the CUDA prelude's helpers
// for the host). Kernels are plain functions; map and reduce loops are split over the
// cores by OpenMP when the compiler has it (without it, `#pragma omp` is ignored).
#include <math.h>
#include <stdint.h>
#define NL_INF INFINITY
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float nl_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline unsigned int nl_hash(unsigned int a, unsigned int b) {
    // The CUDA prelude's counter-based generator, bit for bit.
    unsigned int h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u + (a << 6) + (a >> 2));
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    return h;
}
static inline float nl_uniform(unsigned int seed, unsigned int i) {
    return (nl_hash(seed, i) >> 8) * (1.0f / 16777216.0f);
}
