"""NumPy convolution cores shared by conv, conv_transpose and their gradients.

Arrays are NC + spatial (1-D, 2-D or 3-D). Convolution is im2col + one GEMM per group:
the windows are a strided view of the padded input, copied once into a contiguous
(N * out, C * k) matrix. The input gradient is not a col2im scatter: it is the forward
convolution of the stride-dilated, padded output gradient with the flipped, transposed
weights (the same routine computes conv_transpose).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

Pads = tuple[tuple[int, int], ...]


def pad_spatial(x: np.ndarray, pads: Pads) -> np.ndarray:
    """Zero-pad (or crop, for negative amounts) the spatial axes of an NC... array."""
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return x
    crop = [slice(None), slice(None)]
    grow = [(0, 0), (0, 0)]
    for lo, hi in pads:
        crop.append(slice(max(-lo, 0), x.shape[len(crop)] - max(-hi, 0)))
        grow.append((max(lo, 0), max(hi, 0)))
    x = x[tuple(crop)]
    if any(g != (0, 0) for g in grow):
        x = np.pad(x, grow)
    return x


def windows(xp: np.ndarray, k: tuple[int, ...], stride: tuple[int, ...],
            dilation: tuple[int, ...], out: tuple[int, ...]) -> np.ndarray:
    """Strided view [N, C, *out, *k] of a padded input (no copy)."""
    n, c = xp.shape[:2]
    st = xp.strides
    sp = st[2:]
    shape = (n, c) + out + k
    strides = st[:2] + tuple(s * a for s, a in zip(sp, stride)) + \
        tuple(s * d for s, d in zip(sp, dilation))
    return as_strided(xp, shape=shape, strides=strides, writeable=False)


def _channels(nd: int, start: int, stop: int) -> tuple[slice, ...]:
    """Index of a channel range in a [N, *out, C, *k] window view."""
    return (slice(None),) * (1 + nd) + (slice(start, stop),)


def conv_forward(x: np.ndarray, w: np.ndarray, stride, pads: Pads, dilation,
                 groups: int) -> np.ndarray:
    nd = x.ndim - 2
    k = w.shape[2:]
    xp = pad_spatial(x, pads)
    out = tuple((xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
                for i in range(nd))
    win = windows(xp, k, stride, dilation, out)          # N, C, *out, *k
    n, cin = x.shape[:2]
    cout = w.shape[0]
    cg, og = cin // groups, cout // groups
    # Bring the spatial axes next to the batch axis: rows of the im2col matrix.
    order = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    win = win.transpose(order)                           # N, *out, C, *k
    rows = n * math.prod(out)
    kk = math.prod(k)
    y = np.empty((rows, cout), dtype=np.result_type(x, w))
    for g in range(groups):
        cols = win[_channels(nd, g * cg, (g + 1) * cg)].reshape(rows, cg * kk)
        wg = w[g * og:(g + 1) * og].reshape(og, cg * kk)
        y[:, g * og:(g + 1) * og] = cols @ wg.T
    y = y.reshape((n,) + out + (cout,))
    return np.ascontiguousarray(np.moveaxis(y, -1, 1))


def conv_transpose_forward(x: np.ndarray, w: np.ndarray, stride, pads: Pads, dilation,
                           groups: int, output_padding) -> np.ndarray:
    """Transposed convolution; w is [Cin, Cout/groups, *k] as in PyTorch.

    Equal to the input gradient of a convolution: dilate x by the stride, pad by
    d (k - 1) - p, convolve with the flipped weights, Cin and Cout swapped per group.
    """
    nd = x.ndim - 2
    k = w.shape[2:]
    n, cin = x.shape[:2]
    og = w.shape[1]
    cg = cin // groups
    if any(s > 1 for s in stride):
        dil_shape = (n, cin) + tuple((x.shape[2 + i] - 1) * stride[i] + 1 for i in range(nd))
        xd = np.zeros(dil_shape, dtype=x.dtype)
        xd[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)] = x
    else:
        xd = x
    new_pads = tuple((dilation[i] * (k[i] - 1) - pads[i][0],
                      dilation[i] * (k[i] - 1) - pads[i][1] + output_padding[i])
                     for i in range(nd))
    flip = (slice(None), slice(None)) + (slice(None, None, -1),) * nd
    wf = w[flip]                                          # Cin, Cout/g, *k
    wt = wf.reshape((groups, cg, og) + k).swapaxes(1, 2).reshape((groups * og, cg) + k)
    return conv_forward(xd, np.ascontiguousarray(wt), (1,) * nd, new_pads, dilation, groups)


def conv_grad_input(dy: np.ndarray, w: np.ndarray, x_spatial: tuple[int, ...], stride,
                    pads: Pads, dilation, groups: int) -> np.ndarray:
    nd = dy.ndim - 2
    k = w.shape[2:]
    # Rows of the input the forward pass never read (floor division) get output padding.
    out_pad = tuple(x_spatial[i] + pads[i][0] + pads[i][1] - dilation[i] * (k[i] - 1) - 1
                    - (dy.shape[2 + i] - 1) * stride[i] for i in range(nd))
    return conv_transpose_forward(dy, w, stride, pads, dilation, groups, out_pad)


def conv_grad_weight(dy: np.ndarray, x: np.ndarray, k: tuple[int, ...], stride, pads: Pads,
                     dilation, groups: int) -> np.ndarray:
    nd = x.ndim - 2
    n, cin = x.shape[:2]
    cout = dy.shape[1]
    out = dy.shape[2:]
    xp = pad_spatial(x, pads)
    win = windows(xp, k, stride, dilation, out)            # N, C, *out, *k
    cg, og = cin // groups, cout // groups
    kk = math.prod(k)
    rows = n * math.prod(out)
    order = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    win = win.transpose(order)                             # N, *out, C, *k
    dyr = np.moveaxis(dy, 1, -1).reshape(rows, cout)
    dw = np.empty((cout, cg) + tuple(k), dtype=np.result_type(dy, x))
    for g in range(groups):
        cols = win[_channels(nd, g * cg, (g + 1) * cg)].reshape(rows, cg * kk)
        dw[g * og:(g + 1) * og] = (dyr[:, g * og:(g + 1) * og].T @ cols).reshape(
            (og, cg) + tuple(k))
    return dw


def conv_transpose_grad_weight(dy: np.ndarray, x: np.ndarray, k: tuple[int, ...], stride,
                               pads: Pads, dilation, groups: int) -> np.ndarray:
    """Weight gradient of conv_transpose (w is [Cin, Cout/g, *k]): the weight gradient of
    the convolution that maps dy back to x, with the roles of the channels swapped."""
    # conv_transpose(x) = conv_grad_input(x) of conv(y): so dW = conv_grad_weight(x, dy).
    return conv_grad_weight(x, dy, k, stride, pads, dilation, groups)
