"""NumPy convolution cores shared by conv, conv_transpose and their gradients.

Measured on 2-core machines, what made NumPy convolutions fast (see benchmarks/RESULTS.md):

- Work channels-last. The input is copied once into a zero-padded NHWC buffer (the copy
  does the padding and the transpose together); the windows of that buffer are a strided
  view [N, *out, *k, C] whose innermost runs are contiguous channels, so the im2col copy
  streams. Results are returned as an NCHW *view* of NHWC memory: elementwise ops keep that
  layout, and the next convolution's transpose is then a plain copy.
- Process output rows in chunks (~4096 im2col rows, which stay in cache) on a small thread
  pool, with BLAS limited to one thread inside: NumPy copies are single-threaded and
  OpenBLAS's own threads lose on many small GEMMs; two Python threads each running
  single-threaded GEMMs on their chunks were 2-8x faster than one multi-threaded call.
- The input gradient is not a col2im scatter: it is the forward convolution of the
  stride-dilated, padded output gradient with the flipped, transposed weights (the same
  routine computes conv_transpose). A transposed convolution whose kernel equals its stride
  (U-Net's 2x2 up-convolution) is one GEMM and a reshuffle instead.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

Pads = tuple[tuple[int, int], ...]
CHUNK_ROWS = 4096

_pool: ThreadPoolExecutor | None = None
_controller = None


def workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def parallel(tasks: Sequence, fn: Callable) -> list:
    """Run fn over tasks on the shared pool, BLAS single-threaded meanwhile."""
    global _pool, _controller
    if len(tasks) <= 1 or workers() == 1:
        return [fn(t) for t in tasks]
    if _pool is None:
        from threadpoolctl import ThreadpoolController

        _pool = ThreadPoolExecutor(workers(), thread_name_prefix="netlang")
        _controller = ThreadpoolController()
    with _controller.limit(limits=1, user_api="blas"):
        return list(_pool.map(fn, tasks))


def _row_tasks(n: int, out: tuple[int, ...]) -> list[tuple[slice, slice, int]]:
    """Chunks of ~CHUNK_ROWS im2col rows: (samples, rows of the first spatial axis, rows).
    Small images are grouped several samples a chunk; large ones split by rows."""
    per_sample = math.prod(out)
    if per_sample <= CHUNK_ROWS:
        step = max(1, CHUNK_ROWS // max(per_sample, 1))
        return [(slice(i, min(i + step, n)), slice(0, out[0]), (min(i + step, n) - i) *
                 per_sample) for i in range(0, n, step)]
    per_row = math.prod(out[1:])
    step = max(1, CHUNK_ROWS // per_row)
    return [(slice(i, i + 1), slice(a, min(a + step, out[0])),
             (min(a + step, out[0]) - a) * per_row)
            for i in range(n) for a in range(0, out[0], step)]


def to_nhwc_padded(x: np.ndarray, pads: Pads) -> np.ndarray:
    """[N, C, *S] -> [N, *S_padded, C], S_padded = S + lo + hi: zero padding where a pad is
    positive, cropping where it is negative (a pad may also exceed the extent it pads)."""
    moved = np.moveaxis(x, 1, -1)
    if all(p == (0, 0) for p in pads):
        return np.ascontiguousarray(moved)
    sizes = tuple(x.shape[2 + i] + lo + hi for i, (lo, hi) in enumerate(pads))
    if min(sizes) < 0:
        raise ValueError(f"padding {pads} crops more than the input {x.shape[2:]}")
    xp = np.zeros((x.shape[0],) + sizes + (x.shape[1],), dtype=x.dtype)
    dst, src = [slice(None)], [slice(None)]
    for i, (lo, _) in enumerate(pads):
        d0, s0 = max(lo, 0), max(-lo, 0)
        count = max(min(x.shape[2 + i] - s0, sizes[i] - d0), 0)
        dst.append(slice(d0, d0 + count))
        src.append(slice(s0, s0 + count))
    xp[tuple(dst)] = moved[tuple(src)]
    return xp


def nhwc_windows(xp: np.ndarray, k: tuple[int, ...], stride, dilation,
                 out: tuple[int, ...]) -> np.ndarray:
    """Strided view [N, *out, *k, C] of a padded NHWC buffer (no copy)."""
    st = xp.strides
    sp = st[1:-1]
    shape = (xp.shape[0],) + tuple(out) + tuple(k) + (xp.shape[-1],)
    strides = (st[0],) + tuple(s * a for s, a in zip(sp, stride)) + \
        tuple(s * d for s, d in zip(sp, dilation)) + (st[-1],)
    return as_strided(xp, shape=shape, strides=strides, writeable=False)


def _out_size(xp_shape, k, stride, dilation) -> tuple[int, ...]:
    return tuple((xp_shape[1 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
                 for i in range(len(k)))


# Below this many input channels, channels-last im2col copies runs too short to stream;
# first layers (1-3 channels) use "K-major" columns [C *k, N *out] whose runs are image rows.
FEW_CHANNELS = 8


def _kmajor_cols(x: np.ndarray, pads: Pads, k, stride, dilation) -> tuple[np.ndarray, tuple]:
    """[C * prod(k), N * prod(out)] im2col matrix of NCHW x, columns in (c, *k) order."""
    nd = len(k)
    xp = np.ascontiguousarray(x)
    if any(p != (0, 0) for p in pads):
        xp = np.pad(xp, [(0, 0), (0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in pads])
    out = tuple((xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
                for i in range(nd))
    st = xp.strides
    view = as_strided(xp, shape=(xp.shape[1],) + tuple(k) + (xp.shape[0],) + out,
                      strides=(st[1],) + tuple(st[2 + i] * dilation[i] for i in range(nd))
                      + (st[0],) + tuple(st[2 + i] * stride[i] for i in range(nd)),
                      writeable=False)
    return view.reshape(xp.shape[1] * math.prod(k), -1), out


def conv_forward(x: np.ndarray, w: np.ndarray, stride, pads: Pads, dilation,
                 groups: int) -> np.ndarray:
    """Convolution of NCHW x with w [O, C/groups, *k]; returns an NCHW view of NHWC data."""
    k = tuple(w.shape[2:])
    n, cin = x.shape[:2]
    if groups == 1 and cin < FEW_CHANNELS and all(lo >= 0 and hi >= 0 for lo, hi in pads):
        cols, out = _kmajor_cols(x, pads, k, stride, dilation)
        y = cols.T @ w.reshape(w.shape[0], -1).T              # [N * out, O]: channels-last
        return np.moveaxis(y.reshape((n,) + out + (w.shape[0],)), -1, 1)
    cout = w.shape[0]
    cg, og = cin // groups, cout // groups
    kk = math.prod(k)
    nd = len(k)
    xp = to_nhwc_padded(x, pads)
    out = _out_size(xp.shape, k, stride, dilation)
    win = nhwc_windows(xp, k, stride, dilation, out)
    # Weights as [group, (*k, c), o], matching the im2col column order.
    wm = np.ascontiguousarray(
        w.reshape((groups, og, cg) + k).transpose((0,) + tuple(range(3, 3 + nd)) + (2, 1))
        .reshape(groups, kk * cg, og))
    y = np.empty((n,) + out + (cout,), dtype=np.result_type(x, w))

    def task(t):
        ns, hs, rows = t
        for g in range(groups):
            cols = win[ns, hs, ..., g * cg:(g + 1) * cg].reshape(rows, kk * cg)
            if groups == 1:
                np.matmul(cols, wm[0], out=y[ns, hs].reshape(rows, cout))
            else:
                y[ns, hs, ..., g * og:(g + 1) * og] = (cols @ wm[g]).reshape(
                    y[ns, hs, ..., :og].shape)

    parallel(_row_tasks(n, out), task)
    return np.moveaxis(y, -1, 1)


def conv_grad_weight(dy: np.ndarray, x: np.ndarray, k: tuple[int, ...], stride, pads: Pads,
                     dilation, groups: int) -> np.ndarray:
    """dW [O, C/groups, *k] = sum over samples and positions of dy x (im2col, chunked)."""
    k = tuple(k)
    nd = len(k)
    n, cin = x.shape[:2]
    cout = dy.shape[1]
    if groups == 1 and cin < FEW_CHANNELS and all(lo >= 0 and hi >= 0 for lo, hi in pads):
        cols, out = _kmajor_cols(x, pads, k, stride, dilation)
        if out == tuple(dy.shape[2:]):
            dyr = np.moveaxis(dy, 1, -1).reshape(-1, cout)
            return (dyr.T @ cols.T).reshape((cout, cin) + k)
    cg, og = cin // groups, cout // groups
    kk = math.prod(k)
    out = tuple(dy.shape[2:])
    xp = to_nhwc_padded(x, pads)
    win = nhwc_windows(xp, k, stride, dilation, out)
    dyl = np.moveaxis(dy, 1, -1)   # [N, *out, O], a view

    def task(t):
        ns, hs, rows = t
        part = np.empty((groups, og, kk * cg), dtype=np.result_type(dy, x))
        for g in range(groups):
            cols = win[ns, hs, ..., g * cg:(g + 1) * cg].reshape(rows, kk * cg)
            d = dyl[ns, hs, ..., g * og:(g + 1) * og].reshape(rows, og)
            np.matmul(d.T, cols, out=part[g])
        return part

    total = sum(parallel(_row_tasks(n, out), task))
    # [g, og, (*k, c)] -> [O, c, *k]
    dw = total.reshape((groups, og) + k + (cg,))
    dw = np.moveaxis(dw, -1, 2).reshape((cout, cg) + k)
    del nd
    return np.ascontiguousarray(dw)


def conv_transpose_forward(x: np.ndarray, w: np.ndarray, stride, pads: Pads, dilation,
                           groups: int, output_padding) -> np.ndarray:
    """Transposed convolution; w is [Cin, Cout/groups, *k] as in PyTorch.

    The input gradient of a convolution: dilate x by the stride, pad by d (k - 1) - p,
    convolve with the flipped weights, Cin and Cout swapped per group.
    """
    k = tuple(w.shape[2:])
    nd = len(k)
    if (tuple(k) == tuple(stride) and groups == 1 and all(d == 1 for d in dilation)
            and all(p == (0, 0) for p in pads) and not any(output_padding)):
        return _patch_transpose(x, w)
    n, cin = x.shape[:2]
    og = w.shape[1]
    cg = cin // groups
    if any(s > 1 for s in stride):
        # Insert stride - 1 zeros between pixels (channels-last, as conv_forward reads it).
        dil_shape = (n,) + tuple((x.shape[2 + i] - 1) * stride[i] + 1 for i in range(nd)) + \
            (cin,)
        xd = np.zeros(dil_shape, dtype=x.dtype)
        xd[(slice(None),) + tuple(slice(None, None, s) for s in stride)] = np.moveaxis(x, 1, -1)
        xd = np.moveaxis(xd, -1, 1)
    else:
        xd = x
    new_pads = tuple((dilation[i] * (k[i] - 1) - pads[i][0],
                      dilation[i] * (k[i] - 1) - pads[i][1] + output_padding[i])
                     for i in range(nd))
    flip = (slice(None), slice(None)) + (slice(None, None, -1),) * nd
    wt = w[flip].reshape((groups, cg, og) + k).swapaxes(1, 2).reshape((groups * og, cg) + k)
    return conv_forward(xd, wt, (1,) * nd, new_pads, dilation, groups)


def _patch_transpose(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """conv_transpose with kernel == stride: every input pixel writes its own k-patch, so
    it is one GEMM [N*H*W, C] @ [C, O*kh*kw] and a reshuffle."""
    n, cin = x.shape[:2]
    k = tuple(w.shape[2:])
    nd = len(k)
    cout = w.shape[1]
    sp = x.shape[2:]
    rows = np.moveaxis(x, 1, -1).reshape(-1, cin)
    z = rows @ w.reshape(cin, -1)                                 # [N*S, O*prod(k)]
    z = z.reshape((n,) + sp + (cout,) + k)
    # [N, *S, O, *k] -> [N, S0, k0, S1, k1, ..., O] (channels-last) -> NCHW-logical view.
    order = (0,) + tuple(v for i in range(nd) for v in (1 + i, 2 + nd + i)) + (1 + nd,)
    y = z.transpose(order).reshape((n,) + tuple(s * kk for s, kk in zip(sp, k)) + (cout,))
    return np.moveaxis(y, -1, 1)


def conv_grad_input(dy: np.ndarray, w: np.ndarray, x_spatial: tuple[int, ...], stride,
                    pads: Pads, dilation, groups: int) -> np.ndarray:
    nd = dy.ndim - 2
    k = w.shape[2:]
    n, cout = dy.shape[:2]
    cin = w.shape[1] * groups
    # Two formulations; pick the one that moves less data. The transposed convolution
    # copies an im2col matrix of (input pixels) x (Cout k) elements; GEMM-then-scatter
    # writes (output pixels) x (Cin k) and adds k shifted slices. With fewer input than
    # output channels (LeNet's second conv: 6 vs 16), or with a stride, the scatter wins.
    im2col = n * math.prod(x_spatial) * cout * math.prod(k)
    scatter = n * math.prod(dy.shape[2:]) * cin * math.prod(k)
    if scatter < im2col:
        return _grad_input_scatter(dy, w, x_spatial, stride, pads, dilation, groups)
    # Rows of the input the forward pass never read (floor division) get output padding.
    out_pad = tuple(x_spatial[i] + pads[i][0] + pads[i][1] - dilation[i] * (k[i] - 1) - 1
                    - (dy.shape[2 + i] - 1) * stride[i] for i in range(nd))
    return conv_transpose_forward(dy, w, stride, pads, dilation, groups, out_pad)


def _grad_input_scatter(dy: np.ndarray, w: np.ndarray, x_spatial: tuple[int, ...], stride,
                        pads: Pads, dilation, groups: int) -> np.ndarray:
    """dx = col2im(dy @ W): one GEMM per chunk of samples, then one strided add per kernel
    tap into a padded channels-last buffer (samples are disjoint, so chunks never race)."""
    k = tuple(w.shape[2:])
    nd = len(k)
    n, cout = dy.shape[:2]
    og, cg = cout // groups, w.shape[1]
    cin = cg * groups
    out = tuple(dy.shape[2:])
    kk = math.prod(k)
    # [O, c, *k] -> [g, o, (*k, c)]
    wm = w.reshape((groups, og, cg) + k).transpose((0, 1) + tuple(range(3, 3 + nd)) + (2,)) \
        .reshape(groups, og, kk * cg)
    dyl = np.moveaxis(dy, 1, -1)
    padded = tuple(x_spatial[i] + pads[i][0] + pads[i][1] for i in range(nd))
    # Rows past the last window (floor division) stay zero; allocate enough for every tap.
    span = tuple(max(padded[i], (out[i] - 1) * stride[i] + dilation[i] * (k[i] - 1) + 1)
                 for i in range(nd))
    dxp = np.zeros((n,) + span + (cin,), dtype=np.result_type(dy, w))
    per_sample = math.prod(out)
    step = max(1, CHUNK_ROWS // max(per_sample, 1))

    def task(i0):
        i1 = min(i0 + step, n)
        for g in range(groups):
            d = dyl[i0:i1, ..., g * og:(g + 1) * og].reshape(-1, og)
            cols = (d @ wm[g]).reshape((i1 - i0,) + out + k + (cg,))
            for j in np.ndindex(*k):
                idx = (slice(i0, i1),) + tuple(
                    slice(j[a] * dilation[a], j[a] * dilation[a] + stride[a] * (out[a] - 1) + 1,
                          stride[a]) for a in range(nd)) + (slice(g * cg, (g + 1) * cg),)
                dxp[idx] += cols[(slice(None),) + (slice(None),) * nd + j]

    parallel(list(range(0, n, step)), task)
    crop = (slice(None),) + tuple(slice(pads[i][0], pads[i][0] + x_spatial[i])
                                  for i in range(nd)) + (slice(None),)
    return np.moveaxis(dxp[crop], -1, 1)


def conv_transpose_grad_weight(dy: np.ndarray, x: np.ndarray, k: tuple[int, ...], stride,
                               pads: Pads, dilation, groups: int) -> np.ndarray:
    """Weight gradient of conv_transpose (w is [Cin, Cout/g, *k]).

    conv_transpose(x) is the input gradient of a convolution whose output is x, so its
    weight gradient is that convolution's: conv_grad_weight with x and dy swapped."""
    k = tuple(k)
    if (k == tuple(stride) and groups == 1 and all(d == 1 for d in dilation)
            and all(p == (0, 0) for p in pads)):
        n, cin = x.shape[:2]
        nd = len(k)
        cout = dy.shape[1]
        sp = x.shape[2:]
        # Rows of output padding past the last patch receive only the bias: crop them.
        dy = dy[(slice(None), slice(None)) + tuple(slice(0, s * kk) for s, kk in zip(sp, k))]
        # dy [N, O, S0*k0, ...] -> [N, *S, O, *k] rows, then x^T @ rows.
        v = dy.reshape((n, cout) + tuple(d for s, kk in zip(sp, k) for d in (s, kk)))
        order = (0,) + tuple(2 + 2 * i for i in range(nd)) + (1,) + \
            tuple(3 + 2 * i for i in range(nd))
        rows = v.transpose(order).reshape(-1, cout * math.prod(k))
        xr = np.moveaxis(x, 1, -1).reshape(-1, cin)
        return (xr.T @ rows).reshape((cin, cout) + k)
    return conv_grad_weight(x, dy, k, stride, pads, dilation, groups)
