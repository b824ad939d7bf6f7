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


// features.conv0, features.relu0
// implements lenet5.net:4
extern "C" __global__ void k0_conv_relu(const float* __restrict__ v0, const float* __restrict__ v1, const float* __restrict__ v2, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 4704) return;
    int n = (int)(i / 4704); long long r = i % 4704;
    int o0 = (int)(r / 784); r %= 784;
    int o1 = (int)(r / 28); r %= 28;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 6) * 1;
    for (int ci = 0; ci < 1; ++ci) {
        for (int k0 = 0; k0 < 5; ++k0) {
            int i0 = o1 * 1 - 2 + k0 * 1;
            if (i0 < 0 || i0 >= 28) continue;
            for (int k1 = 0; k1 < 5; ++k1) {
                int i1 = o2 * 1 - 2 + k1 * 1;
                if (i1 < 0 || i1 >= 28) continue;
                acc += v0[(long long)n * 784 + (long long)(gbase + ci) * 784 + i0 * 28 + i1 * 1] * v1[(o0 * 1 + ci) * 25 + k0 * 5 + k1 * 1];
            }
        }
    }
    float v = acc + v2[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// features.avgpool0
// implements lenet5.net:4
extern "C" __global__ void k1_avgpool(const float* __restrict__ v4, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1176) return;
    int n = (int)(i / 1176); long long r = i % 1176;
    int o0 = (int)(r / 196); r %= 196;
    int o1 = (int)(r / 14); r %= 14;
    int o2 = (int)(r);
    float acc = 0.0f;
    for (int k0 = 0; k0 < 2; ++k0) {
        int i0 = o1 * 2 - 0 + k0 * 1;
        if (i0 < 0 || i0 >= 28) continue;
        for (int k1 = 0; k1 < 2; ++k1) {
            int i1 = o2 * 2 - 0 + k1 * 1;
            if (i1 < 0 || i1 >= 28) continue;
            acc += v4[(long long)n * 4704 + (long long)o0 * 784 + i0 * 28 + i1 * 1];
        }
    }
    int cnt = 1;
    { int a = o1 * 2 - 0; int b = a + 2; if (b > 28 + 0) b = 28 + 0; cnt *= (b - a); }
    { int a = o2 * 2 - 0; int b = a + 2; if (b > 28 + 0) b = 28 + 0; cnt *= (b - a); }
    if (cnt < 1) cnt = 1;
    float v = acc / (float)cnt;
    out[i] = v;
}

// features.conv1, features.relu1
// implements lenet5.net:5
extern "C" __global__ void k2_conv_relu(const float* __restrict__ v5, const float* __restrict__ v6, const float* __restrict__ v7, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1600) return;
    int n = (int)(i / 1600); long long r = i % 1600;
    int o0 = (int)(r / 100); r %= 100;
    int o1 = (int)(r / 10); r %= 10;
    int o2 = (int)(r);
    float acc = 0.0f;
    int gbase = (o0 / 16) * 6;
    for (int ci = 0; ci < 6; ++ci) {
        for (int k0 = 0; k0 < 5; ++k0) {
            int i0 = o1 * 1 - 0 + k0 * 1;
            if (i0 < 0 || i0 >= 14) continue;
            for (int k1 = 0; k1 < 5; ++k1) {
                int i1 = o2 * 1 - 0 + k1 * 1;
                if (i1 < 0 || i1 >= 14) continue;
                acc += v5[(long long)n * 1176 + (long long)(gbase + ci) * 196 + i0 * 14 + i1 * 1] * v6[(o0 * 6 + ci) * 25 + k0 * 5 + k1 * 1];
            }
        }
    }
    float v = acc + v7[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// features.avgpool1
// implements lenet5.net:5
extern "C" __global__ void k3_avgpool(const float* __restrict__ v9, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 400) return;
    int n = (int)(i / 400); long long r = i % 400;
    int o0 = (int)(r / 25); r %= 25;
    int o1 = (int)(r / 5); r %= 5;
    int o2 = (int)(r);
    float acc = 0.0f;
    for (int k0 = 0; k0 < 2; ++k0) {
        int i0 = o1 * 2 - 0 + k0 * 1;
        if (i0 < 0 || i0 >= 10) continue;
        for (int k1 = 0; k1 < 2; ++k1) {
            int i1 = o2 * 2 - 0 + k1 * 1;
            if (i1 < 0 || i1 >= 10) continue;
            acc += v9[(long long)n * 1600 + (long long)o0 * 100 + i0 * 10 + i1 * 1];
        }
    }
    int cnt = 1;
    { int a = o1 * 2 - 0; int b = a + 2; if (b > 10 + 0) b = 10 + 0; cnt *= (b - a); }
    { int a = o2 * 2 - 0; int b = a + 2; if (b > 10 + 0) b = 10 + 0; cnt *= (b - a); }
    if (cnt < 1) cnt = 1;
    float v = acc / (float)cnt;
    out[i] = v;
}

// logits.flatten0
// implements lenet5.net:7
extern "C" __global__ void k4_flatten(const float* __restrict__ v10, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 400) return;
    int n = (int)(i / 400); long long r = i % 400;
    int o0 = (int)(r);
    long long r0 = i - (long long)n * 400;
    float v = v10[(long long)n * 400 + r0];
    out[i] = v;
}

// logits.dense0, logits.relu0
// implements lenet5.net:7
extern "C" __global__ void k5_dense_relu_epilogue(const float* __restrict__ s0, const float* __restrict__ v13, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 120) return;
    int n = (int)(i / 120); long long r = i % 120;
    int o0 = (int)(r);
    float v = s0[(long long)n * 120 + o0];
    v += v13[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// logits.dense1, logits.relu1
// implements lenet5.net:7
extern "C" __global__ void k6_dense_relu_epilogue(const float* __restrict__ s1, const float* __restrict__ v17, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 84) return;
    int n = (int)(i / 84); long long r = i % 84;
    int o0 = (int)(r);
    float v = s1[(long long)n * 84 + o0];
    v += v17[o0];
    v = (v < 0.0f ? 0.0f : v);  // relu
    out[i] = v;
}

// logits.dense2
// implements lenet5.net:8
extern "C" __global__ void k7_dense_epilogue(const float* __restrict__ s2, const float* __restrict__ v21, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 10) return;
    int n = (int)(i / 10); long long r = i % 10;
    int o0 = (int)(r);
    float v = s2[(long long)n * 10 + o0];
    v += v21[o0];
    out[i] = v;
}

// loss.cross_entropy0
// implements lenet5.net:8
extern "C" __global__ void k8_cross_entropy(const float* __restrict__ v22, const long long* __restrict__ v23, float* __restrict__ out, int N) {
    __shared__ double sh[256];
    long long i = blockIdx.x;
    if (i >= 1LL) return;
    int n = 0; long long q = i;
    double acc_v = 0;
    long long R = (long long)N * 1;
    for (long long r = threadIdx.x; r < R; r += blockDim.x) {
        int nn = (int)(r / 1); long long pos = r % 1;
        float m = -NL_INF;
        for (int cc = 0; cc < 10; ++cc) m = fmaxf(m, v22[(long long)nn * 10 + (long long)cc * 1 + pos]);
        double s = 0.0;
        for (int cc = 0; cc < 10; ++cc) s += exp((double)(v22[(long long)nn * 10 + (long long)cc * 1 + pos] - m));
        int tc = (int)v23[(long long)nn * 1 + pos];
        acc_v += log(s) + m - v22[(long long)nn * 10 + (long long)tc * 1 + pos];
    }
    sh[threadIdx.x] = acc_v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float v = (float)sh[0];
        out[i] = (float)(sh[0] / (double)((long long)N * 1));
    }
}

// loss.grad_seed
// implements lenet5.net:8
extern "C" __global__ void k9_constant(float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 1LL) return;
    int n = 0; long long r = i;
    float v = 1.0f;
    out[i] = v;
}

// loss.cross_entropy0.grad_cross_entropy_grad
// implements lenet5.net:8
extern "C" __global__ void k10_cross_entropy_grad(const float* __restrict__ v22, const long long* __restrict__ v23, const float* __restrict__ v25, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 10) return;
    int n = (int)(i / 10); long long r = i % 10;
    int o0 = (int)(r);
    long long pos = 0; int nn = n;
    float m = -NL_INF;
    for (int cc = 0; cc < 10; ++cc) m = fmaxf(m, v22[(long long)nn * 10 + (long long)cc * 1 + pos]);
    double s = 0.0;
    for (int cc = 0; cc < 10; ++cc) s += exp((double)(v22[(long long)nn * 10 + (long long)cc * 1 + pos] - m));
    int tc = (int)v23[(long long)n * 1 + pos];
    float pr = (float)(exp((double)(v22[(long long)n * 10 + o0] - m)) / s);
    float v = (pr - (o0 == tc ? 1.0f : 0.0f)) * (v25[0] / (float)((long long)N * 1));
    out[i] = v;
}

// logits.dense2.grad_dense_grad_input, logits.relu1.grad_relu_grad
// implements lenet5.net:7, lenet5.net:8
extern "C" __global__ void k11_dense_grad_input_relu_grad_epilogue(const float* __restrict__ s3, const float* __restrict__ v19, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 84) return;
    int n = (int)(i / 84); long long r = i % 84;
    int o0 = (int)(r);
    float v = s3[(long long)n * 84 + o0];
    v = (v19[(long long)n * 84 + o0] > 0.0f ? v : 0.0f);  // relu_grad
    out[i] = v;
}

// logits.dense2.grad_bias_grad2
// implements lenet5.net:8
extern "C" __global__ void k12_bias_grad(const float* __restrict__ v26, float* __restrict__ out, int N) {
    __shared__ float sh[256];
    long long i = blockIdx.x;
    if (i >= 10LL) return;
    int n = 0; long long q = i;
    int o0 = (int)(q);
    float acc_v = 0;
    long long R = (long long)N * 1;
    for (long long r = threadIdx.x; r < R; r += blockDim.x) {
        int nn = (int)(r / 1); long long rr = r % 1;
        acc_v += v26[(long long)nn * 10 + (long long)o0 * 1 + rr];
    }
    sh[threadIdx.x] = acc_v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float v = (float)sh[0];
        out[i] = v;
    }
}

// logits.dense1.grad_dense_grad_input, logits.relu0.grad_relu_grad
// implements lenet5.net:7
extern "C" __global__ void k13_dense_grad_input_relu_grad_epilogue(const float* __restrict__ s4, const float* __restrict__ v15, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 120) return;
    int n = (int)(i / 120); long long r = i % 120;
    int o0 = (int)(r);
    float v = s4[(long long)n * 120 + o0];
    v = (v15[(long long)n * 120 + o0] > 0.0f ? v : 0.0f);  // relu_grad
    out[i] = v;
}

// logits.dense1.grad_bias_grad2
// implements lenet5.net:7
extern "C" __global__ void k14_bias_grad(const float* __restrict__ v30, float* __restrict__ out, int N) {
    __shared__ float sh[256];
    long long i = blockIdx.x;
    if (i >= 84LL) return;
    int n = 0; long long q = i;
    int o0 = (int)(q);
    float acc_v = 0;
    long long R = (long long)N * 1;
    for (long long r = threadIdx.x; r < R; r += blockDim.x) {
        int nn = (int)(r / 1); long long rr = r % 1;
        acc_v += v30[(long long)nn * 84 + (long long)o0 * 1 + rr];
    }
    sh[threadIdx.x] = acc_v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float v = (float)sh[0];
        out[i] = v;
    }
}

// logits.dense0.grad_bias_grad2
// implements lenet5.net:7
extern "C" __global__ void k15_bias_grad(const float* __restrict__ v34, float* __restrict__ out, int N) {
    __shared__ float sh[256];
    long long i = blockIdx.x;
    if (i >= 120LL) return;
    int n = 0; long long q = i;
    int o0 = (int)(q);
    float acc_v = 0;
    long long R = (long long)N * 1;
    for (long long r = threadIdx.x; r < R; r += blockDim.x) {
        int nn = (int)(r / 1); long long rr = r % 1;
        acc_v += v34[(long long)nn * 120 + (long long)o0 * 1 + rr];
    }
    sh[threadIdx.x] = acc_v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float v = (float)sh[0];
        out[i] = v;
    }
}

// logits.flatten0.grad_reshape
// implements lenet5.net:7
extern "C" __global__ void k16_reshape(const float* __restrict__ v35, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 400) return;
    int n = (int)(i / 400); long long r = i % 400;
    int o0 = (int)(r / 25); r %= 25;
    int o1 = (int)(r / 5); r %= 5;
    int o2 = (int)(r);
    long long r0 = i - (long long)n * 400;
    float v = v35[(long long)n * 400 + r0];
    out[i] = v;
}

// features.avgpool1.grad_avgpool_grad
// implements lenet5.net:5
extern "C" __global__ void k17_avgpool_grad(const float* __restrict__ v38, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1600) return;
    int n = (int)(i / 1600); long long r = i % 1600;
    int o0 = (int)(r / 100); r %= 100;
    int o1 = (int)(r / 10); r %= 10;
    int o2 = (int)(r);
    float acc = 0.0f;
    int wa0 = o1 + 0 - 1 <= 0 ? 0 : (o1 + 0 - 1 + 1) / 2;
    int wb0 = (o1 + 0) / 2 + 1; if (wb0 > 5) wb0 = 5;
    for (int w0 = wa0; w0 < wb0; ++w0) {
        int kk0 = o1 + 0 - w0 * 2;
        int wa1 = o2 + 0 - 1 <= 0 ? 0 : (o2 + 0 - 1 + 1) / 2;
        int wb1 = (o2 + 0) / 2 + 1; if (wb1 > 5) wb1 = 5;
        for (int w1 = wa1; w1 < wb1; ++w1) {
            int kk1 = o2 + 0 - w1 * 2;
            int cnt = 1;
            { int a = w0 * 2 - 0; int b = a + 2; if (b > 10 + 0) b = 10 + 0; cnt *= (b - a); }
            { int a = w1 * 2 - 0; int b = a + 2; if (b > 10 + 0) b = 10 + 0; cnt *= (b - a); }
            if (cnt < 1) cnt = 1;
            acc += v38[(long long)n * 400 + (long long)o0 * 25 + w0 * 5 + w1 * 1] / (float)cnt;
        }
    }
    float v = acc;
    out[i] = v;
}

// features.relu1.grad_relu_grad
// implements lenet5.net:5
extern "C" __global__ void k18_relu_grad(const float* __restrict__ v39, const float* __restrict__ v9, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1600) return;
    int n = (int)(i / 1600); long long r = i % 1600;
    int o0 = (int)(r / 100); r %= 100;
    int o1 = (int)(r / 10); r %= 10;
    int o2 = (int)(r);
    float v = v39[(long long)n * 1600 + o0 * 100 + o1 * 10 + o2];
    v = (v9[(long long)n * 1600 + o0 * 100 + o1 * 10 + o2] > 0.0f ? v : 0.0f);  // relu_grad
    out[i] = v;
}

// features.conv1.grad_conv_grad_input
// implements lenet5.net:5
extern "C" __global__ void k19_conv_grad_input(const float* __restrict__ v40, const float* __restrict__ v6, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 1176) return;
    int n = (int)(i / 1176); long long r = i % 1176;
    int o0 = (int)(r / 196); r %= 196;
    int o1 = (int)(r / 14); r %= 14;
    int o2 = (int)(r);
    float acc = 0.0f;
    int grp = o0 / 6; int oc = o0 % 6;
    for (int cj = 0; cj < 16; ++cj) {
        int cx = grp * 16 + cj;
        for (int k0 = 0; k0 < 5; ++k0) {
            int t0 = o1 + 0 - k0 * 1;
            if (t0 < 0 || t0 % 1 != 0) continue;
            int i0 = t0 / 1;
            if (i0 >= 10) continue;
            for (int k1 = 0; k1 < 5; ++k1) {
                int t1 = o2 + 0 - k1 * 1;
                if (t1 < 0 || t1 % 1 != 0) continue;
                int i1 = t1 / 1;
                if (i1 >= 10) continue;
                acc += v40[(long long)n * 1600 + (long long)cx * 100 + i0 * 10 + i1 * 1] * v6[(cx * 6 + oc) * 25 + k0 * 5 + k1 * 1];
            }
        }
    }
    float v = acc;
    out[i] = v;
}

// features.conv1.grad_conv_grad_weight1
// implements lenet5.net:5
extern "C" __global__ void k20_conv_grad_weight(const float* __restrict__ v40, const float* __restrict__ v5, float* __restrict__ out, int N) {
    __shared__ float sh[256];
    long long i = blockIdx.x;
    if (i >= 2400LL) return;
    int n = 0; long long q = i;
    int o0 = (int)(q / 150); q %= 150;
    int o1 = (int)(q / 25); q %= 25;
    int o2 = (int)(q / 5); q %= 5;
    int o3 = (int)(q);
    int grp = o0 / 16;
    int cs = o0; int cb = grp * 6 + o1;
    float acc_v = 0;
    long long R = (long long)N * 100;
    for (long long r = threadIdx.x; r < R; r += blockDim.x) {
        int nn = (int)(r / 100); long long rr = r % 100;
        int p0 = (int)(rr / 10); rr %= 10;
        int p1 = (int)(rr);
        int b0 = p0 * 1 - 0 + o2 * 1;
        int b1 = p1 * 1 - 0 + o3 * 1;
        if (b0 >= 0 && b0 < 14 && b1 >= 0 && b1 < 14) acc_v += v40[(long long)nn * 1600 + (long long)cs * 100 + p0 * 10 + p1 * 1] * v5[(long long)nn * 1176 + (long long)cb * 196 + b0 * 14 + b1 * 1];
    }
    sh[threadIdx.x] = acc_v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float v = (float)sh[0];
        out[i] = v;
    }
}

// features.conv1.grad_bias_grad2
// implements lenet5.net:5
extern "C" __global__ void k21_bias_grad(const float* __restrict__ v40, float* __restrict__ out, int N) {
    __shared__ float sh[256];
    long long i = blockIdx.x;
    if (i >= 16LL) return;
    int n = 0; long long q = i;
    int o0 = (int)(q);
    float acc_v = 0;
    long long R = (long long)N * 100;
    for (long long r = threadIdx.x; r < R; r += blockDim.x) {
        int nn = (int)(r / 100); long long rr = r % 100;
        acc_v += v40[(long long)nn * 1600 + (long long)o0 * 100 + rr];
    }
    sh[threadIdx.x] = acc_v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float v = (float)sh[0];
        out[i] = v;
    }
}

// features.avgpool0.grad_avgpool_grad
// implements lenet5.net:4
extern "C" __global__ void k22_avgpool_grad(const float* __restrict__ v41, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 4704) return;
    int n = (int)(i / 4704); long long r = i % 4704;
    int o0 = (int)(r / 784); r %= 784;
    int o1 = (int)(r / 28); r %= 28;
    int o2 = (int)(r);
    float acc = 0.0f;
    int wa0 = o1 + 0 - 1 <= 0 ? 0 : (o1 + 0 - 1 + 1) / 2;
    int wb0 = (o1 + 0) / 2 + 1; if (wb0 > 14) wb0 = 14;
    for (int w0 = wa0; w0 < wb0; ++w0) {
        int kk0 = o1 + 0 - w0 * 2;
        int wa1 = o2 + 0 - 1 <= 0 ? 0 : (o2 + 0 - 1 + 1) / 2;
        int wb1 = (o2 + 0) / 2 + 1; if (wb1 > 14) wb1 = 14;
        for (int w1 = wa1; w1 < wb1; ++w1) {
            int kk1 = o2 + 0 - w1 * 2;
            int cnt = 1;
            { int a = w0 * 2 - 0; int b = a + 2; if (b > 28 + 0) b = 28 + 0; cnt *= (b - a); }
            { int a = w1 * 2 - 0; int b = a + 2; if (b > 28 + 0) b = 28 + 0; cnt *= (b - a); }
            if (cnt < 1) cnt = 1;
            acc += v41[(long long)n * 1176 + (long long)o0 * 196 + w0 * 14 + w1 * 1] / (float)cnt;
        }
    }
    float v = acc;
    out[i] = v;
}

// features.relu0.grad_relu_grad
// implements lenet5.net:4
extern "C" __global__ void k23_relu_grad(const float* __restrict__ v44, const float* __restrict__ v4, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)N * 4704) return;
    int n = (int)(i / 4704); long long r = i % 4704;
    int o0 = (int)(r / 784); r %= 784;
    int o1 = (int)(r / 28); r %= 28;
    int o2 = (int)(r);
    float v = v44[(long long)n * 4704 + o0 * 784 + o1 * 28 + o2];
    v = (v4[(long long)n * 4704 + o0 * 784 + o1 * 28 + o2] > 0.0f ? v : 0.0f);  // relu_grad
    out[i] = v;
}

// features.conv0.grad_conv_grad_weight1
// implements lenet5.net:4
extern "C" __global__ void k24_conv_grad_weight(const float* __restrict__ v45, const float* __restrict__ v0, float* __restrict__ out, int N) {
    __shared__ float sh[256];
    long long i = blockIdx.x;
    if (i >= 150LL) return;
    int n = 0; long long q = i;
    int o0 = (int)(q / 25); q %= 25;
    int o1 = (int)(q / 25); q %= 25;
    int o2 = (int)(q / 5); q %= 5;
    int o3 = (int)(q);
    int grp = o0 / 6;
    int cs = o0; int cb = grp * 1 + o1;
    float acc_v = 0;
    long long R = (long long)N * 784;
    for (long long r = threadIdx.x; r < R; r += blockDim.x) {
        int nn = (int)(r / 784); long long rr = r % 784;
        int p0 = (int)(rr / 28); rr %= 28;
        int p1 = (int)(rr);
        int b0 = p0 * 1 - 2 + o2 * 1;
        int b1 = p1 * 1 - 2 + o3 * 1;
        if (b0 >= 0 && b0 < 28 && b1 >= 0 && b1 < 28) acc_v += v45[(long long)nn * 4704 + (long long)cs * 784 + p0 * 28 + p1 * 1] * v0[(long long)nn * 784 + (long long)cb * 784 + b0 * 28 + b1 * 1];
    }
    sh[threadIdx.x] = acc_v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float v = (float)sh[0];
        out[i] = v;
    }
}

// features.conv0.grad_bias_grad2
// implements lenet5.net:4
extern "C" __global__ void k25_bias_grad(const float* __restrict__ v45, float* __restrict__ out, int N) {
    __shared__ float sh[256];
    long long i = blockIdx.x;
    if (i >= 6LL) return;
    int n = 0; long long q = i;
    int o0 = (int)(q);
    float acc_v = 0;
    long long R = (long long)N * 784;
    for (long long r = threadIdx.x; r < R; r += blockDim.x) {
        int nn = (int)(r / 784); long long rr = r % 784;
        acc_v += v45[(long long)nn * 4704 + (long long)o0 * 784 + rr];
    }
    sh[threadIdx.x] = acc_v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        float v = (float)sh[0];
        out[i] = v;
    }
}
