// netlang cpu routines: what the generated step calls for convolutions and GEMMs.
//
// Convolutions (2-D, and 1-D as H = 1; groups = 1) are im2col + BLAS sgemm per image, NCHW,
// images split over the cores; a 1x1 stride-1 unpadded convolution reads its input as the
// column matrix directly. The im2col and col2im loops copy whole output rows (memcpy at
// stride 1): no division per element. Column buffers are per thread and kept between
// steps, so a step allocates nothing once it has run once.
//
//   forward              y[n]  = W [K, C*kh*kw] @ cols(x[n]) [C*kh*kw, P]     (+ bias)
//   transposed / dx      dx[n] = col2im(W^T @ dy[n])
//   weight gradient      dW    = sum_n dy[n] [K, P] @ cols(x[n])^T
//
// BLAS is the sgemm that SciPy exposes through scipy.linalg.cython_blas (set at load by
// backends/cpu/runtime.py, which also keeps that BLAS on one thread while a step runs: the
// cores are split here, by OpenMP, never by both).
#include <chrono>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef void (*nl_sgemm_t)(const char*, const char*, const int*, const int*, const int*,
                           const float*, const float*, const int*, const float*, const int*,
                           const float*, float*, const int*);
static nl_sgemm_t nl_sgemm_f = 0;

extern "C" void nl_set_sgemm(void* f) { nl_sgemm_f = (nl_sgemm_t)f; }

extern "C" void nl_set_threads(int t) {
#ifdef _OPENMP
    if (t > 0) omp_set_num_threads(t);
#endif
}

extern "C" int nl_get_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline double nl_now(void) {
    return std::chrono::duration<double>(
        std::chrono::steady_clock::now().time_since_epoch()).count();
}

static inline int nl_team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

static inline int nl_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Row-major C[M, N] = op(A)[M, K] @ op(B)[K, N] + beta * C: column-major sgemm on the
// transposes (C^T = op(B)^T op(A)^T).
static void nl_gemm_rm(bool ta, bool tb, int M, int N, int K, const float* A, int lda,
                       const float* B, int ldb, float beta, float* C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; ++i)
            for (int j = 0; j < N; ++j) C[(long long)i * ldc + j] *= beta;
        return;
    }
    const char a = tb ? 'T' : 'N', b = ta ? 'T' : 'N';
    const float one = 1.0f;
    nl_sgemm_f(&a, &b, &N, &M, &K, &one, B, &ldb, A, &lda, &beta, C, &ldc);
}

// A GEMM step of the program: `batch` products of row-major views, a stride of 0 meaning
// the operand is shared by all. One product is split by rows of C over the cores.
static void nl_gemm_step(bool ta, bool tb, int batch, int M, int N, int K,
                         const float* A, long long sa, const float* B, long long sb,
                         float* C, long long sc) {
    const int lda = ta ? M : K, ldb = tb ? K : N;
    if (batch > 1) {
        #pragma omp parallel for schedule(static)
        for (int b = 0; b < batch; ++b)
            nl_gemm_rm(ta, tb, M, N, K, A + b * sa, lda, B + b * sb, ldb, 0.0f, C + b * sc, N);
        return;
    }
    #pragma omp parallel
    {
#ifdef _OPENMP
        const int T = omp_get_num_threads(), t = omp_get_thread_num();
#else
        const int T = 1, t = 0;
#endif
        const int rows = (M + T - 1) / T, r0 = t * rows, r1 = r0 + rows < M ? r0 + rows : M;
        if (r0 < r1) {
            const float* a0 = ta ? A + r0 : A + (long long)r0 * lda;
            nl_gemm_rm(ta, tb, r1 - r0, N, K, a0, lda, B, ldb, 0.0f, C + (long long)r0 * N, N);
        }
    }
}

struct nl_conv {
    int C, H, W;          // the input side (x of a convolution, dx of its gradient)
    int K, OH, OW;        // the output side (y, or dy)
    int KH, KW, SH, SW, PH, PW, DH, DW;   // window; PH, PW: padding before
};

static inline long long nl_rows(const nl_conv& p) { return (long long)p.C * p.KH * p.KW; }
static inline bool nl_direct(const nl_conv& p) {
    return p.KH == 1 && p.KW == 1 && p.SH == 1 && p.SW == 1 && p.PH == 0 && p.PW == 0 &&
           p.OH == p.H && p.OW == p.W;
}

// The output columns [lo, hi) whose input column ow * SW + off lies in [0, W).
static inline void nl_span(int off, int S, int W, int OW, int* lo, int* hi) {
    int a = off < 0 ? (-off + S - 1) / S : 0;
    int b = W - 1 - off < 0 ? 0 : (W - 1 - off) / S + 1;
    if (a > OW) a = OW;
    if (b > OW) b = OW;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}

// Columns of output rows [oh0, oh1): col[(c, kh, kw)][(oh - oh0) * OW + ow]; rows of col
// are `ld` apart (default: the band's width).
static void nl_im2col(const float* x, float* col, const nl_conv& p, int oh0, int oh1,
                      long long ld = -1) {
    const long long P = ld >= 0 ? ld : (long long)(oh1 - oh0) * p.OW;
    for (int c = 0; c < p.C; ++c)
        for (int kh = 0; kh < p.KH; ++kh)
            for (int kw = 0; kw < p.KW; ++kw) {
                float* row = col + ((long long)(c * p.KH + kh) * p.KW + kw) * P;
                const float* xc = x + (long long)c * p.H * p.W;
                const int off = kw * p.DW - p.PW;
                int lo, hi;
                nl_span(off, p.SW, p.W, p.OW, &lo, &hi);
                for (int oh = oh0; oh < oh1; ++oh) {
                    float* r = row + (long long)(oh - oh0) * p.OW;
                    const int ih = oh * p.SH - p.PH + kh * p.DH;
                    if (ih < 0 || ih >= p.H) {
                        memset(r, 0, sizeof(float) * p.OW);
                        continue;
                    }
                    const float* xr = xc + (long long)ih * p.W + off;
                    if (lo > 0) memset(r, 0, sizeof(float) * lo);
                    if (p.SW == 1) {
                        if (hi > lo) memcpy(r + lo, xr + lo, sizeof(float) * (hi - lo));
                    } else {
                        for (int ow = lo; ow < hi; ++ow) r[ow] = xr[(long long)ow * p.SW];
                    }
                    if (hi < p.OW) memset(r + hi, 0, sizeof(float) * (p.OW - hi));
                }
            }
}

// x receives the sum over the windows of output rows [oh0, oh1) of the columns (im2col's
// transpose; x is zeroed by the caller).
static void nl_col2im(const float* col, float* x, const nl_conv& p, int oh0, int oh1,
                      long long ld = -1) {
    const long long P = ld >= 0 ? ld : (long long)(oh1 - oh0) * p.OW;
    for (int c = 0; c < p.C; ++c)
        for (int kh = 0; kh < p.KH; ++kh)
            for (int kw = 0; kw < p.KW; ++kw) {
                const float* row = col + ((long long)(c * p.KH + kh) * p.KW + kw) * P;
                float* xc = x + (long long)c * p.H * p.W;
                const int off = kw * p.DW - p.PW;
                int lo, hi;
                nl_span(off, p.SW, p.W, p.OW, &lo, &hi);
                for (int oh = oh0; oh < oh1; ++oh) {
                    const int ih = oh * p.SH - p.PH + kh * p.DH;
                    if (ih < 0 || ih >= p.H) continue;
                    const float* r = row + (long long)(oh - oh0) * p.OW;
                    float* xr = xc + (long long)ih * p.W + off;
                    if (p.SW == 1) {
                        for (int ow = lo; ow < hi; ++ow) xr[ow] += r[ow];
                    } else {
                        for (int ow = lo; ow < hi; ++ow) xr[(long long)ow * p.SW] += r[ow];
                    }
                }
            }
}

// Output rows per band: a band's columns (about NL_BAND_FLOATS floats) stay in the core's
// cache between im2col writing them and the GEMM reading them.
#define NL_BAND_FLOATS 65536
static inline int nl_band_rows(const nl_conv& p) {
    long long per_row = nl_rows(p) * p.OW;
    long long rows = NL_BAND_FLOATS / (per_row > 0 ? per_row : 1);
    if (rows < 1) rows = 1;
    if (rows > p.OH) rows = p.OH;
    return (int)rows;
}

static float* nl_thread_buffer(long long size) {
    static thread_local std::vector<float> buf;
    if ((long long)buf.size() < size) buf.resize(size);
    return buf.data();
}

static float* nl_shared_buffer(long long size) {
    static std::vector<float> buf;
    if ((long long)buf.size() < size) buf.resize(size);
    return buf.data();
}


// Work item `item` of (image, band of `rows` output rows): its image n, first row oh0,
// width in columns, and the columns themselves with their row stride ld (a direct
// convolution's input read in place, else im2col into this thread's buffer).
static const float* nl_band_columns(const float* x, const nl_conv& p, bool direct,
                                    long long item, int bands, int rows, int* n, int* oh0,
                                    int* cols, int* ld) {
    *n = (int)(item / bands);
    *oh0 = (int)(item % bands) * rows;
    const int oh1 = *oh0 + rows < p.OH ? *oh0 + rows : p.OH;
    *cols = (oh1 - *oh0) * p.OW;
    const float* img = x + (long long)*n * p.C * p.H * p.W;
    if (direct) {
        *ld = p.OH * p.OW;
        return img + (long long)*oh0 * p.OW;
    }
    float* col = nl_thread_buffer(nl_rows(p) * *cols);
    nl_im2col(img, col, p, *oh0, oh1);
    *ld = *cols;
    return col;
}

// Small images (deep layers: few positions, many channels) make per-image GEMMs too thin
// to be efficient: below NL_BATCH_POSITIONS positions a routine lays the whole batch side
// by side, columns [R, N * P], and runs one GEMM split over the cores by rows (of
// which there must be enough: 64 channels or more).
#define NL_BATCH_POSITIONS 256
static inline bool nl_batched(const nl_conv& p, int N) {
    // (with few channels a per-image GEMM is cheap and the row split would be too thin)
    return (long long)p.OH * p.OW < NL_BATCH_POSITIONS && N > 1 && p.K >= 64 &&
           nl_rows(p) >= 256;
}

// C[M, Nc] = op(A) @ B + beta C, the rows of C split over the cores.
static void nl_gemm_rows(bool ta, int M, int Nc, int K, const float* A, int lda,
                         const float* B, int ldb, float* C, int ldc) {
    #pragma omp parallel
    {
        const int T = nl_team_size(), t = nl_thread_id();
        const int rows = (M + T - 1) / T, r0 = t * rows, r1 = r0 + rows < M ? r0 + rows : M;
        if (r0 < r1)
            nl_gemm_rm(ta, false, r1 - r0, Nc, K, ta ? A + r0 : A + (long long)r0 * lda, lda,
                       B, ldb, 0.0f, C + (long long)r0 * ldc, ldc);
    }
}

// [N, K, P] (image stride s) <-> [K, N * P]
static void nl_to_channel_major(const float* y, long long s, float* out, int N, int K,
                                long long P) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k)
            memcpy(out + ((long long)k * N + n) * P, y + n * s + k * P, sizeof(float) * P);
}

static void nl_from_channel_major(const float* in, float* y, long long s, int N, int K,
                                  long long P, const float* bias) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k) {
            const float* src = in + ((long long)k * N + n) * P;
            float* dst = y + n * s + k * P;
            const float b = bias ? bias[k] : 0.0f;
            for (long long q = 0; q < P; ++q) dst[q] = src[q] + b;
        }
}

static float* nl_batch_columns(const float* x, const nl_conv& p, int N, float* cols) {
    const long long P = (long long)p.OH * p.OW, xs = (long long)p.C * p.H * p.W;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) nl_im2col(x + n * xs, cols + n * P, p, 0, p.OH, N * P);
    return cols;
}

// y[n] = W @ cols(x[n]) (+ bias); image n of y starts at y + n * ys (ys > the image size
// when y is a slot of a concat). Work items are (image, band of output rows).
static void nl_conv_forward(const float* x, const float* w, const float* bias, float* y,
                            int N, nl_conv p, long long ys) {
    const long long P = (long long)p.OH * p.OW, R = nl_rows(p);
    const bool direct = nl_direct(p);
    if (nl_batched(p, N)) {
        float* cols = nl_shared_buffer(R * N * P + (long long)p.K * N * P);
        float* out = cols + R * N * P;
        nl_batch_columns(x, p, N, cols);
        nl_gemm_rows(false, p.K, (int)(N * P), (int)R, w, (int)R, cols, (int)(N * P), out,
                     (int)(N * P));
        nl_from_channel_major(out, y, ys, N, p.K, P, bias);
        return;
    }
    const int rows = direct ? p.OH : nl_band_rows(p), bands = (p.OH + rows - 1) / rows;
    #pragma omp parallel for schedule(static)
    for (long long item = 0; item < (long long)N * bands; ++item) {
        int n, oh0, cols, ld;
        const float* src = nl_band_columns(x, p, direct, item, bands, rows, &n, &oh0, &cols,
                                           &ld);
        float* yn = y + n * ys + (long long)oh0 * p.OW;
        nl_gemm_rm(false, false, p.K, cols, (int)R, w, (int)R, src, ld, 0.0f, yn, (int)P);
        if (bias)
            for (int k = 0; k < p.K; ++k) {
                const float b = bias[k];
                float* yk = yn + k * P;
                for (int q = 0; q < cols; ++q) yk[q] += b;
            }
    }
}

// dx[n] = col2im(W^T @ dy[n]) (+ bias): a convolution's input gradient, or a transposed
// convolution's forward (then W is [Cin, Cout, kh, kw] and dy is its input). Bands of one
// image add into overlapping rows of dx, so they run in order on one core.
static void nl_conv_transposed(const float* dy, const float* w, const float* bias, float* dx,
                               int N, nl_conv p, long long dxs) {
    const long long P = (long long)p.OH * p.OW, R = nl_rows(p), HW = (long long)p.H * p.W;
    const long long dys = (long long)p.K * P;
    const bool direct = nl_direct(p);
    if (nl_batched(p, N)) {
        float* dyc = nl_shared_buffer((long long)p.K * N * P + R * N * P);
        float* cols = dyc + (long long)p.K * N * P;
        nl_to_channel_major(dy, dys, dyc, N, p.K, P);
        nl_gemm_rows(true, (int)R, (int)(N * P), p.K, w, (int)R, dyc, (int)(N * P), cols,
                     (int)(N * P));
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; ++n) {
            float* dxn = dx + n * dxs;
            for (int c = 0; c < p.C; ++c) memset(dxn + c * HW, 0, sizeof(float) * HW);
            nl_col2im(cols + n * P, dxn, p, 0, p.OH, N * P);
            if (bias)
                for (int c = 0; c < p.C; ++c)
                    for (long long q = 0; q < HW; ++q) dxn[c * HW + q] += bias[c];
        }
        return;
    }
    const int rows = nl_band_rows(p);
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; ++n) {
        float* dxn = dx + n * dxs;
        if (direct) {
            nl_gemm_rm(true, false, (int)R, (int)P, p.K, w, (int)R, dy + n * dys, (int)P, 0.0f,
                       dxn, (int)P);
        } else {
            for (int c = 0; c < p.C; ++c) memset(dxn + c * HW, 0, sizeof(float) * HW);
            for (int oh0 = 0; oh0 < p.OH; oh0 += rows) {
                const int oh1 = oh0 + rows < p.OH ? oh0 + rows : p.OH;
                const int cols = (oh1 - oh0) * p.OW;
                float* col = nl_thread_buffer(R * cols);
                nl_gemm_rm(true, false, (int)R, cols, p.K, w, (int)R,
                           dy + n * dys + (long long)oh0 * p.OW, (int)P, 0.0f, col, cols);
                nl_col2im(col, dxn, p, oh0, oh1);
            }
        }
        if (bias)
            for (int c = 0; c < p.C; ++c) {
                const float b = bias[c];
                float* xc = dxn + c * HW;
                for (long long q = 0; q < HW; ++q) xc[q] += b;
            }
    }
}

// dW [K, C*kh*kw] = sum_n dy[n] @ cols(x[n])^T over (image, band) items: each thread sums
// its items into its own partial, then the partials are added.
static void nl_conv_weight_grad(const float* dy, const float* x, float* dw, int N, nl_conv p) {
    const long long P = (long long)p.OH * p.OW, R = nl_rows(p);
    const long long size = (long long)p.K * R;
    const bool direct = nl_direct(p);
    if (nl_batched(p, N)) {   // dW = dy [K, N * P] @ cols^T [N * P, R], rows of dW split
        float* dyc = nl_shared_buffer((long long)p.K * N * P + R * N * P);
        float* cols = dyc + (long long)p.K * N * P;
        nl_to_channel_major(dy, (long long)p.K * P, dyc, N, p.K, P);
        nl_batch_columns(x, p, N, cols);
        #pragma omp parallel
        {
            const int T = nl_team_size(), t = nl_thread_id();
            const int rows = (p.K + T - 1) / T, r0 = t * rows;
            const int r1 = r0 + rows < p.K ? r0 + rows : p.K;
            if (r0 < r1)
                nl_gemm_rm(false, true, r1 - r0, (int)R, (int)(N * P), dyc + r0 * N * P,
                           (int)(N * P), cols, (int)(N * P), 0.0f, dw + r0 * R, (int)R);
        }
        return;
    }
    const int rows = direct ? p.OH : nl_band_rows(p), bands = (p.OH + rows - 1) / rows;
    const long long items = (long long)N * bands;
    int T = nl_get_threads();
    if (T > items) T = items > 0 ? (int)items : 1;
    float* parts = T > 1 ? nl_shared_buffer(T * size) : dw;
    int team = 1;
    #pragma omp parallel num_threads(T)
    {
        const int t = nl_thread_id();
        #pragma omp single
        team = nl_team_size();
        float* mine = parts + t * size;
        float beta = 0.0f;
        #pragma omp for schedule(static)
        for (long long item = 0; item < items; ++item) {
            int n, oh0, cols, ld;
            const float* src = nl_band_columns(x, p, direct, item, bands, rows, &n, &oh0,
                                               &cols, &ld);
            nl_gemm_rm(false, true, p.K, (int)R, cols, dy + n * p.K * P + (long long)oh0 * p.OW,
                       (int)P, src, ld, beta, mine, (int)R);
            beta = 1.0f;
        }
        if (beta == 0.0f) memset(mine, 0, sizeof(float) * size);
    }
    if (T > 1) {
        #pragma omp parallel for schedule(static)
        for (long long i = 0; i < size; ++i) {
            float s = 0.0f;
            for (int t = 0; t < team; ++t) s += parts[t * size + i];
            dw[i] = s;
        }
    }
}

struct nl_pool {
    int C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW;
};

// dx of a max pool: each window's dy added at the window's first maximum (row-major over
// the taps inside the input, as NumPy and PyTorch pick it). Planes (n, c) split over cores.
static void nl_maxpool_grad(const float* dy, const float* x, float* dx, int N, nl_pool p,
                            long long dxs) {
    const long long HW = (long long)p.H * p.W, P = (long long)p.OH * p.OW;
    #pragma omp parallel for schedule(static)
    for (long long plane = 0; plane < (long long)N * p.C; ++plane) {
        const int n = (int)(plane / p.C), c = (int)(plane % p.C);
        const float* xp = x + plane * HW;
        const float* dyp = dy + plane * P;
        float* dxp = dx + n * dxs + c * HW;
        memset(dxp, 0, sizeof(float) * HW);
        for (int oh = 0; oh < p.OH; ++oh)
            for (int ow = 0; ow < p.OW; ++ow) {
                long long best = -1;
                float m = 0.0f;
                for (int kh = 0; kh < p.KH; ++kh) {
                    const int ih = oh * p.SH - p.PH + kh * p.DH;
                    if (ih < 0 || ih >= p.H) continue;
                    for (int kw = 0; kw < p.KW; ++kw) {
                        const int iw = ow * p.SW - p.PW + kw * p.DW;
                        if (iw < 0 || iw >= p.W) continue;
                        const float t = xp[(long long)ih * p.W + iw];
                        if (best < 0 || t > m) {
                            m = t;
                            best = (long long)ih * p.W + iw;
                        }
                    }
                }
                if (best >= 0) dxp[best] += dyp[(long long)oh * p.OW + ow];
            }
    }
}

// The optimizer's update of every trained parameter, in one parallel region: P holds four
// pointers a parameter (weight, gradient, state slots; unused slots null), n its sizes, h
// nh scalars a parameter (optimizers.py kernel_scalars, at that parameter's learning
// rate); kind 0 is SGD, 1 Adam/AdamW. The element functions are optimizers.py's ELEMENTS,
// the CUDA kernels' own.
static void nl_update(int kind, const float* h, int nh, int np, void** P,
                      const long long* n) {
    #pragma omp parallel
    for (int p = 0; p < np; ++p) {
        float* w = (float*)P[4 * p];
        const float* g = (const float*)P[4 * p + 1];
        float* s1 = (float*)P[4 * p + 2];
        float* s2 = (float*)P[4 * p + 3];
        const float* hp = h + (long long)p * nh;
        const long long m = n[p];
        if (kind == 0) {
            const float lr = hp[0], mom = hp[1], wd = hp[2];
            const int nesterov = (int)hp[3], first = (int)hp[4];
            #pragma omp for schedule(static) nowait
            for (long long i = 0; i < m; ++i) {
                float unused = 0.0f;
                nl_sgd_element(w[i], g[i], s1 ? s1[i] : unused, lr, mom, wd, nesterov, first);
            }
        } else {
            #pragma omp for schedule(static) nowait
            for (long long i = 0; i < m; ++i)
                nl_adam_element(w[i], g[i], s1[i], s2[i], hp[0], hp[1], hp[2], hp[3], hp[4],
                                hp[5], hp[6], (int)hp[7], hp[8], hp[9]);
        }
    }
}
