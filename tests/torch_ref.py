"""A PyTorch twin of a netlang graph, built from torch.nn layers (Lazy* modules infer
their input channels, as netlang does), used as an independent oracle for shapes,
parameter counts, forward values and gradients. Only imported where torch is installed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netlang.ir.graph import Graph
from netlang.passes.shape_infer import data_inputs

_CONV = {1: nn.LazyConv1d, 2: nn.LazyConv2d, 3: nn.LazyConv3d}
_CONVT = {1: nn.LazyConvTranspose1d, 2: nn.LazyConvTranspose2d, 3: nn.LazyConvTranspose3d}
_BN = {0: nn.LazyBatchNorm1d, 1: nn.LazyBatchNorm1d, 2: nn.LazyBatchNorm2d,
       3: nn.LazyBatchNorm3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def key(name: str) -> str:
    return name.replace(".", "__")


def _torch_pad(box) -> list[int]:
    """netlang (before, after) per dim, first dim first -> F.pad order (last dim first)."""
    pairs = [(box[2 * i], box[2 * i + 1]) for i in range(len(box) // 2)]
    out: list[int] = []
    for lo, hi in reversed(pairs):
        out += [lo, hi]
    return out


class TorchTwin(nn.Module):
    def __init__(self, graph: Graph, device=None):
        super().__init__()
        dev = {"device": device} if device is not None else {}
        self.graph = graph
        self.layers = nn.ModuleDict()
        self.free = nn.ParameterDict()   # `param` declarations
        for n in graph.nodes:
            a = n.attrs
            nd = len(n.type.shape) - 1 if n.type is not None else 0
            if n.op == "conv":
                self.layers[key(n.name)] = _CONV[nd](
                    a["channels"], a["kernel"], stride=a["stride"], padding=0,
                    dilation=a["dilation"], groups=a["groups"], bias=a["bias"], **dev)
            elif n.op == "conv_transpose":
                pads = a["pad"]
                self.layers[key(n.name)] = _CONVT[nd](
                    a["channels"], a["kernel"], stride=a["stride"], padding=pads[0::2],
                    output_padding=a["output_padding"], dilation=a["dilation"],
                    groups=a["groups"], bias=a["bias"], **dev)
            elif n.op == "dense":
                self.layers[key(n.name)] = nn.LazyLinear(a["units"], bias=a["bias"], **dev)
            elif n.op == "layernorm":
                self.layers[key(n.name)] = nn.LayerNorm(n.type.shape[-1], eps=a["eps"],
                                                        elementwise_affine=a["affine"], **dev)
            elif n.op in ("groupnorm", "instancenorm"):
                c = n.type.shape[0]
                self.layers[key(n.name)] = nn.GroupNorm(a["groups"], c, eps=a["eps"],
                                                        affine=a["affine"], **dev)
            elif n.op == "prelu":
                w = [i for i in n.inputs if i.op == "param"][0]
                self.layers[key(n.name)] = nn.PReLU(w.type.shape[0], init=a["init"], **dev)
            elif n.op == "param" and a.get("role") == "value":
                # a `param` declaration: a bare tensor
                self.free[key(n.name)] = nn.Parameter(torch.zeros(n.type.shape, **dev))
            elif n.op == "batchnorm":
                self.layers[key(n.name)] = _BN[nd](
                    eps=a["eps"], momentum=a["momentum"], affine=a["affine"],
                    track_running_stats=a.get("track_running_stats", True), **dev)
        self.shapes: dict[str, tuple[int, ...]] = {}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env: dict[int, torch.Tensor] = {}
        for n in self.graph.nodes:
            if n.op == "param":
                if key(n.name) in self.free:
                    env[n.id] = self.free[key(n.name)]
                continue
            if n.op == "input":
                env[n.id] = inputs[n.name]
                continue
            xs = [env[i.id] for i in data_inputs(n)]
            y = self._run_node(n, xs)
            env[n.id] = y
            self.shapes[n.name] = tuple(y.shape[1:])
        return {k: env[v.id] for k, v in self.graph.outputs.items()}

    def _run_node(self, n, xs):
        a = n.attrs
        x = xs[0]
        nd = x.dim() - 2
        op = n.op
        if op == "conv":
            return self.layers[key(n.name)](F.pad(x, _torch_pad(a["pad"])))
        if op in ("conv_transpose", "dense", "batchnorm"):
            return self.layers[key(n.name)](x)
        if op == "maxpool":
            return _MAXPOOL[nd](x, a["kernel"], a["stride"], padding=a["pad"][0::2],
                                dilation=a["dilation"], ceil_mode=a["ceil"])
        if op == "avgpool":
            return _AVGPOOL[nd](x, a["kernel"], a["stride"], padding=a["pad"][0::2],
                                ceil_mode=a["ceil"], count_include_pad=a["count_include_pad"])
        if op == "global_maxpool":
            return x.flatten(2).max(dim=2).values
        if op == "global_avgpool":
            return x.mean(dim=tuple(range(2, x.dim())))
        if op == "upsample":
            mode = a["mode"]
            kw = {} if mode == "nearest" else {"align_corners": bool(a.get("align_corners"))}
            if a.get("size") is not None:
                kw["size"] = a["size"]
            else:
                kw["scale_factor"] = a["scale"]
            return F.interpolate(x, mode=mode, **kw)
        if op == "concat":
            rank = max(v.dim() for v in xs)
            b = next(v.shape[0] for v in xs if v.dim() == rank)
            xs = [v if v.dim() == rank else v.expand((b,) + tuple(v.shape)) for v in xs]
            return torch.cat(xs, dim=a.get("axis", 0) + 1)
        if op == "crop":
            b = a["box"]
            idx = (slice(None), slice(None)) + tuple(
                slice(b[2 * i], x.shape[2 + i] - b[2 * i + 1]) for i in range(nd))
            return x[idx]
        if op == "pad":
            return F.pad(x, _torch_pad(a["box"]))
        if op == "add":
            return xs[0] + xs[1]
        if op == "mul":
            return xs[0] * xs[1]
        if op == "flatten":
            return x.flatten(1)
        if op == "dropout":
            return F.dropout(x, a["p"], self.training)
        if op == "relu":
            return F.relu(x)
        if op == "leaky_relu":
            return F.leaky_relu(x, a["alpha"])
        if op == "sigmoid":
            return torch.sigmoid(x)
        if op == "tanh":
            return torch.tanh(x)
        if op == "gelu":
            return F.gelu(x, approximate=a["approximate"])
        if op == "silu":
            return F.silu(x)
        if op == "elu":
            return F.elu(x, a["alpha"])
        if op == "softplus":
            return F.softplus(x, a["beta"], a["threshold"])
        if op == "hardtanh":
            return F.hardtanh(x, a["min_val"], a["max_val"])
        if op == "prelu":
            return self.layers[key(n.name)](x)
        if op == "softmax":
            return torch.softmax(x, dim=a["axis"] + 1)
        if op == "log_softmax":
            return torch.log_softmax(x, dim=a["axis"] + 1)
        if op == "reshape":
            return x.reshape((x.shape[0],) + tuple(a["shape"]))
        if op == "permute":
            return x.permute((0,) + tuple(i + 1 for i in a["axes"]))
        if op == "mean":
            return x.mean(dim=a["axis"] + 1)
        if op == "sum":
            return x.sum(dim=a["axis"] + 1)
        if op in ("layernorm", "groupnorm", "instancenorm"):
            return self.layers[key(n.name)](x)
        if op == "scale":
            return x * a["factor"]
        if op == "matmul":
            p, q = xs
            p = p.transpose(-1, -2) if a["trans_a"] else p
            q = q.transpose(-1, -2) if a["trans_b"] else q
            return p @ q
        raise NotImplementedError(op)

    # -- weights ---------------------------------------------------------------------------
    def materialize(self, inputs: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.eval()
            self.forward(inputs)

    def load_netlang(self, weights: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, arr in weights.items():
                if key(name) in self.free:
                    self.free[key(name)].copy_(torch.from_numpy(np.asarray(arr)))
                    continue
                layer, role = name.rsplit(".", 1)
                t = getattr(self.layers[key(layer)], role)
                t.copy_(torch.from_numpy(np.asarray(arr)))

    def netlang_grads(self) -> dict[str, np.ndarray]:
        out = {}
        for lname, layer in self.layers.items():
            for role, p in layer.named_parameters(recurse=False):
                if p.grad is not None:
                    out[f"{lname.replace('__', '.')}.{role}"] = p.grad.detach().numpy()
        return out

    def buffers_netlang(self) -> dict[str, np.ndarray]:
        out = {}
        for lname, layer in self.layers.items():
            for role, b in layer.named_buffers(recurse=False):
                if role.startswith("running"):
                    out[f"{lname.replace('__', '.')}.{role}"] = b.detach().numpy()
        return out
