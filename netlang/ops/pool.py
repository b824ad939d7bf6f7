"""Pooling and resampling: maxpool, avgpool, adaptive_avgpool, global_avgpool,
global_maxpool, mean and sum over an axis, upsample, and their gradients.

Window ops loop over the kernel offsets (9 for a 3x3 window), each step vectorised over
the whole tensor: no Python loop over pixels, and no scatter (`np.add.at`) in backward.
"""

from __future__ import annotations

import math

import numpy as np

from netlang.ir.types import TensorType, fmt_shape
from netlang.ops.elementwise import normalize_axis
from netlang.ops.registry import (
    DIM_NAMES, Attr, FusionKind, OpDef, ShapeCtx, ShapeError, per_dim, register, resolve_pad,
    sliding_out, spatial_rank,
)

POOL_ATTRS = (
    Attr("kernel", "ints", minimum=1),
    Attr("stride", "ints", 0, minimum=0, doc="defaults to the kernel size"),
    Attr("pad", "pad", 0),
    Attr("ceil", "bool", False, doc="ceil mode: keep a last partial window"),
)


def _pool_shape(ctx: ShapeCtx) -> TensorType:
    op = ctx.op
    nd = spatial_rank(ctx, op)
    c, spatial = ctx.x.shape[0], ctx.x.shape[1:]
    k = per_dim(ctx, "kernel", nd)
    s = per_dim(ctx, "stride", nd)
    s = tuple(si if si > 0 else ki for si, ki in zip(s, k))
    d = per_dim(ctx, "dilation", nd) if "dilation" in ctx.attrs else (1,) * nd
    keff = tuple(di * (ki - 1) + 1 for ki, di in zip(k, d))
    pads = resolve_pad(ctx, nd, spatial, keff, s, allow_same=False)
    for (lo, hi), ki in zip(pads, k):
        if max(lo, hi) > ki // 2:
            raise ShapeError("E012", f"{op}: padding {max(lo, hi)} is more than half the "
                             f"kernel ({ki})", help="PyTorch and ONNX require pad <= kernel / 2")
    out = sliding_out(ctx, op, spatial, keff, s, pads, ceil=ctx.attrs["ceil"])
    for i, (h, o, ki, si, di, (lo, _)) in enumerate(zip(spatial, out, k, s, d, pads)):
        for w in range(o):   # a window of padding only has no maximum (or a 0 divisor)
            if not any(0 <= w * si - lo + j * di < h for j in range(ki)):
                dim = DIM_NAMES[nd][i]
                raise ShapeError(
                    "E021", f"{op}: window {w + 1} along {dim} lies entirely in the padding "
                    f"({dim} = {h}, kernel {ki}, dilation {di}, padding {lo} before)",
                    help="use less padding or dilation, or a larger input")
    ctx.attrs.update(kernel=k, stride=s, pad=tuple(v for p in pads for v in p))
    if "dilation" in ctx.attrs:
        ctx.attrs["dilation"] = d
    return TensorType((c,) + out)


def _geometry(x_shape, a):
    """Padding per dim (before, after + extra for ceil windows), output sizes, dilation."""
    nd = len(x_shape) - 2
    k, s = a["kernel"], a["stride"]
    d = a.get("dilation", (1,) * nd)
    p = a["pad"]
    out, pads = [], []
    for i in range(nd):
        h = x_shape[2 + i]
        lo, hi = p[2 * i], p[2 * i + 1]
        keff = d[i] * (k[i] - 1) + 1
        if a["ceil"]:
            o = -(-(h + lo + hi - keff) // s[i]) + 1
            if (o - 1) * s[i] >= h + lo:
                o -= 1
        else:
            o = (h + lo + hi - keff) // s[i] + 1
        extra = max((o - 1) * s[i] + keff - (h + lo + hi), 0)
        out.append(o)
        pads.append((lo, hi, extra))
    return tuple(out), pads, d


# The window loops work in the channels-last frame (`nhwc` is a view of an NCHW-logical
# array), so that every slice is a run of contiguous channels and results keep the
# channels-last memory layout that the convolutions produce and consume.

def nhwc(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)


def nchw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)


def _padded(x, pads, value):
    """NCHW-logical x -> padded channels-last array (ceil-mode margin included)."""
    width = [(0, 0)] + [(lo, hi + extra) for lo, hi, extra in pads] + [(0, 0)]
    if all(w == (0, 0) for w in width):
        return nhwc(x)   # a view; the window slices read it in place
    return np.pad(nhwc(x), width, constant_values=value)


def _tiles(x, a, out):
    """Non-overlapping windows (kernel == stride, no padding or dilation) as a view or copy
    [N, o0, k0, o1, k1, ..., C] of the channels-last input, or None."""
    k, s = tuple(a["kernel"]), tuple(a["stride"])
    nd = len(k)
    if k != s or any(a["pad"]) or any(d != 1 for d in a.get("dilation", (1,) * nd)):
        return None
    if any(o * kk > h for o, kk, h in zip(out, k, x.shape[2:])):
        return None   # ceil mode: a last partial window, which the general path handles
    xl = nhwc(x)[(slice(None),) + tuple(slice(0, o * kk) for o, kk in zip(out, k))]
    return xl.reshape((x.shape[0],) + tuple(v for o, kk in zip(out, k) for v in (o, kk))
                      + (x.shape[1],))


def _tile(j):
    return (slice(None),) + tuple(v for ji in j for v in (slice(None), ji)) + (slice(None),)


def _offsets(k):
    return np.ndindex(*k)


def _window(xp, j, d, s, out):
    return (slice(None),) + tuple(
        slice(j[i] * d[i], j[i] * d[i] + s[i] * (out[i] - 1) + 1, s[i])
        for i in range(len(out))) + (slice(None),)


def _crop_pads(xp, pads, shape):
    """Channels-last padded array -> NCHW-logical view of the unpadded region."""
    idx = (slice(None),) + tuple(
        slice(lo, lo + shape[2 + i]) for i, (lo, _, _) in enumerate(pads)) + (slice(None),)
    return nchw(xp[idx])


# -- maxpool -----------------------------------------------------------------------------

def _max_windows(xp, a, out, d):
    y = None
    for j in _offsets(a["kernel"]):
        v = xp[_window(xp, j, d, a["stride"], out)]
        y = v.copy() if y is None else np.maximum(y, v, out=y)
    return y


def _maxpool_forward(xs, a, rt):
    x = xs[0]
    out, pads, d = _geometry(x.shape, a)
    tiles = _tiles(x, a, out)
    if tiles is not None:
        return nchw(tiles.max(axis=tuple(range(2, 2 + 2 * len(out), 2))))
    return nchw(_max_windows(_padded(x, pads, -np.inf), a, out, d))


def _maxpool_grad(xs, a, rt):
    dy, x = xs
    out, pads, d = _geometry(x.shape, a)
    tiles = _tiles(x, a, out)
    if tiles is not None:
        return _maxpool_grad_tiles(nhwc(dy), x, tiles, a, out)
    xp = _padded(x, pads, -np.inf)
    y = _max_windows(xp, a, out, d)
    g = nhwc(dy)
    dxp = np.zeros_like(xp)
    taken = np.zeros(y.shape, dtype=bool)
    for j in _offsets(a["kernel"]):
        idx = _window(xp, j, d, a["stride"], out)
        hit = (xp[idx] == y) & ~taken          # the first maximum wins, as in PyTorch
        taken |= hit
        dxp[idx] += g * hit
    return _crop_pads(dxp, pads, x.shape)


def _maxpool_grad_tiles(g, x, tiles, a, out):
    nd = len(out)
    y = tiles.max(axis=tuple(range(2, 2 + 2 * nd, 2)))
    dt = np.zeros(tiles.shape, dtype=g.dtype)
    taken = np.zeros(y.shape, dtype=bool)
    for j in _offsets(a["kernel"]):
        hit = tiles[_tile(j)] == y
        hit &= ~taken                       # the first maximum wins, as in PyTorch
        taken |= hit
        np.multiply(g, hit, out=dt[_tile(j)])
    covered = tuple(o * kk for o, kk in zip(out, a["kernel"]))
    dt = dt.reshape((x.shape[0],) + covered + (x.shape[1],))
    if covered == tuple(x.shape[2:]):
        return nchw(dt)
    dx = np.zeros((x.shape[0],) + tuple(x.shape[2:]) + (x.shape[1],), dtype=g.dtype)
    dx[(slice(None),) + tuple(slice(0, c) for c in covered)] = dt
    return nchw(dx)


register(OpDef(
    name="maxpool", attrs=POOL_ATTRS + (Attr("dilation", "ints", 1, minimum=1),),
    shape=_pool_shape, kind=FusionKind.REDUCE, forward=_maxpool_forward,
    writes_per_element=True, example="maxpool(2)", color="#fce5cd",
    vjp=lambda b, node, dy: [b.emit("maxpool_grad", [dy, node.inputs[0]], **node.attrs)],
    doc="Max pooling; stride defaults to the kernel; ceil mode as PyTorch."))

register(OpDef(
    name="maxpool_grad", attrs=POOL_ATTRS + (Attr("dilation", "ints", 1),),
    shape=lambda ctx: ctx.inputs[1], kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=2,
    forward=_maxpool_grad, user=False,
    doc="Routes dy to the first maximum of each window."))


# -- avgpool -----------------------------------------------------------------------------

def _avg_divisor(x_shape, a, out, pads, d):
    """Per-output-position divisor [1, *out, 1]: the window's elements that count."""
    counted = np.ones((1,) + tuple(x_shape[2:]) + (1,), dtype=np.float32)
    if a["count_include_pad"]:
        # Padding counts, the extra ceil-mode margin does not (PyTorch).
        counted = np.pad(counted, [(0, 0)] + [(lo, hi) for lo, hi, _ in pads] + [(0, 0)],
                         constant_values=1)
        counted = np.pad(counted, [(0, 0)] + [(0, extra) for _, _, extra in pads] + [(0, 0)])
    else:
        counted = np.pad(counted, [(0, 0)] + [(lo, hi + extra) for lo, hi, extra in pads]
                         + [(0, 0)])
    div = np.zeros((1,) + out + (1,), dtype=np.float32)
    for j in _offsets(a["kernel"]):
        div += counted[_window(counted, j, d, a["stride"], out)]
    return np.maximum(div, 1)


def _avgpool_forward(xs, a, rt):
    x = xs[0]
    out, pads, d = _geometry(x.shape, a)
    xp = _padded(x, pads, 0)
    acc = np.zeros((x.shape[0],) + out + (x.shape[1],), dtype=x.dtype)
    for j in _offsets(a["kernel"]):
        acc += xp[_window(xp, j, d, a["stride"], out)]
    return nchw(acc / _avg_divisor(x.shape, a, out, pads, d))


def _avgpool_grad(xs, a, rt):
    dy = xs[0]
    shape = (dy.shape[0],) + tuple(a["in_shape"])
    out, pads, d = _geometry(shape, a)
    g = nhwc(dy) / _avg_divisor(shape, a, out, pads, d)
    dxp = np.zeros((shape[0],) + tuple(shape[2 + i] + lo + hi + ex
                                       for i, (lo, hi, ex) in enumerate(pads)) + (shape[1],),
                   dtype=dy.dtype)
    for j in _offsets(a["kernel"]):
        dxp[_window(dxp, j, d, a["stride"], out)] += g
    return _crop_pads(dxp, pads, shape)


AVG_ATTRS = POOL_ATTRS + (Attr("count_include_pad", "bool", True),
                          Attr("dilation", "ints", 1, minimum=1))

register(OpDef(
    name="avgpool", attrs=AVG_ATTRS, shape=_pool_shape, kind=FusionKind.REDUCE,
    forward=_avgpool_forward, writes_per_element=True, example="avgpool(2)", color="#fce5cd",
    vjp=lambda b, node, dy: [b.emit("avgpool_grad", [dy], in_shape=node.inputs[0].type.shape,
                                    **node.attrs)],
    doc="Average pooling; padding counts in the divisor by default, as in PyTorch. With "
        "dilation (ONNX AveragePool's `dilations`; PyTorch has none) the divisor counts the "
        "window's taps."))

register(OpDef(
    name="avgpool_grad", attrs=AVG_ATTRS + (Attr("in_shape", "ints"),),
    shape=lambda ctx: TensorType(tuple(ctx.attrs["in_shape"])), kind=FusionKind.OPAQUE,
    forward=_avgpool_grad, user=False, doc="Spreads dy evenly over each window."))


# -- mean over an axis ------------------------------------------------------------------

def _mean_shape(ctx: ShapeCtx) -> TensorType:
    ax = normalize_axis(ctx, ctx.op)
    return TensorType(ctx.x.shape[:ax] + ctx.x.shape[ax + 1:], ctx.x.batched)


def _reduce_vjp(b, node, dy):
    return [b.emit("mean_grad", [dy], axis=node.attrs["axis"],
                   in_shape=node.inputs[0].type.shape, mean=node.op == "mean")]


register(OpDef(
    name="mean", attrs=(Attr("axis", "int"),), shape=_mean_shape, kind=FusionKind.REDUCE,
    color="#fce5cd", example="mean(0)",
    forward=lambda xs, a, rt: xs[0].mean(axis=a["axis"] + 1),
    vjp=_reduce_vjp,
    doc="Mean over one per-sample axis, which goes away: tokens `[T, D] -> mean(0)` "
        "gives `[D]` (mean pooling of a transformer's tokens)."))

register(OpDef(
    name="sum", attrs=(Attr("axis", "int"),), shape=_mean_shape, kind=FusionKind.REDUCE,
    color="#fce5cd", example="sum(0)",
    forward=lambda xs, a, rt: xs[0].sum(axis=a["axis"] + 1),
    vjp=_reduce_vjp,
    doc="Sum over one per-sample axis, which goes away: `[C, H, W] -> sum(0)` is `[H, W]`."))


def _mean_grad(xs, a, rt):
    dy = xs[0]
    if a.get("mean", True):
        dy = dy / dy.dtype.type(a["in_shape"][a["axis"]])
    return np.broadcast_to(np.expand_dims(dy, a["axis"] + 1),
                           (dy.shape[0],) + tuple(a["in_shape"])).copy()


register(OpDef(
    name="mean_grad", attrs=(Attr("axis", "int"), Attr("in_shape", "ints"),
                             Attr("mean", "bool", True)),
    shape=lambda ctx: TensorType(tuple(ctx.attrs["in_shape"])), kind=FusionKind.BROADCAST,
    forward=_mean_grad,
    user=False, doc="dy / L (or dy, for a sum), broadcast along the axis that was reduced."))


# -- global_maxpool ----------------------------------------------------------------------

def _gmp_shape(ctx: ShapeCtx) -> TensorType:
    spatial_rank(ctx, ctx.op)
    return TensorType((ctx.x.shape[0],))


def _gmp_grad(xs, a, rt):
    """dy to the first maximal position of each channel (as PyTorch's max pooling routes
    it: one index per window, the first in row-major order), zero elsewhere."""
    dy, x = xs
    flat = x.reshape(x.shape[:2] + (-1,))
    first = flat.argmax(axis=2)   # the first maximum; a NaN is the maximum, as np.max's
    out = np.zeros_like(flat)
    np.put_along_axis(out, first[..., None], dy[..., None], axis=2)
    return out.reshape(x.shape)


register(OpDef(
    name="global_maxpool", attrs=(), shape=_gmp_shape, kind=FusionKind.REDUCE,
    color="#fce5cd",
    forward=lambda xs, a, rt: xs[0].reshape(xs[0].shape[:2] + (-1,)).max(axis=2),
    vjp=lambda b, node, dy: [b.emit("global_maxpool_grad", [dy, node.inputs[0]])],
    doc="Maximum over all spatial positions: [C, H, W] -> [C]."))

register(OpDef(
    name="global_maxpool_grad", attrs=(), shape=lambda ctx: ctx.inputs[1],
    kind=FusionKind.OPAQUE, min_inputs=2, max_inputs=2, forward=_gmp_grad,
    user=False, doc="dy at each channel's first maximal position."))


# -- global_avgpool ----------------------------------------------------------------------

def _gap_shape(ctx: ShapeCtx) -> TensorType:
    spatial_rank(ctx, "global_avgpool")
    return TensorType((ctx.x.shape[0],))


register(OpDef(
    name="global_avgpool", attrs=(), shape=_gap_shape, kind=FusionKind.REDUCE, color="#fce5cd",
    forward=lambda xs, a, rt: xs[0].reshape(xs[0].shape[:2] + (-1,)).mean(axis=2),
    vjp=lambda b, node, dy: [b.emit("global_avgpool_grad", [dy],
                                    in_shape=node.inputs[0].type.shape)],
    doc="Mean over all spatial positions: [C, H, W] -> [C] (already flat, ready for dense)."))

register(OpDef(
    name="global_avgpool_grad", attrs=(Attr("in_shape", "ints"),),
    shape=lambda ctx: TensorType(tuple(ctx.attrs["in_shape"])), kind=FusionKind.BROADCAST,
    forward=lambda xs, a, rt: np.broadcast_to(
        (xs[0] / xs[0].dtype.type(math.prod(a["in_shape"][1:]))).reshape(
            xs[0].shape + (1,) * (len(a["in_shape"]) - 1)),
        (xs[0].shape[0],) + tuple(a["in_shape"])).copy(),
    user=False, doc="dy / (H W), broadcast over the spatial axes."))


# -- adaptive_avgpool --------------------------------------------------------------------
# PyTorch's AdaptiveAvgPool: output position i of an axis of n_in averages the input
# positions floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1 (windows of varying
# length that may overlap by one).

def adaptive_window(i, n_in: int, n_out: int):
    """(start, stop) of output position i's window (integers or arrays)."""
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def adaptive_matrix(n_in: int, n_out: int, dtype=np.float64) -> np.ndarray:
    """[n_out, n_in]: each row averages its window."""
    m = np.zeros((n_out, n_in), dtype=dtype)
    for i in range(n_out):
        a, b = adaptive_window(i, n_in, n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def _adaptive_shape(ctx: ShapeCtx) -> TensorType:
    nd = spatial_rank(ctx, "adaptive_avgpool")
    size = ctx.attrs["size"]
    size = size if isinstance(size, tuple) else (size,) * nd
    if len(size) != nd:
        raise ShapeError("E012", f"`size` has {len(size)} values; the input has {nd} spatial "
                         "dimensions", help=f"give one size, or {nd}")
    ctx.attrs["size"] = tuple(size)
    return TensorType((ctx.x.shape[0],) + tuple(size))


def _adaptive_forward(xs, a, rt):
    x = xs[0]
    mats = [adaptive_matrix(h, o, x.dtype) for h, o in zip(x.shape[2:], a["size"])]
    return _resample(x, mats)


def _adaptive_grad(xs, a, rt):
    dy = xs[0]
    mats = [adaptive_matrix(h, o, dy.dtype).T for h, o in zip(a["in_shape"][1:], a["size"])]
    return _resample(dy, mats)


register(OpDef(
    name="adaptive_avgpool", attrs=(Attr("size", "size", minimum=1),),
    shape=_adaptive_shape, kind=FusionKind.REDUCE, color="#fce5cd", writes_per_element=True,
    forward=_adaptive_forward, example="adaptive_avgpool(7)",
    vjp=lambda b, node, dy: [b.emit("adaptive_avgpool_grad", [dy],
                                    in_shape=node.inputs[0].type.shape, **node.attrs)],
    doc="Average pooling to a given output size, whatever the input's (PyTorch's "
        "AdaptiveAvgPool): `adaptive_avgpool(7)` makes [C, 7, 7]; `adaptive_avgpool(1)` is "
        "global_avgpool keeping the spatial axes."))

register(OpDef(
    name="adaptive_avgpool_grad", attrs=(Attr("size", "size"), Attr("in_shape", "ints")),
    shape=lambda ctx: TensorType(tuple(ctx.attrs["in_shape"])), kind=FusionKind.OPAQUE,
    forward=_adaptive_grad, user=False,
    doc="Each input position gathers dy / window length from the windows holding it."))


# -- upsample ----------------------------------------------------------------------------

UP_MODES = ("nearest", "linear", "bilinear", "trilinear", "bicubic")
CUBIC_A = -0.75   # PyTorch's bicubic coefficient


def _up_shape(ctx: ShapeCtx) -> TensorType:
    nd = spatial_rank(ctx, "upsample")
    a = ctx.attrs
    mode = a["mode"]
    linear = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]
    if mode == "bicubic" and nd != 2:
        raise ShapeError("E012", "mode `bicubic` needs a 2-D input (as PyTorch's)",
                         help=f"for a {nd}-D input use `nearest` or `{linear}`")
    if mode not in ("nearest", linear, "bicubic"):
        raise ShapeError("E012", f"mode `{mode}` needs a different input rank",
                         help=f"for a {nd}-D input use `nearest` or `{linear}`")
    if a.get("align_corners") and mode == "nearest":
        raise ShapeError("E012", "`align_corners` is for the linear and cubic modes",
                         help=f"use `mode={linear}`, or drop `align_corners`")
    sp = ctx.x.shape[1:]
    size = a.get("size")
    if len(ctx.inputs) > 1:   # upsample(x, like): to the reference's spatial size
        ref = ctx.inputs[1]
        if ref.rank != ctx.x.rank:
            raise ShapeError("E025", f"upsample: reference {fmt_shape(ref.shape)} has another "
                             f"rank than the input {fmt_shape(ctx.x.shape)}")
        size = ref.shape[1:]
    if size is not None:
        if a.get("scale") is not None:
            raise ShapeError("E012", "upsample takes a `scale` or an output size, not both",
                             help="drop `scale`")
        size = size if isinstance(size, tuple) else (size,) * nd
        if len(size) != nd:
            raise ShapeError("E012", f"`size` has {len(size)} values; the input has {nd} "
                             "spatial dimensions")
        a["size"] = tuple(size)
        return TensorType((ctx.x.shape[0],) + tuple(size))
    scale = 2.0 if a.get("scale") is None else a["scale"]
    scales = scale if isinstance(scale, tuple) else (scale,) * nd
    if len(scales) != nd:
        raise ShapeError("E012", f"`scale` has {len(scales)} values; the input has {nd} "
                         "spatial dimensions")
    if any(s <= 0 for s in scales):
        raise ShapeError("E012", "`scale` must be positive")
    out = tuple(int(math.floor(h * s)) for h, s in zip(sp, scales))
    for i, (h, o, sc) in enumerate(zip(sp, out, scales)):
        if o < 1:
            dim = DIM_NAMES[nd][i]
            raise ShapeError("E021", f"upsample: {dim} = {h} times scale {sc:g} is "
                             f"{h * sc:g}, which floors to {o}",
                             help=f"the scale must be at least {1 / h:g} for this input")
    a["scale"] = tuple(float(s) for s in scales)
    return TensorType((ctx.x.shape[0],) + out)


def nearest_ratio(a: dict, j: int, n_in: int, n_out: int) -> float:
    """Input positions per output position of `nearest` (exact where PyTorch is: the same
    size, or twice it)."""
    if n_out == n_in:
        return 1.0
    if n_out == 2 * n_in:
        return 0.5
    return n_in / n_out if a.get("size") is not None else 1.0 / a["scale"][j]


def source_coord(a: dict, j: int, dst: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    """Where output position dst reads along spatial axis j, as PyTorch's interpolate: an
    input index for `nearest` (floor, clamped), else a real coordinate (half-pixel centres,
    or the corners aligned), clamped at 0 for the linear modes."""
    by_size = a.get("size") is not None
    if a["mode"] == "nearest":   # PyTorch's nearest_idx: a float32 ratio, float32 product
        src = np.floor(np.float32(nearest_ratio(a, j, n_in, n_out)) *
                       np.asarray(dst, np.float32)).astype(int)
        return np.minimum(src, n_in - 1)
    if a.get("align_corners"):
        return dst * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(len(dst))
    ratio = n_in / n_out if by_size else 1.0 / a["scale"][j]
    real = (dst + 0.5) * ratio - 0.5
    return real if a["mode"] == "bicubic" else np.maximum(real, 0)


def cubic_weights(t):
    """The four taps' weights of PyTorch's cubic convolution (A = -0.75) at fraction t."""
    A = CUBIC_A

    def near(x):
        return ((A + 2) * x - (A + 3)) * x * x + 1

    def far(x):
        return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A
    return far(t + 1), near(t), near(1 - t), far(2 - t)


def interp_matrix(a: dict, j: int, n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """[n_out, n_in] weights of resampling along spatial axis j."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    dst = np.arange(n_out)
    src = source_coord(a, j, dst, n_in, n_out)
    if a["mode"] == "nearest":
        m[dst, src] = 1
    elif a["mode"] == "bicubic":
        i0 = np.floor(src).astype(int)
        for k, w in enumerate(cubic_weights(src - i0)):
            np.add.at(m, (dst, np.clip(i0 - 1 + k, 0, n_in - 1)), w)
    else:
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        np.add.at(m, (dst, i0), 1 - lam)
        np.add.at(m, (dst, i1), lam)
    return m.astype(dtype)


def _resample(x: np.ndarray, mats: list[np.ndarray]) -> np.ndarray:
    """Apply one [out, in] matrix per spatial axis (channels-last frame, NCHW result)."""
    y = nhwc(x)
    for axis, m in enumerate(mats, start=1):
        y = np.moveaxis(np.tensordot(m, y, axes=([1], [axis])), 0, axis)
    return nchw(np.ascontiguousarray(y))


def _int_scale(a) -> int | None:
    s = a.get("scale")
    if a["mode"] == "nearest" and s is not None and a.get("size") is None and \
            all(v == s[0] and float(v).is_integer() for v in s):
        return int(s[0])
    return None


def _up_forward(xs, a, rt):
    x = xs[0]
    k = _int_scale(a)
    if k is not None:  # fast path: integer nearest upsampling is a repeat
        y = nhwc(x)
        for axis in range(1, x.ndim - 1):
            y = np.repeat(y, k, axis=axis)
        return nchw(y)
    sizes = a.get("size") or tuple(int(math.floor(h * s)) for h, s in
                                   zip(x.shape[2:], a["scale"]))
    mats = [interp_matrix(a, i, x.shape[2 + i], sizes[i], x.dtype) for i in range(x.ndim - 2)]
    return _resample(x, mats)


def _up_grad(xs, a, rt):
    dy = xs[0]
    in_sp = a["in_shape"][1:]
    k = _int_scale(a)
    if k is not None:
        g = np.ascontiguousarray(nhwc(dy))
        shape = (dy.shape[0],)
        for h in in_sp:
            shape += (h, k)
        shape += (dy.shape[1],)
        return nchw(g.reshape(shape).sum(axis=tuple(range(2, 2 + 2 * len(in_sp), 2))))
    mats = [interp_matrix(a, i, in_sp[i], dy.shape[2 + i], dy.dtype).T
            for i in range(len(in_sp))]
    return _resample(dy, mats)


UP_ATTRS = (Attr("scale", "floats", None, doc="output size = floor(input size * scale); 2 "
                 "unless a size is given"),
            Attr("size", "size", None, minimum=1, doc="the output's spatial size"),
            Attr("mode", "choice", "nearest", choices=UP_MODES),
            Attr("align_corners", "bool", False,
                 doc="linear and cubic modes: map the corner pixels onto each other "
                     "(PyTorch's align_corners=True) instead of half-pixel centres"))

register(OpDef(
    name="upsample", attrs=UP_ATTRS, shape=_up_shape, kind=FusionKind.INJECTIVE,
    forward=_up_forward, writes_per_element=True, color="#d9ead3", max_inputs=2,
    example="upsample(2, mode=bilinear)",
    vjp=lambda b, node, dy: [b.emit("upsample_grad", [dy], in_shape=node.inputs[0].type.shape,
                                    **node.attrs)] + [None] * (len(node.inputs) - 1),
    doc="Nearest, (bi/tri)linear or bicubic resampling by a scale, to a `size`, or to a "
        "reference value's size (`upsample(x, like)`), as PyTorch's F.interpolate: "
        "half-pixel centres unless `align_corners`."))

register(OpDef(
    name="upsample_grad", attrs=UP_ATTRS + (Attr("in_shape", "ints"),),
    shape=lambda ctx: TensorType(tuple(ctx.attrs["in_shape"])), kind=FusionKind.OPAQUE,
    forward=_up_grad, user=False, doc="Transpose of the upsampling."))
