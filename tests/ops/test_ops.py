"""Every op of the registry: forward against an independent float64 formulation, and the
VJP against finite differences along a random direction (JAX's check_vjp, in float64).

The test walks the registry: an op with a VJP rule and no row in CASES fails
`test_every_differentiable_op_has_a_case`, so no op can lack a gradient test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from netlang.backends.numpy_backend import execute
from netlang.ir.graph import Graph
from netlang.ir.types import TensorType
from netlang.ops import registry
from netlang.passes.autodiff import autodiff
from netlang.passes.memplan import plan_memory
from netlang.passes.shape_infer import infer_shapes
from netlang.passes.simplify import dce
from tests.ops import reference as ref

N = 2  # batch


def conv_attrs(channels, kernel, nd, stride=1, pad=0, dilation=1, groups=1, bias=True):
    return dict(channels=channels, kernel=kernel, stride=stride, pad=pad, dilation=dilation,
                groups=groups, bias=bias)


def pool_attrs(kernel, stride=0, pad=0, ceil=False, **kw):
    return dict(kernel=kernel, stride=stride, pad=pad, ceil=ceil, **kw)


# op, input shapes (per sample), attributes, input kind ("normal" | "prob" | "classes" ...)
CASES = [
    ("conv", [(3, 7, 6)], conv_attrs(4, 3, 2)),
    ("conv", [(4, 9, 8)], conv_attrs(6, (3, 2), 2, stride=(2, 1), pad=(1, 0), dilation=(1, 2),
                                     groups=2)),
    ("conv", [(2, 9, 9)], conv_attrs(3, 3, 2, stride=2, pad="same", bias=False)),
    ("conv", [(2, 11)], conv_attrs(3, 3, 1, stride=2, pad=1)),
    ("conv", [(2, 5, 5, 4)], conv_attrs(3, 3, 3, pad=1)),
    ("conv_transpose", [(4, 4, 5)], dict(conv_attrs(3, 2, 2, stride=2), output_padding=0)),
    ("conv_transpose", [(4, 4, 4)], dict(conv_attrs(4, 3, 2, stride=2, pad=1, groups=2),
                                         output_padding=1)),
    ("conv_transpose", [(2, 3, 3, 3)], dict(conv_attrs(2, 2, 3, stride=2), output_padding=0)),
    ("conv_transpose", [(3, 4, 5)], dict(conv_attrs(2, 3, 2, stride=2, pad="same"),
                                         output_padding=0)),
    ("conv_transpose", [(3, 4, 5)], dict(conv_attrs(2, 1, 2, stride=3, pad="same"),
                                         output_padding=0)),
    ("conv_transpose", [(2, 4, 4)], dict(conv_attrs(3, 3, 2, stride=2, pad=1),
                                         output_padding=0, output_size=(8, 7))),
    ("dense", [(7,)], dict(units=5, bias=True)),
    ("dense", [(4,)], dict(units=3, bias=False)),
    ("dense", [(3, 4)], dict(units=5, bias=True)),
    ("matmul", [(3, 4), (4, 2)], dict(trans_a=False, trans_b=False)),
    ("matmul", [(2, 3, 4), (2, 5, 4)], dict(trans_a=False, trans_b=True)),
    ("matmul", [(4, 3), (4, 2)], dict(trans_a=True, trans_b=False)),
    ("matmul", [(4, 3), (2, 4)], dict(trans_a=True, trans_b=True)),
    ("layernorm", [(3, 5)], dict(eps=1e-5, affine=True)),
    ("layernorm", [(2, 3, 4)], dict(eps=1e-3, affine=False)),
    ("layernorm", [(6,)], dict(eps=1e-5, affine=True)),
    ("groupnorm", [(6, 3, 2)], dict(groups=3, eps=1e-5, affine=True)),
    ("groupnorm", [(4, 5)], dict(groups=1, eps=1e-3, affine=False)),
    ("instancenorm", [(3, 2, 2, 3)], dict(eps=1e-5, affine=True)),
    ("instancenorm", [(2, 5, 4)], dict(eps=1e-5, affine=False)),
    ("batchnorm", [(3, 4, 5)], dict(eps=1e-5, momentum=0.1, affine=True, training=True)),
    ("batchnorm", [(3, 4, 5)], dict(eps=1e-5, momentum=0.1, affine=True, training=False)),
    ("batchnorm", [(5,)], dict(eps=1e-3, momentum=0.1, affine=False, training=True)),
    ("batchnorm", [(3, 4, 5)], dict(eps=1e-5, momentum=0.1, affine=True, training=True,
                                    track_running_stats=False)),
    ("maxpool", [(2, 7, 6)], pool_attrs(2, dilation=1)),
    ("maxpool", [(2, 7, 7)], pool_attrs(3, stride=2, pad=1, ceil=True, dilation=1)),
    ("maxpool", [(2, 8, 8, 8)], pool_attrs(2, dilation=1)),
    ("maxpool", [(2, 9)], pool_attrs(3, stride=2, dilation=2)),
    ("avgpool", [(2, 7, 6)], pool_attrs(2, count_include_pad=True)),
    ("avgpool", [(2, 7, 7)], pool_attrs(3, stride=2, pad=1, ceil=True, count_include_pad=True)),
    ("avgpool", [(2, 7, 7)], pool_attrs(3, stride=2, pad=1, ceil=True, count_include_pad=False)),
    ("avgpool", [(2, 9, 8)], pool_attrs(3, stride=2, pad=1, ceil=True, count_include_pad=True,
                                        dilation=(2, 1))),
    ("avgpool", [(2, 10)], pool_attrs(3, pad=1, count_include_pad=False, dilation=3)),
    ("global_avgpool", [(3, 4, 5)], {}),
    ("global_maxpool", [(3, 4, 5)], {}),
    ("global_maxpool", [(2, 7)], {}),
    ("upsample", [(2, 3, 4)], dict(scale=2.0, mode="nearest")),
    ("upsample", [(2, 3, 4)], dict(scale=1.5, mode="nearest")),
    ("upsample", [(2, 3, 4)], dict(scale=2.0, mode="bilinear")),
    ("upsample", [(2, 5)], dict(scale=(2.5,), mode="linear")),
    ("upsample", [(1, 2, 3, 2)], dict(scale=2.0, mode="trilinear")),
    ("upsample", [(2, 3, 4)], dict(size=(7, 5), mode="bilinear")),
    ("upsample", [(2, 3, 4)], dict(size=(5, 9), mode="nearest")),
    ("upsample", [(2, 3, 4)], dict(scale=2.0, mode="bilinear", align_corners=True)),
    ("upsample", [(2, 5)], dict(size=3, mode="linear", align_corners=True)),
    ("upsample", [(2, 4, 5)], dict(scale=2.0, mode="bicubic")),
    ("upsample", [(2, 4, 5)], dict(size=(3, 7), mode="bicubic", align_corners=True)),
    ("upsample", [(2, 12, 13)], dict(scale=0.5, mode="bilinear")),
    ("upsample", [(2, 24)], dict(scale=(0.25,), mode="nearest")),
    ("upsample", [(2, 3, 4), (1, 6, 7)], dict(mode="bilinear")),
    ("concat", [(2, 3, 3), (3, 3, 3), (1, 3, 3)], {}),
    ("concat", [(2, 3), (2, 4)], dict(axis=1)),
    ("concat", [(1, 4), (3, 4)], dict(axis=-2)),
    ("adaptive_avgpool", [(2, 7, 5)], dict(size=(3, 2))),
    ("adaptive_avgpool", [(2, 3, 4)], dict(size=(5, 4))),
    ("adaptive_avgpool", [(3, 10)], dict(size=4)),
    ("adaptive_avgpool", [(2, 4, 5, 3)], dict(size=(1, 2, 2))),
    ("slice_axis", [(5, 3, 4)], dict(axis=0, start=1, stop=4)),
    ("slice_axis", [(2, 7)], dict(axis=1, start=3, stop=7)),
    ("crop", [(2, 7, 6), (1, 4, 3)], {}),
    ("crop", [(2, 7, 6)], dict(size=(5, 2))),
    ("pad", [(2, 3, 4)], dict(amount=(1, 2, 0, 1))),
    ("pad", [(2, 3, 4), (1, 6, 5)], {}),
    ("pad", [(2, 3, 4)], dict(amount=(1, 2, 0, 3), mode="reflect")),
    ("pad", [(2, 3, 4)], dict(amount=(2, 1, 3, 0), mode="replicate")),
    ("pad", [(2, 3, 4)], dict(amount=(1, 3, 4, 2), mode="circular")),
    ("pad", [(2, 5)], dict(amount=(4, 2), mode="reflect")),
    ("pad", [(2, 3, 4)], dict(amount=1, value=-1.5)),
    ("pad", [(1, 2, 3, 2)], dict(amount=(1, 1, 2), mode="replicate")),
    ("add", [(2, 3, 3), (2, 3, 3)], {}),
    ("add", [(4, 3, 3), (1, 3, 3)], {}),
    ("mul", [(4, 3, 3), (1, 3, 3)], {}),
    ("flatten", [(2, 3, 3)], {}),
    ("flatten", [(2, 3, 4)], dict(axis=1)),
    ("dropout", [(2, 3)], dict(p=0.3)),
    ("relu", [(3, 4)], {}),
    ("leaky_relu", [(3, 4)], dict(alpha=0.2)),
    ("sigmoid", [(3, 4)], {}),
    ("tanh", [(3, 4)], {}),
    ("gelu", [(3, 4)], {}),
    ("gelu", [(3, 4)], dict(approximate="tanh")),
    ("silu", [(3, 4)], {}),
    ("hardtanh", [(3, 4)], dict(min_val=-0.5, max_val=0.7)),
    ("prelu", [(3, 4, 2)], dict(per_channel=True, init=0.25)),
    ("prelu", [(3, 4, 2)], dict(per_channel=False, init=0.25)),
    ("prelu", [(5,)], dict(per_channel=True, init=0.1)),
    ("elu", [(3, 4)], dict(alpha=0.7)),
    ("softplus", [(3, 4)], {}),
    ("softplus", [(3, 4)], dict(beta=2.0, threshold=1.0)),
    ("softmax", [(4, 3)], {}),
    ("softmax", [(2, 3, 4)], dict(axis=2)),
    ("softmax", [(3, 5)], dict(axis=-1)),
    ("softmax", [(2, 4, 4)], dict(axis=-1, causal=True)),
    ("softmax", [(5, 3)], dict(axis=1, causal=True)),
    ("log_softmax", [(4, 3)], {}),
    ("log_softmax", [(2, 3, 4)], dict(axis=1)),
    ("mean", [(3, 4)], dict(axis=0)),
    ("mean", [(2, 3, 4)], dict(axis=-1)),
    ("sum", [(2, 3, 4)], dict(axis=1)),
    ("permute", [(2, 3, 4)], dict(axes=(2, 0, 1))),
    ("permute", [(3, 5)], dict(axes=(1, 0))),
    ("scale", [(3,)], dict(factor=-2.5)),
    ("round_to", [(3, 4)], dict(precision="bf16", forward=True, backward=True)),
    ("round_to", [(5,)], dict(precision="tf32", forward=True, backward=False)),
    ("round_to", [(2, 3)], dict(precision="tf32", forward=False, backward=True)),
    ("round_to", [(4,)], dict(precision="fp16", forward=True, backward=True)),
    ("sum_all", [(3, 2)], {}),
    ("sum_to", [(4, 3, 3)], dict(shape=(1, 3, 1), batched=False)),
    ("broadcast_like", [(1, 3, 1), (4, 3, 3)], {}),
    ("reshape", [(4, 3)], dict(shape=(2, 6))),
    ("reshape", [(4, 3, 2)], dict(shape=(-1, 4))),
    ("mse", [(3, 4)], {}),
    ("cross_entropy", [(4,)], {}),
    ("cross_entropy", [(4, 3, 3)], {}),
    ("nll", [(4,)], {}),
    ("nll", [(3, 2, 2)], {}),
    ("l1", [(3, 4)], {}),
    ("smooth_l1", [(3, 4)], {}),
    ("bce", [(1, 4, 4)], {}),
    ("bce_logits", [(1, 4, 4)], {}),
    ("dice", [(2, 4, 4)], {}),
    # loss options: class weights, an ignored class, label smoothing, sums, beta, focal
    ("cross_entropy", [(4, 3, 3)], dict(weight=(1.0, 2.0, 0.5, 0.25), ignore_index=2)),
    ("cross_entropy", [(4,)], dict(label_smoothing=0.1, reduction="sum")),
    ("cross_entropy", [(3, 2, 2)], dict(weight=(0.5, 1.0, 2.0), label_smoothing=0.2)),
    ("cross_entropy", [(3, 2, 2)], dict(ignore_index=0)),
    ("nll", [(3, 2, 2)], dict(weight=(0.5, 1.0, 2.0), ignore_index=1, reduction="sum")),
    ("nll", [(4,)], dict(weight=(0.5, 1.0, 2.0, 3.0))),
    ("mse", [(3, 4)], dict(reduction="sum")),
    ("l1", [(3, 4)], dict(reduction="sum")),
    ("smooth_l1", [(3, 4)], dict(beta=0.5)),
    ("bce", [(1, 4, 4)], dict(reduction="sum")),
    ("bce_logits", [(1, 4, 4)], dict(reduction="sum")),
    ("focal", [(1, 4, 4)], {}),
    ("focal", [(2, 3)], dict(gamma=0.0, alpha=-1.0, reduction="sum")),
    ("focal_logits", [(1, 4, 4)], {}),
    ("focal_logits", [(2, 3)], dict(gamma=1.0, alpha=0.75)),
    ("focal_logits", [(2, 3)], dict(gamma=0.5, alpha=-1.0, reduction="sum")),
]
LOSSES = {"mse", "l1", "smooth_l1", "cross_entropy", "nll", "bce", "bce_logits", "dice",
          "focal", "focal_logits"}
CLASSES = ("cross_entropy", "nll")


def build(op: str, shapes, attrs, rng):
    """A graph computing `op` on fresh inputs; returns (graph, output node, feeds)."""
    g = Graph()
    opdef = registry.get(op)
    full = {a.name: a.default for a in opdef.attrs if not a.required and a.default is not None}
    full.update(attrs)
    xs, feeds = [], {}
    for i, s in enumerate(shapes):
        x = g.add("input", [], {"shape": s}, name=f"x{i}", type=TensorType(s))
        g.inputs[x.name] = x
        xs.append(x)
        feeds[x.id] = rng.standard_normal((N,) + s)
        if op in ("bce", "dice", "focal"):
            feeds[x.id] = rng.uniform(0.05, 0.95, (N,) + s)
    if op in LOSSES:
        pred = xs[0]
        tshape = pred.type.shape[1:] if op in CLASSES else pred.type.shape
        dtype = "int64" if op in CLASSES else "float32"
        t = g.add("input", [], {"shape": tshape}, name="target",
                  type=TensorType(tshape, dtype=dtype))
        g.targets["target"] = t
        feeds[t.id] = (rng.integers(0, pred.type.shape[0], (N,) + tshape)
                       if op in CLASSES else rng.uniform(0, 1, (N,) + tshape))
        xs.append(t)
    params = [g.add("param", [], {"role": r}, name=f"y.{r}") for r in opdef.roles(full)]
    y = g.add(op, xs + params, full, name="y")
    infer_shapes(g)
    for p in params:
        if p.attrs["init"] == "uniform":
            feeds[p.id] = rng.uniform(-1, 1, p.type.shape)
        else:
            feeds[p.id] = rng.uniform(0.5, 1.5, p.type.shape) if "var" in p.name or \
                p.attrs["init"] == "ones" else rng.standard_normal(p.type.shape) * 0.1
    return g, y, feeds


def run(g, feeds, seed=0):
    roots, _ = execute(g, plan_memory(g, N), feeds, N, seed)
    return roots


def case_id(c):
    return f"{c[0]}-{'x'.join(map(str, c[1][0]))}-{len(c[2])}"


# Ops whose VJP is by definition not the derivative of their forward, with the test of
# what it is instead.
NOT_DERIVATIVES = {"round_to": "a cast to a lower precision: its VJP is the cast's "
                               "(tests/train/test_precision.py)"}


@pytest.mark.parametrize("op,shapes,attrs", [c for c in CASES if c[0] not in NOT_DERIVATIVES],
                         ids=[case_id(c) for c in CASES if c[0] not in NOT_DERIVATIVES])
def test_vjp_matches_finite_differences(op, shapes, attrs):
    rng = np.random.default_rng(0)
    g, y, feeds = build(op, shapes, attrs, rng)
    # L = sum(y * r) for a fixed random r: its gradient is the VJP of r.
    r = g.add("input", [], {"shape": y.type.shape}, name="r", type=y.type)
    g.targets["r"] = r
    feeds[r.id] = rng.standard_normal(y.type.full_shape(N))
    prod = g.add("mul", [y, r], name="prod")
    loss = g.add("sum_all", [prod], name="loss")
    infer_shapes(g)
    g.loss = loss
    autodiff(g, wrt_inputs=True)
    dce(g)
    roots = run(g, feeds)
    wrt = {n.name: n for n in g.params if n.attrs.get("trainable", True)}
    wrt.update({k: v for k, v in g.inputs.items()})
    direction = {k: rng.standard_normal(feeds[n.id].shape) for k, n in wrt.items()}
    analytic = sum(float((roots[g.grads[k].id] * direction[k]).sum()) for k in wrt)

    def loss_at(eps):
        f = dict(feeds)
        for k, n in wrt.items():
            f[n.id] = feeds[n.id] + eps * direction[k]
        return float(run(g, f)[loss.id])

    eps = 1e-6
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert abs(analytic - numeric) <= 1e-5 * max(1.0, abs(numeric)), (
        f"{op}: VJP along a random direction is {analytic:.8g}, finite differences give "
        f"{numeric:.8g}")
    for k, n in wrt.items():
        assert roots[g.grads[k].id].shape == feeds[n.id].shape, k


def _reference(op, xs, params, a):
    if op == "conv":
        return ref.conv(xs[0], params[0], params[1] if a["bias"] else None, a)
    if op == "conv_transpose":
        return ref.conv_transpose(xs[0], params[0], params[1] if a["bias"] else None, a)
    if op == "dense":
        return xs[0] @ params[0].T + (params[1] if a["bias"] else 0)
    if op == "batchnorm":
        w, b = (params[0], params[1]) if a["affine"] else (None, None)
        rm, rv = (params[-2], params[-1]) if a.get("track_running_stats", True) else (None,) * 2
        return ref.batchnorm(xs[0], w, b, rm, rv, a)
    if op in ("maxpool", "avgpool"):
        return ref.pool(xs[0], a, op[:3])
    if op == "upsample":
        return ref.upsample(xs[0], a)
    if op in ("softmax", "log_softmax"):
        ax = a["axis"] + 1
        z = np.exp(xs[0] - xs[0].max(axis=ax, keepdims=True))
        if a.get("causal"):   # written out: key j > query i is dropped before the sum
            q, k = xs[0].shape[-2:]
            z = z * np.array([[j <= i for j in range(k)] for i in range(q)])
        p = z / z.sum(axis=ax, keepdims=True)
        return p if op == "softmax" else np.log(p)
    if op == "prelu":   # the slope of channel c (axis 1 with the batch), or one for all
        x, w = xs[0], params[0]
        slope = np.array([w[c % w.size] for c in range(x.shape[1])])
        return np.where(x > 0, x, slope.reshape((1, -1) + (1,) * (x.ndim - 2)) * x)
    if op == "matmul":
        x, w = xs
        x = np.swapaxes(x, -1, -2) if a["trans_a"] else x
        w = np.swapaxes(w, -1, -2) if a["trans_b"] else w
        return np.einsum("...ik,...kj->...ij", x, w)
    if op in ("groupnorm", "instancenorm"):
        x = xs[0]
        g = x.shape[1] if op == "instancenorm" else a["groups"]
        xg = x.reshape(x.shape[0], g, -1)
        y = ((xg - xg.mean(axis=2, keepdims=True))
             / np.sqrt(xg.var(axis=2, keepdims=True) + a["eps"])).reshape(x.shape)
        if not a["affine"]:
            return y
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * params[0].reshape(shape) + params[1].reshape(shape)
    if op == "layernorm":
        x = xs[0]
        mu = x.mean(axis=-1, keepdims=True)
        y = (x - mu) / np.sqrt(x.var(axis=-1, keepdims=True) + a["eps"])
        return y * params[0] + params[1] if a["affine"] else y
    table = {
        "global_avgpool": lambda: xs[0].reshape(N, xs[0].shape[1], -1).mean(axis=2),
        "global_maxpool": lambda: xs[0].reshape(N, xs[0].shape[1], -1).max(axis=2),
        "concat": lambda: np.concatenate(xs, axis=a.get("axis", 0) % xs[0][0].ndim + 1),
        "add": lambda: xs[0] + xs[1], "mul": lambda: xs[0] * xs[1],
        "flatten": lambda: xs[0].reshape((N,) + xs[0].shape[1:a.get("axis", 0) + 1] + (-1,)),
        "dropout": lambda: xs[0],
        "relu": lambda: np.maximum(xs[0], 0),
        "leaky_relu": lambda: np.where(xs[0] > 0, xs[0], a.get("alpha") * xs[0]),
        "sigmoid": lambda: 1 / (1 + np.exp(-xs[0])), "tanh": lambda: np.tanh(xs[0]),
        # the textbook formulas, in float64
        "gelu": lambda: (0.5 * xs[0] * (1 + np.tanh(np.sqrt(2 / np.pi) * (
            xs[0] + 0.044715 * xs[0] ** 3)))) if a["approximate"] == "tanh" else
        np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in xs[0].ravel()]
                 ).reshape(xs[0].shape),
        "silu": lambda: xs[0] / (1 + np.exp(-xs[0])),
        "hardtanh": lambda: np.minimum(np.maximum(xs[0], a["min_val"]), a["max_val"]),
        "elu": lambda: np.where(xs[0] > 0, xs[0], a["alpha"] * (np.exp(xs[0]) - 1)),
        "softplus": lambda: np.where(a["beta"] * xs[0] > a["threshold"], xs[0],
                                     np.log(1 + np.exp(a["beta"] * xs[0])) / a["beta"]),
        "scale": lambda: xs[0] * a.get("factor"), "sum_all": lambda: xs[0].sum(),
        "round_to": lambda: ref.round_precision(xs[0], a["precision"]) if a["forward"]
        else xs[0],
        "sum_to": lambda: xs[0].sum(axis=(0, 1, 3), keepdims=True)[0],
        "broadcast_like": lambda: np.broadcast_to(xs[0], xs[1].shape),
        "reshape": lambda: xs[0].reshape((N,) + tuple(a["shape"])),
        "mean": lambda: xs[0].mean(axis=a["axis"] + 1),
        "sum": lambda: xs[0].sum(axis=a["axis"] + 1),
        "permute": lambda: np.transpose(xs[0], (0,) + tuple(i + 1 for i in a["axes"])),
        "slice_axis": lambda: np.take(xs[0], range(a["start"], a["stop"]), axis=a["axis"] + 1),
    }
    if op in table:
        return table[op]()
    if op == "adaptive_avgpool":   # PyTorch's windows: floor(i H / S) .. ceil((i + 1) H / S)
        x = xs[0]
        size = a["size"] if isinstance(a["size"], tuple) else (a["size"],) * (x.ndim - 2)
        out = np.zeros(x.shape[:2] + tuple(size))
        for idx in np.ndindex(*size):
            box = tuple(slice(math.floor(i * h / s), math.ceil((i + 1) * h / s))
                        for i, h, s in zip(idx, x.shape[2:], size))
            out[(slice(None), slice(None)) + idx] = x[(slice(None), slice(None)) + box].mean(
                axis=tuple(range(2, x.ndim)))
        return out
    if op in ("crop", "pad"):
        box = a["box"]
        x = xs[0]
        if op == "pad":   # PyTorch's F.pad modes, band by band along each axis
            mode = a.get("mode", "constant")
            for ax in range(2, x.ndim):
                lo, hi = box[2 * (ax - 2)], box[2 * (ax - 2) + 1]
                n = x.shape[ax]
                def take(idx, x=x, ax=ax):
                    return np.take(x, list(idx), axis=ax)

                if mode == "reflect":       # mirror without repeating the edge
                    front, back = take(range(lo, 0, -1)), take(range(n - 2, n - 2 - hi, -1))
                elif mode == "replicate":   # the edge, repeated
                    front, back = take([0] * lo), take([n - 1] * hi)
                elif mode == "circular":    # the far side
                    front, back = take(range(n - lo, n)), take(range(hi))
                else:
                    v = a.get("value", 0.0)
                    shape = list(x.shape)
                    front = np.full(shape[:ax] + [lo] + shape[ax + 1:], v)
                    back = np.full(shape[:ax] + [hi] + shape[ax + 1:], v)
                x = np.concatenate([front, x, back], axis=ax)
            return x
        return x[(slice(None), slice(None)) + tuple(slice(box[2 * i], x.shape[2 + i] -
                                                          box[2 * i + 1])
                                                    for i in range(x.ndim - 2))]
    p, t = xs[0], xs[1]
    total = (lambda v: v.sum()) if a.get("reduction") == "sum" else (lambda v: v.mean())
    if op == "mse":
        return total((p - t) ** 2)
    if op == "l1":
        return total(np.abs(p - t))
    if op == "smooth_l1":
        d, b = np.abs(p - t), a["beta"]
        return total(np.where(d < b, 0.5 * d * d / b, d - 0.5 * b))
    if op in ("nll", "cross_entropy"):
        return _class_loss_reference(op, p, t, a)
    if op in ("focal", "focal_logits"):   # torchvision.ops.sigmoid_focal_loss, written out
        s = p if op == "focal" else 1 / (1 + np.exp(-p))
        ce = -(t * np.log(s) + (1 - t) * np.log(1 - s))
        p_t = s * t + (1 - s) * (1 - t)
        loss = ce * (1 - p_t) ** a["gamma"]
        if a["alpha"] >= 0:
            loss = (a["alpha"] * t + (1 - a["alpha"]) * (1 - t)) * loss
        return total(loss)
    if op == "bce":
        return total(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    if op == "bce_logits":
        s = 1 / (1 + np.exp(-p))
        return total(-(t * np.log(s) + (1 - t) * np.log(1 - s)))
    if op == "dice":
        axes = (0, 2, 3)
        return 1 - ((2 * (p * t).sum(axes) + 1) / (p.sum(axes) + t.sum(axes) + 1)).mean()
    raise NotImplementedError(op)


def _class_loss_reference(op, z, t, a):
    """PyTorch's weighted cross-entropy / NLL as its documentation writes it, one position
    at a time: sum of w[t] l over the positions that count, divided by the sum of their
    w[t] for a mean; label smoothing mixes in eps / C sum_c w_c (-log p_c)."""
    logp = z if op == "nll" else np.log(ref.softmax(z))
    c = z.shape[1]
    w = np.ones(c) if a.get("weight") is None else np.asarray(a["weight"])
    eps = a.get("label_smoothing", 0.0)
    num = den = 0.0
    for idx in np.ndindex(t.shape):
        tc = int(t[idx])
        if tc == a.get("ignore_index"):
            continue
        lp = logp[(idx[0], slice(None)) + idx[1:]]
        num += (1 - eps) * -w[tc] * lp[tc] + eps / c * (-w * lp).sum()
        den += w[tc]
    return num if a.get("reduction") == "sum" else num / den


@pytest.mark.parametrize("op,shapes,attrs", CASES, ids=[case_id(c) for c in CASES])
def test_forward_matches_reference(op, shapes, attrs):
    rng = np.random.default_rng(1)
    g, y, feeds = build(op, shapes, attrs, rng)
    g.outputs["y"] = y
    got = run(g, feeds)[y.id]
    xs = [feeds[i.id] for i in y.inputs if i.op == "input"]
    params = [feeds[i.id] for i in y.inputs if i.op == "param"]
    want = _reference(op, xs, params, y.attrs)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=op)


def test_every_differentiable_op_has_a_case():
    covered = {c[0] for c in CASES}
    missing = [name for name, op in registry.all_ops().items()
               if op.vjp is not None and name not in covered
               and name not in ("dropout_mask", "constant")]  # random / no inputs
    assert missing == [], f"ops without a gradient test: {missing}"


def test_every_user_op_is_documented():
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "language.md").read_text()
    for name in registry.user_ops():
        assert f"`{name}`" in doc, name


def test_float32_stays_float32():
    rng = np.random.default_rng(0)
    for op, shapes, attrs in CASES:
        g, y, feeds = build(op, shapes, attrs, rng)
        g.outputs["y"] = y
        feeds = {k: (v.astype(np.float32) if v.dtype == np.float64 else v)
                 for k, v in feeds.items()}
        assert run(g, feeds)[y.id].dtype == np.float32, op


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_global_maxpool_routes_ties_to_the_first_position(backend, torch_mod):
    """A channel of equal values (a relu's zeros, a saturated sigmoid): the gradient goes
    to one position (the first), as PyTorch's, not to every tied one."""
    import netlang
    from tests.backends.test_cuda import HAVE_CXX

    if backend == "cpu" and not HAVE_CXX:
        pytest.skip("the cpu backend needs a C++ compiler")
    torch = torch_mod
    net = netlang.loads("network n {\n input x: [2, 3, 3]\n"
                        " output y = x -> global_maxpool\n}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 3, 3))
    x[1, 0] = 0.25   # every position ties
    t = rng.standard_normal((2, 2))
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.mse_loss(xt.flatten(2).max(dim=2).values,
                                 torch.tensor(t)).backward()
    _, g = net.value_and_grad({}, {"x": x.astype(np.float32), "t": t.astype(np.float32)},
                              loss="mse(y, t)", wrt_inputs=True, backend=backend)
    np.testing.assert_allclose(g["x"], xt.grad.numpy(), atol=1e-6)
    assert np.count_nonzero(g["x"][1, 0]) == 1 and g["x"][1, 0, 0, 0] != 0


@pytest.mark.parametrize("layer,message", [
    ("pad(3, mode = reflect)", "E012: pad: reflect padding of 3 along H needs at least 4 "
                               "pixels there; the input has 3"),
    ("pad([0, 0, 5, 0], mode = circular)", "circular padding of 5 along W needs at least 5 "
                                           "pixels there; the input has 4"),
    ("pad(1, mode = replicate, value = 2)", "pad: `value` is for mode `constant`, not "
                                            "`replicate`"),
    ("pad(1, mode = mirror)", "`mode` must be one of `constant`, `reflect`, `replicate`, "
                              "`circular`, got `mirror`"),
])
def test_pad_modes_refuse_what_pytorch_refuses(layer, message):
    import netlang
    from netlang.diagnostics import NetlangError

    with pytest.raises(NetlangError) as err:
        netlang.loads(f"network n {{\n input x: [2, 3, 4]\n output y = x -> {layer}\n}}")
    assert message in str(err.value)


@pytest.mark.parametrize("layer,message", [
    ("upsample(2, size = 6)", "E012: upsample takes a `scale` or an output size, not both"),
    ("upsample(align_corners = true)", "`align_corners` is for the linear and cubic modes"),
    ("flatten -> upsample(mode = bicubic)", "upsample needs"),
    ("upsample(size = [4, 4, 4])", "`size` has 3 values; the input has 2 spatial dimensions"),
])
def test_upsample_options_are_checked(layer, message):
    import netlang
    from netlang.diagnostics import NetlangError

    with pytest.raises(NetlangError) as err:
        netlang.loads(f"network n {{\n input x: [2, 3, 4]\n output y = x -> {layer}\n}}")
    assert message in str(err.value)


def test_bicubic_needs_two_spatial_dimensions():
    import netlang
    from netlang.diagnostics import NetlangError

    with pytest.raises(NetlangError) as err:
        netlang.loads("network n {\n input x: [2, 5]\n output y = x -> upsample(mode = bicubic)\n}")
    assert "mode `bicubic` needs a 2-D input (as PyTorch's)" in str(err.value)


def test_conv_transpose_output_size_is_pytorchs(torch_mod):
    """`output_size` picks the output padding as ConvTranspose2d(x, output_size=...) does;
    `pad=same` makes H * stride (TensorFlow's and ONNX SAME_UPPER's transposed conv)."""
    import netlang

    torch = torch_mod
    net = netlang.loads("network n {\n input x: [3, 4, 5]\n"
                        " output u = x -> conv_transpose(2, 3, stride=2, pad=1, "
                        "output_size=[8, 9])\n"
                        " output s = x -> conv_transpose(2, 3, stride=2, pad=same)\n"
                        " output t = x -> conv_transpose(2, 1, stride=3, pad=same)\n}")
    assert net.outputs["s"].shape == (2, 8, 10) and net.outputs["t"].shape == (2, 12, 15)
    w = net.init(0)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    m = torch.nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1).double()
    m.weight.data = torch.tensor(w["u.conv_transpose0.weight"], dtype=torch.float64)
    m.bias.data = torch.tensor(w["u.conv_transpose0.bias"], dtype=torch.float64)
    want = m(torch.tensor(x), output_size=(8, 9)).detach().numpy()
    got = net.forward({k: v.astype(np.float64) for k, v in w.items()}, {"x": x},
                      dtype=np.float64)["u"]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer,message", [
    ("conv_transpose(2, 3, stride=2, pad=1, output_size=[10, 9])",
     "E012: conv_transpose: output size 10 along H is out of reach: this layer makes 7 to 8 "
     "there"),
    ("conv_transpose(2, 3, stride=2, pad=same, output_padding=1)",
     "`pad=same` chooses the output padding itself"),
    ("conv_transpose(2, 3, output_size=[6, 7, 8])", "`output_size` has 3 values"),
])
def test_conv_transpose_sizes_are_checked(layer, message):
    import netlang
    from netlang.diagnostics import NetlangError

    with pytest.raises(NetlangError) as err:
        netlang.loads(f"network n {{\n input x: [3, 4, 5]\n output y = x -> {layer}\n}}")
    assert message in str(err.value)
