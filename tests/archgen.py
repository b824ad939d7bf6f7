"""Random architectures for differential testing against PyTorch.

The generator draws a network as a list of layer descriptions, tracking shapes with its
own rules (written from PyTorch's and ONNX's documentation, not from netlang's code), and
renders it twice: as `.net` source for netlang, and as a function over
`torch.nn.functional` for the PyTorch twin. The twin never looks at netlang's graph: the
only thing the two sides share is the description, so a disagreement is a real bug on
one side.

Each draw may be deliberately illegal (a window larger than its padded input, a pool
padding over half its window, an output size below 1, ...). The description then carries
the reason, and netlang must refuse the source with a diagnostic instead of running it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hypothesis import strategies as st

DIMS = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


@dataclass
class Layer:
    op: str
    src: str                       # the `.net` call, e.g. "conv(4, 3, stride=2)"
    attrs: dict
    params: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    inputs: tuple[int, ...] = ()   # indices of earlier values (for add / concat / mul)


@dataclass
class Arch:
    nd: int
    in_shape: tuple[int, ...]
    layers: list[Layer]
    shapes: list[tuple[int, ...]]  # value i's shape per sample (0 is the input)
    loss: str                      # "mse", "cross_entropy" or "bce"
    illegal: str | None = None     # why netlang must refuse it

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.shapes[-1]

    def source(self) -> str:
        lines = ["network rand {", f"    input x: [{', '.join(map(str, self.in_shape))}]"]
        for i, layer in enumerate(self.layers, start=1):
            if layer.inputs:
                args = ", ".join(_name(j) for j in layer.inputs)
                lines.append(f"    v{i} = {layer.op}({args})")
            else:
                lines.append(f"    v{i} = {_name(i - 1)} -> {layer.src}")
        lines.append(f"    output y = {_name(len(self.layers))}")
        lines.append("}")
        lines.append(f"train {{ loss = {self.loss}(y, t) }}")
        return "\n".join(lines) + "\n"

    def _tail(self) -> tuple[str | None, bool]:
        """The last layer that is not dropout, and whether dropout with p > 0 follows it."""
        dropped = False
        for layer in reversed(self.layers):
            if layer.op != "dropout":
                return layer.op, dropped
            dropped |= layer.attrs["p"] > 0
        return None, dropped

    @property
    def activation(self) -> str | None:
        """What the output is, seen through dropout (the op a probability loss reads)."""
        return self._tail()[0]

    @property
    def dropout_after_activation(self) -> bool:
        return self._tail()[1]

    @property
    def has_dropout(self) -> bool:
        return any(layer.op == "dropout" and layer.attrs["p"] > 0 for layer in self.layers)


def _one_per_group(channels: int, sp: tuple[int, ...]) -> str | None:
    """Why a group or instance normalisation over one value is refused, or None."""
    return "normalises one value per group" if channels * math.prod(sp) == 1 else None


def _name(i: int) -> str:
    return "x" if i == 0 else f"v{i}"


def _ints(v: tuple[int, ...]) -> str:
    return str(v[0]) if len(set(v)) == 1 else "[" + ", ".join(map(str, v)) + "]"


def sliding(h: int, k: int, s: int, d: int, lo: int, hi: int) -> int:
    """floor((H + lo + hi - d (k - 1) - 1) / s) + 1; below 1 when the window does not fit."""
    span = h + lo + hi - d * (k - 1) - 1
    return span // s + 1 if span >= 0 else 0


def pool_out(h: int, k: int, s: int, d: int, lo: int, hi: int, ceil: bool) -> int:
    """PyTorch's pooling size; in ceil mode a last window starting in the right padding
    is dropped."""
    span = h + lo + hi - d * (k - 1) - 1
    if span < 0:
        return 0
    if not ceil:
        return span // s + 1
    o = -(-span // s) + 1
    if (o - 1) * s >= h + lo:
        o -= 1
    return o


# -- the generator -----------------------------------------------------------------------

@st.composite
def archs(draw, max_layers: int = 5, illegal: bool = True) -> Arch:
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    size_hi = {1: 12, 2: 9, 3: 5}[nd]
    spatial = tuple(draw(st.integers(1, size_hi)) for _ in range(nd))
    c = draw(st.integers(1, 4))
    arch = Arch(nd, (c,) + spatial, [], [(c,) + spatial], "mse")
    n = draw(st.integers(1, max_layers))
    for _ in range(n):
        shape = arch.shapes[-1]
        layer, out, why = draw(_layer(arch, shape, illegal))
        arch.layers.append(layer)
        arch.shapes.append(out)
        if why is not None:
            arch.illegal = why
            return arch
    out = arch.out_shape
    if len(out) == 1 and out[0] >= 2 and draw(st.booleans()):
        arch.loss = "cross_entropy"
    elif arch.activation == "sigmoid" and draw(st.booleans()):
        arch.loss = "bce"
    if arch.loss == "cross_entropy" and arch.activation == "softmax" or arch.loss == "bce":
        if arch.dropout_after_activation:
            # The loss would read dropped probabilities: refused (E033), in both modes.
            arch.illegal = "probability loss through dropout"
    return arch


def _flat_choices(shape):
    return ["dense", "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "dropout", "gelu",
            "silu", "elu", "softplus", "hardtanh", "prelu",
            "batchnorm", "add", "layernorm", "log_softmax", "scale"]


def _spatial_choices(shape):
    return ["conv", "conv", "conv", "conv_transpose", "conv_transpose", "maxpool", "maxpool",
            "avgpool", "avgpool", "upsample", "batchnorm", "relu", "leaky_relu", "sigmoid",
            "gelu", "silu", "elu", "softplus", "hardtanh", "prelu",
            "tanh", "softmax", "dropout", "crop", "pad", "flatten", "global_avgpool",
            "adaptive_avgpool", "add",
            "concat", "mul", "layernorm", "groupnorm", "permute", "softmax_axis", "log_softmax",
            "mean", "reshape", "global_maxpool", "instancenorm", "matmul", "scale", "sum"]


@st.composite
def _layer(draw, arch: Arch, shape: tuple[int, ...], illegal: bool):
    """One layer: (Layer, output shape, reason it is illegal or None)."""
    flat = len(shape) == 1
    op = draw(st.sampled_from(_flat_choices(shape) if flat else _spatial_choices(shape)))
    c, sp = shape[0], shape[1:]
    nd = len(sp)
    big = illegal and draw(st.integers(0, 9)) == 0   # one draw in ten tries its luck

    if op in ("relu", "sigmoid", "tanh", "softmax"):
        return Layer(op, op, {}), shape, None
    if op == "leaky_relu":
        alpha = draw(st.sampled_from([0.01, 0.2, 1.5]))
        return Layer(op, f"leaky_relu({alpha})", {"alpha": alpha}), shape, None
    if op == "silu":
        return Layer(op, op, {}), shape, None
    if op == "gelu":
        approx = draw(st.sampled_from(["none", "tanh"]))
        return Layer(op, f"gelu(approximate = {approx})", {"approximate": approx}), shape, None
    if op == "elu":
        alpha = draw(st.sampled_from([1.0, 0.5]))
        return Layer(op, f"elu({alpha})", {"alpha": alpha}), shape, None
    if op == "softplus":
        beta = draw(st.sampled_from([1.0, 2.0]))
        return Layer(op, f"softplus(beta = {beta}, threshold = 3.0)",
                     {"beta": beta, "threshold": 3.0}), shape, None
    if op == "hardtanh":
        lo, hi = draw(st.sampled_from([(-1.0, 1.0), (0.0, 6.0), (-0.3, 0.2)]))
        return Layer(op, f"hardtanh({lo}, {hi})", {"min_val": lo, "max_val": hi}), shape, None
    if op == "prelu":
        per_channel = draw(st.booleans())
        return Layer(op, f"prelu(per_channel={str(per_channel).lower()})",
                     {"per_channel": per_channel},
                     [("weight", (c if per_channel else 1,))]), shape, None
    if op == "layernorm":
        eps = draw(st.sampled_from([1e-5, 1e-3]))
        affine = draw(st.booleans())
        d = shape[-1]
        params = [("weight", (d,)), ("bias", (d,))] if affine else []
        return Layer(op, f"layernorm(eps={eps}, affine={str(affine).lower()})",
                     {"eps": eps, "affine": affine}, params), shape, None
    if op == "groupnorm":
        groups = draw(st.sampled_from([g for g in (1, 2, 3, c) if c % g == 0]))
        affine = draw(st.booleans())
        params = [("weight", (c,)), ("bias", (c,))] if affine else []
        return Layer(op, f"groupnorm({groups}, affine={str(affine).lower()})",
                     {"groups": groups, "affine": affine}, params), shape, \
            _one_per_group(c // groups, sp)
    if op in ("softmax_axis", "log_softmax"):
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        name = "softmax" if op == "softmax_axis" else op
        if op == "softmax_axis" and axis % len(shape) == 0:
            axis = -1 if len(shape) > 1 else axis   # axis 0 is the plain softmax
        return Layer(op, f"{name}(axis={axis})", {"axis": axis}), shape, None
    if op == "permute":
        axes = tuple(draw(st.permutations(range(len(shape)))))
        return Layer(op, f"permute({list(axes)})", {"axes": axes}), \
            tuple(shape[a] for a in axes), None
    if op in ("mean", "sum"):
        axis = draw(st.integers(0, len(shape) - 1))
        return Layer(op, f"{op}({axis})", {"axis": axis}), shape[:axis] + shape[axis + 1:], None
    if op == "scale":
        factor = draw(st.sampled_from([0.5, -2.0]))
        return Layer(op, f"scale({factor})", {"factor": factor}), shape, None
    if op == "instancenorm":
        affine = draw(st.booleans())
        params = [("weight", (c,)), ("bias", (c,))] if affine else []
        return Layer(op, f"instancenorm(affine={str(affine).lower()})", {"affine": affine},
                     params), shape, _one_per_group(1, sp)
    if op == "matmul":   # the value by its own transpose: both operands' gradients
        k = len(arch.shapes) - 1
        return Layer(op, f"matmul({_name(k)}, trans_b = true)", {}), \
            shape[:-1] + (shape[-2],), None
    if op == "reshape":   # fold the last two axes into one
        out = shape[:-2] + (shape[-2] * shape[-1],)
        return Layer(op, f"reshape([{', '.join(map(str, out[:-1] + (-1,)))}])", {}), out, None
    if op == "dropout":
        p = draw(st.sampled_from([0.0, 0.25]))
        return Layer(op, f"dropout({p})", {"p": p}), shape, None
    if op == "batchnorm":
        eps = draw(st.sampled_from([1e-5, 1e-3]))
        momentum = draw(st.sampled_from([0.1, 0.5]))
        affine = draw(st.booleans())
        track = draw(st.sampled_from([True, True, False]))
        params = ([("weight", (c,)), ("bias", (c,))] if affine else []) + \
            ([("running_mean", (c,)), ("running_var", (c,))] if track else [])
        src = f"batchnorm(eps={eps}, momentum={momentum}, affine={str(affine).lower()}" + \
            ("" if track else ", track_running_stats=false") + ")"
        return Layer(op, src, {"eps": eps, "momentum": momentum, "affine": affine,
                               "track": track}, params), shape, None
    if op == "dense":
        units = draw(st.integers(1, 6))
        bias = draw(st.booleans())
        params = [("weight", (units, c))] + ([("bias", (units,))] if bias else [])
        return Layer(op, f"dense({units}, bias={str(bias).lower()})", {"bias": bias},
                     params), (units,), None
    if op == "flatten":
        return Layer(op, "flatten", {}), (math.prod(shape),), None
    if op in ("global_avgpool", "global_maxpool"):
        return Layer(op, op, {}), (c,), None
    if op == "adaptive_avgpool":   # any output size: smaller, equal or larger than the input
        size = tuple(draw(st.integers(1, h + 2)) for h in sp)
        return Layer(op, f"adaptive_avgpool({_ints(size)})", {"size": size}), (c,) + size, None
    if op in ("add", "mul", "concat"):
        same = [j for j, s in enumerate(arch.shapes) if
                (s == shape if op != "concat" else len(s) == len(shape) and s[1:] == sp)]
        j = draw(st.sampled_from(same))
        k = len(arch.shapes) - 1
        out = shape if op != "concat" else (c + arch.shapes[j][0],) + sp
        return Layer(op, op, {}, inputs=(k, j)), out, None
    if op == "crop":
        target = tuple(draw(st.integers(1, h + (1 if big else 0))) for h in sp)
        why = "crop grows" if any(t > h for t, h in zip(target, sp)) else None
        box = tuple(v for h, t in zip(sp, target) for v in ((h - t) // 2, h - t - (h - t) // 2))
        return Layer(op, f"crop(size={_ints(target)})", {"box": box}), (c,) + target, why
    if op == "pad":
        amount = tuple(draw(st.integers(0, 2)) for _ in range(2 * nd))
        box = amount
        out = (c,) + tuple(h + amount[2 * i] + amount[2 * i + 1] for i, h in enumerate(sp))
        mode = draw(st.sampled_from(["constant", "reflect", "replicate", "circular"]))
        value = draw(st.sampled_from([0.0, 0.5])) if mode == "constant" else 0.0
        src = f"pad([{', '.join(map(str, amount))}]"
        src += f", mode={mode}" if mode != "constant" else ""
        src += f", value={value}" if value else ""
        most = [max(amount[2 * i], amount[2 * i + 1]) for i in range(nd)]
        why = None
        if mode == "reflect" and any(m >= h for m, h in zip(most, sp)):
            why = "reflect padding as large as the input"
        if mode == "circular" and any(m > h for m, h in zip(most, sp)):
            why = "circular padding larger than the input"
        return Layer(op, src + ")", {"box": box, "mode": mode, "value": value}), out, why
    if op == "upsample":
        linear = {1: "linear", 2: "bilinear", 3: "trilinear"}[nd]
        mode = draw(st.sampled_from(["nearest", linear] + (["bicubic"] if nd == 2 else [])))
        align = mode != "nearest" and draw(st.booleans())
        extra = ", align_corners=true" if align else ""
        if draw(st.booleans()):   # to a size, smaller or larger
            size = tuple(draw(st.integers(1, 2 * h + 3)) for h in sp)
            return Layer(op, f"upsample(size={_ints(size)}, mode={mode}{extra})",
                         {"size": size, "mode": mode, "align": align}), (c,) + size, None
        scale = draw(st.sampled_from([2.0, 3.0, 0.5] + ([1.5] if mode != "nearest" else [])
                                     + ([0.1] if big else [])))
        out = tuple(int(math.floor(h * scale)) for h in sp)
        why = "upsample to size 0" if min(out) < 1 else None
        return Layer(op, f"upsample({scale}, mode={mode}{extra})",
                     {"scale": scale, "mode": mode, "align": align}), (c,) + out, why
    if op == "conv":
        return draw(_conv(c, sp, big))
    if op == "conv_transpose":
        return draw(_conv_transpose(c, sp, big))
    return draw(_pool(op, c, sp, big))


def _pads(draw, nd: int, hi: int, big: bool):
    """A pad attribute: its source text and (lo, hi) per dimension."""
    form = draw(st.sampled_from(["int", "per_dim", "pairs"]))
    if big and draw(st.booleans()):
        vals = [draw(st.integers(0, 2)) for _ in range(2 * nd)]
        vals[draw(st.integers(0, 2 * nd - 1))] = -1
        return f"[{', '.join(map(str, vals))}]", None, "negative padding"
    if form == "int":
        p = draw(st.integers(0, hi))
        return str(p), ((p, p),) * nd, None
    if form == "per_dim":
        ps = [draw(st.integers(0, hi)) for _ in range(nd)]
        return f"[{', '.join(map(str, ps))}]", tuple((p, p) for p in ps), None
    ps = [draw(st.integers(0, hi)) for _ in range(2 * nd)]
    return f"[{', '.join(map(str, ps))}]", tuple((ps[2 * i], ps[2 * i + 1])
                                                  for i in range(nd)), None


@st.composite
def _conv(draw, c, sp, big):
    nd = len(sp)
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
    cout = groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3 if not big else 6)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    bias = draw(st.booleans())
    same = draw(st.integers(0, 4)) == 0
    why = None
    if same:
        pad_src = "same"
        pads = []
        for h, ki, si, di in zip(sp, k, s, d):   # ONNX SAME_UPPER
            keff = di * (ki - 1) + 1
            out = -(-h // si)
            total = max((out - 1) * si + keff - h, 0)
            pads.append((total // 2, total - total // 2))
        pads = tuple(pads)
    else:
        pad_src, pads, why = _pads(draw, nd, 4, big)
    src = (f"conv({cout}, {_ints(k)}, stride={_ints(s)}, pad={pad_src}, dilation={_ints(d)}, "
           f"groups={groups}, bias={str(bias).lower()})")
    params = [("weight", (cout, c // groups) + k)] + ([("bias", (cout,))] if bias else [])
    attrs = {"stride": s, "dilation": d, "groups": groups, "pads": pads, "bias": bias}
    if why is not None:
        return Layer("conv", src, attrs, params), (cout,) + sp, why
    out = tuple(sliding(h, ki, si, di, lo, hi) for h, ki, si, di, (lo, hi)
                in zip(sp, k, s, d, pads))
    if min(out) < 1:
        why = "conv window larger than the padded input"
    return Layer("conv", src, attrs, params), (cout,) + out, why


@st.composite
def _conv_transpose(draw, c, sp, big):
    nd = len(sp)
    groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0]))
    cout = groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    s = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    op = tuple(draw(st.integers(0, max(si, di) - (0 if big else 1))) for si, di in zip(s, d))
    bias = draw(st.booleans())
    pad_src, pads, why = _pads(draw, nd, 2 if not big else 5, big)
    src = (f"conv_transpose({cout}, {_ints(k)}, stride={_ints(s)}, pad={pad_src}, "
           f"output_padding={_ints(op)}, dilation={_ints(d)}, groups={groups}, "
           f"bias={str(bias).lower()})")
    params = [("weight", (c, cout // groups) + k)] + ([("bias", (cout,))] if bias else [])
    attrs = {"stride": s, "dilation": d, "groups": groups, "pads": pads, "bias": bias,
             "output_padding": op}
    if why is not None:
        return Layer("conv_transpose", src, attrs, params), (cout,) + sp, why
    if any(o >= max(si, di) for o, si, di in zip(op, s, d)):
        # PyTorch: output padding must be smaller than either stride or dilation.
        return Layer("conv_transpose", src, attrs, params), (cout,) + sp, \
            "output_padding too large"
    out = tuple((h - 1) * si - lo - hi + di * (ki - 1) + oi + 1
                for h, ki, si, di, oi, (lo, hi) in zip(sp, k, s, d, op, pads))
    if min(out) < 1:
        why = "conv_transpose output below 1"
    return Layer("conv_transpose", src, attrs, params), (cout,) + out, why


@st.composite
def _pool(draw, op, c, sp, big):
    nd = len(sp)
    k = tuple(draw(st.integers(1, 3 if not big else 6)) for _ in range(nd))
    stride_default = draw(st.booleans())
    s = k if stride_default else tuple(draw(st.integers(1, 3)) for _ in range(nd))
    d = tuple(draw(st.integers(1, 2)) for _ in range(nd)) if op == "maxpool" else (1,) * nd
    ceil = draw(st.booleans())
    if ceil:   # symmetric padding only (PyTorch's ceil rule is defined on it)
        ps = [draw(st.integers(0, ki // 2)) for ki in k]
        if big:
            ps[0] += 1
        pads = tuple((p, p) for p in ps)
        pad_src = f"[{', '.join(map(str, ps))}]"
    else:
        vals = [draw(st.integers(0, k[i // 2] // 2)) for i in range(2 * nd)]
        if big:
            vals[-1] += 1
        pads = tuple((vals[2 * i], vals[2 * i + 1]) for i in range(nd))
        pad_src = f"[{', '.join(map(str, vals))}]"
    # PyTorch pads symmetrically; an asymmetric pad is emulated by padding first, where
    # the padded zeros count in the divisor.
    include = draw(st.booleans()) or any(lo != hi for lo, hi in pads)
    src = f"{op}({_ints(k)}" + ("" if stride_default else f", stride={_ints(s)}") + \
        f", pad={pad_src}, ceil={str(ceil).lower()}"
    if op == "maxpool":
        src += f", dilation={_ints(d)})"
    else:
        src += f", count_include_pad={str(include).lower()})"
    attrs = {"kernel": k, "stride": s, "dilation": d, "pads": pads, "ceil": ceil,
             "count_include_pad": include}
    layer = Layer(op, src, attrs)
    if any(max(lo, hi) > ki // 2 for (lo, hi), ki in zip(pads, k)):
        return layer, (c,) + sp, "pool padding over half the window"
    out = tuple(pool_out(h, ki, si, di, lo, hi, ceil) for h, ki, si, di, (lo, hi)
                in zip(sp, k, s, d, pads))
    if min(out) < 1:
        return layer, (c,) + sp, "pool window larger than the padded input"
    for h, ki, si, di, (lo, _), o in zip(sp, k, s, d, pads, out):
        for w in range(o):   # every window must see at least one input element
            if not any(0 <= w * si - lo + j * di < h for j in range(ki)):
                return layer, (c,) + out, "a pool window lies entirely in the padding"
    return layer, (c,) + out, None


# -- the PyTorch twin --------------------------------------------------------------------

def _contiguous_grad(torch):
    """Identity whose backward makes the gradient contiguous. PyTorch 2.13's CPU
    batch_norm backward returns a wrong input gradient when the gradient reaching it is
    a non-contiguous view (a `permute` after the batchnorm; checked against finite
    differences), so the twin hands it contiguous gradients."""
    class ContiguousGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, g):
            return g.contiguous()

    return ContiguousGrad


def torch_forward(arch: Arch, x, params: dict, training: bool, torch):
    """Run the description with torch.nn.functional; `params[(i, role)]` are tensors.
    Returns the output and the new batchnorm running statistics {(i, role): tensor}."""
    F = torch.nn.functional
    values = [x]
    updates = {}
    nd = arch.nd
    for i, layer in enumerate(arch.layers, start=1):
        v = values[-1]
        nd = v.ndim - 2   # reshape, mean and permute change the rank on the way
        a = layer.attrs
        op = layer.op
        p = {role: params[(i, role)] for role, _ in layer.params}
        if op == "relu":
            y = F.relu(v)
        elif op == "leaky_relu":
            y = F.leaky_relu(v, a["alpha"])
        elif op == "sigmoid":
            y = torch.sigmoid(v)
        elif op == "tanh":
            y = torch.tanh(v)
        elif op == "gelu":
            y = F.gelu(v, approximate=a["approximate"])
        elif op == "silu":
            y = F.silu(v)
        elif op == "elu":
            y = F.elu(v, a["alpha"])
        elif op == "softplus":
            y = F.softplus(v, a["beta"], a["threshold"])
        elif op == "hardtanh":
            y = F.hardtanh(v, a["min_val"], a["max_val"])
        elif op == "prelu":
            y = F.prelu(v, p["weight"])
        elif op == "softmax":
            y = torch.softmax(v, dim=1)
        elif op == "softmax_axis":
            ax = a["axis"]
            y = torch.softmax(v, dim=ax + 1 if ax >= 0 else ax)
        elif op == "log_softmax":
            ax = a["axis"]
            y = torch.log_softmax(v, dim=ax + 1 if ax >= 0 else ax)
        elif op == "layernorm":
            y = F.layer_norm(v, (v.shape[-1],), p.get("weight"), p.get("bias"), a["eps"])
        elif op == "groupnorm":
            y = F.group_norm(v, a["groups"], p.get("weight"), p.get("bias"), 1e-5)
        elif op == "permute":
            y = v.permute((0,) + tuple(q + 1 for q in a["axes"]))
        elif op == "mean":
            y = v.mean(dim=a["axis"] + 1)
        elif op == "sum":
            y = v.sum(dim=a["axis"] + 1)
        elif op == "scale":
            y = v * a["factor"]
        elif op == "instancenorm":
            y = F.instance_norm(v, weight=p.get("weight"), bias=p.get("bias"), eps=1e-5)
        elif op == "matmul":
            y = v @ v.transpose(-1, -2)
        elif op == "global_maxpool":
            y = v.flatten(2).max(dim=2).values
        elif op == "reshape":
            y = v.reshape(v.shape[:-2] + (-1,))
        elif op == "dropout":
            y = v   # compared only with p = 0 in training mode
        elif op == "batchnorm" and not a["track"]:   # batch statistics in both modes
            y = F.batch_norm(v, None, None, p.get("weight"), p.get("bias"), True,
                             a["momentum"], a["eps"])
            y = _contiguous_grad(torch).apply(y)
        elif op == "batchnorm":
            rm = p["running_mean"].clone()
            rv = p["running_var"].clone()
            y = F.batch_norm(v, rm, rv, p.get("weight"), p.get("bias"), training,
                             a["momentum"], a["eps"])
            y = _contiguous_grad(torch).apply(y)
            updates[(i, "running_mean")] = rm
            updates[(i, "running_var")] = rv
        elif op == "dense":
            y = F.linear(v, p["weight"], p.get("bias"))
        elif op == "flatten":
            y = v.reshape(v.shape[0], -1)
        elif op == "adaptive_avgpool":
            y = getattr(F, f"adaptive_avg_pool{nd}d")(v, a["size"])
        elif op == "global_avgpool":
            y = v.mean(dim=tuple(range(2, v.ndim)))
        elif op in ("add", "mul", "concat"):
            u, w = (values[j] for j in layer.inputs)
            y = u + w if op == "add" else u * w if op == "mul" else torch.cat([u, w], 1)
        elif op == "crop":
            box = a["box"]
            idx = (slice(None), slice(None)) + tuple(
                slice(box[2 * d], v.shape[2 + d] - box[2 * d + 1]) for d in range(nd))
            y = v[idx]
        elif op == "pad":
            if a["mode"] == "constant":
                y = F.pad(v, _torch_pad(a["box"]), value=a["value"])
            else:
                y = F.pad(v, _torch_pad(a["box"]), mode=a["mode"])
        elif op == "upsample":
            kw = {} if a["mode"] == "nearest" else {"align_corners": a["align"]}
            if "size" in a:
                kw["size"] = a["size"]
            else:
                kw["scale_factor"] = a["scale"]
            y = F.interpolate(v, mode=a["mode"], **kw)
        elif op == "conv":
            conv = getattr(F, f"conv{nd}d")
            box = tuple(q for pair in a["pads"] for q in pair)
            y = conv(F.pad(v, _torch_pad(box)), p["weight"], p.get("bias"), a["stride"], 0,
                     a["dilation"], a["groups"])
        elif op == "conv_transpose":
            convt = getattr(F, f"conv_transpose{nd}d")
            # Padding crops the full output (after output padding) at both ends.
            full = convt(v, p["weight"], p.get("bias"), a["stride"], 0, a["output_padding"],
                         a["groups"], a["dilation"])
            idx = (slice(None), slice(None)) + tuple(
                slice(lo, full.shape[2 + d] - hi) for d, (lo, hi) in enumerate(a["pads"]))
            y = full[idx]
        elif op in ("maxpool", "avgpool"):
            y = _torch_pool(F, op, v, a, nd)
        else:
            raise AssertionError(op)
        values.append(y)
    return values[-1], updates


def _torch_pad(box) -> list[int]:
    """(before, after) per dimension, first dimension first -> F.pad's order."""
    out: list[int] = []
    for d in reversed(range(len(box) // 2)):
        out += [box[2 * d], box[2 * d + 1]]
    return out


def _torch_pool(F, op, v, a, nd):
    pads = a["pads"]
    k = a["kernel"]
    if all(lo == hi for lo, hi in pads) and all(h >= ki for h, ki in zip(v.shape[2:], k)):
        padding = tuple(lo for lo, _ in pads)
        if op == "maxpool":
            fn = getattr(F, f"max_pool{nd}d")
            return fn(v, k, a["stride"], padding, a["dilation"], ceil_mode=a["ceil"])
        fn = getattr(F, f"avg_pool{nd}d")
        return fn(v, k, a["stride"], padding, ceil_mode=a["ceil"],
                  count_include_pad=a["count_include_pad"])
    # Asymmetric padding, or an input smaller than the window (which PyTorch's pools
    # refuse even when the padding makes up for it): pad first, pool unpadded, and keep
    # the windows PyTorch's rule keeps (the padding is now part of the input, so in ceil
    # mode a last window starting in it would otherwise survive).
    out = tuple(pool_out(h, ki, si, di, lo, hi, a["ceil"]) for h, ki, si, di, (lo, hi)
                in zip(v.shape[2:], k, a["stride"], a["dilation"], pads))
    box = _torch_pad(tuple(q for pair in pads for q in pair))
    keep = (slice(None), slice(None)) + tuple(slice(0, o) for o in out)
    if op == "maxpool":
        fn = getattr(F, f"max_pool{nd}d")
        y = fn(F.pad(v, box, value=float("-inf")), k, a["stride"], 0, a["dilation"],
               ceil_mode=a["ceil"])
        return y[keep]
    fn = getattr(F, f"avg_pool{nd}d")
    total = fn(F.pad(v, box), k, a["stride"], 0, ceil_mode=a["ceil"], count_include_pad=True)
    if a["count_include_pad"]:
        return total[keep]
    # Excluding the padding: (sum of real elements) / (their count), as a ratio of two
    # averages over the same windows.
    count = fn(F.pad(v.new_ones(v.shape), box), k, a["stride"], 0, ceil_mode=a["ceil"],
               count_include_pad=True)
    return (total / count)[keep]
