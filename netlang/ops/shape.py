"""Ops that move data without arithmetic: concat, crop, pad, flatten, reshape, permute, and
their inverses."""

from __future__ import annotations

import math

import numpy as np

from netlang.ir.types import TensorType, fmt_shape
from netlang.ops.elementwise import normalize_axis
from netlang.ops.registry import (
    DIM_NAMES, Attr, FusionKind, OpDef, ShapeCtx, ShapeError, register, spatial_rank,
)


# -- concat ------------------------------------------------------------------------------

def _concat_shape(ctx: ShapeCtx) -> TensorType:
    first = ctx.inputs[0]
    rank = first.rank
    ctx.attrs.setdefault("axis", 0)
    axis = normalize_axis(ctx, "concat")
    for other in ctx.inputs[1:]:
        same = other.rank == rank and all(a == b for i, (a, b) in enumerate(
            zip(other.shape, first.shape)) if i != axis)
        if not same:
            joins = "channels" if axis == 0 else f"axis {axis}"
            raise ShapeError(
                "E020", f"concat inputs differ in size: {fmt_shape(first.shape)} and "
                f"{fmt_shape(other.shape)}",
                notes=(f"concat joins {joins}; every other dimension must agree",))
    if not any(t.batched for t in ctx.inputs):
        raise ShapeError("E025", "concat of parameters only: nothing to join per sample")
    shape = list(first.shape)
    shape[axis] = sum(t.shape[axis] for t in ctx.inputs)
    return TensorType(tuple(shape))


def _concat_vjp(b, node, dy):
    grads, start = [], 0
    axis = node.attrs.get("axis", 0)
    for x in node.inputs:
        stop = start + x.type.shape[axis]
        if axis == 0:
            g = b.emit("slice_channels", [dy], start=start, stop=stop)
        else:
            g = b.emit("slice_axis", [dy], axis=axis, start=start, stop=stop)
        grads.append(b.reduce_to(g, x.type))   # a parameter's gradient sums the batch
        start = stop
    return grads


def _concat(xs, a, rt):
    axis = a.get("axis", 0)
    # every input has the same per-sample rank: one without the batch axis is a `param`,
    # repeated for every sample
    rank = max(x.ndim for x in xs)
    n = next(x.shape[0] for x in xs if x.ndim == rank)
    xs = [x if x.ndim == rank else np.broadcast_to(x, (n,) + x.shape) for x in xs]
    if axis != 0:
        return np.concatenate(xs, axis=axis + 1)
    # Written channels-last (each input's channels are a contiguous run of every pixel),
    # the layout the next convolution reads; returned as an NCHW-logical view.
    x0 = xs[0]
    out = np.empty((x0.shape[0],) + x0.shape[2:] + (sum(x.shape[1] for x in xs),),
                   dtype=np.result_type(*xs))
    c = 0
    for x in xs:
        out[..., c:c + x.shape[1]] = np.moveaxis(x, 1, -1)
        c += x.shape[1]
    return np.moveaxis(out, -1, 1)


register(OpDef(
    name="concat", attrs=(Attr("axis", "int", 0),), shape=_concat_shape,
    kind=FusionKind.INJECTIVE, min_inputs=2, max_inputs=None, forward=_concat,
    vjp=_concat_vjp, color="#fff2cc",
    doc="Joins values along the channel axis (skip connections), or along `axis` (a class "
        "token before the patch tokens: `concat(cls, tokens, axis=0)` on [1, D] and [T, D]; "
        "a `param` is repeated for every sample)."))

register(OpDef(
    name="slice_channels", attrs=(Attr("start", "int"), Attr("stop", "int")),
    shape=lambda ctx: TensorType((ctx.attrs["stop"] - ctx.attrs["start"],) + ctx.x.shape[1:],
                                 ctx.x.batched),
    kind=FusionKind.INJECTIVE,
    forward=lambda xs, a, rt: xs[0][:, a["start"]:a["stop"]],   # a view, no copy
    user=False, doc="Channels [start, stop) of the input."))


def _slice_axis_shape(ctx: ShapeCtx) -> TensorType:
    shape = list(ctx.x.shape)
    shape[ctx.attrs["axis"]] = ctx.attrs["stop"] - ctx.attrs["start"]
    return TensorType(tuple(shape), ctx.x.batched)


register(OpDef(
    name="slice_axis", attrs=(Attr("axis", "int"), Attr("start", "int"), Attr("stop", "int")),
    shape=_slice_axis_shape, kind=FusionKind.INJECTIVE,
    forward=lambda xs, a, rt: xs[0][(slice(None),) * (a["axis"] + 1)
                                    + (slice(a["start"], a["stop"]),)],
    vjp=lambda b, node, dy: [b.emit("slice_axis_grad", [dy], axis=node.attrs["axis"],
                                    start=node.attrs["start"],
                                    size=node.inputs[0].type.shape[node.attrs["axis"]])],
    user=False, doc="Positions [start, stop) of a per-sample axis (`split` and `chunk` make "
                    "one per part)."))


def _slice_axis_grad_shape(ctx: ShapeCtx) -> TensorType:
    shape = list(ctx.x.shape)
    shape[ctx.attrs["axis"]] = ctx.attrs["size"]
    return TensorType(tuple(shape), ctx.x.batched)


def _slice_axis_grad(xs, a, rt):
    dy = xs[0]
    ax = a["axis"] + 1
    shape = list(dy.shape)
    shape[ax] = a["size"]
    out = np.zeros(shape, dtype=dy.dtype)
    idx = (slice(None),) * ax + (slice(a["start"], a["start"] + dy.shape[ax]),)
    out[idx] = dy
    return out


register(OpDef(
    name="slice_axis_grad", attrs=(Attr("axis", "int"), Attr("start", "int"),
                                   Attr("size", "int")),
    shape=_slice_axis_grad_shape, kind=FusionKind.INJECTIVE, forward=_slice_axis_grad,
    user=False, doc="dy placed at positions [start, start + len) of an axis of `size`, "
                    "zeros elsewhere."))


# -- crop and pad ------------------------------------------------------------------------

def _target(ctx: ShapeCtx, what: str, nd: int) -> tuple[int, ...]:
    """The spatial size asked for: a reference value's, or the `size` attribute."""
    if len(ctx.inputs) > 1:
        ref = ctx.inputs[1]
        if ref.rank != ctx.x.rank:
            raise ShapeError("E025", f"{what}: reference {fmt_shape(ref.shape)} has another rank "
                             f"than the input {fmt_shape(ctx.x.shape)}")
        return ref.shape[1:]
    size = ctx.attrs.get("size")
    if size is None:
        raise ShapeError("E013", f"{what} needs a reference value or `size=`",
                         help=f"write `{what}(x, like)` or `{what}(x, size=[H, W])`")
    size = size if isinstance(size, tuple) else (size,) * nd
    if len(size) != nd:
        raise ShapeError("E012", f"`size` has {len(size)} values; the input has {nd} spatial "
                         "dimensions")
    return size


def _box(ctx: ShapeCtx) -> tuple[int, ...]:
    b = ctx.attrs["box"]
    return b


def _crop_shape(ctx: ShapeCtx) -> TensorType:
    nd = spatial_rank(ctx, "crop")
    spatial = ctx.x.shape[1:]
    if "box" not in ctx.attrs:
        target = _target(ctx, "crop", nd)
        box = []
        for i, (h, t) in enumerate(zip(spatial, target)):
            if t > h:
                raise ShapeError(
                    "E021", f"crop: {DIM_NAMES[nd][i]} = {h} is smaller than the target {t}",
                    help="crop only shrinks; use `pad` to grow a value")
            lo = (h - t) // 2
            box += [lo, h - t - lo]
        ctx.attrs["box"] = tuple(box)
    b = _box(ctx)
    return TensorType((ctx.x.shape[0],) + tuple(h - b[2 * i] - b[2 * i + 1]
                                                for i, h in enumerate(spatial)))


def _crop(x: np.ndarray, box) -> np.ndarray:
    idx = (slice(None), slice(None)) + tuple(
        slice(box[2 * i], x.shape[2 + i] - box[2 * i + 1]) for i in range(x.ndim - 2))
    return x[idx]   # a view, no copy


PAD_MODES = ("constant", "reflect", "replicate", "circular")
_NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pad(x: np.ndarray, box, mode: str = "constant", value: float = 0.0) -> np.ndarray:
    # Padded channels-last, returned as an NCHW-logical view (the layout convs read).
    widths = [(0, 0)] + [(box[2 * i], box[2 * i + 1]) for i in range(x.ndim - 2)] + [(0, 0)]
    last = np.moveaxis(x, 1, -1)
    if mode == "constant":
        out = np.pad(last, widths, constant_values=value)
    else:
        out = np.pad(last, widths, mode=_NUMPY_MODE[mode])
    return np.moveaxis(out, -1, 1)


def pad_source(mode: str, p: np.ndarray, lo: int, size: int) -> np.ndarray:
    """The input position each padded position p reads along one axis (reflect, replicate,
    circular), as PyTorch's F.pad modes."""
    i = p - lo
    if mode == "reflect":
        i = np.abs(i)
        return np.where(i >= size, 2 * (size - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, size - 1)
    return np.mod(i, size)


def _pad_grad(dy: np.ndarray, box, mode: str) -> np.ndarray:
    """Every padded position's gradient added to the input position it read, one spatial
    axis at a time (the padding is separable)."""
    g = dy
    for ax in range(dy.ndim - 2):
        lo, hi = box[2 * ax], box[2 * ax + 1]
        size = g.shape[2 + ax] - lo - hi
        src = pad_source(mode, np.arange(g.shape[2 + ax]), lo, size)
        moved = np.moveaxis(g, 2 + ax, 0)
        out = np.zeros((size,) + moved.shape[1:], dtype=dy.dtype)
        np.add.at(out, src, moved)
        g = np.moveaxis(out, 0, 2 + ax)
    return g


register(OpDef(
    name="crop", attrs=(Attr("size", "size", None, minimum=1),), shape=_crop_shape,
    kind=FusionKind.INJECTIVE, max_inputs=2,
    forward=lambda xs, a, rt: _crop(xs[0], a["box"]),
    vjp=lambda b, node, dy: [b.emit("pad", [dy], box=node.attrs["box"])] +
    [None] * (len(node.inputs) - 1),
    doc="Centre crop to a reference value's spatial size (`crop(x, like)`) or to `size`, "
        "as the original U-Net does for its skip connections."))


def _pad_shape(ctx: ShapeCtx) -> TensorType:
    nd = spatial_rank(ctx, "pad")
    spatial = ctx.x.shape[1:]
    if "box" not in ctx.attrs:
        amount = ctx.attrs.get("amount")
        if len(ctx.inputs) > 1 or ctx.attrs.get("size") is not None:
            target = _target(ctx, "pad", nd)
            box = []
            for i, (h, t) in enumerate(zip(spatial, target)):
                if t < h:
                    raise ShapeError(
                        "E021", f"pad: {DIM_NAMES[nd][i]} = {h} is larger than the target {t}",
                        help="pad only grows; use `crop` to shrink a value")
                lo = (t - h) // 2  # the odd pixel goes at the end
                box += [lo, t - h - lo]
        elif amount is not None:
            a = amount if isinstance(amount, tuple) else (amount,) * nd
            if len(a) == nd:
                box = [v for x in a for v in (x, x)]
            elif len(a) == 2 * nd:
                box = list(a)
            else:
                raise ShapeError("E012", f"`amount` has {len(a)} values; expected 1, {nd} or "
                                 f"{2 * nd}")
            if any(v < 0 for v in box):
                raise ShapeError("E012", "pad amounts must not be negative",
                                 help="use `crop` to shrink a value")
        else:
            raise ShapeError("E013", "pad needs an amount, a reference value or `size=`",
                             help="write `pad(1)`, `pad(x, like)` or `pad(x, size=[H, W])`")
        ctx.attrs["box"] = tuple(box)
    b = _box(ctx)
    mode = ctx.attrs.get("mode", "constant")
    if mode != "constant" and ctx.attrs.get("value", 0.0) != 0.0:
        raise ShapeError("E012", f"pad: `value` is for mode `constant`, not `{mode}`",
                         help="drop `value`, or use `mode=constant`")
    for i, h in enumerate(spatial):
        most = max(b[2 * i], b[2 * i + 1])
        if mode == "reflect" and most >= h or mode == "circular" and most > h:
            need = most + 1 if mode == "reflect" else most
            raise ShapeError("E012", f"pad: {mode} padding of {most} along "
                             f"{DIM_NAMES[nd][i]} needs at least {need} pixels there; the "
                             f"input has {h}",
                             help="pad less, or use `mode=replicate`")
    return TensorType((ctx.x.shape[0],) + tuple(h + b[2 * i] + b[2 * i + 1]
                                                for i, h in enumerate(spatial)))


def _pad_grad_shape(ctx: ShapeCtx) -> TensorType:
    b = _box(ctx)
    return TensorType((ctx.x.shape[0],) + tuple(h - b[2 * i] - b[2 * i + 1]
                                                for i, h in enumerate(ctx.x.shape[1:])))


def _pad_vjp(b, node, dy):
    rest = [None] * (len(node.inputs) - 1)
    mode = node.attrs.get("mode", "constant")
    if mode == "constant":   # the padded value is a constant: the gradient is the crop
        return [b.emit("crop", [dy], box=node.attrs["box"])] + rest
    return [b.emit("pad_grad", [dy], box=node.attrs["box"], mode=mode)] + rest


register(OpDef(
    name="pad", attrs=(Attr("amount", "ints", None, minimum=0),
                       Attr("size", "size", None, minimum=1),
                       Attr("mode", "choice", "constant", PAD_MODES,
                            doc="what the border holds: `value`, the input mirrored without "
                                "its edge (`reflect`), the edge repeated (`replicate`), or "
                                "the far side (`circular`)"),
                       Attr("value", "float", 0.0, doc="the border's value, mode `constant`")),
    shape=_pad_shape, kind=FusionKind.INJECTIVE, max_inputs=2,
    forward=lambda xs, a, rt: _pad(xs[0], a["box"], a.get("mode", "constant"),
                                   a.get("value", 0.0)),
    vjp=_pad_vjp,
    example="pad(1, mode=reflect)",
    doc="Padding by an amount (`pad(1)`), or to a reference value's size (`pad(x, like)`; "
        "the odd pixel goes at the end): zeros, a `value`, or the input reflected, "
        "replicated or wrapped around (`mode`), as PyTorch's F.pad."))

register(OpDef(
    name="pad_grad", attrs=(Attr("box", "ints"), Attr("mode", "choice", "reflect", PAD_MODES)),
    shape=_pad_grad_shape, kind=FusionKind.OPAQUE,
    forward=lambda xs, a, rt: _pad_grad(xs[0], a["box"], a["mode"]), user=False,
    doc="Gradient of a reflect, replicate or circular pad: each padded position's gradient "
        "added to the input position it read."))


# -- flatten and reshape -----------------------------------------------------------------

def _flatten_shape(ctx: ShapeCtx) -> TensorType:
    x = ctx.x
    ctx.attrs.setdefault("axis", 0)
    axis = normalize_axis(ctx, "flatten")
    return TensorType(x.shape[:axis] + (math.prod(x.shape[axis:]),))


register(OpDef(
    name="flatten", attrs=(Attr("axis", "int", 0),), shape=_flatten_shape,
    kind=FusionKind.INJECTIVE,
    forward=lambda xs, a, rt: xs[0].reshape(xs[0].shape[:a.get("axis", 0) + 1] + (-1,)),
    vjp=lambda b, node, dy: [b.emit("reshape", [dy], shape=node.inputs[0].type.shape)],
    doc="[C, H, W] -> [C * H * W]; `flatten(1)` keeps the channels: [C, H, W] -> "
        "[C, H * W] (an image's positions as columns, before `permute` makes them tokens)."))


def _reshape_shape(ctx: ShapeCtx) -> TensorType:
    want = ctx.attrs["shape"]
    want = want if isinstance(want, tuple) else (want,)
    x = ctx.x
    free = [i for i, d in enumerate(want) if d == -1]
    if len(free) > 1 or any(d < 1 and d != -1 for d in want):
        raise ShapeError("E080", f"reshape to {fmt_shape(want)}: sizes are positive, with at "
                         "most one -1 (the size that makes the count agree)")
    known = math.prod(d for d in want if d != -1)
    if free:
        if x.size % known:
            raise ShapeError("E080", f"reshape of {fmt_shape(x.shape)} ({x.size} elements) to "
                             f"{fmt_shape(want)}: {x.size} is not a multiple of {known}")
        want = tuple(x.size // known if d == -1 else d for d in want)
    elif known != x.size:
        raise ShapeError("E080", f"reshape of {fmt_shape(x.shape)} ({x.size} elements) to "
                         f"{fmt_shape(want)} ({known} elements)",
                         help="the element count per sample must stay the same; -1 in one "
                              "place stands for the size that makes it agree")
    if len(want) > 4:
        raise ShapeError("E080", f"reshape to {len(want)} dimensions: at most 4 per sample")
    ctx.attrs["shape"] = want
    ctx.attrs["batched"] = x.batched   # for the NumPy forward, which sees arrays only
    return TensorType(want, x.batched)


def _reshape(xs, a, rt):
    x = xs[0]
    lead = (x.shape[0],) if a["batched"] else ()
    return x.reshape(lead + tuple(a["shape"]))


register(OpDef(
    name="reshape", attrs=(Attr("shape", "ints"),),
    shape=_reshape_shape, kind=FusionKind.INJECTIVE, forward=_reshape,
    vjp=lambda b, node, dy: [b.emit("reshape", [dy], shape=node.inputs[0].type.shape)],
    example="reshape([64, -1])",
    doc="Same elements in row-major order, another per-sample shape; one -1 stands for "
        "the size that makes the count agree: `[D, H, W] -> reshape([D, -1])`."))


# -- permute -----------------------------------------------------------------------------

def _permute_shape(ctx: ShapeCtx) -> TensorType:
    axes = ctx.attrs["axes"]
    axes = axes if isinstance(axes, tuple) else (axes,)
    x = ctx.x
    rank = x.rank
    norm = tuple(a + rank if a < 0 else a for a in axes)
    if sorted(norm) != list(range(rank)):
        raise ShapeError("E081", f"permute({list(axes)}) of {fmt_shape(x.shape)}: the axes must "
                         f"name each of the {rank} per-sample axes once",
                         notes=("axes count from 0 after the batch; the batch axis stays "
                                "first",),
                         help=f"for example `permute({list(reversed(range(rank)))})`")
    ctx.attrs["axes"] = norm
    return TensorType(tuple(x.shape[a] for a in norm), x.batched)


def _inverse(axes: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(axes)
    for i, a in enumerate(axes):
        inv[a] = i
    return tuple(inv)


register(OpDef(
    name="permute", attrs=(Attr("axes", "ints"),), shape=_permute_shape,
    kind=FusionKind.INJECTIVE,
    forward=lambda xs, a, rt: np.transpose(xs[0], (0,) + tuple(i + 1 for i in a["axes"])),
    vjp=lambda b, node, dy: [b.emit("permute", [dy], axes=_inverse(node.attrs["axes"]))],
    example="permute([1, 0])",
    doc="Reorders the per-sample axes: `[D, T] -> permute([1, 0])` gives `[T, D]` (the "
        "batch axis stays first)."))
