"""Losses: mse, l1, smooth_l1, cross_entropy (logits, log-sum-exp), nll (log-probabilities),
bce and focal (and their stable logits forms), dice.

A loss takes (prediction, target) and returns a scalar, averaged over the batch (and
pixels), or summed with `reduction = sum`. cross_entropy and nll take class weights and
an ignored target value; their mean divides by the weights of the positions that count,
as PyTorch's. A loss's VJP takes the incoming scalar gradient as a third input. The
simplify pass rewrites `cross_entropy(softmax(z))` into `cross_entropy(z)`, `bce(sigmoid(z))`
into `bce_logits(z)` and `focal(sigmoid(z))` into `focal_logits(z)`, so a network may
output probabilities and still train stably.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from netlang.ir.types import TensorType, fmt_shape
from netlang.ops.elementwise import _sigmoid, softmax
from netlang.ops.registry import Attr, FusionKind, OpDef, ShapeCtx, ShapeError, register

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


def resize_target(arr: np.ndarray, shape: tuple[int, ...], indices: bool) -> np.ndarray:
    """A batch of targets [N, *have] shrunk to [N, *shape] by whole factors per spatial
    axis, for a lower-resolution head reading the same target (deep supervision): float
    masks by the mean of each block (F.interpolate(mode="area")), class indices by the
    block's first pixel (F.interpolate(mode="nearest"))."""
    lead = 0 if indices else 1          # class indices have no channel axis
    have = arr.shape[1 + lead:]
    factors = [h // w for h, w in zip(have, shape[lead:])]
    if indices:
        return np.ascontiguousarray(arr[(slice(None),) + tuple(slice(None, None, f)
                                                                for f in factors)])
    blocks = arr.shape[:1 + lead] + tuple(v for w, f in zip(shape[lead:], factors)
                                          for v in (w, f))
    axes = tuple(2 + lead + 2 * i for i in range(len(factors)))
    return arr.reshape(blocks).mean(axis=axes, dtype=np.float64).astype(arr.dtype)


REDUCTION = Attr("reduction", "choice", "mean", ("mean", "sum"),
                 doc="`mean` over the batch (and pixels), or their `sum`")
CLASS_ATTRS = (
    Attr("weight", "floats", None,
         doc="one weight per class: a position counts w[t] times, and the mean divides "
             "by the sum of the weights of the positions"),
    Attr("ignore_index", "int", None,
         doc="a target value that is skipped (no loss, no gradient, not counted); none "
             "unless given"),
)
LABEL_SMOOTHING = Attr("label_smoothing", "float", 0.0, minimum=0.0,
                       doc="mixes the one-hot target with the uniform distribution")
FOCAL_ATTRS = (
    Attr("gamma", "float", 2.0, minimum=0.0, doc="focusing exponent: (1 - p_t)^gamma"),
    Attr("alpha", "float", 0.25,
         doc="weight of the positive class (1 - alpha for the negative); negative turns "
             "the weighting off"),
)


def loss_attrs(op: str, given: dict[str, Any]) -> dict[str, Any]:
    """A loss term's attributes: the given ones (checked by coerce_attr) that differ from
    the defaults of the op's schema, which the rules read with `.get` (so the printed IR
    of a plain loss shows no options)."""
    from netlang.ops.registry import get

    out = {a.name: given[a.name] for a in get(op).attrs
           if a.name in given and given[a.name] != a.default}
    if isinstance(out.get("weight"), float):
        out["weight"] = (out["weight"],)
    return out


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
    a = ctx.attrs
    if a.get("weight") is not None and len(a["weight"]) != pred.shape[0]:
        raise ShapeError("E012", f"{ctx.op}: `weight` has {len(a['weight'])} values for "
                         f"{pred.shape[0]} classes",
                         help=f"give one weight per class ({pred.shape[0]})")
    if a.get("weight") is not None and min(a["weight"]) < 0:
        raise ShapeError("E012", f"{ctx.op}: class weights must not be negative",
                         help="a class that should not count gets weight 0")
    if a.get("label_smoothing", 0.0) >= 1.0:
        raise ShapeError("E012", f"{ctx.op}: `label_smoothing` must be below 1, got "
                         f"{a['label_smoothing']:g}", help="0.1 is a common choice")
    if "beta" in a and a["beta"] <= 0:
        raise ShapeError("E012", f"{ctx.op}: `beta` must be positive, got {a['beta']:g}",
                         help="a small beta approaches `l1`")
    return SCALAR


def _grad_shape(ctx: ShapeCtx) -> TensorType:
    return ctx.inputs[0]


LOSS_OPS: list[str] = []   # every registered loss op, the logits forms included


def _loss(name, forward, grad, doc, attrs=(REDUCTION,), kind=FusionKind.REDUCE):
    LOSS_OPS.append(name)
    register(OpDef(
        name=name, attrs=attrs, shape=_loss_shape, kind=kind, min_inputs=2, max_inputs=2,
        forward=forward,
        vjp=lambda b, node, dy: [b.emit(f"{name}_grad", [node.inputs[0], node.inputs[1], dy],
                                        **node.attrs),
                                 None],
        user=False, doc=doc))
    register(OpDef(
        name=f"{name}_grad", attrs=attrs, shape=_grad_shape, kind=FusionKind.ELEMWISE,
        min_inputs=3, max_inputs=3, forward=grad, user=False,
        doc=f"Gradient of {name} with respect to the prediction."))


def is_sum(a: dict[str, Any]) -> bool:
    return a.get("reduction", "mean") == "sum"


def _reduce(per: np.ndarray, a: dict[str, Any], dtype) -> np.ndarray:
    """The loss from its per-element values (float64): their mean or their sum."""
    total = per.sum(dtype=np.float64)
    return np.asarray(total if is_sum(a) else total / per.size, dtype=dtype)


def _per(a: dict[str, Any], size: int) -> float:
    """The gradient's factor for one element: 1 / count for a mean, 1 for a sum."""
    return 1.0 if is_sum(a) else 1.0 / size


def _mse(xs, a, rt):
    p, t = xs
    return _reduce((p.astype(np.float64) - t) ** 2, a, p.dtype)


def _mse_grad(xs, a, rt):
    p, t, g = xs
    return (p - t) * (g * (2.0 * _per(a, p.size)))


_loss("mse", _mse, _mse_grad, "Mean squared error.")


def _l1(xs, a, rt):
    p, t = xs
    return _reduce(np.abs(p.astype(np.float64) - t), a, p.dtype)


def _l1_grad(xs, a, rt):
    p, t, g = xs
    return np.sign(p - t) * (g * _per(a, p.size))


_loss("l1", _l1, _l1_grad, "Mean absolute error (the gradient at p = t is 0, as PyTorch).")


BETA = Attr("beta", "float", SMOOTH_L1_BETA,
            doc="where the quadratic part ends (PyTorch's `beta`)")


def _smooth_l1(xs, a, rt):
    p, t = xs
    d = np.abs(p.astype(np.float64) - t)
    b = a.get("beta", SMOOTH_L1_BETA)
    return _reduce(np.where(d < b, 0.5 * d * d / b, d - 0.5 * b), a, p.dtype)


def _smooth_l1_grad(xs, a, rt):
    p, t, g = xs
    d = p - t
    b = p.dtype.type(a.get("beta", SMOOTH_L1_BETA))
    return np.where(np.abs(d) < b, d / b, np.sign(d)) * (g * _per(a, p.size))


_loss("smooth_l1", _smooth_l1, _smooth_l1_grad,
      "Smooth L1 (PyTorch's, beta 1 by default): 0.5 d^2 / beta where |d| < beta, "
      "|d| - 0.5 beta elsewhere, averaged. `huber(delta)` is delta times smooth_l1 with "
      "beta = delta.", attrs=(BETA, REDUCTION))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def _take_class(logp: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.take_along_axis(logp, t.astype(np.int64)[:, None], axis=1)[:, 0]


def _check_classes(z: np.ndarray, t: np.ndarray) -> None:
    if t.size and (t.min() < 0 or t.max() >= z.shape[1]):
        raise ValueError(f"cross_entropy: class index out of range [0, {z.shape[1]}): "
                         f"found {int(t.min())}..{int(t.max())}")


def _classes(z: np.ndarray, t: np.ndarray, a: dict[str, Any]):
    """What a class loss reads of its target: the kept positions, the targets with the
    ignored ones set to class 0, each position's weight w[t] (0 where ignored), the class
    weights, and the mean's divisor (the weights' sum; 1 for a sum or when nothing
    counts)."""
    t = t.astype(np.int64)
    ignore = a.get("ignore_index")
    keep = np.ones(t.shape, bool) if ignore is None else t != ignore
    _check_classes(z, t[keep])
    tt = np.where(keep, t, 0)
    w = a.get("weight")
    cw = np.ones(z.shape[1]) if w is None else np.asarray(w, np.float64)
    wt = cw[tt] * keep
    total = wt.sum()
    den = 1.0 if is_sum(a) or total == 0 else total
    return keep, tt, wt, cw, den


def _channel_shape(z: np.ndarray) -> tuple[int, ...]:
    return (1, z.shape[1]) + (1,) * (z.ndim - 2)


def _ce(xs, a, rt):
    z, t = xs
    keep, tt, wt, cw, den = _classes(z, t, a)
    logp = _log_softmax(z)
    per = -wt * _take_class(logp, tt)
    eps = a.get("label_smoothing", 0.0)
    if eps:
        smooth = -(logp * cw.reshape(_channel_shape(z))).sum(axis=1, dtype=np.float64)
        per = (1 - eps) * per + eps / z.shape[1] * keep * smooth
    return np.asarray(per.sum(dtype=np.float64) / den, dtype=z.dtype)


def _onehot(z: np.ndarray, tt: np.ndarray) -> np.ndarray:
    out = np.zeros_like(z)
    np.put_along_axis(out, tt[:, None], 1, axis=1)
    return out


def _ce_grad(xs, a, rt):
    z, t, g = xs
    keep, tt, wt, cw, den = _classes(z, t, a)
    p = softmax(z, 1)
    eps = a.get("label_smoothing", 0.0)
    grad = (1 - eps) * (wt * (g / den))[:, None] * (p - _onehot(z, tt))
    if eps:
        c = z.shape[1]
        grad = grad + (eps / c) * (keep * (g / den))[:, None] * (
            cw.sum() * p - cw.reshape(_channel_shape(z)))
    return grad.astype(z.dtype)


def _nll(xs, a, rt):
    z, t = xs
    keep, tt, wt, cw, den = _classes(z, t, a)
    per = -wt * _take_class(z, tt)
    return np.asarray(per.sum(dtype=np.float64) / den, dtype=z.dtype)


def _nll_grad(xs, a, rt):
    z, t, g = xs
    keep, tt, wt, cw, den = _classes(z, t, a)
    return (-(wt * (g / den))[:, None] * _onehot(z, tt)).astype(z.dtype)


_loss("nll", _nll, _nll_grad,
      "Negative log-likelihood of log-probabilities (a `log_softmax` output) against class "
      "indices: -mean(z[t]).", attrs=CLASS_ATTRS + (REDUCTION,))

_loss("cross_entropy", _ce, _ce_grad,
      "Cross-entropy of logits against class indices (log-sum-exp, stable). Fed by a "
      "softmax, the softmax is folded into it.",
      attrs=CLASS_ATTRS + (LABEL_SMOOTHING, REDUCTION))


def _bce_terms(p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-element binary cross-entropy of probabilities, logs floored at -100 (float64)."""
    p64 = p.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):   # log(0) is floored
        lp = np.maximum(np.log(np.maximum(p64, 0)), BCE_LOG_FLOOR)
        l1p = np.maximum(np.log(np.maximum(1 - p64, 0)), BCE_LOG_FLOOR)
    return -(t * lp + (1 - t) * l1p)


def _bce(xs, a, rt):
    p, t = xs
    return _reduce(_bce_terms(p, t), a, p.dtype)


def _bce_grad(xs, a, rt):
    p, t, g = xs
    return (p - t) / np.maximum(p * (1 - p), p.dtype.type(BCE_GRAD_EPS)) * (g * _per(a, p.size))


_loss("bce", _bce, _bce_grad,
      "Binary cross-entropy of probabilities (log clamped at -100, as PyTorch). Fed by a "
      "sigmoid, it is rewritten into the stable `bce_logits`.")


def _bce_logits_terms(z: np.ndarray, t: np.ndarray) -> np.ndarray:
    z64 = z.astype(np.float64)
    return np.maximum(z64, 0) - z64 * t + np.log1p(np.exp(-np.abs(z64)))


def _bce_logits(xs, a, rt):
    z, t = xs
    return _reduce(_bce_logits_terms(z, t), a, z.dtype)


def _bce_logits_grad(xs, a, rt):
    z, t, g = xs
    return (_sigmoid(z) - t) * (g * _per(a, z.size))


_loss("bce_logits", _bce_logits, _bce_logits_grad,
      "Binary cross-entropy on logits: max(z, 0) - z t + log(1 + exp(-|z|)).")


# Focal loss (Lin et al. 2017, torchvision's sigmoid_focal_loss): the binary cross-entropy
# of each element times alpha_t (1 - p_t)^gamma, p_t = p t + (1 - p)(1 - t).
def _focal_factors(p: np.ndarray, t: np.ndarray, a: dict[str, Any]):
    """(alpha_t, q = 1 - p_t, q^gamma, d(q^gamma)/dq), in float64."""
    gamma, alpha = a.get("gamma", 2.0), a.get("alpha", 0.25)
    p = p.astype(np.float64)
    q = 1 - (p * t + (1 - p) * (1 - t))
    at = alpha * t + (1 - alpha) * (1 - t) if alpha >= 0 else np.ones_like(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        mod = np.power(q, gamma)
        dmod = np.where(q > 0, gamma * np.power(q, gamma - 1), 1.0 if gamma == 1 else 0.0)
    return at, q, mod, dmod


def _focal(xs, a, rt):
    p, t = xs
    at, q, mod, _ = _focal_factors(p, t, a)
    return _reduce(at * mod * _bce_terms(p, t), a, p.dtype)


def _focal_grad(xs, a, rt):
    p, t, g = xs
    at, q, mod, dmod = _focal_factors(p, t, a)
    p64 = p.astype(np.float64)
    dce = (p64 - t) / np.maximum(p64 * (1 - p64), BCE_GRAD_EPS)
    grad = at * (-dmod * (2 * t - 1) * _bce_terms(p, t) + mod * dce)
    return (grad * (g * _per(a, p.size))).astype(p.dtype)


def _focal_logits(xs, a, rt):
    z, t = xs
    at, q, mod, _ = _focal_factors(_sigmoid(z.astype(np.float64)), t, a)
    return _reduce(at * mod * _bce_logits_terms(z, t), a, z.dtype)


def _focal_logits_grad(xs, a, rt):
    z, t, g = xs
    s = _sigmoid(z.astype(np.float64))
    at, q, mod, dmod = _focal_factors(s, t, a)
    grad = at * (-dmod * (2 * t - 1) * s * (1 - s) * _bce_logits_terms(z, t) + mod * (s - t))
    return (grad * (g * _per(a, z.size))).astype(z.dtype)


_loss("focal", _focal, _focal_grad,
      "Focal loss of probabilities (Lin et al., torchvision's sigmoid_focal_loss): "
      "alpha_t (1 - p_t)^gamma times the binary cross-entropy. Fed by a sigmoid, it is "
      "rewritten into the stable `focal_logits`.", attrs=FOCAL_ATTRS + (REDUCTION,))
_loss("focal_logits", _focal_logits, _focal_logits_grad,
      "Focal loss on logits (the sigmoid inside, log-sum-exp stable).",
      attrs=FOCAL_ATTRS + (REDUCTION,))


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
      "sums over the batch and all pixels.", attrs=())


LOSSES = ("mse", "l1", "smooth_l1", "huber", "cross_entropy", "nll", "bce", "focal", "dice")
# `huber(p, t, delta)` is written as `delta * smooth_l1(p, t, beta = delta)` (PyTorch's
# HuberLoss is that product); config.parse_loss makes the term.
HUBER = (Attr("delta", "float", 1.0, doc="where the quadratic part ends"), REDUCTION)
