"""Layers with parameters: conv, conv_transpose, dense, batchnorm; and dropout.

(Longer than our ~400-line guide: one registration block per op with all its rules, as the
registry asks; the convolution cores are in ops/_conv.py.)
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from netlang.ir.types import TensorType, fmt_shape
from netlang.ops import _conv
from netlang.ops.registry import (
    DIM_NAMES, INIT_SCHEMES, Attr, FusionKind, OpDef, ParamSpec, ShapeCtx, ShapeError, per_dim,
    register, resolve_pad, sliding_out, spatial_rank, uniform_fan_in,
)

INIT = Attr("init", "choice", "pytorch", INIT_SCHEMES,
            doc="the weights' initialisation: PyTorch's default for the layer, or a "
                "torch.nn.init scheme with a zero bias")
CONV_ATTRS = (
    Attr("channels", "int", minimum=1, doc="output channels"),
    Attr("kernel", "ints", minimum=1, doc="kernel size: one value or one per spatial dim"),
    Attr("stride", "ints", 1, minimum=1),
    Attr("pad", "pad", 0, doc="`valid`, `same`, a number, one per dim, or (before, after) pairs"),
    Attr("dilation", "ints", 1, minimum=1),
    Attr("groups", "int", 1, minimum=1),
    Attr("bias", "bool", True),
    INIT,
)


def _default_init(ctx: ShapeCtx) -> None:
    """PyTorch's initialisation is not recorded in the node (its printed IR stays as it
    was); the rules read `init` with that default."""
    if ctx.attrs.get("init") == "pytorch":
        del ctx.attrs["init"]


def _with_scheme(specs: dict[str, ParamSpec], a) -> dict[str, ParamSpec]:
    scheme = a.get("init", "pytorch")
    if scheme == "pytorch":
        return specs
    return {k: replace(v, scheme=scheme) for k, v in specs.items()}


def _pairs(a) -> tuple[tuple[int, int], ...]:
    p = a["pad"]
    return tuple((p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2))


def _check_groups(ctx: ShapeCtx, cin: int, cout: int) -> int:
    g = ctx.attrs["groups"]
    if cin % g or cout % g:
        raise ShapeError("E024", f"groups = {g} must divide both the input channels ({cin}) "
                         f"and the output channels ({cout})",
                         help="choose a number of groups that divides both")
    return g


def _conv_shape(ctx: ShapeCtx) -> TensorType:
    _default_init(ctx)
    nd = spatial_rank(ctx, "conv")
    cin, spatial = ctx.x.shape[0], ctx.x.shape[1:]
    cout = ctx.attrs["channels"]
    _check_groups(ctx, cin, cout)
    k, s, d = per_dim(ctx, "kernel", nd), per_dim(ctx, "stride", nd), per_dim(ctx, "dilation", nd)
    keff = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    pads = resolve_pad(ctx, nd, spatial, keff, s)
    out = sliding_out(ctx, "conv", spatial, keff, s, pads)
    ctx.attrs.update(kernel=k, stride=s, dilation=d, pad=tuple(v for p in pads for v in p))
    return TensorType((cout,) + out)


def _conv_params(ins: list[TensorType], a) -> dict[str, ParamSpec]:
    cin = ins[0].shape[0]
    k = a["kernel"]
    fan_in = cin // a["groups"] * math.prod(k)
    bound = uniform_fan_in(fan_in)
    specs = {"weight": ParamSpec((a["channels"], cin // a["groups"]) + tuple(k), "uniform", bound)}
    if a["bias"]:
        specs["bias"] = ParamSpec((a["channels"],), "uniform", bound)
    return _with_scheme(specs, a)


def _bias_roles(a) -> list[str]:
    return ["weight", "bias"] if a["bias"] else ["weight"]


def _plus_bias(y: np.ndarray, xs, a) -> np.ndarray:
    if a["bias"]:
        y += xs[2].reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def _window_attrs(a) -> dict:
    """The attributes a convolution's gradient ops share with it."""
    return dict(stride=a["stride"], pad=a["pad"], dilation=a["dilation"], groups=a["groups"])


def _conv_forward(xs, a, rt):
    y = _conv.conv_forward(xs[0], xs[1], a["stride"], _pairs(a), a["dilation"], a["groups"])
    return _plus_bias(y, xs, a)


def _conv_vjp(b, node, dy):
    x, w = node.inputs[:2]
    a = node.attrs
    common = _window_attrs(a)
    grads = [b.emit("conv_grad_input", [dy, w], in_shape=x.type.shape, **common),
             b.emit("conv_grad_weight", [dy, x], kernel=a["kernel"], **common)]
    if a["bias"]:
        grads.append(b.emit("bias_grad", [dy]))
    return grads


def _conv_macs(ins, out, a) -> int:
    return out.size * (ins[0].shape[0] // a["groups"]) * math.prod(a["kernel"])


register(OpDef(
    name="conv", attrs=CONV_ATTRS, shape=_conv_shape, kind=FusionKind.OUT_ELEMWISE_FUSABLE,
    max_inputs=1, params=_conv_params, param_roles=_bias_roles, macs=_conv_macs,
    forward=_conv_forward, vjp=_conv_vjp, example="conv(64, 3, pad=same)", color="#cfe2f3",
    doc="Convolution, 1-D/2-D/3-D by input rank. Weight [out, in/groups, *kernel]."))

_GRAD_ATTRS = (Attr("stride", "ints"), Attr("pad", "ints"), Attr("dilation", "ints"),
               Attr("groups", "int"))


def _conv_grad_input_shape(ctx: ShapeCtx) -> TensorType:
    return TensorType(tuple(ctx.attrs["in_shape"]))


register(OpDef(
    name="conv_grad_input", attrs=_GRAD_ATTRS + (Attr("in_shape", "ints"),),
    shape=_conv_grad_input_shape, kind=FusionKind.OUT_ELEMWISE_FUSABLE, min_inputs=2,
    max_inputs=2,
    macs=lambda ins, out, a: ins[0].size * ins[1].shape[1] * math.prod(ins[1].shape[2:]),
    forward=lambda xs, a, rt: _conv.conv_grad_input(
        xs[0], xs[1], tuple(a["in_shape"][1:]), a["stride"], _pairs(a), a["dilation"],
        a["groups"]),
    user=False, doc="Input gradient of conv (a transposed convolution of dy)."))


def _conv_grad_weight_shape(ctx: ShapeCtx) -> TensorType:
    dy, x = ctx.inputs
    return TensorType((dy.shape[0], x.shape[0] // ctx.attrs["groups"]) +
                      tuple(ctx.attrs["kernel"]), batched=False)


register(OpDef(
    name="conv_grad_weight", attrs=_GRAD_ATTRS + (Attr("kernel", "ints"),),
    shape=_conv_grad_weight_shape, kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=2,
    macs=lambda ins, out, a: out.size * math.prod(ins[0].shape[1:]),
    forward=lambda xs, a, rt: _conv.conv_grad_weight(
        xs[0], xs[1], tuple(a["kernel"]), a["stride"], _pairs(a), a["dilation"], a["groups"]),
    user=False, doc="Weight gradient of conv."))


def _bias_grad(xs, a, rt):
    dy = xs[0]
    return dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))


register(OpDef(
    name="bias_grad", attrs=(), kind=FusionKind.REDUCE,
    shape=lambda ctx: TensorType((ctx.x.shape[0],), batched=False),
    forward=_bias_grad,
    user=False, doc="Sum over batch and spatial axes: the gradient of a per-channel bias."))


# -- conv_transpose ----------------------------------------------------------------------

def _convt_shape(ctx: ShapeCtx) -> TensorType:
    _default_init(ctx)
    nd = spatial_rank(ctx, "conv_transpose")
    cin, spatial = ctx.x.shape[0], ctx.x.shape[1:]
    cout = ctx.attrs["channels"]
    _check_groups(ctx, cin, cout)
    k, s, d = per_dim(ctx, "kernel", nd), per_dim(ctx, "stride", nd), per_dim(ctx, "dilation", nd)
    op = per_dim(ctx, "output_padding", nd)
    if ctx.attrs["pad"] == "same":   # out = H * stride (ONNX SAME_UPPER, TensorFlow)
        if any(op):
            raise ShapeError("E012", "`pad=same` chooses the output padding itself",
                             help="drop `output_padding`")
        pads, op = [], list(op)
        for i in range(nd):
            total = d[i] * (k[i] - 1) + 1 - s[i]
            pads.append((max(total, 0) // 2, max(total, 0) - max(total, 0) // 2))
            op[i] = max(-total, 0)
        ctx.attrs["pad"] = tuple(v for p in pads for v in p)
        op = tuple(op)
    else:
        pads = resolve_pad(ctx, nd, spatial, k, s, allow_same=False)
    size = ctx.attrs.get("output_size")
    if size is not None:   # PyTorch's output_size: the output padding that reaches it
        size = size if isinstance(size, tuple) else (size,) * nd
        if len(size) != nd:
            raise ShapeError("E012", f"`output_size` has {len(size)} values; the input has "
                             f"{nd} spatial dimensions")
        op = list(op)
        for i in range(nd):
            least = (spatial[i] - 1) * s[i] - sum(pads[i]) + d[i] * (k[i] - 1) + 1
            reach = max(s[i], d[i]) - 1
            if not least <= size[i] <= least + reach:
                raise ShapeError("E012", f"conv_transpose: output size {size[i]} along "
                                 f"{DIM_NAMES[nd][i]} is out of reach: this layer makes "
                                 f"{least} to {least + reach} there",
                                 help="change the stride, kernel or padding, or crop or pad "
                                      "the result")
            op[i] = size[i] - least
        op = tuple(op)
    out = []
    for i in range(nd):
        if op[i] >= max(s[i], d[i]):
            raise ShapeError("E012", f"output_padding {op[i]} must be smaller than the stride "
                             f"or the dilation")
        o = (spatial[i] - 1) * s[i] - pads[i][0] - pads[i][1] + d[i] * (k[i] - 1) + op[i] + 1
        if o <= 0:
            raise ShapeError("E021", f"conv_transpose: output size {o} is not positive",
                             help="reduce the padding")
        out.append(o)
    ctx.attrs.update(kernel=k, stride=s, dilation=d, output_padding=op,
                     pad=tuple(v for p in pads for v in p))
    return TensorType((cout,) + tuple(out))


def _convt_params(ins, a) -> dict[str, ParamSpec]:
    cin = ins[0].shape[0]
    k = a["kernel"]
    # PyTorch computes fan_in from weight.size(1) * kernel for transposed convs.
    bound = uniform_fan_in(a["channels"] // a["groups"] * math.prod(k))
    specs = {"weight": ParamSpec((cin, a["channels"] // a["groups"]) + tuple(k), "uniform", bound)}
    if a["bias"]:
        specs["bias"] = ParamSpec((a["channels"],), "uniform", bound)
    return _with_scheme(specs, a)


def _convt_forward(xs, a, rt):
    y = _conv.conv_transpose_forward(xs[0], xs[1], a["stride"], _pairs(a), a["dilation"],
                                     a["groups"], a["output_padding"])
    return _plus_bias(y, xs, a)


def _convt_vjp(b, node, dy):
    x, w = node.inputs[:2]
    a = node.attrs
    common = _window_attrs(a)
    dx = b.emit("conv", [dy, w], channels=x.type.shape[0], kernel=a["kernel"], bias=False,
                **common)
    # With output_padding >= stride (allowed when the dilation is larger), the convolution
    # of dy reads floor(output_padding / stride) windows past the input: crop them off.
    extra = [o - i for o, i in zip(dx.type.shape[1:], x.type.shape[1:])]
    if any(extra):
        dx = b.emit("crop", [dx], box=tuple(v for e in extra for v in (0, e)))
    grads = [dx, b.emit("conv_transpose_grad_weight", [dy, x], kernel=a["kernel"], **common)]
    if a["bias"]:
        grads.append(b.emit("bias_grad", [dy]))
    return grads


register(OpDef(
    name="conv_transpose",
    attrs=CONV_ATTRS[:3] + (Attr("pad", "pad", 0), Attr("output_padding", "ints", 0, minimum=0))
    + CONV_ATTRS[4:] + (Attr("output_size", "size", None, minimum=1,
                             doc="the output's spatial size; sets output_padding"),),
    shape=_convt_shape, kind=FusionKind.OUT_ELEMWISE_FUSABLE, params=_convt_params,
    param_roles=_bias_roles,
    macs=lambda ins, out, a: ins[0].size * (a["channels"] // a["groups"]) * math.prod(a["kernel"]),
    forward=_convt_forward, vjp=_convt_vjp, example="conv_transpose(64, 2, stride=2)",
    color="#d9d2e9",
    doc="Transposed convolution (U-Net's up-conv). Weight [in, out/groups, *kernel]."))

register(OpDef(
    name="conv_transpose_grad_weight", attrs=_GRAD_ATTRS + (Attr("kernel", "ints"),),
    shape=lambda ctx: TensorType((ctx.inputs[1].shape[0],
                                  ctx.inputs[0].shape[0] // ctx.attrs["groups"]) +
                                 tuple(ctx.attrs["kernel"]), batched=False),
    kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: _conv.conv_transpose_grad_weight(
        xs[0], xs[1], tuple(a["kernel"]), a["stride"], _pairs(a), a["dilation"], a["groups"]),
    user=False, doc="Weight gradient of conv_transpose."))


# -- dense -------------------------------------------------------------------------------

def _dense_shape(ctx: ShapeCtx) -> TensorType:
    _default_init(ctx)
    if ctx.x.rank < 1:
        raise ShapeError("E022", "dense needs an input with a feature axis, got a scalar")
    if ctx.x.rank > 2:
        raise ShapeError("E022", f"dense takes [F] or tokens [T, F], got "
                         f"{fmt_shape(ctx.x.shape)}",
                         notes=("dense multiplies each row's last axis by a matrix; it does "
                                "not flatten implicitly",),
                         help="insert `flatten` before `dense` (or `global_avgpool`), or "
                              "`reshape` to tokens")
    return TensorType(ctx.x.shape[:-1] + (ctx.attrs["units"],))


def _dense_params(ins, a) -> dict[str, ParamSpec]:
    fan_in = ins[0].shape[-1]
    bound = uniform_fan_in(fan_in)
    specs = {"weight": ParamSpec((a["units"], fan_in), "uniform", bound)}
    if a["bias"]:
        specs["bias"] = ParamSpec((a["units"],), "uniform", bound)
    return _with_scheme(specs, a)


def _dense_forward(xs, a, rt):
    y = xs[0] @ xs[1].T
    if a["bias"]:
        y += xs[2]
    return y


def _dense_vjp(b, node, dy):
    x, w = node.inputs[:2]
    grads = [b.emit("dense_grad_input", [dy, w]), b.emit("dense_grad_weight", [dy, x])]
    if node.attrs["bias"]:
        if node.type.rank == 1:
            grads.append(b.emit("bias_grad", [dy]))
        else:   # tokens: the bias gradient sums over the batch and the rows
            grads.append(b.emit("sum_to", [dy], shape=(node.type.shape[-1],), batched=False))
    return grads


register(OpDef(
    name="dense", attrs=(Attr("units", "int", minimum=1), Attr("bias", "bool", True), INIT),
    shape=_dense_shape, kind=FusionKind.OUT_ELEMWISE_FUSABLE, params=_dense_params,
    param_roles=_bias_roles, macs=lambda ins, out, a: ins[0].size * a["units"],
    forward=_dense_forward, vjp=_dense_vjp, example="dense(10)", color="#cfe2f3",
    doc="Fully connected layer on a flat input [F], or on each row of tokens [T, F] "
        "(as nn.Linear on the last axis). Weight [out, in]."))

register(OpDef(
    name="dense_grad_input", attrs=(), kind=FusionKind.OUT_ELEMWISE_FUSABLE, min_inputs=2,
    max_inputs=2,
    shape=lambda ctx: TensorType(ctx.inputs[0].shape[:-1] + (ctx.inputs[1].shape[1],)),
    forward=lambda xs, a, rt: xs[0] @ xs[1],
    user=False, doc="dy @ W."))

register(OpDef(
    name="dense_grad_weight", attrs=(), kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=2,
    shape=lambda ctx: TensorType((ctx.inputs[0].shape[-1], ctx.inputs[1].shape[-1]),
                                 batched=False),
    forward=lambda xs, a, rt: (xs[0].reshape(-1, xs[0].shape[-1]).T
                               @ xs[1].reshape(-1, xs[1].shape[-1])),
    user=False, doc="dy^T @ x, summed over the batch (and the rows of tokens)."))


# -- batchnorm ---------------------------------------------------------------------------

def _bn_shape(ctx: ShapeCtx) -> TensorType:
    if ctx.x.rank < 1:
        raise ShapeError("E025", "batchnorm needs an input with a channel axis")
    return ctx.x


def _bn_params(ins, a) -> dict[str, ParamSpec]:
    c = (ins[0].shape[0],)
    specs = {}
    if a["affine"]:
        specs["weight"] = ParamSpec(c, "ones")
        specs["bias"] = ParamSpec(c, "zeros")
    if a["track_running_stats"]:
        specs["running_mean"] = ParamSpec(c, "zeros", trainable=False)
        specs["running_var"] = ParamSpec(c, "ones", trainable=False)
    return specs


def _bn_roles(a) -> list[str]:
    return ((["weight", "bias"] if a["affine"] else [])
            + (["running_mean", "running_var"] if a["track_running_stats"] else []))


def bn_operands(inputs: list, attrs: dict) -> tuple:
    """(x, weight, bias, running_mean, running_var) of a batchnorm node's inputs, None for
    those it lacks (no affine, no running statistics)."""
    x, rest = inputs[0], list(inputs[1:])
    w, b = (rest.pop(0), rest.pop(0)) if attrs["affine"] else (None, None)
    rm, rv = (rest[0], rest[1]) if attrs.get("track_running_stats", True) else (None, None)
    return x, w, b, rm, rv


def bn_grad_operands(inputs: list, attrs: dict) -> tuple:
    """(dy, x, running_mean, running_var, weight) of a batchnorm gradient node. In training
    the gradients use batch statistics alone, so the running ones are no operands there."""
    dy, x, rest = inputs[0], inputs[1], list(inputs[2:])
    rm, rv = (rest.pop(0), rest.pop(0)) if not attrs["training"] else (None, None)
    return dy, x, rm, rv, (rest[0] if rest else None)


def _bn_axes(x: np.ndarray) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.ndim))


def _bn_stats(x: np.ndarray, rm, rv, a) -> tuple[np.ndarray, np.ndarray]:
    if a.get("training"):
        axes = _bn_axes(x)
        mean = x.mean(axis=axes, dtype=np.float64).astype(x.dtype)
        var = ((x - _bc(mean, x)) ** 2).mean(axis=axes, dtype=np.float64).astype(x.dtype)
        return mean, var
    return rm, rv


def _bc(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _bn_forward(xs, a, rt):
    x, w, b, rm, rv = bn_operands(xs, a)
    mean, var = _bn_stats(x, rm, rv, a)
    if a.get("training") and rt is not None and rm is not None:
        n = x.size // x.shape[1]
        m = a["momentum"]
        unbiased = var * (n / max(n - 1, 1))
        rt.buffer_update(rt.current.inputs[-2], ((1 - m) * rm + m * mean).astype(rm.dtype))
        rt.buffer_update(rt.current.inputs[-1], ((1 - m) * rv + m * unbiased).astype(rv.dtype))
    inv = (1.0 / np.sqrt(var + x.dtype.type(a["eps"]))).astype(x.dtype)
    y = (x - _bc(mean, x)) * _bc(inv, x)
    if w is not None:
        y = y * _bc(w, x) + _bc(b, x)
    return y


def _bn_vjp(b, node, dy):
    a = node.attrs
    x, w, _, rm, rv = bn_operands(node.inputs, a)
    training = bool(a.get("training", False))
    stats = dict(eps=a["eps"], training=training)
    st = [] if training else [rm, rv]
    dx_inputs = [dy, x] + st + ([w] if w is not None else [])
    grads = [b.emit("batchnorm_grad_input", dx_inputs, affine=a["affine"], **stats)]
    if a["affine"]:
        grads += [b.emit("batchnorm_grad_weight", [dy, x] + st, **stats),
                  b.emit("bias_grad", [dy])]
    return grads + ([None, None] if rm is not None else [])


register(OpDef(
    name="batchnorm",
    attrs=(Attr("eps", "float", 1e-5, minimum=0), Attr("momentum", "float", 0.1, minimum=0),
           Attr("affine", "bool", True), Attr("track_running_stats", "bool", True)),
    shape=_bn_shape, kind=FusionKind.ELEMWISE, params=_bn_params, param_roles=_bn_roles,
    forward=_bn_forward, vjp=_bn_vjp, fusable=lambda a: not a.get("training"),
    doc="Batch normalisation over the channel axis; batch statistics in training (running "
        "statistics updated with momentum 0.1, unbiased variance), running ones in inference. "
        "With track_running_stats=false it keeps no running statistics and normalises with "
        "the batch's in inference too, as nn.BatchNorm2d(track_running_stats=False)."))


def _bn_grad_input(xs, a, rt):
    dy, x, rm, rv, w = bn_grad_operands(xs, a)
    mean, var = _bn_stats(x, rm, rv, a)
    inv = (1.0 / np.sqrt(var + x.dtype.type(a["eps"]))).astype(x.dtype)
    g = dy * _bc(w, x) if w is not None else dy
    if not a["training"]:
        return g * _bc(inv, x)
    axes = _bn_axes(x)
    m = x.size // x.shape[1]
    xhat = (x - _bc(mean, x)) * _bc(inv, x)
    sg = g.sum(axis=axes)
    sgx = (g * xhat).sum(axis=axes)
    return (_bc(inv, x) / m) * (m * g - _bc(sg, x) - xhat * _bc(sgx, x))


def _bn_grad_weight(xs, a, rt):
    dy, x, rm, rv, _ = bn_grad_operands(xs, a)
    mean, var = _bn_stats(x, rm, rv, a)
    inv = (1.0 / np.sqrt(var + x.dtype.type(a["eps"]))).astype(x.dtype)
    return (dy * (x - _bc(mean, x)) * _bc(inv, x)).sum(axis=_bn_axes(x))


_BN_GRAD_ATTRS = (Attr("eps", "float"), Attr("training", "bool"))

register(OpDef(
    name="batchnorm_grad_input", attrs=_BN_GRAD_ATTRS + (Attr("affine", "bool"),),
    shape=lambda ctx: ctx.inputs[1], kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=5,
    forward=_bn_grad_input, user=False, doc="Input gradient of batchnorm."))

register(OpDef(
    name="batchnorm_grad_weight", attrs=_BN_GRAD_ATTRS,
    shape=lambda ctx: TensorType((ctx.inputs[1].shape[0],), batched=False),
    kind=FusionKind.REDUCE, min_inputs=2, max_inputs=4,
    forward=_bn_grad_weight, user=False, doc="Scale gradient of batchnorm."))


# -- dropout -----------------------------------------------------------------------------

register(OpDef(
    name="dropout", attrs=(Attr("p", "float", 0.5, minimum=0),),
    shape=lambda ctx: _dropout_shape(ctx), kind=FusionKind.ELEMWISE,
    forward=lambda xs, a, rt: xs[0],
    vjp=lambda b, node, dy: [dy], rewritten=True,
    doc="Zeroes elements with probability p in training and scales the rest by 1/(1-p); "
        "the identity in inference. Training graphs rewrite it into `mul(x, dropout_mask(x))`."))


def _dropout_shape(ctx: ShapeCtx) -> TensorType:
    if not 0 <= ctx.attrs["p"] < 1:
        raise ShapeError("E012", f"dropout probability must be in [0, 1), got {ctx.attrs['p']}")
    return ctx.x


def _dropout_mask(xs, a, rt):
    x = xs[0]
    keep = 1.0 - a["p"]
    return ((rt.rng.random(x.shape) < keep) / x.dtype.type(keep)).astype(x.dtype)


register(OpDef(
    name="dropout_mask", attrs=(Attr("p", "float"),), shape=lambda ctx: ctx.x,
    kind=FusionKind.OPAQUE, forward=_dropout_mask, vjp=lambda b, node, dy: [None], impure=True,
    user=False, doc="A random keep-mask scaled by 1/(1-p), the shape of its input."))


# -- matmul ------------------------------------------------------------------------------

def _matmul_shape(ctx: ShapeCtx) -> TensorType:
    a, b = ctx.inputs
    ta, tb = ctx.attrs["trans_a"], ctx.attrs["trans_b"]
    for name, t in (("first", a), ("second", b)):
        if t.rank < 2:
            raise ShapeError("E025", f"matmul: the {name} input is {fmt_shape(t.shape)}; it "
                             "needs at least two axes (rows and columns) per sample",
                             help="`reshape` a vector to [1, F] or [F, 1]")
    if a.batched and b.batched and a.shape[:-2] != b.shape[:-2]:
        raise ShapeError("E020", f"matmul of {fmt_shape(a.shape)} and {fmt_shape(b.shape)}: "
                         "the leading (batch-like) axes differ",
                         notes=("matmul multiplies the last two axes; the axes before them "
                                "must be equal",))
    if a.batched != b.batched and (b if a.batched else a).rank != 2:
        raise ShapeError("E025", "matmul: a parameter multiplied with a per-sample value must "
                         "be a [rows, columns] matrix")
    if not a.batched and not b.batched and a.shape[:-2] != b.shape[:-2]:
        raise ShapeError("E020", f"matmul of {fmt_shape(a.shape)} and {fmt_shape(b.shape)}: "
                         "the leading axes differ")
    m, ka = (a.shape[-1], a.shape[-2]) if ta else (a.shape[-2], a.shape[-1])
    kb, nc = (b.shape[-1], b.shape[-2]) if tb else (b.shape[-2], b.shape[-1])
    if ka != kb:
        raise ShapeError("E020", f"matmul of {fmt_shape(a.shape)} and {fmt_shape(b.shape)}: "
                         f"the first has {ka} columns, the second {kb} rows",
                         help="the inner sizes must agree; `permute` or `trans_b=true` "
                              "transposes an input")
    lead = (b if b.batched and not a.batched else a).shape[:-2]
    return TensorType(lead + (m, nc), a.batched or b.batched)


def _op(x: np.ndarray, t: bool) -> np.ndarray:
    return np.swapaxes(x, -1, -2) if t else x


def _matmul_vjp(b, node, dy):
    x, y = node.inputs
    ta, tb = node.attrs["trans_a"], node.attrs["trans_b"]
    if ta:
        dx = b.emit("matmul", [y, dy], trans_a=tb, trans_b=True)
    else:
        dx = b.emit("matmul", [dy, y], trans_a=False, trans_b=not tb)
    if tb:
        dw = b.emit("matmul", [dy, x], trans_a=True, trans_b=ta)
    else:
        dw = b.emit("matmul", [x, dy], trans_a=not ta, trans_b=False)
    return [b.reduce_to(dx, x.type), b.reduce_to(dw, y.type)]


register(OpDef(
    name="matmul", attrs=(Attr("trans_a", "bool", False), Attr("trans_b", "bool", False)),
    shape=_matmul_shape, kind=FusionKind.OUT_ELEMWISE_FUSABLE, min_inputs=2, max_inputs=2,
    macs=lambda ins, out, a: out.size * (ins[0].shape[-2] if a["trans_a"] else ins[0].shape[-1]),
    forward=lambda xs, a, rt: np.matmul(_op(xs[0], a["trans_a"]), _op(xs[1], a["trans_b"])),
    vjp=_matmul_vjp, example="matmul(q, k, trans_b=true)", color="#cfe2f3",
    doc="Matrix product of the last two axes per sample, `[.., M, K] x [.., K, N] -> "
        "[.., M, N]` (leading axes equal; a parameter matrix multiplies every sample); "
        "`trans_a`/`trans_b` transpose an input first (attention scores: "
        "`matmul(q, k, trans_b=true)`)."))


# -- layernorm ---------------------------------------------------------------------------

def _ln_shape(ctx: ShapeCtx) -> TensorType:
    if ctx.x.rank < 1:
        raise ShapeError("E025", "layernorm needs an input with a feature axis")
    return ctx.x


def _ln_params(ins, a) -> dict[str, ParamSpec]:
    d = ins[0].shape[-1]
    if not a["affine"]:
        return {}
    return {"weight": ParamSpec((d,), "ones"), "bias": ParamSpec((d,), "zeros")}


def _ln_roles(a) -> list[str]:
    return ["weight", "bias"] if a["affine"] else []


def _ln_normalized(x: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + x.dtype.type(eps))


def _ln_forward(xs, a, rt):
    y = _ln_normalized(xs[0], a["eps"])
    if a["affine"]:
        y = y * xs[1] + xs[2]
    return y.astype(xs[0].dtype)


def _ln_vjp(b, node, dy):
    at = node.attrs
    x = node.inputs[0]
    ins = [dy, x] + ([node.inputs[1]] if at["affine"] else [])
    grads = [b.emit("layernorm_grad_input", ins, eps=at["eps"], affine=at["affine"])]
    if at["affine"]:
        d = (x.type.shape[-1],)
        grads += [b.emit("layernorm_grad_weight", [dy, x], eps=at["eps"]),
                  b.emit("sum_to", [dy], shape=d, batched=False)]
    return grads


def _row_norm_grad(g: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """The input gradient of a normalisation over the last axis, given g = dy * weight:
    inv / d (d g - sum(g) - x_hat sum(g x_hat))."""
    d = x.shape[-1]
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    inv = 1 / np.sqrt(var + x.dtype.type(eps))
    xh = (x - mu) * inv
    return inv / d * (d * g - g.sum(axis=-1, keepdims=True)
                      - xh * (g * xh).sum(axis=-1, keepdims=True))


def _ln_grad_input(xs, a, rt):
    dy, x = xs[0], xs[1]
    g = dy * xs[2] if a["affine"] else dy
    return _row_norm_grad(g, x, a["eps"]).astype(x.dtype)


register(OpDef(
    name="layernorm", attrs=(Attr("eps", "float", 1e-5, minimum=0.0),
                             Attr("affine", "bool", True)),
    shape=_ln_shape, kind=FusionKind.OPAQUE, params=_ln_params, param_roles=_ln_roles,
    forward=_ln_forward, vjp=_ln_vjp, color="#d9ead3",
    doc="Normalises each row over its last axis (mean 0, variance 1, then weight and bias "
        "[D]), as nn.LayerNorm(D): tokens [T, D] per token, a vector [F] as a whole."))

register(OpDef(
    name="layernorm_grad_input", attrs=(Attr("eps", "float"), Attr("affine", "bool")),
    shape=lambda ctx: ctx.inputs[1], kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=3,
    forward=_ln_grad_input, user=False, doc="Input gradient of layernorm (dy, x[, weight])."))

register(OpDef(
    name="layernorm_grad_weight", attrs=(Attr("eps", "float"),),
    shape=lambda ctx: TensorType((ctx.inputs[1].shape[-1],), batched=False),
    kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=2,
    forward=lambda xs, a, rt: (xs[0] * _ln_normalized(xs[1], a["eps"])).reshape(
        -1, xs[1].shape[-1]).sum(axis=0).astype(xs[1].dtype),
    user=False, doc="Weight gradient of layernorm: sum of dy * x_hat over batch and rows."))


# -- groupnorm and instancenorm ----------------------------------------------------------

def _gn_shape(ctx: ShapeCtx) -> TensorType:
    x = ctx.x
    if x.rank < 2:
        raise ShapeError("E025", f"{ctx.op} needs [C, L], [C, H, W] or [C, D, H, W], got "
                         f"{fmt_shape(x.shape)}",
                         help="normalise a vector with `layernorm`")
    c = x.shape[0]
    if ctx.op == "instancenorm":
        ctx.attrs["groups"] = c
    g = ctx.attrs["groups"]
    if c % g:
        raise ShapeError("E024", f"groupnorm: {g} groups do not divide {c} channels",
                         help="choose a number of groups that divides the channels")
    if (c // g) * math.prod(x.shape[1:]) == 1:   # PyTorch refuses it too
        what = "channel" if ctx.op == "instancenorm" else "group"
        raise ShapeError("E025", f"{ctx.op} of {fmt_shape(x.shape)} normalises one value per "
                         f"{what}: the output would be its bias whatever the input",
                         help="normalise where the value is larger, or use `batchnorm` "
                              "(statistics over the batch too) or `layernorm`")
    return x


def _gn_params(ins, a) -> dict[str, ParamSpec]:
    c = ins[0].shape[0]
    if not a["affine"]:
        return {}
    return {"weight": ParamSpec((c,), "ones"), "bias": ParamSpec((c,), "zeros")}


def _gn_normalized(x: np.ndarray, groups: int, eps: float) -> np.ndarray:
    return _ln_normalized(x.reshape(x.shape[0], groups, -1), eps).reshape(x.shape)


def _per_channel(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _gn_forward(xs, a, rt):
    x = xs[0]
    y = _gn_normalized(x, a["groups"], a["eps"])
    if a["affine"]:
        y = y * _per_channel(xs[1], x) + _per_channel(xs[2], x)
    return y.astype(x.dtype)


def _gn_vjp(b, node, dy):
    at = node.attrs
    x = node.inputs[0]
    kw = {"groups": at["groups"], "eps": at["eps"]}
    ins = [dy, x] + ([node.inputs[1]] if at["affine"] else [])
    grads = [b.emit("groupnorm_grad_input", ins, affine=at["affine"], **kw)]
    if at["affine"]:
        grads += [b.emit("groupnorm_grad_weight", [dy, x], **kw), b.emit("bias_grad", [dy])]
    return grads


def _gn_grad_input(xs, a, rt):
    dy, x = xs[0], xs[1]
    g = dy * _per_channel(xs[2], x) if a["affine"] else dy
    rows = (x.shape[0], a["groups"], -1)   # a group is a row of its channels' positions
    return _row_norm_grad(g.reshape(rows), x.reshape(rows), a["eps"]).reshape(
        x.shape).astype(x.dtype)


def _gn_grad_weight(xs, a, rt):
    dy, x = xs
    prod = dy * _gn_normalized(x, a["groups"], a["eps"])
    return prod.sum(axis=(0,) + tuple(range(2, x.ndim))).astype(x.dtype)


GN_DOC = ("statistics over each sample's group of C / groups channels and all positions, "
          "then weight and bias per channel; as nn.GroupNorm, independent of the batch")

register(OpDef(
    name="groupnorm", attrs=(Attr("groups", "int", minimum=1), Attr("eps", "float", 1e-5,
                                                                     minimum=0.0),
                             Attr("affine", "bool", True)),
    shape=_gn_shape, kind=FusionKind.OPAQUE, params=_gn_params, param_roles=_ln_roles,
    forward=_gn_forward, vjp=_gn_vjp, color="#d9ead3", example="groupnorm(8)",
    doc="Group normalisation (Wu and He, 2018): " + GN_DOC + "."))

register(OpDef(
    name="instancenorm", attrs=(Attr("eps", "float", 1e-5, minimum=0.0),
                                Attr("affine", "bool", False)),
    shape=_gn_shape, kind=FusionKind.OPAQUE, params=_gn_params, param_roles=_ln_roles,
    forward=_gn_forward, vjp=_gn_vjp, color="#d9ead3",
    doc="Instance normalisation: groupnorm with one group per channel; as "
        "nn.InstanceNorm2d (no learned weight by default, no running statistics)."))

register(OpDef(
    name="groupnorm_grad_input", attrs=(Attr("groups", "int"), Attr("eps", "float"),
                                        Attr("affine", "bool")),
    shape=lambda ctx: ctx.inputs[1], kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=3,
    forward=_gn_grad_input, user=False, doc="Input gradient of groupnorm (dy, x[, weight])."))

register(OpDef(
    name="groupnorm_grad_weight", attrs=(Attr("groups", "int"), Attr("eps", "float")),
    shape=lambda ctx: TensorType((ctx.inputs[1].shape[0],), batched=False),
    kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=2, forward=_gn_grad_weight,
    user=False, doc="Weight gradient of groupnorm: sum of dy * x_hat per channel."))
