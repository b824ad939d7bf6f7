// netlang host emulation of the CUDA built-ins that generated kernels use.
//
// A launch runs the grid's blocks one after another. Kernels without __syncthreads run
// their threads in a plain loop. Kernels with __syncthreads run each thread of a block as
// a fiber (its own stack); __syncthreads switches back to the scheduler, which resumes the
// next fiber, so every thread reaches the barrier before any passes it. Fibers are started
// with makecontext/swapcontext once per thread index for the whole process and then
// switched with _setjmp/_longjmp (no signal-mask system call per switch, none per block). __shared__ variables are function statics: one instance, shared
// by the threads of the block being run, as on the device.
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <setjmp.h>
#include <stdlib.h>
#include <ucontext.h>
#include <vector>

struct nl_dim3 { unsigned int x, y, z; };
static nl_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
static nl_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static

static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

typedef void (*nl_body_fn)(void*);

#define NL_MAX_BLOCK 1024
static jmp_buf nl_sched;
static jmp_buf nl_resume[NL_MAX_BLOCK];
static char nl_done[NL_MAX_BLOCK];
static char* nl_stacks[NL_MAX_BLOCK];   // a fiber's stack, made once, kept for the process
static ucontext_t nl_ctx[NL_MAX_BLOCK];
static ucontext_t nl_boot;
static nl_body_fn nl_body_current;
static void* nl_args_current;
static int nl_current;
static const size_t NL_STACK = 64 * 1024;

static void __syncthreads() {
    if (!_setjmp(nl_resume[nl_current])) _longjmp(nl_sched, 1);
}

// A fiber runs the body of its thread index for one block, then waits (at the same kind of
// jump as a barrier) to be resumed for the next block or launch: fibers are made once, and
// every later switch is a _setjmp/_longjmp pair.
static void nl_fiber_entry() {
    for (;;) {
        nl_body_current(nl_args_current);
        nl_done[nl_current] = 1;
        if (!_setjmp(nl_resume[nl_current])) _longjmp(nl_sched, 1);
    }
}

static void nl_run_block_fibers(int block) {
    if (block > NL_MAX_BLOCK) abort();
    memset(nl_done, 0, (size_t)block);
    int alive = block;
    while (alive > 0) {
        for (int t = 0; t < block; ++t) {
            if (nl_done[t]) continue;
            nl_current = t;
            threadIdx.x = t;
            if (!_setjmp(nl_sched)) {
                if (!nl_stacks[t]) {
                    nl_stacks[t] = (char*)malloc(NL_STACK);
                    if (!nl_stacks[t]) abort();
                    getcontext(&nl_ctx[t]);
                    nl_ctx[t].uc_stack.ss_sp = nl_stacks[t];
                    nl_ctx[t].uc_stack.ss_size = NL_STACK;
                    nl_ctx[t].uc_link = nullptr;
                    makecontext(&nl_ctx[t], nl_fiber_entry, 0);
                    swapcontext(&nl_boot, &nl_ctx[t]);
                } else {
                    _longjmp(nl_resume[t], 1);
                }
            }
            if (nl_done[t]) --alive;
        }
    }
}

static void nl_launch(int grid, int block, nl_body_fn body, void* args, bool sync) {
    gridDim.x = grid; blockDim.x = block;
    nl_body_current = body; nl_args_current = args;
    for (int b = 0; b < grid; ++b) {
        blockIdx.x = b;
        if (!sync) {
            for (int t = 0; t < block; ++t) { threadIdx.x = t; body(args); }
        } else {
            nl_run_block_fibers(block);
        }
    }
}
