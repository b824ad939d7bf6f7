"""Losses: mse, l1, smooth_l1, cross_entropy (logits, log-sum-exp), nll (log-probabilities),
bce (and its stable logits form), dice.

A loss takes (prediction, target) and returns a scalar, averaged over the batch (and
pixels). Its VJP takes the incoming scalar gradient as a third input. The simplify pass
rewrites `cross_entropy(softmax(z))` into `cross_entropy(z)` and `bce(sigmoid(z))` into
`bce_logits(z)`, so a network may output probabilities and still train stably.
"""

from __future__ import annotations

import numpy as np

from netlang.ir.types import TensorType, fmt_shape
from netlang.ops.elementwise import _sigmoid, softmax
from netlang.ops.registry import FusionKind, OpDef, ShapeCtx, ShapeError, register

SCALAR = TensorType((), batched=False)
DICE_SMOOTH = 1.0
BCE_LOG_FLOOR = -100.0     # log(p) is clamped here, as PyTorch's BCELoss does
BCE_GRAD_EPS = 1e-12       # p (1 - p) in bce's gradient is clamped here


CLASS_LOSSES = ("cross_entropy", "nll")   # they read class indices
SMOOTH_L1_BETA = 1.0                       # PyTorch's default: Huber loss with delta 1


def target_type(op: str, pred: TensorType) -> TensorType:
    """The target a loss expects for a prediction: class indices for cross_entropy and
    nll."""
    if op in CLASS_LOSSES:
        return TensorType(pred.shape[1:], pred.batched, dtype="int64")
    return pred


def _loss_shape(ctx: ShapeCtx) -> TensorType:
    pred, tgt = ctx.inputs[:2]
    want = target_type(ctx.op.replace("_logits", ""), pred)
    if tgt.shape != want.shape:
        what = "class indices" if want.dtype == "int64" else "values"
        raise ShapeError("E031", f"{ctx.op}: target {fmt_shape(tgt.shape)} does not fit the "
                         f"prediction {fmt_shape(pred.shape)}",
                         help=f"the target must hold {what} of shape {fmt_shape(want.shape)}")
    if ctx.op.startswith(CLASS_LOSSES) and pred.rank < 1:
        raise ShapeError("E025", f"{ctx.op} needs a prediction with a class axis")
    return SCALAR


def _grad_shape(ctx: ShapeCtx) -> TensorType:
    return ctx.inputs[0]


def _loss(name, forward, grad, doc, kind=FusionKind.REDUCE):
    register(OpDef(
        name=name, attrs=(), shape=_loss_shape, kind=kind, min_inputs=2, max_inputs=2,
        forward=forward,
        vjp=lambda b, node, dy: [b.emit(f"{name}_grad", [node.inputs[0], node.inputs[1], dy]),
                                 None],
        user=False, doc=doc))
    register(OpDef(
        name=f"{name}_grad", attrs=(), shape=_grad_shape, kind=FusionKind.ELEMWISE,
        min_inputs=3, max_inputs=3, forward=grad, user=False,
        doc=f"Gradient of {name} with respect to the prediction."))


def _mse(xs, a, rt):
    p, t = xs
    return np.asarray(np.mean((p - t) ** 2, dtype=np.float64), dtype=p.dtype)


def _mse_grad(xs, a, rt):
    p, t, g = xs
    return (p - t) * (g * (2.0 / p.size))


_loss("mse", _mse, _mse_grad, "Mean squared error.")


def _l1(xs, a, rt):
    p, t = xs
    return np.asarray(np.mean(np.abs(p - t), dtype=np.float64), dtype=p.dtype)


def _l1_grad(xs, a, rt):
    p, t, g = xs
    return np.sign(p - t) * (g / p.size)


_loss("l1", _l1, _l1_grad, "Mean absolute error (the gradient at p = t is 0, as PyTorch).")


def _smooth_l1(xs, a, rt):
    p, t = xs
    d = np.abs(p.astype(np.float64) - t)
    b = SMOOTH_L1_BETA
    return np.asarray(np.mean(np.where(d < b, 0.5 * d * d / b, d - 0.5 * b)), dtype=p.dtype)


def _smooth_l1_grad(xs, a, rt):
    p, t, g = xs
    d = p - t
    b = p.dtype.type(SMOOTH_L1_BETA)
    return np.where(np.abs(d) < b, d / b, np.sign(d)) * (g / p.size)


_loss("smooth_l1", _smooth_l1, _smooth_l1_grad,
      "Smooth L1 (Huber with delta 1, beta 1 as PyTorch's default): 0.5 d^2 where |d| < 1, "
      "|d| - 0.5 elsewhere, averaged.")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _take_class(logp: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.take_along_axis(logp, t.astype(np.int64)[:, None], axis=1)[:, 0]


def _check_classes(z: np.ndarray, t: np.ndarray) -> None:
    if t.size and (t.min() < 0 or t.max() >= z.shape[1]):
        raise ValueError(f"cross_entropy: class index out of range [0, {z.shape[1]}): "
                         f"found {int(t.min())}..{int(t.max())}")


def _ce(xs, a, rt):
    z, t = xs
    _check_classes(z, t)
    return np.asarray(-np.mean(_take_class(_log_softmax(z), t), dtype=np.float64), dtype=z.dtype)


def _ce_grad(xs, a, rt):
    z, t, g = xs
    p = softmax(z, 1)
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, t.astype(np.int64)[:, None], 1, axis=1)
    count = p.size // p.shape[1]
    return (p - onehot) * (g / count)


def _nll(xs, a, rt):
    z, t = xs
    _check_classes(z, t)
    return np.asarray(-np.mean(_take_class(z, t), dtype=np.float64), dtype=z.dtype)


def _nll_grad(xs, a, rt):
    z, t, g = xs
    out = np.zeros_like(z)
    np.put_along_axis(out, t.astype(np.int64)[:, None], -1, axis=1)
    count = z.size // z.shape[1]
    return out * (g / count)


_loss("nll", _nll, _nll_grad,
      "Negative log-likelihood of log-probabilities (a `log_softmax` output) against class "
      "indices: -mean(z[t]).")

_loss("cross_entropy", _ce, _ce_grad,
      "Cross-entropy of logits against class indices (log-sum-exp, stable). Fed by a "
      "softmax, the softmax is folded into it.")


def _bce(xs, a, rt):
    p, t = xs
    p64 = p.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):   # log(0) is floored
        lp = np.maximum(np.log(np.maximum(p64, 0)), BCE_LOG_FLOOR)
        l1p = np.maximum(np.log(np.maximum(1 - p64, 0)), BCE_LOG_FLOOR)
        return np.asarray(-np.mean(t * lp + (1 - t) * l1p), dtype=p.dtype)


def _bce_grad(xs, a, rt):
    p, t, g = xs
    return (p - t) / np.maximum(p * (1 - p), p.dtype.type(BCE_GRAD_EPS)) * (g / p.size)


_loss("bce", _bce, _bce_grad,
      "Binary cross-entropy of probabilities (log clamped at -100, as PyTorch). Fed by a "
      "sigmoid, it is rewritten into the stable `bce_logits`.")


def _bce_logits(xs, a, rt):
    z, t = xs
    z64 = z.astype(np.float64)
    value = np.mean(np.maximum(z64, 0) - z64 * t + np.log1p(np.exp(-np.abs(z64))))
    return np.asarray(value, dtype=z.dtype)


def _bce_logits_grad(xs, a, rt):
    z, t, g = xs
    return (_sigmoid(z) - t) * (g / z.size)


_loss("bce_logits", _bce_logits, _bce_logits_grad,
      "Binary cross-entropy on logits: max(z, 0) - z t + log(1 + exp(-|z|)).")


def _dice_parts(p, t):
    axes = (0,) + tuple(range(2, p.ndim))
    inter = (p * t).sum(axis=axes, dtype=np.float64)
    union = p.sum(axis=axes, dtype=np.float64) + t.sum(axis=axes, dtype=np.float64)
    return inter, union, axes


def _dice(xs, a, rt):
    p, t = xs
    inter, union, _ = _dice_parts(p, t)
    value = 1 - np.mean((2 * inter + DICE_SMOOTH) / (union + DICE_SMOOTH))
    return np.asarray(value, dtype=p.dtype)


def _dice_grad(xs, a, rt):
    p, t, g = xs
    inter, union, _ = _dice_parts(p, t)
    c = p.shape[1]
    shape = (1, c) + (1,) * (p.ndim - 2)
    num = (2 * inter + DICE_SMOOTH).reshape(shape)
    den = (union + DICE_SMOOTH).reshape(shape)
    grad = -(2 * t * den - num) / (den * den) / c
    return (grad * g).astype(p.dtype)


_loss("dice", _dice, _dice_grad,
      "Soft Dice loss: 1 - mean over channels of (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), "
      "sums over the batch and all pixels.")


LOSSES = ("mse", "l1", "smooth_l1", "cross_entropy", "nll", "bce", "dice")
