"""Optimizers (SGD with momentum / Nesterov, Adam, AdamW) and learning-rate schedules.

The update rules, defaults and device kernels are the table in netlang/optimizers.py (one
entry an optimizer); this module keeps a run's optimizer state, and the schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from netlang.config import Call
from netlang.optimizers import OPTIMIZERS


@dataclass
class Optimizer:
    """An optimizer of the table in netlang/optimizers.py, with its state (saved in
    checkpoints: slot -> parameter -> array) and its step count."""

    name: str
    lr: float
    args: dict
    state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    step_count: int = 0
    # fp16 loss scaling (backends/step.py): the scale (None: not scaled), the finite steps
    # since it last changed, and the steps skipped for an overflow
    loss_scale: float | None = None
    scale_good: int = 0
    skipped_steps: int = 0

    @classmethod
    def from_config(cls, call: Call, lr: float | None = None) -> "Optimizer":
        args = OPTIMIZERS[call.name].args_of(dict(call.args))
        base_lr = args.pop("lr") if lr is None else lr
        args.pop("lr", None)
        return cls(call.name, float(base_lr), args)

    def update(self, weights: dict[str, np.ndarray], grads: dict[str, np.ndarray],
               lr: float, scales: dict[str, float] | None = None) -> None:
        """One in-place update of every trainable weight; `scales` multiplies the learning
        rate of some parameters (PyTorch's parameter groups)."""
        self.step_count += 1
        groups: dict[float, dict[str, np.ndarray]] = {}
        for k, g in grads.items():
            groups.setdefault((scales or {}).get(k, 1.0), {})[k] = g
        for scale, part in groups.items():
            OPTIMIZERS[self.name].update(weights, part, self.state, self.args, lr * scale,
                                         self.step_count)


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
