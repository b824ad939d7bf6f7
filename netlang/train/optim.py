"""Optimizers (SGD with momentum / Nesterov, Adam, AdamW) and learning-rate schedules.

Update rules follow PyTorch's `torch.optim` exactly (so that a few steps reproduce its
losses): L2 `weight_decay` is added to the gradient for SGD and Adam, decoupled for AdamW.
State is a dict of arrays per slot, saved in checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from netlang.config import Call


@dataclass
class Optimizer:
    name: str
    lr: float
    args: dict
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # slot -> name -> arr
    step_count: int = 0

    @classmethod
    def from_config(cls, call: Call, lr: float | None = None) -> "Optimizer":
        args = dict(call.args)
        base_lr = lr if lr is not None else args.pop("lr", 0.01 if call.name == "sgd" else 1e-3)
        args.pop("lr", None)
        return cls(call.name, float(base_lr), args)

    def update(self, weights: dict[str, np.ndarray], grads: dict[str, np.ndarray],
               lr: float) -> None:
        """One in-place update of every trainable weight."""
        self.step_count += 1
        a = self.args
        wd = a.get("weight_decay", 0.0)
        if self.name == "sgd":
            mom, nesterov = a.get("momentum", 0.0), a.get("nesterov", False)
            buf = self.state.setdefault("momentum", {})
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
            return
        b1, b2, eps = a.get("beta1", 0.9), a.get("beta2", 0.999), a.get("eps", 1e-8)
        m = self.state.setdefault("exp_avg", {})
        v = self.state.setdefault("exp_avg_sq", {})
        t = self.step_count
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        for k, g in grads.items():
            w = weights[k]
            if self.name == "adamw":
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


@dataclass
class Schedule:
    """Learning rate per epoch; `plateau` also reacts to the monitored metric."""

    call: Call
    base_lr: float
    epochs: int
    scale: float = 1.0          # plateau's accumulated reduction
    best: float = math.inf
    bad_epochs: int = 0

    def lr(self, epoch: int) -> float:
        return self._lr(self.call, epoch) * self.scale

    def _lr(self, call: Call, epoch: int) -> float:
        a = dict(call.args)
        base = self.base_lr
        if call.name in ("constant", "plateau"):
            return base
        if call.name == "step":
            return base * a.get("gamma", 0.1) ** (epoch // a.get("step_size", 10))
        if call.name == "exponential":
            return base * a.get("gamma", 0.95) ** epoch
        if call.name == "cosine":
            t_max = a.get("epochs", self.epochs)
            lo = a.get("min_lr", 0.0)
            return lo + (base - lo) * (1 + math.cos(math.pi * min(epoch, t_max) / t_max)) / 2
        if call.name == "warmup":
            n = a.get("epochs", 5)
            if epoch < n:
                return base * (epoch + 1) / n
            then = a.get("then", "constant")
            return self._lr(Call(then), epoch - n) if then != "warmup" else base
        raise AssertionError(call.name)

    def observe(self, value: float) -> None:
        """End of an epoch: `plateau` divides the rate when the metric stops improving."""
        if self.call.name != "plateau" or not math.isfinite(value):
            return
        a = dict(self.call.args)
        if value < self.best - 1e-12:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > a.get("patience", 3):
            floor = a.get("min_lr", 0.0) / self.base_lr if self.base_lr else 0.0
            self.scale = max(self.scale * a.get("factor", 0.1), floor)
            self.bad_epochs = 0

    def state(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load(self, s: dict) -> None:
        self.scale, self.best, self.bad_epochs = s["scale"], s["best"], s["bad_epochs"]
