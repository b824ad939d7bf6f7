"""Metrics: accuracy and top-k for classification; Dice and IoU per class for segmentation.

Accumulated over batches as counts, so an epoch's metric is exact, not a mean of means.
"""

from __future__ import annotations

import numpy as np


class Metrics:
    def __init__(self, kind: str):
        self.kind = kind
        self.loss_sum = 0.0
        self.n = 0
        self.correct = 0
        self.top5 = 0
        self.inter: np.ndarray | None = None
        self.psum: np.ndarray | None = None
        self.tsum: np.ndarray | None = None
        self.union: np.ndarray | None = None

    def add(self, loss: float, pred: np.ndarray | None, target: np.ndarray | None,
            count: int) -> None:
        self.loss_sum += loss * count
        self.n += count
        if pred is None or target is None:
            return
        if self.kind == "classification":
            top = np.argsort(-pred, axis=1)
            self.correct += int((top[:, 0] == target).sum())
            self.top5 += int((top[:, :5] == target[:, None]).any(axis=1).sum())
        elif self.kind == "segmentation":
            p, t = _masks(pred, target)
            axes = (0,) + tuple(range(2, p.ndim))
            inter = (p & t).sum(axis=axes)
            self.inter = inter if self.inter is None else self.inter + inter
            ps, ts = p.sum(axis=axes), t.sum(axis=axes)
            un = (p | t).sum(axis=axes)
            self.psum = ps if self.psum is None else self.psum + ps
            self.tsum = ts if self.tsum is None else self.tsum + ts
            self.union = un if self.union is None else self.union + un

    def result(self) -> dict[str, float]:
        out = {"loss": self.loss_sum / max(self.n, 1)}
        if self.kind == "classification" and self.n:
            out["accuracy"] = self.correct / self.n
            out["top5"] = self.top5 / self.n
        if self.kind == "segmentation" and self.inter is not None:
            dice = 2 * self.inter / np.maximum(self.psum + self.tsum, 1)
            iou = self.inter / np.maximum(self.union, 1)
            out["dice"] = float(dice.mean())
            out["iou"] = float(iou.mean())
            if len(dice) > 1:
                for c, (d, j) in enumerate(zip(dice, iou)):
                    out[f"dice_{c}"], out[f"iou_{c}"] = float(d), float(j)
        return out


def _masks(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary masks per class: threshold 0.5 for one-channel outputs, argmax otherwise."""
    if pred.shape[1] == 1:
        return pred >= 0.5, target >= 0.5
    c = pred.shape[1]
    p = np.argmax(pred, axis=1)
    t = target.astype(np.int64) if target.ndim == pred.ndim - 1 else np.argmax(target, axis=1)
    classes = np.arange(c).reshape((1, c) + (1,) * (p.ndim - 1))
    return p[:, None] == classes, t[:, None] == classes


def kind_of(net) -> str:
    """classification (a flat output) or segmentation (a spatial output)."""
    out = next(iter(net.outputs.values()))
    return "classification" if out.rank == 1 else "segmentation"
