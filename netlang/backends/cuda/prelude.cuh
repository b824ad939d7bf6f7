// netlang prelude: what generated kernels need, without headers (NVRTC has no include
// path). The host emulation defines the same names in emu.h.
#define NL_INF __int_as_float(0x7f800000)
__device__ __forceinline__ float nl_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
// gelu as PyTorch: x Phi(x), or its tanh form; gradients given the input.
__device__ __forceinline__ float nl_gelu(float x, int tanh_form) {
    if (tanh_form) return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
    return 0.5f * x * (1.0f + erff(x * 0.7071067812f));
}
__device__ __forceinline__ float nl_gelu_grad(float x, int tanh_form) {
    if (tanh_form) {
        float t = tanhf(0.7978845608f * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * 0.7978845608f *
               (1.0f + 3.0f * 0.044715f * x * x);
    }
    return 0.5f * (1.0f + erff(x * 0.7071067812f)) + x * 0.3989422804f * expf(-0.5f * x * x);
}
__device__ __forceinline__ float nl_silu_grad(float x) {
    float s = nl_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}
__device__ __forceinline__ float nl_softplus(float x, float beta, float threshold) {
    float bx = beta * x;   // log(1 + exp(bx)) / beta, stable: max(bx, 0) + log1p(exp(-|bx|))
    return bx > threshold ? x : (fmaxf(bx, 0.0f) + log1pf(expf(-fabsf(bx)))) / beta;
}
// x rounded to nearest (ties to even) with `drop` low mantissa bits cleared: tf32 drops
// 13, bf16 16 (ops/elementwise.round_mantissa); infinities and NaN pass unchanged
__device__ __forceinline__ float nl_round_bits(float x, int drop) {
    unsigned int u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    u += (1u << (drop - 1)) - 1u + ((u >> drop) & 1u);
    return __uint_as_float(u & ~((1u << drop) - 1u));
}
// x rounded to IEEE half precision (ties to even) and back: infinite from 65520 (the tie
// above 65504), subnormal below 2^-14 (multiples of 2^-24), else 13 mantissa bits dropped
__device__ __forceinline__ float nl_round_half(float x) {
    float a = fabsf(x);
    if (!(a < NL_INF)) return x;
    if (a >= 65520.0f) return copysignf(NL_INF, x);
    if (a < 6.103515625e-05f) return rintf(x * 16777216.0f) * 5.9604644775390625e-08f;
    return nl_round_bits(x, 13);
}
__device__ __forceinline__ unsigned int nl_hash(unsigned int a, unsigned int b) {
    // A counter-based generator (a murmur3 finaliser of seed and element index).
    unsigned int h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u + (a << 6) + (a >> 2));
    h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
    return h;
}
__device__ __forceinline__ float nl_uniform(unsigned int seed, unsigned int i) {
    return (nl_hash(seed, i) >> 8) * (1.0f / 16777216.0f);
}
