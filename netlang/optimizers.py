"""The optimizers, one entry each: the arguments with their defaults (the train section's
schema is derived from them), the state slots, the NumPy update and the device kernel with
its scalar arguments. Update rules follow PyTorch's `torch.optim` exactly, so a few steps
reproduce its losses: L2 `weight_decay` is added to the gradient for SGD and Adam,
decoupled for AdamW.

NumPy updates run in place on float32 weights; the device kernels (CUDA C, one kernel a
parameter updating it and its moments together) compute the same thing per element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    defaults: dict[str, Any]          # every argument (lr included) with its default
    slots: tuple[str, ...]            # state arrays per parameter, by name
    # (weights, grads, state {slot: {param: array}}, args, lr, step) -> None, in place
    update: Callable[..., None]
    kernel: str                       # the device kernel in KERNELS
    # (args, lr, step) -> the kernel's scalar arguments after (w, g, *slots)
    kernel_scalars: Callable[[dict, float, int], list]

    def args_of(self, given: dict[str, Any]) -> dict[str, Any]:
        """Given arguments completed with the defaults."""
        return {**self.defaults, **given}


def _sgd_update(weights: Arrays, grads: Arrays, state: dict[str, Arrays], a: dict, lr: float,
                step: int) -> None:
    mom, nesterov, wd = a["momentum"], a["nesterov"], a["weight_decay"]
    buf = state.setdefault("momentum", {})
    for k, g in grads.items():
        w = weights[k]
        if wd:
            g = g + wd * w
        if mom:
            if k not in buf:
                buf[k] = g.copy()
            else:
                buf[k] *= mom
                buf[k] += g
            g = g + mom * buf[k] if nesterov else buf[k]
        w -= np.float32(lr) * g


def _adam_update(decoupled: bool):
    def update(weights: Arrays, grads: Arrays, state: dict[str, Arrays], a: dict, lr: float,
               step: int) -> None:
        b1, b2, eps, wd = a["beta1"], a["beta2"], a["eps"], a["weight_decay"]
        m = state.setdefault("exp_avg", {})
        v = state.setdefault("exp_avg_sq", {})
        bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
        for k, g in grads.items():
            w = weights[k]
            if decoupled:
                w *= np.float32(1 - lr * wd)
            elif wd:
                g = g + wd * w
            if k not in m:
                m[k] = np.zeros_like(w)
                v[k] = np.zeros_like(w)
            m[k] *= b1
            m[k] += (1 - b1) * g
            v[k] *= b2
            v[k] += (1 - b2) * g * g
            denom = np.sqrt(v[k]) / math.sqrt(bc2) + eps
            w -= np.float32(lr / bc1) * (m[k] / denom)
    return update


def _adam_scalars(decoupled: bool):
    def scalars(a: dict, lr: float, step: int) -> list:
        # Computed in double here, as the NumPy update computes them, so that the device
        # element (float32) rounds exactly where NumPy does.
        b1, b2, wd = float(a["beta1"]), float(a["beta2"]), float(a["weight_decay"])
        return [lr / (1 - b1 ** step), b1, b2, 1 - b1, 1 - b2, float(a["eps"]), wd,
                int(decoupled), 1 - lr * wd, math.sqrt(1 - b2 ** step)]
    return scalars


_ADAM = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
OPTIMIZERS = {o.name: o for o in (
    OptimizerDef("sgd", {"lr": 0.01, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
                 ("momentum",), _sgd_update, "nl_sgd_update",
                 lambda a, lr, step: [lr, float(a["momentum"]), float(a["weight_decay"]),
                                      int(bool(a["nesterov"])), int(step == 1)]),
    OptimizerDef("adam", _ADAM, ("exp_avg", "exp_avg_sq"), _adam_update(False),
                 "nl_adam_update", _adam_scalars(False)),
    OptimizerDef("adamw", _ADAM, ("exp_avg", "exp_avg_sq"),
                 _adam_update(True), "nl_adam_update", _adam_scalars(True)),
)}

# One element of each update, in the CUDA prelude's dialect: the CUDA kernels below call it,
# and the cpu backend compiles it as host code for its `nl_update` (backends/cpu/routines.h).
# Scalars as kernel_scalars gives them; the operations, and their order, are the NumPy
# update's above.
ELEMENTS = r"""
__device__ __forceinline__ void nl_sgd_element(float& w, float g, float& buf, float lr,
                                               float momentum, float weight_decay,
                                               int nesterov, int first) {
    // PyTorch's SGD: d = g + wd w; buf = first ? d : momentum buf + d; w -= lr (nesterov ?
    // d + momentum buf : buf).
    float d = weight_decay != 0.0f ? g + weight_decay * w : g;
    if (momentum != 0.0f) {
        float b = first ? d : momentum * buf + d;
        buf = b;
        d = nesterov ? d + momentum * b : b;
    }
    w -= lr * d;
}

__device__ __forceinline__ void nl_adam_element(float& w, float g, float& m, float& v,
                                                float step_size, float beta1, float beta2,
                                                float one_minus_beta1, float one_minus_beta2,
                                                float eps, float weight_decay, int decoupled,
                                                float shrink, float sqrt_bc2) {
    // PyTorch's Adam (L2 decay in the gradient) / AdamW (decoupled: w *= 1 - lr wd);
    // step_size = lr / (1 - beta1^t), sqrt_bc2 = sqrt(1 - beta2^t).
    if (decoupled) w *= shrink;
    else if (weight_decay != 0.0f) g = g + weight_decay * w;
    m = beta1 * m + one_minus_beta1 * g;
    v = beta2 * v + one_minus_beta2 * g * g;
    w -= step_size * (m / (sqrtf(v) / sqrt_bc2 + eps));
}
"""

# The device updates (CUDA C; cuda-emu compiles the same text for the host): one kernel a
# parameter, updating it and its state together. `loss` is the step's loss on the device: a
# step whose loss is not finite updates nothing (the training loop stops and reports it).
# The scalars are the parameter's row `h` of the step's table on the device (kernel_scalars,
# as float32; flags as 0.0/1.0, as the cpu backend's table), so a captured step's kernel
# arguments never change: the host writes the table before each launch or replay.
KERNELS = ELEMENTS + r"""
extern "C" __global__ void nl_sgd_update(float* __restrict__ w, const float* __restrict__ g,
                                         float* __restrict__ buf,
                                         const float* __restrict__ loss,
                                         const float* __restrict__ h, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || !isfinite(*loss)) return;
    nl_sgd_element(w[i], g[i], buf[i], h[0], h[1], h[2], (int)h[3], (int)h[4]);
}

extern "C" __global__ void nl_adam_update(float* __restrict__ w, const float* __restrict__ g,
                                          float* __restrict__ m, float* __restrict__ v,
                                          const float* __restrict__ loss,
                                          const float* __restrict__ h, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || !isfinite(*loss)) return;
    nl_adam_element(w[i], g[i], m[i], v[i], h[0], h[1], h[2], h[3], h[4], h[5], h[6],
                    (int)h[7], h[8], h[9]);
}

extern "C" __global__ void nl_accumulate_loss(float* __restrict__ acc,
                                              const float* __restrict__ loss, int count) {
    // the epoch's loss sums on the device, read by the host now and then: acc[0] sum of
    // loss x batch size, acc[1] samples, acc[2] non-finite steps, acc[3] the first of them
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    float l = *loss;
    if (isfinite(l)) {
        acc[0] += l * (float)count;
        acc[1] += (float)count;
    } else {
        if (acc[2] == 0.0f) acc[3] = l;
        acc[2] += 1.0f;
    }
}

extern "C" __global__ void nl_copy_if_finite(float* __restrict__ dst,
                                             const float* __restrict__ src,
                                             const float* __restrict__ loss, int n) {
    // a batchnorm statistic of the step into its parameter
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || !isfinite(*loss)) return;
    dst[i] = src[i];
}
"""
