// netlang C prelude, part 1: what C lacks of CUDA's math. Part 2 is the CUDA prelude itself
// (backends/cuda/prelude.cuh: NL_INF, nl_sigmoid, the counter-based generator), made host
// code by backends/cpu/render.py, so both backends draw the same dropout masks.
// Kernels are plain functions; their element loops are split over the cores by OpenMP when
// the compiler has it (without it, `#pragma omp` is ignored).
#include <math.h>
#include <stdint.h>
#include <string.h>
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, sizeof f); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
