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
        b1, b2 = float(a["beta1"]), float(a["beta2"])
        return [lr, b1, b2, float(a["eps"]), float(a["weight_decay"]), int(decoupled),
                1.0 - b1 ** step, 1.0 - b2 ** step]
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

# The device updates (CUDA C; cuda-emu compiles the same text for the host).
KERNELS = r'''
extern "C" __global__ void nl_sgd_update(float* __restrict__ w, const float* __restrict__ g,
                                         float* __restrict__ buf, float lr, float momentum,
                                         float weight_decay, int nesterov, int first, int n) {
    // PyTorch's SGD: d = g + wd w; buf = first ? d : momentum buf + d; w -= lr (nesterov ?
    // d + momentum buf : buf). One kernel updates a parameter and its momentum.
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float d = g[i] + weight_decay * w[i];
    if (momentum != 0.0f) {
        float b = first ? d : momentum * buf[i] + d;
        buf[i] = b;
        d = nesterov ? d + momentum * b : b;
    }
    w[i] -= lr * d;
}

extern "C" __global__ void nl_adam_update(float* __restrict__ w, const float* __restrict__ g,
                                          float* __restrict__ m, float* __restrict__ v,
                                          float lr, float beta1, float beta2, float eps,
                                          float weight_decay, int decoupled, float bc1,
                                          float bc2, int n) {
    // PyTorch's Adam / AdamW, parameter and both moments in one kernel.
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i];
    float wi = w[i];
    if (decoupled) wi *= 1.0f - lr * weight_decay;
    else gi += weight_decay * wi;
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    w[i] = wi - (lr / bc1) * mi / (sqrtf(vi) / sqrtf(bc2) + eps);
}
'''
