"""Elementwise and broadcasting ops: add, mul, activations, softmax, and their gradients."""

from __future__ import annotations

import numpy as np

from netlang.ir.types import TensorType, fmt_shape
from netlang.ops.registry import (Attr, FusionKind, OpDef, ParamSpec, ShapeCtx, ShapeError,
                                  register)


def _same(ctx: ShapeCtx) -> TensorType:
    return ctx.x


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    if not a or not b:
        return a or b
    if len(a) != len(b):
        return None
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y))
    return tuple(out)


def _broadcast(ctx: ShapeCtx) -> TensorType:
    a, b = ctx.inputs
    shape = broadcast_shape(a.shape, b.shape)
    if shape is None:
        raise ShapeError(
            "E020", f"{ctx.op} of {fmt_shape(a.shape)} and {fmt_shape(b.shape)}: shapes differ",
            help=None)
    return TensorType(shape, a.batched or b.batched)


def sum_to(x: np.ndarray, ty: TensorType) -> np.ndarray:
    """Sum a (broadcast) gradient back to the shape of `ty` at the same batch size."""
    target = ty.shape
    if not ty.batched and x.ndim == len(target) + 1:
        x = x.sum(axis=0)
    lead = x.ndim - len(target) - (1 if ty.batched else 0)
    if lead > 0:
        x = x.sum(axis=tuple(range(lead)))
    off = 1 if ty.batched else 0
    axes = tuple(i + off for i, d in enumerate(target) if d == 1 and x.shape[i + off] != 1)
    if axes:
        x = x.sum(axis=axes, keepdims=True)
    return x


# -- add ---------------------------------------------------------------------------------

def _add_vjp(b, node, dy):
    return [b.reduce_to(dy, i.type) for i in node.inputs]


register(OpDef(
    name="add", attrs=(), shape=_broadcast, kind=FusionKind.BROADCAST, min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: xs[0] + xs[1],
    vjp=_add_vjp, color="#fff2cc",
    doc="Elementwise sum of two values (residual connections); a 1-sized dimension broadcasts."))


def _mul_vjp(b, node, dy):
    x, y = node.inputs
    return [b.reduce_to(b.emit("mul", [dy, y]), x.type),
            b.reduce_to(b.emit("mul", [dy, x]), y.type)]


register(OpDef(
    name="mul", attrs=(), shape=_broadcast, kind=FusionKind.BROADCAST, min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: xs[0] * xs[1],
    vjp=_mul_vjp, color="#fff2cc",
    doc="Elementwise product; a 1-channel gate broadcasts over channels (attention gates)."))


def _sum_to_shape(ctx: ShapeCtx) -> TensorType:
    return TensorType(tuple(ctx.attrs["shape"]), ctx.attrs["batched"])


register(OpDef(
    name="sum_to", attrs=(Attr("shape", "ints"), Attr("batched", "bool")), shape=_sum_to_shape,
    kind=FusionKind.REDUCE,
    forward=lambda xs, a, rt: sum_to(xs[0], TensorType(tuple(a["shape"]), a["batched"])),
    vjp=lambda b, node, dy: [b.emit("broadcast_like", [dy, node.inputs[0]])],
    user=False, doc="Sum a broadcast gradient back to a smaller shape."))

register(OpDef(
    name="broadcast_like", attrs=(), shape=lambda ctx: ctx.inputs[1], kind=FusionKind.BROADCAST,
    min_inputs=2, max_inputs=2, fusable=False,
    forward=lambda xs, a, rt: np.broadcast_to(xs[0], xs[1].shape).copy(),
    vjp=lambda b, node, dy: [b.reduce_to(dy, node.inputs[0].type), None],
    user=False, doc="Broadcast the first input to the shape of the second."))

register(OpDef(
    name="scale", attrs=(Attr("factor", "float"),), shape=_same, kind=FusionKind.ELEMWISE,
    forward=lambda xs, a, rt: xs[0] * xs[0].dtype.type(a["factor"]),
    vjp=lambda b, node, dy: [b.emit("scale", [dy], factor=node.attrs["factor"])],
    doc="Multiply by a constant: `scale(0.5)` (a residual branch's factor, 1/sqrt(d))."))


# -- reduced precision -------------------------------------------------------------------

# Mantissa bits dropped from a float32 when it is rounded to each low-precision type
# (fp16 also narrows the exponent: see round_mantissa).
PRECISION_DROP = {"tf32": 13, "bf16": 16, "fp16": 13}
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


def round_mantissa(x: np.ndarray, precision: str) -> np.ndarray:
    """`x` rounded as the hardware rounds a float32 to `precision` (tf32, bf16): to
    nearest, ties to even, on the float32 bit pattern; infinities and NaN unchanged, a
    value past the largest finite one becomes infinite. Float64 input is rounded to
    float32 first (the emulation's storage type), and returned as float64. fp16 is IEEE
    half precision: NumPy's conversion, which also rounds to nearest even, makes values of
    65520 and more infinite and those below 2^-14 subnormal (multiples of 2^-24)."""
    if precision == "fp16":
        f = np.asarray(x, dtype=np.float32)
        with np.errstate(over="ignore"):
            return f.astype(np.float16).astype(x.dtype)
    drop = PRECISION_DROP[precision]
    f = np.ascontiguousarray(x, dtype=np.float32)
    u = f.view(np.uint32)
    special = (u & 0x7F800000) == 0x7F800000
    half = np.uint32((1 << (drop - 1)) - 1) + ((u >> np.uint32(drop)) & np.uint32(1))
    r = ((u + half) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)).astype(np.uint32)
    out = np.where(special, u, r).view(np.float32)
    return out.astype(x.dtype) if x.dtype != np.float32 else out


def _round_vjp(b, node, dy):
    a = node.attrs
    if not a["backward"]:
        return [dy]
    return [b.emit("round_to", [dy], precision=a["precision"], forward=True, backward=False)]


register(OpDef(
    name="round_to", attrs=(Attr("precision", "choice", "bf16", tuple(PRECISION_DROP)),
                            Attr("forward", "bool", True), Attr("backward", "bool", True)),
    shape=_same, kind=FusionKind.ELEMWISE,
    forward=lambda xs, a, rt: round_mantissa(xs[0], a["precision"]) if a["forward"]
    else xs[0],
    vjp=_round_vjp, user=False,
    doc="A value rounded to a lower precision (passes/precision.py places it): `forward` "
        "rounds the value, `backward` its gradient (a value stored in bf16 has a bf16 "
        "gradient; a tf32 product rounds what its GEMMs read)."))


# -- activations -------------------------------------------------------------------------

register(OpDef(
    name="relu", attrs=(), shape=_same, kind=FusionKind.ELEMWISE,
    forward=lambda xs, a, rt: np.maximum(xs[0], 0),
    vjp=lambda b, node, dy: [b.emit("relu_grad", [dy, node])],
    doc="max(x, 0)."))

register(OpDef(
    name="relu_grad", attrs=(), shape=_same, kind=FusionKind.ELEMWISE, min_inputs=2,
    max_inputs=2, forward=lambda xs, a, rt: xs[0] * (xs[1] > 0),
    user=False, doc="dy where the relu output is positive (its gradient mask)."))


def _leaky(xs, a, rt):
    x = xs[0]
    return np.where(x > 0, x, x * x.dtype.type(a["alpha"]))


register(OpDef(
    name="leaky_relu", attrs=(Attr("alpha", "float", 0.01),), shape=_same,
    kind=FusionKind.ELEMWISE, forward=_leaky,
    vjp=lambda b, node, dy: [b.emit("leaky_relu_grad", [dy, node.inputs[0]],
                                    alpha=node.attrs["alpha"])],
    doc="x if x > 0 else alpha * x (PyTorch default alpha 0.01)."))

register(OpDef(
    name="leaky_relu_grad", attrs=(Attr("alpha", "float"),), shape=_same,
    kind=FusionKind.ELEMWISE, min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: np.where(xs[1] > 0, xs[0],
                                       xs[0] * xs[0].dtype.type(a["alpha"])),
    user=False, doc="Gradient of leaky_relu given its input."))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Split by sign so that exp never overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


register(OpDef(
    name="sigmoid", attrs=(), shape=_same, kind=FusionKind.ELEMWISE,
    forward=lambda xs, a, rt: _sigmoid(xs[0]),
    vjp=lambda b, node, dy: [b.emit("sigmoid_grad", [dy, node])],
    doc="1 / (1 + exp(-x))."))

register(OpDef(
    name="sigmoid_grad", attrs=(), shape=_same, kind=FusionKind.ELEMWISE, min_inputs=2,
    max_inputs=2, forward=lambda xs, a, rt: xs[0] * xs[1] * (1 - xs[1]),
    user=False, doc="dy * y * (1 - y) given the sigmoid output y."))

register(OpDef(
    name="tanh", attrs=(), shape=_same, kind=FusionKind.ELEMWISE,
    forward=lambda xs, a, rt: np.tanh(xs[0]),
    vjp=lambda b, node, dy: [b.emit("tanh_grad", [dy, node])],
    doc="Hyperbolic tangent."))

register(OpDef(
    name="tanh_grad", attrs=(), shape=_same, kind=FusionKind.ELEMWISE, min_inputs=2,
    max_inputs=2, forward=lambda xs, a, rt: xs[0] * (1 - xs[1] * xs[1]),
    user=False, doc="dy * (1 - y^2) given the tanh output y."))


# Smooth activations (transformers, EfficientNet-style networks), as torch.nn.functional
# defines them. Each gradient op takes (dy, x) and computes in the input's dtype.
_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_TANH_C = 0.7978845608028654   # sqrt(2 / pi)


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return erf(x).astype(x.dtype)


def _gelu(xs, a, rt):
    x = xs[0]
    if a["approximate"] == "tanh":
        return (0.5 * x * (1 + np.tanh(_TANH_C * (x + 0.044715 * x ** 3)))).astype(x.dtype)
    return (0.5 * x * (1 + _erf(x * _SQRT1_2))).astype(x.dtype)


def _gelu_grad(xs, a, rt):
    dy, x = xs
    if a["approximate"] == "tanh":
        t = np.tanh(_TANH_C * (x + 0.044715 * x ** 3))
        d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _TANH_C * (1 + 3 * 0.044715 * x * x)
    else:
        d = 0.5 * (1 + _erf(x * _SQRT1_2)) + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)
    return (dy * d).astype(x.dtype)


register(OpDef(
    name="gelu", attrs=(Attr("approximate", "choice", "none", choices=("none", "tanh")),),
    shape=_same, kind=FusionKind.ELEMWISE, forward=_gelu,
    vjp=lambda b, node, dy: [b.emit("gelu_grad", [dy, node.inputs[0]],
                                    approximate=node.attrs["approximate"])],
    doc="x * Phi(x) (the Gaussian CDF; `approximate=tanh`: the tanh form), as PyTorch."))

register(OpDef(
    name="gelu_grad", attrs=(Attr("approximate", "choice", "none", choices=("none", "tanh")),),
    shape=_same, kind=FusionKind.ELEMWISE, min_inputs=2, max_inputs=2, forward=_gelu_grad,
    user=False, doc="Gradient of gelu given its input."))

register(OpDef(
    name="silu", attrs=(), shape=_same, kind=FusionKind.ELEMWISE,
    forward=lambda xs, a, rt: xs[0] * _sigmoid(xs[0]),
    vjp=lambda b, node, dy: [b.emit("silu_grad", [dy, node.inputs[0]])],
    doc="x * sigmoid(x) (swish)."))


def _silu_grad(xs, a, rt):
    dy, x = xs
    s = _sigmoid(x)
    return (dy * s * (1 + x * (1 - s))).astype(x.dtype)


register(OpDef(
    name="silu_grad", attrs=(), shape=_same, kind=FusionKind.ELEMWISE, min_inputs=2,
    max_inputs=2, forward=_silu_grad, user=False, doc="Gradient of silu given its input."))


def _elu(xs, a, rt):
    x = xs[0]
    return np.where(x > 0, x, x.dtype.type(a["alpha"]) * np.expm1(np.minimum(x, 0)))


register(OpDef(
    name="elu", attrs=(Attr("alpha", "float", 1.0),), shape=_same, kind=FusionKind.ELEMWISE,
    forward=_elu,
    vjp=lambda b, node, dy: [b.emit("elu_grad", [dy, node.inputs[0]],
                                    alpha=node.attrs["alpha"])],
    doc="x if x > 0 else alpha * (exp(x) - 1)."))

register(OpDef(
    name="elu_grad", attrs=(Attr("alpha", "float"),), shape=_same, kind=FusionKind.ELEMWISE,
    min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: np.where(xs[1] > 0, xs[0], xs[0] * xs[0].dtype.type(a["alpha"])
                                       * np.exp(np.minimum(xs[1], 0))),
    user=False, doc="Gradient of elu given its input."))


def _softplus(xs, a, rt):
    x = xs[0]
    bx = x * x.dtype.type(a["beta"])
    soft = np.logaddexp(0, np.minimum(bx, a["threshold"])) / x.dtype.type(a["beta"])
    return np.where(bx > a["threshold"], x, soft).astype(x.dtype)


register(OpDef(
    name="softplus", attrs=(Attr("beta", "float", 1.0, minimum=1e-6),
                            Attr("threshold", "float", 20.0)),
    shape=_same, kind=FusionKind.ELEMWISE, forward=_softplus,
    vjp=lambda b, node, dy: [b.emit("softplus_grad", [dy, node.inputs[0]],
                                    beta=node.attrs["beta"],
                                    threshold=node.attrs["threshold"])],
    doc="log(1 + exp(beta x)) / beta; x itself where beta x > threshold, as PyTorch."))

register(OpDef(
    name="softplus_grad", attrs=(Attr("beta", "float"), Attr("threshold", "float")),
    shape=_same, kind=FusionKind.ELEMWISE, min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: np.where(xs[1] * xs[1].dtype.type(a["beta"]) > a["threshold"],
                                       xs[0], xs[0] * _sigmoid(xs[1] * xs[1].dtype.type(
                                           a["beta"]))).astype(xs[0].dtype),
    user=False, doc="Gradient of softplus given its input."))


def _hardtanh_shape(ctx: ShapeCtx) -> TensorType:
    lo, hi = ctx.attrs["min_val"], ctx.attrs["max_val"]
    if not lo < hi:
        raise ShapeError("E012", f"hardtanh: min_val {lo:g} must be below max_val {hi:g}",
                         help="hardtanh(-1, 1) clamps to [-1, 1]; relu6 is hardtanh(0, 6)")
    return ctx.x


register(OpDef(
    name="hardtanh", attrs=(Attr("min_val", "float", -1.0), Attr("max_val", "float", 1.0)),
    shape=_hardtanh_shape, kind=FusionKind.ELEMWISE,
    forward=lambda xs, a, rt: np.clip(xs[0], xs[0].dtype.type(a["min_val"]),
                                      xs[0].dtype.type(a["max_val"])),
    vjp=lambda b, node, dy: [b.emit("hardtanh_grad", [dy, node.inputs[0]], **node.attrs)],
    doc="Clamp to [min_val, max_val] (-1, 1 by default; relu6 is hardtanh(0, 6))."))

register(OpDef(
    name="hardtanh_grad", attrs=(Attr("min_val", "float"), Attr("max_val", "float")),
    shape=_same, kind=FusionKind.ELEMWISE, min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: xs[0] * ((xs[1] > a["min_val"]) & (xs[1] < a["max_val"])),
    user=False, doc="Gradient of hardtanh given its input (0 at the bounds, as PyTorch)."))


def _prelu_params(ins, a):
    c = ins[0].shape[0] if a["per_channel"] and ins[0].rank else 1
    return {"weight": ParamSpec((c,), "constant", value=a["init"])}


def _per_channel(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A [C] (or [1]) weight shaped to broadcast over x's channel axis (axis 1)."""
    return w.reshape((1, -1) + (1,) * (x.ndim - 2))


def _prelu_vjp(b, node, dy):
    x, w = node.inputs
    terms = b.emit("prelu_weight_terms", [dy, x])
    per_channel = x.type.rank > 0 and w.type.shape == x.type.shape[:1]
    dw = b.emit("bias_grad", [terms]) if per_channel else b.reduce_to(terms, w.type)
    return [b.emit("prelu_grad_input", [dy, w, x]), dw]


def _prelu_shape(ctx: ShapeCtx) -> TensorType:
    if ctx.attrs["per_channel"] and ctx.x.rank == 0:
        raise ShapeError("E025", "prelu(per_channel=true) needs an input with a channel axis")
    return ctx.x


register(OpDef(
    name="prelu", attrs=(Attr("per_channel", "bool", False),
                         Attr("init", "float", 0.25, doc="the initial slope")),
    shape=_prelu_shape, kind=FusionKind.ELEMWISE, params=_prelu_params,
    param_roles=lambda a: ["weight"],
    forward=lambda xs, a, rt: np.where(xs[0] > 0, xs[0], xs[0] * _per_channel(xs[1], xs[0])),
    vjp=_prelu_vjp,
    doc="x if x > 0 else w x with a learned slope w: one for the layer (nn.PReLU()), or "
        "one per channel with `per_channel=true` (nn.PReLU(C)); initially `init` (0.25)."))

register(OpDef(
    name="prelu_grad_input", attrs=(), shape=_same, kind=FusionKind.ELEMWISE,
    min_inputs=3, max_inputs=3,
    forward=lambda xs, a, rt: np.where(xs[2] > 0, xs[0], xs[0] * _per_channel(xs[1], xs[2])),
    user=False, doc="Input gradient of prelu: dy, or dy w where x <= 0."))

register(OpDef(
    name="prelu_weight_terms", attrs=(), shape=_same, kind=FusionKind.ELEMWISE,
    min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: np.where(xs[1] > 0, xs[0].dtype.type(0), xs[0] * xs[1]),
    user=False, doc="dy x where x <= 0: summed per channel, prelu's weight gradient."))


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def normalize_axis(ctx: ShapeCtx, what: str) -> int:
    """The `axis` attribute as a per-sample axis in [0, rank) (negative counts from the
    end); E081 when the input has no such axis."""
    rank = ctx.x.rank
    axis = ctx.attrs["axis"]
    if not -rank <= axis < rank:
        raise ShapeError("E081", f"{what}: axis {axis} of a {fmt_shape(ctx.x.shape)} input "
                         f"(it has {rank} axes after the batch)",
                         notes=("axes count from 0 after the batch; -1 is the last",),
                         help=f"give an axis from {-rank} to {rank - 1}" if rank else
                         "this input has no axis to reduce over")
    axis = axis + rank if axis < 0 else axis
    ctx.attrs["axis"] = axis
    return axis


def _softmax_shape(ctx: ShapeCtx) -> TensorType:
    axis = normalize_axis(ctx, ctx.op)
    if ctx.attrs.get("causal"):
        rank = ctx.x.rank
        if rank < 2 or axis != rank - 1:
            raise ShapeError("E081", f"softmax(causal=true) over axis {axis} of a "
                             f"{fmt_shape(ctx.x.shape)} input",
                             notes=("a causal softmax runs over the last axis (the keys) of "
                                    "scores with at least two axes: [.., queries, keys]",),
                             help="write `softmax(axis=-1, causal=true)` on attention scores")
    return ctx.x


def causal_mask(shape: tuple[int, ...]) -> np.ndarray:
    """True where query i may see key j (j <= i) over the last two axes of `shape`, the
    upper-left aligned mask of PyTorch's `is_causal`."""
    q, k = shape[-2], shape[-1]
    return np.arange(k)[None, :] <= np.arange(q)[:, None]


def _softmax_forward(x: np.ndarray, a: dict) -> np.ndarray:
    if not a.get("causal"):
        return softmax(x, a["axis"] + 1)
    keep = causal_mask(x.shape)
    z = np.where(keep, x, x.dtype.type(-np.inf))
    return np.where(keep, softmax(z, a["axis"] + 1), x.dtype.type(0)).astype(x.dtype)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


register(OpDef(
    name="softmax", attrs=(Attr("axis", "int", 0),
                           Attr("causal", "bool", False,
                                doc="attention scores [.., queries, keys]: query i sees keys "
                                    "0..i only (the others get probability 0)")),
    shape=_softmax_shape, kind=FusionKind.REDUCE, writes_per_element=True,
    forward=lambda xs, a, rt: _softmax_forward(xs[0], a),
    # y (dy - sum(dy y)) is 0 where y is: the masked positions need no gradient of their own.
    vjp=lambda b, node, dy: [b.emit("softmax_grad", [dy, node], axis=node.attrs["axis"])],
    doc="Softmax over an axis: the channels (`axis=0`, the default), or `axis=-1` for the "
        "last (attention scores); `causal=true` masks the keys after each query."))

register(OpDef(
    name="softmax_grad", attrs=(Attr("axis", "int", 0),), shape=_same, kind=FusionKind.REDUCE,
    min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: xs[1] * (xs[0] - (xs[0] * xs[1]).sum(axis=a["axis"] + 1,
                                                                   keepdims=True)),
    user=False, doc="y * (dy - sum_c(dy * y)) given the softmax output y."))

register(OpDef(
    name="log_softmax", attrs=(Attr("axis", "int", 0),), shape=_softmax_shape,
    kind=FusionKind.REDUCE, writes_per_element=True,
    forward=lambda xs, a, rt: _log_softmax(xs[0], a["axis"] + 1),
    vjp=lambda b, node, dy: [b.emit("log_softmax_grad", [dy, node], axis=node.attrs["axis"])],
    doc="log(softmax(x)) over an axis, computed without the log of a small number."))

register(OpDef(
    name="log_softmax_grad", attrs=(Attr("axis", "int", 0),), shape=_same,
    kind=FusionKind.REDUCE, min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: xs[0] - np.exp(xs[1]) * xs[0].sum(axis=a["axis"] + 1,
                                                                keepdims=True),
    user=False, doc="dy - exp(y) * sum_c(dy) given the log_softmax output y."))


def _constant(xs, a, rt):
    ty = TensorType(tuple(a["shape"]), a["batched"])
    return np.full(ty.full_shape(rt.batch if ty.batched else 0), a["value"], dtype=rt.dtype)


register(OpDef(
    name="constant", attrs=(Attr("value", "float"), Attr("shape", "ints"), Attr("batched", "bool")),
    shape=lambda ctx: TensorType(tuple(ctx.attrs["shape"]), ctx.attrs["batched"]),
    kind=FusionKind.ELEMWISE, min_inputs=0, max_inputs=0, forward=_constant, fusable=False,
    vjp=lambda b, node, dy: [],
    user=False, doc="A tensor filled with one value (the seed of reverse mode)."))


register(OpDef(
    name="sum_all", attrs=(), shape=lambda ctx: TensorType((), batched=False),
    kind=FusionKind.REDUCE, forward=lambda xs, a, rt: np.asarray(xs[0].sum(), xs[0].dtype),
    vjp=lambda b, node, dy: [b.emit("broadcast_like", [dy, node.inputs[0]])],
    user=False, doc="Sum of all elements (batch included): a scalar."))
