"""Metrics that follow the task: accuracy (and top-5 with more than 5 classes) for
classification, accuracy at threshold 0.5 for binary outputs, Dice and IoU per class for
segmentation, MAE and R^2 for regression.

Accumulated over batches as counts and sums, so an epoch's metric is exact, not a mean of
means.
"""

from __future__ import annotations

import re

import numpy as np

# The metrics each task reports (besides the loss).
TASK_METRICS = {
    "classification": ("accuracy", "top5"),
    "binary": ("accuracy",),
    "segmentation": ("dice", "iou"),
    "regression": ("mae", "r2"),
}
MAXIMIZE = ("accuracy", "top5", "dice", "iou", "r2")


class Metrics:
    """`ignore`: a class-index target value that no metric counts (the loss's
    `ignore_index`)."""

    def __init__(self, task: str, classes: int = 0, ignore: int | None = None):
        self.task = task
        self.classes = classes
        self.ignore = ignore
        self.counted = 0
        self.loss_sum = 0.0
        self.n = 0
        self.correct = 0
        self.top5 = 0
        self.elements = 0
        self.abs_err = 0.0
        self.sq_err = 0.0
        self.t_sum = 0.0
        self.t_sq = 0.0
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
        if self.task == "classification":
            top = np.argsort(-pred, axis=1)
            keep = np.ones(len(target), bool) if self.ignore is None else target != self.ignore
            self.correct += int(((top[:, 0] == target) & keep).sum())
            self.top5 += int(((top[:, :5] == target[:, None]).any(axis=1) & keep).sum())
            self.counted += int(keep.sum())
        elif self.task == "binary":
            self.correct += int(((pred >= 0.5) == (target >= 0.5)).sum())
            self.elements += pred.size
        elif self.task == "regression":
            err = pred.astype(np.float64) - target
            self.abs_err += float(np.abs(err).sum())
            self.sq_err += float((err * err).sum())
            self.t_sum += float(target.sum(dtype=np.float64))
            self.t_sq += float((target.astype(np.float64) ** 2).sum())
            self.elements += pred.size
        elif self.task == "segmentation":
            p, t = _masks(pred, target)
            if self.ignore is not None and target.ndim == pred.ndim - 1:
                p = p & (target != self.ignore)[:, None]
            axes = (0,) + tuple(range(2, p.ndim))
            inter = (p & t).sum(axis=axes)
            ps, ts = p.sum(axis=axes), t.sum(axis=axes)
            un = (p | t).sum(axis=axes)
            self.inter = inter if self.inter is None else self.inter + inter
            self.psum = ps if self.psum is None else self.psum + ps
            self.tsum = ts if self.tsum is None else self.tsum + ts
            self.union = un if self.union is None else self.union + un

    def result(self) -> dict[str, float]:
        out = {"loss": self.loss_sum / max(self.n, 1)}
        if not self.n:
            return out
        if self.task == "classification":
            out["accuracy"] = self.correct / max(self.counted, 1)
            if self.classes > 5:   # top-5 of 5 or fewer classes is always 1
                out["top5"] = self.top5 / max(self.counted, 1)
        elif self.task == "binary" and self.elements:
            out["accuracy"] = self.correct / self.elements
        elif self.task == "regression" and self.elements:
            m = self.elements
            out["mae"] = self.abs_err / m
            total = self.t_sq - self.t_sum ** 2 / m
            out["r2"] = 1 - self.sq_err / total if total > 0 else 0.0
        elif self.task == "segmentation" and self.inter is not None:
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


def per_class(name: str) -> bool:
    """A per-class column (`dice_0`, `val_mask_iou_2`), left out of one-line summaries."""
    return re.search(r"_\d+$", name) is not None


def heads(net, terms) -> list[tuple[str, str, str]]:
    """(output, target, task) of each distinct output/target pair of the loss, in the
    order of its terms: each gets its own metrics."""
    seen: dict[tuple[str, str], object] = {}
    for t in terms:
        seen.setdefault((t.pred, t.target), t)
    return [(p, tg, task_of(net, [t])) for (p, tg), t in seen.items()]


def head_inputs(net, terms) -> list[str]:
    """The batch key of each head's target (`heads` order): the data's own, or for a head
    smaller than another reading the same target, its shrunk copy (`target@32x32`)."""
    per: dict[tuple[str, str], str] = {}
    for t, (name, _, _) in zip(terms, net.target_reads(terms)):
        per.setdefault((t.pred, t.target), name)
    return [per[(p, tg)] for p, tg, _ in heads(net, terms)]


def ignored(terms, pred: str, target: str) -> int | None:
    """The `ignore_index` of the loss term reading (pred, target), if any."""
    for t in terms:
        if (t.pred, t.target) == (pred, target) and dict(t.attrs).get("ignore_index") is not None:
            return dict(t.attrs)["ignore_index"]
    return None


def metric_names(net, terms) -> list[str]:
    """The names `evaluate` reports besides `loss`: the task's metrics for a loss on one
    output; `OUTPUT_metric` for each output when the loss reads several."""
    hs = heads(net, terms)
    if len(hs) <= 1:
        return list(TASK_METRICS[hs[0][2] if hs else task_of(net, terms)])
    prefix = head_names(hs)
    return [f"{prefix[i]}_{m}" for i, (_, _, task) in enumerate(hs) for m in TASK_METRICS[task]]


def head_names(hs) -> list[str]:
    """The prefix of each head's metrics: its output, and the target too when two heads
    read the same output."""
    outs = [p for p, _, _ in hs]
    return [p if outs.count(p) == 1 else f"{p}_{tg}" for p, tg, _ in hs]


def maximized(name: str) -> bool:
    """Whether a reported metric is better when larger (`mask_dice`, `val_accuracy`)."""
    return name.rsplit("_", 1)[-1] in MAXIMIZE or name in MAXIMIZE


def task_of(net, terms=()) -> str:
    """The task, from the loss's first term and the output it reads: regression (mse, l1,
    smooth_l1), classification (cross_entropy or nll of a flat output), binary (bce or dice
    of a flat output), segmentation (a spatial output)."""
    if terms:
        out, op = net.outputs[terms[0].pred], terms[0].op
    else:
        out, op = next(iter(net.outputs.values())), "cross_entropy"
    if op in ("mse", "l1", "smooth_l1"):
        return "regression"
    if out.rank == 1:
        return "classification" if op in ("cross_entropy", "nll") else "binary"
    return "segmentation"
