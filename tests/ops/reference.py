"""Independent, deliberately naive float64 formulations of the layers (loops over output
positions, no im2col, no strided views) that the registry's NumPy forwards must match."""

from __future__ import annotations

import itertools
import math

import numpy as np


def _pairs(pad):
    return [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]


def conv(x, w, b, a):
    n, cin = x.shape[:2]
    nd = x.ndim - 2
    cout = w.shape[0]
    g = a["groups"]
    cg, og = cin // g, cout // g
    xp = np.pad(x, [(0, 0), (0, 0)] + _pairs(a["pad"]))
    k, s, d = w.shape[2:], a["stride"], a["dilation"]
    out = [(xp.shape[2 + i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(nd)]
    y = np.zeros((n, cout) + tuple(out))
    for o in range(cout):
        grp = o // og
        for pos in itertools.product(*[range(v) for v in out]):
            idx = tuple(slice(pos[i] * s[i], pos[i] * s[i] + d[i] * (k[i] - 1) + 1, d[i])
                        for i in range(nd))
            patch = xp[(slice(None), slice(grp * cg, (grp + 1) * cg)) + idx]
            y[(slice(None), o) + pos] = (patch * w[o]).reshape(n, -1).sum(axis=1)
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


def conv_transpose(x, w, b, a):
    n, cin = x.shape[:2]
    nd = x.ndim - 2
    g = a["groups"]
    og = w.shape[1]
    cg = cin // g
    k, s, d, op = w.shape[2:], a["stride"], a["dilation"], a["output_padding"]
    pads = _pairs(a["pad"])
    full = [(x.shape[2 + i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 + op[i] for i in range(nd)]
    y = np.zeros((n, og * g) + tuple(full))
    for c in range(cin):
        grp = c // cg
        for pos in itertools.product(*[range(v) for v in x.shape[2:]]):
            for kk in itertools.product(*[range(v) for v in k]):
                o = tuple(pos[i] * s[i] + kk[i] * d[i] for i in range(nd))
                y[(slice(None), slice(grp * og, (grp + 1) * og)) + o] += \
                    x[(slice(None), c) + pos][:, None] * w[(c, slice(None)) + kk][None, :]
    idx = tuple(slice(lo, full[i] - hi) for i, (lo, hi) in enumerate(pads))
    y = y[(slice(None), slice(None)) + idx]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * nd)
    return y


def pool(x, a, kind):
    nd = x.ndim - 2
    k, s = a["kernel"], a["stride"]
    d = a.get("dilation", (1,) * nd)
    pads = _pairs(a["pad"])
    sp = x.shape[2:]
    out = []
    for i in range(nd):
        keff = d[i] * (k[i] - 1) + 1
        span = sp[i] + pads[i][0] + pads[i][1] - keff
        o = (-(-span // s[i]) if a["ceil"] else span // s[i]) + 1
        if a["ceil"] and (o - 1) * s[i] >= sp[i] + pads[i][0]:
            o -= 1
        out.append(o)
    y = np.zeros(x.shape[:2] + tuple(out))
    for pos in itertools.product(*[range(v) for v in out]):
        vals, count = [], 0
        for kk in itertools.product(*[range(v) for v in k]):
            src = [pos[i] * s[i] - pads[i][0] + kk[i] * d[i] for i in range(nd)]
            inside_pad = all(-pads[i][0] <= src[i] < sp[i] + pads[i][1] for i in range(nd))
            inside = all(0 <= src[i] < sp[i] for i in range(nd))
            if kind == "avg" and (inside if not a["count_include_pad"] else inside_pad):
                count += 1
            if inside:
                vals.append(x[(slice(None), slice(None)) + tuple(src)])
        if kind == "max":
            y[(slice(None), slice(None)) + pos] = np.max(vals, axis=0)
        else:
            y[(slice(None), slice(None)) + pos] = np.sum(vals, axis=0) / max(count, 1)
    return y


def _cubic(t):
    """Keys' cubic convolution with A = -0.75 (PyTorch's upsample_bicubic2d)."""
    A, t = -0.75, abs(t)
    if t <= 1:
        return (A + 2) * t ** 3 - (A + 3) * t ** 2 + 1
    if t < 2:
        return A * t ** 3 - 5 * A * t ** 2 + 8 * A * t - 4 * A
    return 0.0


def upsample(x, a):
    """F.interpolate, one output pixel at a time."""
    nd = x.ndim - 2
    size = a.get("size")
    out = list(size) if size is not None else [int(math.floor(x.shape[2 + i] * a["scale"][i]))
                                               for i in range(nd)]
    y = np.zeros(x.shape[:2] + tuple(out))
    for pos in itertools.product(*[range(v) for v in out]):
        terms = []
        for i in range(nd):
            n_in, d = x.shape[2 + i], pos[i]
            if a["mode"] == "nearest":
                src = d * n_in // out[i] if size is not None else math.floor(d / a["scale"][i])
                terms.append([(min(src, n_in - 1), 1.0)])
                continue
            if a.get("align_corners"):
                c = d * (n_in - 1) / (out[i] - 1) if out[i] > 1 else 0.0
            else:
                ratio = n_in / out[i] if size is not None else 1 / a["scale"][i]
                c = (d + 0.5) * ratio - 0.5
                if a["mode"] != "bicubic":
                    c = max(c, 0.0)
            i0 = int(math.floor(c))
            if a["mode"] == "bicubic":
                terms.append([(min(max(i0 + k, 0), n_in - 1), _cubic(c - (i0 + k)))
                              for k in (-1, 0, 1, 2)])
            else:
                i0 = min(i0, n_in - 1)
                terms.append([(i0, 1 - (c - i0)), (min(i0 + 1, n_in - 1), c - i0)])
        acc = 0
        for combo in itertools.product(*terms):
            wgt = np.prod([t[1] for t in combo])
            acc = acc + wgt * x[(slice(None), slice(None)) + tuple(t[0] for t in combo)]
        y[(slice(None), slice(None)) + pos] = acc
    return y


def batchnorm(x, w, b, rm, rv, a):
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if a.get("training"):
        mean, var = x.mean(axis=axes), x.var(axis=axes)
    else:
        mean, var = rm, rv
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + a["eps"])
    if w is not None:
        y = y * w.reshape(shape) + b.reshape(shape)
    return y


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def round_precision(x, precision):
    """x as float32 rounded to nearest-even with 8 (bf16) or 11 (tf32) significant bits,
    from the mantissa and exponent (not the bit pattern the implementation uses)."""
    bits = {"bf16": 8, "tf32": 11, "fp16": 11}[precision]   # (fp16: normal range only)
    f = np.asarray(x, np.float32).astype(np.float64)
    m, e = np.frexp(f)          # f = m 2^e, 0.5 <= |m| < 1
    r = np.ldexp(np.rint(np.ldexp(m, bits)), e - bits)   # rint: ties to even
    return r.astype(np.float32).astype(np.asarray(x).dtype)
