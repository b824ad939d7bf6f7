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


// e1.double_conv.conv0, e1.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k0_conv_relu(const float* __restrict__ v0, const float* __restrict__ v1, const float* __restrict__ v2, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 4096) return;
    int n = (int)(i / 4096); long long r = i % 4096;
    int o0 = (int)(r / 1024); r %= 1024;
    int o1 = (int)(r / 32); r %= 32;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 4) * 1;
    for (int ci = 0; ci < 1; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 32) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 32) continue;
                acc += v0[(long long)n * 1024 + (long long)(gbase + ci) * 1024 + i0 * 32 + i1 * 1] * v1[(o0 * 1 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v2[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// e1.double_conv.conv1, e1.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k1_conv_relu(const float* __restrict__ v4, const float* __restrict__ v5, const float* __restrict__ v6, float* __restrict__ cat, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 4096) return;
    int n = (int)(i / 4096); long long r = i % 4096;
    int o0 = (int)(r / 1024); r %= 1024;
    int o1 = (int)(r / 32); r %= 32;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 4) * 4;
    for (int ci = 0; ci < 4; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 32) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 32) continue;
                acc += v4[(long long)n * 4096 + (long long)(gbase + ci) * 1024 + i0 * 32 + i1 * 1] * v5[(o0 * 4 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v6[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
    cat[(long long)n * 8192 + 0 + (i - (long long)n * 4096)] = v;
}

// e2.maxpool0
// implements unet.net:17
extern "C" __global__ void k2_maxpool(const float* __restrict__ v8, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1024) return;
    int n = (int)(i / 1024); long long r = i % 1024;
    int o0 = (int)(r / 256); r %= 256;
    int o1 = (int)(r / 16); r %= 16;
    int o2 = (int)(r);
    float m = -NL_INF;
    for (int k0 = 0; k0 < 2; ++k0) {
        int i0 = o1 * 2 - 0 + k0 * 1;
        if (i0 < 0 || i0 >= 32) continue;
        for (int k1 = 0; k1 < 2; ++k1) {
            int i1 = o2 * 2 - 0 + k1 * 1;
            if (i1 < 0 || i1 >= 32) continue;
            float t = v8[(long long)n * 4096 + (long long)o0 * 1024 + i0 * 32 + i1 * 1];
            if (t > m || t != t) m = t;
        }
    }
    float v = m;
    out[i] = v;
}

// e2.double_conv.conv0, e2.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k3_conv_relu(const float* __restrict__ v9, const float* __restrict__ v10, const float* __restrict__ v11, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 2048) return;
    int n = (int)(i / 2048); long long r = i % 2048;
    int o0 = (int)(r / 256); r %= 256;
    int o1 = (int)(r / 16); r %= 16;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 8) * 4;
    for (int ci = 0; ci < 4; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 16) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 16) continue;
                acc += v9[(long long)n * 1024 + (long long)(gbase + ci) * 256 + i0 * 16 + i1 * 1] * v10[(o0 * 4 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v11[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// e2.double_conv.conv1, e2.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k4_conv_relu(const float* __restrict__ v13, const float* __restrict__ v14, const float* __restrict__ v15, float* __restrict__ cat, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 2048) return;
    int n = (int)(i / 2048); long long r = i % 2048;
    int o0 = (int)(r / 256); r %= 256;
    int o1 = (int)(r / 16); r %= 16;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 8) * 8;
    for (int ci = 0; ci < 8; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 16) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 16) continue;
                acc += v13[(long long)n * 2048 + (long long)(gbase + ci) * 256 + i0 * 16 + i1 * 1] * v14[(o0 * 8 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v15[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
    cat[(long long)n * 4096 + 0 + (i - (long long)n * 2048)] = v;
}

// e3.maxpool0
// implements unet.net:18
extern "C" __global__ void k5_maxpool(const float* __restrict__ v17, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 512) return;
    int n = (int)(i / 512); long long r = i % 512;
    int o0 = (int)(r / 64); r %= 64;
    int o1 = (int)(r / 8); r %= 8;
    int o2 = (int)(r);
    float m = -NL_INF;
    for (int k0 = 0; k0 < 2; ++k0) {
        int i0 = o1 * 2 - 0 + k0 * 1;
        if (i0 < 0 || i0 >= 16) continue;
        for (int k1 = 0; k1 < 2; ++k1) {
            int i1 = o2 * 2 - 0 + k1 * 1;
            if (i1 < 0 || i1 >= 16) continue;
            float t = v17[(long long)n * 2048 + (long long)o0 * 256 + i0 * 16 + i1 * 1];
            if (t > m || t != t) m = t;
        }
    }
    float v = m;
    out[i] = v;
}

// e3.double_conv.conv0, e3.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k6_conv_relu(const float* __restrict__ v18, const float* __restrict__ v19, const float* __restrict__ v20, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1024) return;
    int n = (int)(i / 1024); long long r = i % 1024;
    int o0 = (int)(r / 64); r %= 64;
    int o1 = (int)(r / 8); r %= 8;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 16) * 8;
    for (int ci = 0; ci < 8; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 8) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 8) continue;
                acc += v18[(long long)n * 512 + (long long)(gbase + ci) * 64 + i0 * 8 + i1 * 1] * v19[(o0 * 8 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v20[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// e3.double_conv.conv1, e3.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k7_conv_relu(const float* __restrict__ v22, const float* __restrict__ v23, const float* __restrict__ v24, float* __restrict__ cat, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1024) return;
    int n = (int)(i / 1024); long long r = i % 1024;
    int o0 = (int)(r / 64); r %= 64;
    int o1 = (int)(r / 8); r %= 8;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 16) * 16;
    for (int ci = 0; ci < 16; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 8) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 8) continue;
                acc += v22[(long long)n * 1024 + (long long)(gbase + ci) * 64 + i0 * 8 + i1 * 1] * v23[(o0 * 16 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v24[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
    cat[(long long)n * 2048 + 0 + (i - (long long)n * 1024)] = v;
}

// e4.maxpool0
// implements unet.net:19
extern "C" __global__ void k8_maxpool(const float* __restrict__ v26, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 256) return;
    int n = (int)(i / 256); long long r = i % 256;
    int o0 = (int)(r / 16); r %= 16;
    int o1 = (int)(r / 4); r %= 4;
    int o2 = (int)(r);
    float m = -NL_INF;
    for (int k0 = 0; k0 < 2; ++k0) {
        int i0 = o1 * 2 - 0 + k0 * 1;
        if (i0 < 0 || i0 >= 8) continue;
        for (int k1 = 0; k1 < 2; ++k1) {
            int i1 = o2 * 2 - 0 + k1 * 1;
            if (i1 < 0 || i1 >= 8) continue;
            float t = v26[(long long)n * 1024 + (long long)o0 * 64 + i0 * 8 + i1 * 1];
            if (t > m || t != t) m = t;
        }
    }
    float v = m;
    out[i] = v;
}

// e4.double_conv.conv0, e4.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k9_conv_relu(const float* __restrict__ v27, const float* __restrict__ v28, const float* __restrict__ v29, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 512) return;
    int n = (int)(i / 512); long long r = i % 512;
    int o0 = (int)(r / 16); r %= 16;
    int o1 = (int)(r / 4); r %= 4;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 32) * 16;
    for (int ci = 0; ci < 16; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 4) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 4) continue;
                acc += v27[(long long)n * 256 + (long long)(gbase + ci) * 16 + i0 * 4 + i1 * 1] * v28[(o0 * 16 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v29[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// e4.double_conv.conv1, e4.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k10_conv_relu(const float* __restrict__ v31, const float* __restrict__ v32, const float* __restrict__ v33, float* __restrict__ cat, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 512) return;
    int n = (int)(i / 512); long long r = i % 512;
    int o0 = (int)(r / 16); r %= 16;
    int o1 = (int)(r / 4); r %= 4;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 32) * 32;
    for (int ci = 0; ci < 32; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 4) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 4) continue;
                acc += v31[(long long)n * 512 + (long long)(gbase + ci) * 16 + i0 * 4 + i1 * 1] * v32[(o0 * 32 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v33[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
    cat[(long long)n * 1024 + 0 + (i - (long long)n * 512)] = v;
}

// mid.maxpool0
// implements unet.net:20
extern "C" __global__ void k11_maxpool(const float* __restrict__ v35, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 128) return;
    int n = (int)(i / 128); long long r = i % 128;
    int o0 = (int)(r / 4); r %= 4;
    int o1 = (int)(r / 2); r %= 2;
    int o2 = (int)(r);
    float m = -NL_INF;
    for (int k0 = 0; k0 < 2; ++k0) {
        int i0 = o1 * 2 - 0 + k0 * 1;
        if (i0 < 0 || i0 >= 4) continue;
        for (int k1 = 0; k1 < 2; ++k1) {
            int i1 = o2 * 2 - 0 + k1 * 1;
            if (i1 < 0 || i1 >= 4) continue;
            float t = v35[(long long)n * 512 + (long long)o0 * 16 + i0 * 4 + i1 * 1];
            if (t > m || t != t) m = t;
        }
    }
    float v = m;
    out[i] = v;
}

// mid.double_conv.conv0, mid.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k12_conv_relu(const float* __restrict__ v36, const float* __restrict__ v37, const float* __restrict__ v38, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 256) return;
    int n = (int)(i / 256); long long r = i % 256;
    int o0 = (int)(r / 4); r %= 4;
    int o1 = (int)(r / 2); r %= 2;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 64) * 32;
    for (int ci = 0; ci < 32; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 2) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 2) continue;
                acc += v36[(long long)n * 128 + (long long)(gbase + ci) * 4 + i0 * 2 + i1 * 1] * v37[(o0 * 32 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v38[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// mid.double_conv.conv1, mid.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k13_conv_relu(const float* __restrict__ v40, const float* __restrict__ v41, const float* __restrict__ v42, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 256) return;
    int n = (int)(i / 256); long long r = i % 256;
    int o0 = (int)(r / 4); r %= 4;
    int o1 = (int)(r / 2); r %= 2;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 64) * 64;
    for (int ci = 0; ci < 64; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 2) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 2) continue;
                acc += v40[(long long)n * 256 + (long long)(gbase + ci) * 4 + i0 * 2 + i1 * 1] * v41[(o0 * 64 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v42[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// d4.up.conv_transpose0
// implements unet.net:11
extern "C" __global__ void k14_conv_transpose(const float* __restrict__ v44, const float* __restrict__ v45, const float* __restrict__ v46, float* __restrict__ cat, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 512) return;
    int n = (int)(i / 512); long long r = i % 512;
    int o0 = (int)(r / 16); r %= 16;
    int o1 = (int)(r / 4); r %= 4;
    int o2 = (int)(r);
    float acc = 0.0f;
    int grp = o0 / 32; int oc = o0 % 32;
    for (int cj = 0; cj < 64; ++cj) {
        int cx = grp * 64 + cj;
        for (int k0 = 0; k0 < 2; ++k0) {
            int t0 = o1 + 0 - k0 * 1;
            if (t0 < 0 || t0 % 2 != 0) continue;
            int i0 = t0 / 2;
            if (i0 >= 2) continue;
            for (int k1 = 0; k1 < 2; ++k1) {
                int t1 = o2 + 0 - k1 * 1;
                if (t1 < 0 || t1 % 2 != 0) continue;
                int i1 = t1 / 2;
                if (i1 >= 2) continue;
                acc += v44[(long long)n * 256 + (long long)cx * 4 + i0 * 2 + i1 * 1] * v45[(cx * 32 + oc) * 4 + k0 * 2 + k1 * 1];
            }
        }
    }
    float v = acc + v46[o0];
    cat[(long long)n * 1024 + 512 + (i - (long long)n * 512)] = v;
}

// d4.up.double_conv.conv0, d4.up.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k15_conv_relu(const float* __restrict__ v48, const float* __restrict__ v49, const float* __restrict__ v50, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 512) return;
    int n = (int)(i / 512); long long r = i % 512;
    int o0 = (int)(r / 16); r %= 16;
    int o1 = (int)(r / 4); r %= 4;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 32) * 64;
    for (int ci = 0; ci < 64; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 4) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 4) continue;
                acc += v48[(long long)n * 1024 + (long long)(gbase + ci) * 16 + i0 * 4 + i1 * 1] * v49[(o0 * 64 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v50[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// d4.up.double_conv.conv1, d4.up.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k16_conv_relu(const float* __restrict__ v52, const float* __restrict__ v53, const float* __restrict__ v54, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 512) return;
    int n = (int)(i / 512); long long r = i % 512;
    int o0 = (int)(r / 16); r %= 16;
    int o1 = (int)(r / 4); r %= 4;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 32) * 32;
    for (int ci = 0; ci < 32; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 4) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 4) continue;
                acc += v52[(long long)n * 512 + (long long)(gbase + ci) * 16 + i0 * 4 + i1 * 1] * v53[(o0 * 32 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v54[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// d3.up.conv_transpose0
// implements unet.net:11
extern "C" __global__ void k17_conv_transpose(const float* __restrict__ v56, const float* __restrict__ v57, const float* __restrict__ v58, float* __restrict__ cat, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1024) return;
    int n = (int)(i / 1024); long long r = i % 1024;
    int o0 = (int)(r / 64); r %= 64;
    int o1 = (int)(r / 8); r %= 8;
    int o2 = (int)(r);
    float acc = 0.0f;
    int grp = o0 / 16; int oc = o0 % 16;
    for (int cj = 0; cj < 32; ++cj) {
        int cx = grp * 32 + cj;
        for (int k0 = 0; k0 < 2; ++k0) {
            int t0 = o1 + 0 - k0 * 1;
            if (t0 < 0 || t0 % 2 != 0) continue;
            int i0 = t0 / 2;
            if (i0 >= 4) continue;
            for (int k1 = 0; k1 < 2; ++k1) {
                int t1 = o2 + 0 - k1 * 1;
                if (t1 < 0 || t1 % 2 != 0) continue;
                int i1 = t1 / 2;
                if (i1 >= 4) continue;
                acc += v56[(long long)n * 512 + (long long)cx * 16 + i0 * 4 + i1 * 1] * v57[(cx * 16 + oc) * 4 + k0 * 2 + k1 * 1];
            }
        }
    }
    float v = acc + v58[o0];
    cat[(long long)n * 2048 + 1024 + (i - (long long)n * 1024)] = v;
}

// d3.up.double_conv.conv0, d3.up.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k18_conv_relu(const float* __restrict__ v60, const float* __restrict__ v61, const float* __restrict__ v62, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1024) return;
    int n = (int)(i / 1024); long long r = i % 1024;
    int o0 = (int)(r / 64); r %= 64;
    int o1 = (int)(r / 8); r %= 8;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 16) * 32;
    for (int ci = 0; ci < 32; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 8) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 8) continue;
                acc += v60[(long long)n * 2048 + (long long)(gbase + ci) * 64 + i0 * 8 + i1 * 1] * v61[(o0 * 32 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v62[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// d3.up.double_conv.conv1, d3.up.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k19_conv_relu(const float* __restrict__ v64, const float* __restrict__ v65, const float* __restrict__ v66, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1024) return;
    int n = (int)(i / 1024); long long r = i % 1024;
    int o0 = (int)(r / 64); r %= 64;
    int o1 = (int)(r / 8); r %= 8;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 16) * 16;
    for (int ci = 0; ci < 16; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 8) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 8) continue;
                acc += v64[(long long)n * 1024 + (long long)(gbase + ci) * 64 + i0 * 8 + i1 * 1] * v65[(o0 * 16 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v66[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// d2.up.conv_transpose0
// implements unet.net:11
extern "C" __global__ void k20_conv_transpose(const float* __restrict__ v68, const float* __restrict__ v69, const float* __restrict__ v70, float* __restrict__ cat, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 2048) return;
    int n = (int)(i / 2048); long long r = i % 2048;
    int o0 = (int)(r / 256); r %= 256;
    int o1 = (int)(r / 16); r %= 16;
    int o2 = (int)(r);
    float acc = 0.0f;
    int grp = o0 / 8; int oc = o0 % 8;
    for (int cj = 0; cj < 16; ++cj) {
        int cx = grp * 16 + cj;
        for (int k0 = 0; k0 < 2; ++k0) {
            int t0 = o1 + 0 - k0 * 1;
            if (t0 < 0 || t0 % 2 != 0) continue;
            int i0 = t0 / 2;
            if (i0 >= 8) continue;
            for (int k1 = 0; k1 < 2; ++k1) {
                int t1 = o2 + 0 - k1 * 1;
                if (t1 < 0 || t1 % 2 != 0) continue;
                int i1 = t1 / 2;
                if (i1 >= 8) continue;
                acc += v68[(long long)n * 1024 + (long long)cx * 64 + i0 * 8 + i1 * 1] * v69[(cx * 8 + oc) * 4 + k0 * 2 + k1 * 1];
            }
        }
    }
    float v = acc + v70[o0];
    cat[(long long)n * 4096 + 2048 + (i - (long long)n * 2048)] = v;
}

// d2.up.double_conv.conv0, d2.up.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k21_conv_relu(const float* __restrict__ v72, const float* __restrict__ v73, const float* __restrict__ v74, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 2048) return;
    int n = (int)(i / 2048); long long r = i % 2048;
    int o0 = (int)(r / 256); r %= 256;
    int o1 = (int)(r / 16); r %= 16;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 8) * 16;
    for (int ci = 0; ci < 16; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 16) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 16) continue;
                acc += v72[(long long)n * 4096 + (long long)(gbase + ci) * 256 + i0 * 16 + i1 * 1] * v73[(o0 * 16 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v74[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// d2.up.double_conv.conv1, d2.up.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k22_conv_relu(const float* __restrict__ v76, const float* __restrict__ v77, const float* __restrict__ v78, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 2048) return;
    int n = (int)(i / 2048); long long r = i % 2048;
    int o0 = (int)(r / 256); r %= 256;
    int o1 = (int)(r / 16); r %= 16;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 8) * 8;
    for (int ci = 0; ci < 8; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 16) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 16) continue;
                acc += v76[(long long)n * 2048 + (long long)(gbase + ci) * 256 + i0 * 16 + i1 * 1] * v77[(o0 * 8 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v78[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// d1.up.conv_transpose0
// implements unet.net:11
extern "C" __global__ void k23_conv_transpose(const float* __restrict__ v80, const float* __restrict__ v81, const float* __restrict__ v82, float* __restrict__ cat, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 4096) return;
    int n = (int)(i / 4096); long long r = i % 4096;
    int o0 = (int)(r / 1024); r %= 1024;
    int o1 = (int)(r / 32); r %= 32;
    int o2 = (int)(r);
    float acc = 0.0f;
    int grp = o0 / 4; int oc = o0 % 4;
    for (int cj = 0; cj < 8; ++cj) {
        int cx = grp * 8 + cj;
        for (int k0 = 0; k0 < 2; ++k0) {
            int t0 = o1 + 0 - k0 * 1;
            if (t0 < 0 || t0 % 2 != 0) continue;
            int i0 = t0 / 2;
            if (i0 >= 16) continue;
            for (int k1 = 0; k1 < 2; ++k1) {
                int t1 = o2 + 0 - k1 * 1;
                if (t1 < 0 || t1 % 2 != 0) continue;
                int i1 = t1 / 2;
                if (i1 >= 16) continue;
                acc += v80[(long long)n * 2048 + (long long)cx * 256 + i0 * 16 + i1 * 1] * v81[(cx * 4 + oc) * 4 + k0 * 2 + k1 * 1];
            }
        }
    }
    float v = acc + v82[o0];
    cat[(long long)n * 8192 + 4096 + (i - (long long)n * 4096)] = v;
}

// d1.up.double_conv.conv0, d1.up.double_conv.relu0
// implements unet.net:5
extern "C" __global__ void k24_conv_relu(const float* __restrict__ v84, const float* __restrict__ v85, const float* __restrict__ v86, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 4096) return;
    int n = (int)(i / 4096); long long r = i % 4096;
    int o0 = (int)(r / 1024); r %= 1024;
    int o1 = (int)(r / 32); r %= 32;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 4) * 8;
    for (int ci = 0; ci < 8; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 32) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 32) continue;
                acc += v84[(long long)n * 8192 + (long long)(gbase + ci) * 1024 + i0 * 32 + i1 * 1] * v85[(o0 * 8 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v86[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// d1.up.double_conv.conv1, d1.up.double_conv.relu1
// implements unet.net:5
extern "C" __global__ void k25_conv_relu(const float* __restrict__ v88, const float* __restrict__ v89, const float* __restrict__ v90, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 4096) return;
    int n = (int)(i / 4096); long long r = i % 4096;
    int o0 = (int)(r / 1024); r %= 1024;
    int o1 = (int)(r / 32); r %= 32;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 4) * 4;
    for (int ci = 0; ci < 4; ++ci) {
        for (int k0 = 0; k0 < 3; ++k0) {
            int i0 = o1 * 1 - 1 + k0 * 1;
            if (i0 < 0 || i0 >= 32) continue;
            for (int k1 = 0; k1 < 3; ++k1) {
                int i1 = o2 * 1 - 1 + k1 * 1;
                if (i1 < 0 || i1 >= 32) continue;
                acc += v88[(long long)n * 4096 + (long long)(gbase + ci) * 1024 + i0 * 32 + i1 * 1] * v89[(o0 * 4 + ci) * 9 + k0 * 3 + k1 * 1];
            }
        }
    }
    float v = acc + v90[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// mask.conv0, mask.sigmoid0
// implements unet.net:26
extern "C" __global__ void k26_conv_sigmoid(const float* __restrict__ v92, const float* __restrict__ v93, const float* __restrict__ v94, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1024) return;
    int n = (int)(i / 1024); long long r = i % 1024;
    int o0 = (int)(r / 1024); r %= 1024;
    int o1 = (int)(r / 32); r %= 32;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 1) * 4;
    for (int ci = 0; ci < 4; ++ci) {
        for (int k0 = 0; k0 < 1; ++k0) {
            int i0 = o1 * 1 - 0 + k0 * 1;
            if (i0 < 0 || i0 >= 32) continue;
            for (int k1 = 0; k1 < 1; ++k1) {
                int i1 = o2 * 1 - 0 + k1 * 1;
                if (i1 < 0 || i1 >= 32) continue;
                acc += v92[(long long)n * 4096 + (long long)(gbase + ci) * 1024 + i0 * 32 + i1 * 1] * v93[(o0 * 4 + ci) * 1 + k0 * 1 + k1 * 1];
            }
        }
    }
    float v = acc + v94[o0];
    v = nl_sigmoid(v);  // sigmoid
    out[i] = v;
}
