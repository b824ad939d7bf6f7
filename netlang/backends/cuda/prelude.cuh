// netlang prelude: what generated kernels need, without headers (NVRTC has no include
// path). The host emulation defines the same names in emu.h.
#define NL_INF __int_as_float(0x7f800000)
__device__ __forceinline__ float nl_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ unsigned int nl_hash(unsigned int a, unsigned int b) {
    // A counter-based generator (a murmur3 finaliser of seed and element index).
    unsigned int h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u + (a << 6) + (a >> 2));
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    return h;
}
__device__ __forceinline__ float nl_uniform(unsigned int seed, unsigned int i) {
    return (nl_hash(seed, i) >> 8) * (1.0f / 16777216.0f);
}
