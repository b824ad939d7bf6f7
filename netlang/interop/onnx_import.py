"""Import an ONNX model as readable `.net` source and its weights.

Three steps:

1. **Translate.** Every ONNX node becomes a netlang layer call with its weights
   (`Conv` -> `conv(64, 3, pad=1, bias=false)` and its weight and bias), or disappears
   (`Identity`, `Dropout`, a 1x1 average pool of stride 1), or joins its neighbour
   (`GlobalAveragePool` + `Flatten` -> `global_avgpool`; `MatMul` + `Add` -> `dense`;
   `Sigmoid` + `Mul` -> `silu`). Any node that cannot be imported is collected, and the
   whole list is refused at once (E074): an import is never partial.
2. **Find the structure.** Exporters name nodes after the modules they come from
   (PyTorch: `/layer1/layer1.0/conv1/Conv`; netlang: `l2.basic_down.y.conv0`). Each
   scope of those names that holds two or more layers, has one result and is repeated
   with the same structure (channel counts may differ; they become the block's
   parameters) becomes a `block`. A block appears only where it is called from two or
   more places in the written source; other scopes are written inline. Consecutive equal
   calls become `repeat n { ... }`.
3. **Write.** Values used twice (skips), network outputs and long branches get names;
   everything else is a chain. The source is then compiled by netlang itself, and the
   weights are paired with its parameters by walking both graphs from the outputs (the
   same ops in the same input order), so names and shapes come from netlang's own rules.

The `onnx` package reads the model and runs its shape inference; it is imported only here.
"""

from __future__ import annotations

import keyword
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from netlang.diagnostics import error

# netlang's reserved words and the layer names that a value name must not shadow
RESERVED = {"import", "block", "network", "train", "input", "output", "return", "repeat",
            "as", "true", "false", "same", "valid"}
CHANNEL_OPS = ("conv", "conv_transpose", "dense")
# ONNX ops that compute a shape from Shape nodes and constants (a batch size to expand to)
SHAPE_ARITHMETIC = ("Shape", "Slice", "Gather", "Concat", "Unsqueeze", "Squeeze", "Cast",
                    "Reshape", "ConstantOfShape", "Mul", "Equal", "Where", "Constant")


@dataclass
class Layer:
    """One netlang layer call made from one or more ONNX nodes."""
    op: str                                   # the netlang op (graph node op)
    args: list                                # positional arguments; channels first
    kw: dict                                  # keyword arguments, only non-defaults
    inputs: list[str]                         # data values, in netlang's input order
    out: str
    params: dict[str, np.ndarray] = field(default_factory=dict)   # role -> array
    path: tuple[str, ...] = ()                # the module scope it comes from
    where: str = ""                           # the ONNX node name, for messages
    pending: bool = False                     # a global pool waiting for its Flatten
    declares: str | None = None               # a `param` it reads (params["value"])

    def render(self, channel=None) -> str:
        args = list(self.args)
        if self.op in CHANNEL_OPS and channel is not None:
            args[0] = channel
        parts = [_value(a) for a in args] + [f"{k}={_value(v)}" for k, v in self.kw.items()]
        return f"{self.op}({', '.join(parts)})" if parts else self.op


@dataclass
class Imported:
    source: str                               # the .net text
    weights: dict[str, np.ndarray]            # netlang parameter name -> array
    network: str
    blocks: list[str]                         # the blocks written, in source order
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        text = str(np.float32(v)) if np.float32(v) == v else repr(float(v))
        return text[:-2] if text.endswith(".0") and "e" not in text else text
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return str(v)   # an identifier: nearest, bilinear, tanh


def _one(values: list | tuple):
    """A per-dimension list written once when all its entries agree."""
    values = [int(v) for v in values]
    return values[0] if len(set(values)) == 1 else values


def _identifier(text: str, fallback: str = "x") -> str:
    name = re.sub(r"\W+", "_", text).strip("_")
    if not name:
        name = fallback
    if name[0].isdigit():
        name = f"{fallback}{name}"
    if name in RESERVED or keyword.iskeyword(name):
        name = f"{name}_"
    return name


def _is_causal_mask(c: np.ndarray) -> bool:
    """0 where key j <= query i and -inf after, over the last two axes (what netlang's
    exporter writes for `softmax(causal=true)`)."""
    if c.ndim < 2 or any(d != 1 for d in c.shape[:-2]):
        return False
    from netlang.ops.elementwise import causal_mask
    keep = causal_mask(c.shape)
    m = c.reshape(c.shape[-2:])
    return bool(np.all(m[keep] == 0) and np.all(np.isneginf(m[~keep])) and (~keep).any())


class _Refusals:
    def __init__(self):
        self.items: dict[str, list[str]] = {}

    def add(self, what: str, where: str) -> None:
        self.items.setdefault(what, []).append(where or "(unnamed node)")

    def raise_if_any(self, path: str) -> None:
        if not self.items:
            return
        lines = [f"{what}: {len(at)} node(s), e.g. {', '.join(at[:3])}"
                 for what, at in self.items.items()]
        raise error("E074", f"{path} uses {len(self.items)} thing(s) netlang cannot import; "
                    "nothing was written", None, notes=lines,
                    help="the ops netlang imports are listed in docs/interop.md; re-export "
                         "the model without them, or write that part in .net by hand")


# ----------------------------------------------------------------------------- translate

def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _spatial_pads(a: dict, nd: int, kernel, stride, dilation, in_shape, where, refuse):
    """ONNX pads / auto_pad -> netlang's flat (lo, hi) per dimension."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        pads = list(a.get("pads", [0] * (2 * nd)))
        return [v for i in range(nd) for v in (pads[i], pads[i + nd])]
    if auto == "VALID":
        return [0] * (2 * nd)
    if in_shape is None or any(not isinstance(s, int) for s in in_shape[-nd:]):
        refuse(f"auto_pad={auto} on an input of unknown size", where)
        return [0] * (2 * nd)
    out = []
    for i in range(nd):
        size = in_shape[-nd + i]
        keff = dilation[i] * (kernel[i] - 1) + 1
        o = -(-size // stride[i])
        total = max((o - 1) * stride[i] + keff - size, 0)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        out += [lo, total - lo]
    return out


def _pad_kw(flat: list[int]):
    if not any(flat):
        return None
    nd = len(flat) // 2
    if all(flat[2 * i] == flat[2 * i + 1] for i in range(nd)):
        return _one([flat[2 * i] for i in range(nd)])
    return list(flat)


def _path(name: str, netlang: bool) -> tuple[str, ...]:
    """The module scope of a node name (without the op itself)."""
    if netlang:   # `l2.basic_down.y.conv0/Conv`: statement, blocks..., layer
        parts = name.rsplit("/", 1)[0].split(".")
        return tuple(parts[:-1])
    comps = [c for c in name.split("/") if c][:-1]   # PyTorch: `/layer1/layer1.0/conv1/Conv`
    out: list[str] = []
    for c in comps:
        pieces = c.split(".")
        if pieces[:len(out)] == out and len(pieces) > len(out):
            pieces = pieces[len(out):]
        out += pieces
    return tuple(out)


def _constant(a: dict):
    """The value of a Constant node (its attributes), or None for a kind netlang skips."""
    from onnx import numpy_helper

    if "value" in a:
        return numpy_helper.to_array(a["value"])
    for key in ("value_float", "value_int", "value_floats", "value_ints"):
        if key in a:
            return np.array(a[key])
    return None


# -- activations that exporters write as a formula ----------------------------------------
# PyTorch (and netlang, before opset 20) export GELU as x * 0.5 * (1 + erf(x / sqrt 2)),
# softplus(beta) as softplus(beta x) / beta, and so on. Rather than matching each formula's
# node pattern (exporters reorder them), a connected group of elementwise nodes computing a
# function of one value is evaluated on sample points and compared with netlang's
# activations.

_POINTWISE = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
    "Pow": np.power, "Tanh": np.tanh, "Exp": np.exp, "Neg": np.negative,
    "Sqrt": np.sqrt, "Sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "Softplus": lambda x: np.logaddexp(0, x),
    "Erf": lambda x: __import__("scipy.special", fromlist=["erf"]).erf(x),
}


def _candidates(consts) -> list[tuple[str, dict, object]]:
    from scipy.special import erf

    c = 0.7978845608028654
    out = [("gelu", {}, lambda x: 0.5 * x * (1 + erf(x * 0.7071067811865476))),
           ("gelu", {"approximate": "tanh"},
            lambda x: 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x ** 3)))),
           ("silu", {}, lambda x: x / (1 + np.exp(-x)))]
    for beta in sorted({float(v) for v in consts if v > 0 and v != 1}):
        out.append(("softplus", {"beta": beta},
                    lambda x, b=beta: np.logaddexp(0, b * x) / b))
    return out


def _formula(graph, end: int, owner: dict, consts: dict, uses: Counter, taken: set,
             sample: np.ndarray):
    """(its nodes, (op, kw, input)) of the shortest formula of one value that ends at node
    `end` and is one of netlang's activations; None when there is none."""
    anc, todo = set(), [end]
    while todo:   # the pointwise nodes `end` depends on
        m = todo.pop()
        if m in anc or m in taken:
            continue
        anc.add(m)
        todo += [owner[i] for i in graph.node[m].input if i in owner]
    sources = sorted({i for m in anc for i in graph.node[m].input if i not in consts},
                     key=lambda v: -owner.get(v, -1))   # nearest first
    out = graph.node[end].output[0]
    for x in sources:
        region = {m for m in anc if _depends(graph, m, x, owner, anc)}   # x to end
        members = sorted(region)
        if len(members) < 2 or end not in region:
            continue
        if any(i not in consts and i != x and (i not in owner or owner[i] not in region)
               for m in members for i in graph.node[m].input):
            continue   # a function of more than x
        if any(uses[graph.node[m].output[0]] != sum(i == graph.node[m].output[0]
                                                    for r in members
                                                    for i in graph.node[r].input)
               for m in members if m != end):
            continue   # an inner value used outside the formula
        env = {x: sample}
        for m in members:
            node = graph.node[m]
            args = [env[i] if i in env else consts[i].astype(np.float64).reshape(())
                    for i in node.input]
            with np.errstate(all="ignore"):
                env[node.output[0]] = _POINTWISE[node.op_type](*args)
        scalars = [float(consts[i].reshape(())) for m in members
                   for i in graph.node[m].input if i in consts]
        for op, kw, f in _candidates(scalars):
            if np.allclose(env[out], f(sample), rtol=1e-5, atol=1e-6):
                return members, (op, kw, x)
    return None


def _depends(graph, m: int, x: str, owner: dict, within: set) -> bool:
    """Whether node m reads x, directly or through nodes of `within`."""
    todo, seen = [m], set()
    while todo:
        k = todo.pop()
        if k in seen:
            continue
        seen.add(k)
        for i in graph.node[k].input:
            if i == x:
                return True
            if i in owner and owner[i] in within:
                todo.append(owner[i])
    return False


def _activation_regions(graph, consts: dict, uses: Counter) -> dict:
    """node index -> (op, kw, input) for the last node of an activation written as a
    formula, None for its other nodes; nodes of no such formula are not in it."""
    consts = dict(consts)
    for node in graph.node:
        if node.op_type == "Constant":
            value = _constant(_attrs(node))
            if value is not None:
                consts[node.output[0]] = value
    root: dict[str, str] = {}      # value -> the one data value it is a function of
    owner: dict[str, int] = {}     # value -> the pointwise node making it
    parent: dict[int, int] = {}    # union-find over pointwise nodes joined by a value

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k, node in enumerate(graph.node):
        if node.op_type not in _POINTWISE or node.domain not in ("", "ai.onnx") or \
                len(node.output) != 1:
            continue
        data = [i for i in node.input if i not in consts]
        if not data or any(consts[i].size != 1 for i in node.input if i in consts):
            continue
        roots = {root.get(i, i) for i in data}
        if len(roots) != 1:
            continue
        root[node.output[0]] = roots.pop()
        owner[node.output[0]] = k
        parent[k] = k
        for i in data:
            if i in owner:
                parent[find(owner[i])] = find(k)
    groups: dict[int, list[int]] = {}
    for k in parent:
        groups.setdefault(find(k), []).append(k)
    regions: dict = {}
    sample = np.linspace(-6, 6, 241)
    for group in groups.values():
        taken: set[int] = set()
        for end in sorted(group):   # the shortest formula ending at each node, in order
            if end in taken:
                continue
            found = _formula(graph, end, owner, consts, uses, taken, sample)
            if found is not None:
                members, act = found
                taken |= set(members)
                for m in members:
                    regions[m] = None
                regions[end] = act
    return regions


class _Translator:
    def __init__(self, model, path: str):
        from onnx import numpy_helper, shape_inference

        self.path = path
        g = model.graph
        self.netlang = model.producer_name == "netlang"
        try:
            inferred = shape_inference.infer_shapes(model)
        except Exception:   # shapes then come only from the graph's declarations
            inferred = model
        self.shapes: dict[str, list] = {}
        for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                    for d in dims]
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.alias: dict[str, str] = {}
        self.layers: list[Layer] = []
        self.producer: dict[str, Layer] = {}
        self.refusals = _Refusals()
        # groupnorm outputs (still [N, G, -1] in the ONNX graph) -> the input's shape
        self.group_shapes: dict[str, list] = {}
        # scores + a causal mask constant (0 / -inf) -> the scores, for the Softmax after it
        self.causal: dict[str, tuple[str, str]] = {}
        self.uses = Counter(i for n in g.node for i in n.input if i)
        from netlang.ops import registry

        self.param_names: set[str] = set()   # `param` declarations made so far
        self.op_names_taken = set(registry.all_ops()) | RESERVED
        for o in g.output:
            self.uses[o.name] += 1
        self.graph = g
        # Resize sizes computed as Concat(Slice(Shape(x), 0, 2), spatial constant), as
        # netlang exports `upsample(x, size=...)` with a dynamic batch: sizes -> spatial
        self.concat_sizes: dict[str, list[int]] = {}
        self.skipped: set[int] = set()
        self._find_shape_sizes()
        # a constant [1, ...] expanded over the batch (ViT's class token): value -> (the
        # initializer's name, one sample's tensor), a `param` for the Concat that reads it
        self.expanded: dict[str, tuple[str, np.ndarray]] = {}
        self._find_batch_expands()

    def _find_shape_sizes(self) -> None:
        nodes = list(self.graph.node)
        made = {o: k for k, n in enumerate(nodes) for o in n.output}
        for k, n in enumerate(nodes):
            if n.op_type != "Concat" or len(n.input) != 2 or n.input[1] not in self.consts:
                continue
            sl = made.get(n.input[0])
            if sl is None or nodes[sl].op_type != "Slice" or len(nodes[sl].input) < 3:
                continue
            sh = made.get(nodes[sl].input[0])
            starts, ends = (self.consts.get(v) for v in nodes[sl].input[1:3])
            if sh is None or nodes[sh].op_type != "Shape" or starts is None or ends is None \
                    or list(starts) != [0] or list(ends) != [2]:
                continue
            self.concat_sizes[n.output[0]] = [int(v) for v in self.consts[n.input[1]]]
            self.skipped |= {k, sl, sh}

    def _find_batch_expands(self) -> None:
        """Expand(c, shape) where c is a constant (or Unsqueeze(c, [0])) with a batch axis
        of 1 and `shape` is computed from Shape nodes and constants alone (the batch size
        of a value: netlang's and PyTorch's exports of a class token). The shape
        arithmetic is skipped; the Concat that reads the result declares a `param`."""
        nodes = list(self.graph.node)
        made = {o: k for k, n in enumerate(nodes) for o in n.output}
        readers: dict[str, list[int]] = {}
        for k, n in enumerate(nodes):
            for i in n.input:
                readers.setdefault(i, []).append(k)
        for k, n in enumerate(nodes):
            if n.op_type != "Expand" or len(n.input) != 2:
                continue
            src, skip = n.input[0], set()
            c = self.consts.get(src)
            u = made.get(src)
            if c is None and u is not None and nodes[u].op_type == "Unsqueeze":
                base = self.consts.get(nodes[u].input[0])
                axes = _attrs(nodes[u]).get("axes")
                if axes is None and len(nodes[u].input) > 1:
                    axes = self.consts.get(nodes[u].input[1])
                if base is not None and axes is not None and [int(v) for v in
                                                              np.ravel(axes)] == [0]:
                    c, src, skip = base[None], nodes[u].input[0], {u}
            if c is None or c.ndim < 2 or c.shape[0] != 1:
                continue
            shape_nodes, stack, ok = set(), [n.input[1]], True
            while stack and ok:
                v = stack.pop()
                if v in self.consts or not v:
                    continue
                p = made.get(v)
                if p is None or nodes[p].op_type not in SHAPE_ARITHMETIC:
                    ok = False
                elif p not in shape_nodes:
                    shape_nodes.add(p)
                    if nodes[p].op_type != "Shape":
                        stack.extend(nodes[p].input)
            inside = shape_nodes | skip | {k}
            if not ok or any(r not in inside for q in shape_nodes | skip
                             for o in nodes[q].output for r in readers.get(o, [])):
                continue
            have = self.shapes.get(n.output[0])
            if have and any(d is not None and d != e for d, e in zip(have[1:], c.shape[1:])):
                continue
            self.expanded[n.output[0]] = (src, np.asarray(c[0], np.float32))
            self.skipped |= inside

    def src(self, v: str) -> str:
        while v in self.alias:
            v = self.alias[v]
        return v

    def const(self, v: str):
        return self.consts.get(v)

    def add(self, layer: Layer) -> None:
        self.layers.append(layer)
        self.producer[layer.out] = layer

    def refuse(self, what: str, where: str) -> None:
        self.refusals.add(what, where)

    def run(self):
        regions = _activation_regions(self.graph, self.consts, self.uses)
        for k, node in enumerate(self.graph.node):
            if k in self.skipped:   # a Resize's sizes (_Resize), a class token's Expand
                continue
            op, where = node.op_type, node.name or f"{node.op_type} -> {node.output[0]}"
            if node.domain not in ("", "ai.onnx"):
                self.refuse(f"{node.domain}.{op} (a custom domain)", where)
                continue
            a = _attrs(node)
            ins = [self.src(i) if i else "" for i in node.input]
            out = node.output[0] if node.output else ""
            path = _path(node.name, self.netlang) if node.name else ()
            if op == "Constant":
                value = _constant(a)
                if value is None:
                    self.refuse("Constant of a kind other than a tensor or number", where)
                else:
                    self.consts[out] = value
                continue
            if k in regions:   # an activation written out in elementwise ops
                if regions[k] is not None:
                    act, kw, x = regions[k]
                    self.add(Layer(act, [], kw, [self.src(x)], out, {}, path, where))
                continue
            if op in ("Identity", "Dropout"):
                if op == "Dropout" and len(node.output) > 1 and self.uses[node.output[1]]:
                    self.refuse("Dropout whose mask is used", where)
                if ins[0] in self.consts:
                    self.consts[out] = self.consts[ins[0]]
                else:
                    self.alias[out] = ins[0]
                continue
            if any(i and i not in self.consts and i not in self.producer
                   and i not in self.inputs and i not in self.causal
                   and i not in self.expanded for i in ins[:1]):
                continue   # fed by a node already refused
            handler = getattr(self, f"_{op}", None)
            if handler is None:
                self.refuse(op, where)
                continue
            handler(node, a, ins, out, path, where)
        for layer in self.layers:
            if layer.pending:
                onnx_op = "GlobalAveragePool" if layer.op == "global_avgpool" else \
                    "GlobalMaxPool"
                self.refuse(f"{onnx_op} not followed by Flatten (netlang's global pools are "
                            "flat)", layer.where)
        self._crops_to_references()
        return self.layers

    def _crops_to_references(self) -> None:
        """`crop(size=...)` feeding a concat becomes `crop(skip, x)` with the concat's other
        input as the reference (as U-Net is written): instances then share one structure."""
        for layer in list(self.layers):
            if layer.op != "crop":
                continue
            size = self.shapes.get(layer.out) or []
            users = [L for L in self.layers if layer.out in L.inputs]
            if len(users) != 1 or users[0].op != "concat" or not size:
                continue
            cat = users[0]
            refs = [v for v in cat.inputs if v != layer.out and
                    (self.shapes.get(v) or [])[2:] == size[2:]]
            if not refs:
                continue
            self.layers.remove(layer)   # after its reference: just before the concat
            self.layers.insert(self.layers.index(cat), layer)
            layer.inputs, layer.kw = [layer.inputs[0], refs[0]], {}

    # -- layers with weights --------------------------------------------------
    def _weights(self, ins, idx, where, what):
        w = self.const(ins[idx]) if idx < len(ins) and ins[idx] else None
        if w is None and idx < len(ins) and ins[idx]:
            self.refuse(f"{what} computed at run time (not an initializer)", where)
        return w

    def _Conv(self, node, a, ins, out, path, where):
        w = self._weights(ins, 1, where, "Conv weights")
        if w is None:
            return
        b = self._weights(ins, 2, where, "Conv bias")
        nd = w.ndim - 2
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        stride = list(a.get("strides", [1] * nd))
        dilation = list(a.get("dilations", [1] * nd))
        groups = int(a.get("group", 1))
        pads = _spatial_pads(a, nd, kernel, stride, dilation, self.shapes.get(ins[0]),
                             where, self.refuse)
        kw = {}
        if any(s != 1 for s in stride):
            kw["stride"] = _one(stride)
        if (p := _pad_kw(pads)) is not None:
            kw["pad"] = p
        if any(d != 1 for d in dilation):
            kw["dilation"] = _one(dilation)
        if groups != 1:
            kw["groups"] = groups
        params = {"weight": w}
        if b is None:
            kw["bias"] = False
        else:
            params["bias"] = b
        self.add(Layer("conv", [int(w.shape[0]), _one(kernel)], kw, [ins[0]], out, params,
                       path, where))

    def _ConvTranspose(self, node, a, ins, out, path, where):
        w = self._weights(ins, 1, where, "ConvTranspose weights")
        if w is None:
            return
        if "output_shape" in a:
            self.refuse("ConvTranspose with output_shape (give pads and output_padding)",
                        where)
            return
        auto = a.get("auto_pad", b"NOTSET")
        if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", ""):
            self.refuse("ConvTranspose with auto_pad", where)
            return
        b = self._weights(ins, 2, where, "ConvTranspose bias")
        nd = w.ndim - 2
        groups = int(a.get("group", 1))
        kernel = list(a.get("kernel_shape", w.shape[2:]))
        stride = list(a.get("strides", [1] * nd))
        dilation = list(a.get("dilations", [1] * nd))
        opad = list(a.get("output_padding", [0] * nd))
        pads = list(a.get("pads", [0] * (2 * nd)))
        flat = [v for i in range(nd) for v in (pads[i], pads[i + nd])]
        kw = {}
        if any(s != 1 for s in stride):
            kw["stride"] = _one(stride)
        if (p := _pad_kw(flat)) is not None:
            kw["pad"] = p
        if any(opad):
            kw["output_padding"] = _one(opad)
        if any(d != 1 for d in dilation):
            kw["dilation"] = _one(dilation)
        if groups != 1:
            kw["groups"] = groups
        params = {"weight": w}
        if b is None:
            kw["bias"] = False
        else:
            params["bias"] = b
        self.add(Layer("conv_transpose", [int(w.shape[1]) * groups, _one(kernel)], kw,
                       [ins[0]], out, params, path, where))

    def _dense(self, x, w_out_in, bias, out, path, where):
        kw = {} if bias is not None else {"bias": False}
        params = {"weight": np.ascontiguousarray(w_out_in)}
        if bias is not None:
            params["bias"] = bias
        self.add(Layer("dense", [int(w_out_in.shape[0])], kw, [x], out, params, path, where))

    def _Gemm(self, node, a, ins, out, path, where):
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            self.refuse("Gemm with transA, alpha or beta", where)
            return
        w = self._weights(ins, 1, where, "Gemm weights")
        if w is None:
            return
        w = w if a.get("transB", 0) else w.T
        c = self._weights(ins, 2, where, "Gemm bias")
        if c is not None:
            c = np.broadcast_to(np.asarray(c, np.float32).reshape(-1)
                                if c.size != 1 else c.reshape(()), (w.shape[0],)).copy()
        self._dense(ins[0], w, c, out, path, where)

    def _InstanceNormalization(self, node, a, ins, out, path, where):
        w = self._weights(ins, 1, where, "InstanceNormalization scale")
        b = self._weights(ins, 2, where, "InstanceNormalization bias")
        if w is None or b is None:
            return
        eps = float(a.get("epsilon", 1e-5))
        kw = {} if np.float32(eps) == np.float32(1e-5) else {"eps": eps}
        plain = np.all(w == 1) and np.all(b == 0)
        prev = self.producer.get(ins[0])
        if plain and prev is not None and prev.op == "reshape" and \
                prev.kw.get("shape", [None])[-1] == -1 and len(prev.kw["shape"]) == 2 and \
                self.uses[ins[0]] == 1:
            # Reshape [N, G, -1] -> InstanceNormalization: a groupnorm of G groups (its
            # Reshape back, and a per-channel Mul and Add, are folded as they come)
            self.layers.remove(prev)
            del self.producer[prev.out]
            self.add(Layer("groupnorm", [int(prev.kw["shape"][0])], dict(kw, affine=False),
                           list(prev.inputs), out, {}, path, where))
            self.group_shapes[out] = self.shapes.get(prev.inputs[0])
            return
        # netlang names its affine-free constants; from elsewhere, ones and zeros
        if ins[1].endswith(".unit_scale") if self.netlang else plain:
            kw_ = kw
            params = {}
        else:
            kw_ = dict(kw, affine=True)
            params = {"weight": w, "bias": b}
        self.add(Layer("instancenorm", [], kw_, [ins[0]], out, params, path, where))

    def _MatMul(self, node, a, ins, out, path, where):
        w = self.const(ins[1])
        rank = len(self.shapes.get(ins[0]) or [0, 0])
        if w is not None and w.ndim == 2 and rank in (2, 3):   # x W: dense, on [F] or [T, F]
            self._dense(ins[0], w.T, None, out, path, where)
            return
        if w is None and self.const(ins[0]) is None:   # two values: attention's products
            self.add(Layer("matmul", [], {}, [ins[0], ins[1]], out, {}, path, where))
            return
        self.refuse("MatMul of a constant other than a weight matrix on the right", where)

    def _BatchNormalization(self, node, a, ins, out, path, where):
        if a.get("training_mode", 0) or (len(node.output) > 1 and any(
                self.uses[o] for o in node.output[1:])):
            self.refuse("BatchNormalization in training mode", where)
            return
        arrs = [self._weights(ins, i, where, "BatchNormalization statistics")
                for i in range(1, 5)]
        if any(x is None for x in arrs):
            return
        eps = float(a.get("epsilon", 1e-5))
        kw = {} if np.float32(eps) == np.float32(1e-5) else {"eps": eps}
        roles = ("weight", "bias", "running_mean", "running_var")
        if self.netlang and ins[1].endswith(".unit_scale"):   # netlang's affine=false
            kw["affine"] = False
            arrs, roles = arrs[2:], roles[2:]
        self.add(Layer("batchnorm", [], kw, [ins[0]], out, dict(zip(roles, arrs)), path,
                       where))

    # -- elementwise ----------------------------------------------------------
    def _simple(self, op, ins, out, path, where, **kw):
        self.add(Layer(op, [], kw, [ins[0]], out, {}, path, where))

    def _Relu(self, node, a, ins, out, path, where):
        self._simple("relu", ins, out, path, where)

    def _Sigmoid(self, node, a, ins, out, path, where):
        self._simple("sigmoid", ins, out, path, where)

    def _Tanh(self, node, a, ins, out, path, where):
        self._simple("tanh", ins, out, path, where)

    def _Softplus(self, node, a, ins, out, path, where):
        self._simple("softplus", ins, out, path, where)

    def _Gelu(self, node, a, ins, out, path, where):   # opset 20
        approx = a.get("approximate", b"none")
        approx = approx.decode() if isinstance(approx, bytes) else approx
        self._simple("gelu", ins, out, path, where,
                     **({} if approx == "none" else {"approximate": approx}))

    def _LeakyRelu(self, node, a, ins, out, path, where):
        alpha = float(a.get("alpha", 0.01))
        self._simple("leaky_relu", ins, out, path, where,
                     **({} if np.float32(alpha) == np.float32(0.01) else {"alpha": alpha}))

    def _Clip(self, node, a, ins, out, path, where):
        if self.opset < 11:
            lo, hi = a.get("min"), a.get("max")
        else:
            if any(len(ins) > i and ins[i] and self.const(ins[i]) is None for i in (1, 2)):
                self.refuse("Clip with bounds computed at run time", where)
                return
            lo, hi = (self.const(ins[i]) if len(ins) > i and ins[i] else None for i in (1, 2))
        lo = None if lo is None else float(np.asarray(lo))
        hi = None if hi is None else float(np.asarray(hi))
        if lo == 0.0 and hi is None:   # Clip(x, 0) is relu
            self._simple("relu", ins, out, path, where)
        elif lo is None or hi is None:
            self.refuse("Clip without both bounds", where)
        else:
            kw = {} if (lo, hi) == (-1.0, 1.0) else {"min_val": lo, "max_val": hi}
            self._simple("hardtanh", ins, out, path, where, **kw)

    def _PRelu(self, node, a, ins, out, path, where):
        slope = self._weights(ins, 1, where, "PRelu slope")
        if slope is None:
            return
        x_shape = self.shapes.get(ins[0]) or []
        w = np.asarray(slope, np.float32)
        # ONNX broadcasts the slope from the right: one per channel is [C, 1, ..] (or [C]
        # on [N, C])
        full = (1,) * (len(x_shape) - w.ndim) + w.shape
        if w.size == 1:
            kw = {}
        elif len(full) == len(x_shape) > 1 and full[1] == x_shape[1] and \
                all(d == 1 for k, d in enumerate(full) if k != 1):
            kw = {"per_channel": True}
        else:
            self.refuse("PRelu with a slope other than one value or one per channel", where)
            return
        self.add(Layer("prelu", [], kw, [ins[0]], out, {"weight": w.reshape(-1)}, path,
                       where))

    def _Elu(self, node, a, ins, out, path, where):
        alpha = float(a.get("alpha", 1.0))
        self._simple("elu", ins, out, path, where, **({} if alpha == 1.0 else {"alpha": alpha}))

    def _axis(self, a, ins, default: int) -> tuple[int, int]:
        """(ONNX axis made non-negative, input rank)."""
        rank = len(self.shapes.get(ins[0]) or [])
        axis = a.get("axis", default)
        return (axis + rank if axis < 0 and rank else axis), rank

    def _softmax_like(self, op, node, a, ins, out, path, where):
        opset = self.opset
        axis, rank = self._axis(a, ins, -1 if opset >= 13 else 1)
        # before opset 13 Softmax flattens at `axis`: the same as ours only over the last
        # axis, or over the channels of [N, C]
        if axis < 1 or not rank or (opset < 13 and axis != rank - 1):
            self.refuse(f"{node.op_type} over the batch axis or a flattened tail", where)
            return
        kw = {} if axis == 1 else {"axis": axis - 1}
        if ins[0] in self.causal:
            if op != "softmax" or axis != rank - 1:
                self.refuse(f"{node.op_type} of causally masked scores other than a Softmax "
                            "over the last axis", where)
                return
            ins = [self.causal.pop(ins[0])[0]]
            kw["causal"] = True
        self._simple(op, ins, out, path, where, **kw)

    def _Softmax(self, node, a, ins, out, path, where):
        self._softmax_like("softmax", node, a, ins, out, path, where)

    def _LogSoftmax(self, node, a, ins, out, path, where):
        self._softmax_like("log_softmax", node, a, ins, out, path, where)

    def _Transpose(self, node, a, ins, out, path, where):
        perm = list(a.get("perm", []))
        c = self.const(ins[0])
        if c is not None:   # a transposed weight (the exporter writes W^T this way)
            self.consts[out] = np.transpose(c, perm or None)
            return
        if not perm or perm[0] != 0:
            self.refuse("Transpose that moves the batch axis", where)
            return
        self._simple("permute", ins, out, path, where, axes=[p - 1 for p in perm[1:]])

    def _ReduceSum(self, node, a, ins, out, path, where):
        self._ReduceMean(node, a, ins, out, path, where, op="sum")

    def _ReduceMean(self, node, a, ins, out, path, where, op="mean"):
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1]:
            axes = self.const(ins[1])
            axes = None if axes is None else [int(v) for v in np.ravel(axes)]
        rank = len(self.shapes.get(ins[0]) or [])
        axes = [v + rank if v < 0 else v for v in (axes or [])]
        if len(axes) != 1 or axes[0] < 1 or a.get("keepdims", 1):
            self.refuse(f"{node.op_type} other than over one non-batch axis with keepdims=0",
                        where)
            return
        self._simple(op, ins, out, path, where, axis=axes[0] - 1)

    def _LayerNormalization(self, node, a, ins, out, path, where):
        axis, rank = self._axis(a, ins, -1)
        if axis != rank - 1 or len(node.output) > 1 and any(self.uses[o]
                                                            for o in node.output[1:]):
            self.refuse("LayerNormalization over other than the last axis", where)
            return
        w = self._weights(ins, 1, where, "LayerNormalization scale")
        b = self._weights(ins, 2, where, "LayerNormalization bias") if len(ins) > 2 and \
            ins[2] else None
        if w is None:
            return
        eps = float(a.get("epsilon", 1e-5))
        kw = {} if np.float32(eps) == np.float32(1e-5) else {"eps": eps}
        if self.netlang and ins[1].endswith(".unit_scale"):   # netlang's affine=false
            kw["affine"] = False
            params = {}
        else:
            params = {"weight": w, "bias": b if b is not None else np.zeros_like(w)}
        self.add(Layer("layernorm", [], kw, [ins[0]], out, params, path, where))

    def _binary(self, op, node, ins, out, path, where):
        x, y = ins[0], ins[1]
        cx, cy = self.const(x), self.const(y)
        if cx is None and cy is None:
            if op == "mul":   # x * sigmoid(x) is silu
                for a_, b_ in ((x, y), (y, x)):
                    s = self.producer.get(b_)
                    if s is not None and s.op == "sigmoid" and s.inputs[0] == a_ \
                            and self.uses[b_] == 1:
                        self.layers.remove(s)
                        del self.producer[b_]
                        self.add(Layer("silu", [], {}, [a_], out, {}, s.path, s.where))
                        return
            self.add(Layer(op, [], {}, [x, y], out, {}, path, where))
            return
        data, c = (x, cy) if cx is None else (y, cx)
        if cx is not None and cy is not None:
            self.consts[out] = (cx + cy) if op == "add" else (cx * cy)
            return
        if op == "add" and _is_causal_mask(c) and self.uses[out] == 1:
            self.causal[out] = (data, where)   # the Softmax that reads it takes causal=true
            return
        prev = self.producer.get(data)
        if prev is not None and prev.op == "groupnorm" and self.uses[data] == 1 and \
                c.size == (self.group_shapes.get(data) or [0, 0])[1]:
            c_flat = np.asarray(c, np.float32).reshape(-1)
            if op == "mul" and "weight" not in prev.params:
                prev.params["weight"] = c_flat
                prev.kw.pop("affine", None)
                self.alias[out] = data
                self.group_shapes[out] = self.group_shapes[data]
                return
            if op == "add" and "weight" in prev.params and "bias" not in prev.params:
                prev.params["bias"] = c_flat
                self.alias[out] = data
                return
        if op == "add" and prev is not None and prev.op == "dense" and "bias" not in \
                prev.params and self.uses[data] == 1 and c.size in (1, prev.args[0]):
            prev.params["bias"] = np.broadcast_to(c.reshape(-1) if c.size > 1 else c.reshape(
                ()), (prev.args[0],)).astype(np.float32)
            prev.kw.pop("bias", None)
            self.alias[out] = data
            return
        if op == "mul" and c.size == 1:
            self.add(Layer("scale", [float(c.reshape(()))], {}, [data], out, {}, path, where))
            return
        per = self._per_sample(data, c)
        if op == "add" and per is not None:   # a learned tensor: a position embedding
            const = y if cx is None else x
            name = self._param_name(const)
            self.add(Layer("add", [name], {}, [data], out,
                           {"value": np.ascontiguousarray(per, dtype=np.float32)}, path,
                           where, declares=name))
            return
        self.refuse(f"{node.op_type} of a constant tensor" + (
            " (a learned tensor is imported as a `param` declaration when it has the shape "
            "of one sample of the value it is added to)" if op == "add" else ""), where)

    def _per_sample(self, data: str, c: np.ndarray) -> np.ndarray | None:
        """`c` as one sample's tensor where it is one (the shape of a sample of `data`,
        with or without a leading batch axis of 1), else None."""
        shape = self.shapes.get(data) or self.group_shapes.get(data)
        if not shape or any(d is None for d in shape[1:]) or c.ndim == 0:
            return None
        sample = tuple(shape[1:])
        if tuple(c.shape) == sample:
            return c
        if c.ndim == len(sample) + 1 and c.shape[0] == 1 and tuple(c.shape[1:]) == sample:
            return c[0]
        return None

    def _param_name(self, const: str) -> str:
        """A `param` name from the initializer's (netlang's own keep their names)."""
        base = _identifier(const.rsplit(".", 1)[-1] if self.netlang else const, "param")
        if base in self.op_names_taken or not base.isidentifier():
            base = f"{base}_param"
        name, k = base, 1
        while name in self.param_names:
            k += 1
            name = f"{base}_{k}"
        self.param_names.add(name)
        return name

    def _Add(self, node, a, ins, out, path, where):
        self._binary("add", node, ins, out, path, where)

    def _Sum(self, node, a, ins, out, path, where):
        if len(ins) != 2:
            self.refuse("Sum of other than two inputs", where)
            return
        self._binary("add", node, ins, out, path, where)

    def _Mul(self, node, a, ins, out, path, where):
        self._binary("mul", node, ins, out, path, where)

    def _Div(self, node, a, ins, out, path, where):
        c = self.const(ins[1])
        if c is None or c.size != 1 or ins[0] in self.consts:
            self.refuse("Div other than by a number", where)
            return
        self.add(Layer("scale", [float(1.0 / float(c.reshape(())))], {}, [ins[0]], out, {},
                       path, where))

    # -- pooling and shape ----------------------------------------------------
    def _pool_common(self, a, ins, where):
        kernel = list(a["kernel_shape"])
        nd = len(kernel)
        stride = list(a.get("strides", [1] * nd))
        dilation = list(a.get("dilations", [1] * nd))
        pads = _spatial_pads(a, nd, kernel, stride, dilation, self.shapes.get(ins[0]),
                             where, self.refuse)
        kw = {}
        if stride != kernel:
            kw["stride"] = _one(stride)
        if (p := _pad_kw(pads)) is not None:
            kw["pad"] = p
        if a.get("ceil_mode", 0):
            kw["ceil"] = True
        return kernel, stride, dilation, pads, kw

    def _MaxPool(self, node, a, ins, out, path, where):
        if len(node.output) > 1 and self.uses[node.output[1]]:
            self.refuse("MaxPool whose indices are used", where)
            return
        kernel, _, dilation, _, kw = self._pool_common(a, ins, where)
        if any(d != 1 for d in dilation):
            kw["dilation"] = _one(dilation)
        self.add(Layer("maxpool", [_one(kernel)], kw, [ins[0]], out, {}, path, where))

    def _AveragePool(self, node, a, ins, out, path, where):
        kernel, stride, dilation, pads, kw = self._pool_common(a, ins, where)
        if all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not any(pads):
            self.alias[out] = ins[0]   # the identity (an adaptive pool at its own size)
            return
        if any(d != 1 for d in dilation):
            kw["dilation"] = _one(dilation)
        if not a.get("count_include_pad", 0) and any(pads):
            kw["count_include_pad"] = False
        self.add(Layer("avgpool", [_one(kernel)], kw, [ins[0]], out, {}, path, where))

    def _GlobalAveragePool(self, node, a, ins, out, path, where):
        self.add(Layer("global_avgpool", [], {}, [ins[0]], out, {}, path, where, pending=True))

    def _GlobalMaxPool(self, node, a, ins, out, path, where):
        self.add(Layer("global_maxpool", [], {}, [ins[0]], out, {}, path, where, pending=True))

    def _flat(self, ins, out, path, where):
        prev = self.producer.get(ins[0])
        if prev is not None and prev.pending and self.uses[ins[0]] == 1:
            prev.pending = False
            self.alias[out] = ins[0]
            return
        if len(self.shapes.get(ins[0]) or [0, 0, 0]) == 2:
            self.alias[out] = ins[0]
            return
        self._simple("flatten", ins, out, path, where)

    def _Flatten(self, node, a, ins, out, path, where):
        rank = len(self.shapes.get(ins[0]) or [])
        axis = a.get("axis", 1)
        axis = axis + rank if axis < 0 else axis
        if axis == 1:
            self._flat(ins, out, path, where)
        elif axis > 1:   # ONNX Flatten is 2-D: [N * C.., rest] unless axis 1; ours keeps N
            self.refuse("Flatten at an axis other than 1 (it would merge the batch)", where)
        else:
            self.refuse("Flatten at axis 0", where)

    def _Reshape(self, node, a, ins, out, path, where):
        shape = self.const(ins[1])
        c = self.const(ins[0])
        if c is not None and shape is not None and 0 not in shape:   # folded
            self.consts[out] = c.reshape([int(v) for v in shape])
            return
        if ins[0] in self.group_shapes and self.shapes.get(out) == \
                self.group_shapes[ins[0]]:   # a groupnorm's reshape back to [N, C, ...]
            self.alias[out] = ins[0]
            self.group_shapes[out] = self.group_shapes[ins[0]]
            return
        src = self.shapes.get(ins[0]) or []
        rank_in = len(src)
        want = self.shapes.get(out)
        if shape is not None and shape.size == 2 and (shape[0] in (0, -1) or want and
                                                      want[0] is None) and \
                (shape[1] == -1 or (want and want[1] is not None)) and rank_in >= 2:
            self._flat(ins, out, path, where)
            return
        if shape is not None and shape.size > 2 and (shape[0] == 0 or want and want[0] is None
                                                     or shape[0] == -1):
            dims = [int(v) for v in shape[1:]]
            if a.get("allowzero", 0) == 0:   # 0 copies the input's size at that axis
                for i, d in enumerate(dims):
                    if d == 0:
                        if i + 1 >= rank_in or src[i + 1] is None:
                            break
                        dims[i] = int(src[i + 1])
            if 0 not in dims and dims.count(-1) <= (0 if shape[0] == -1 else 1):
                self._simple("reshape", ins, out, path, where, shape=dims)
                return
        self.refuse("Reshape other than of the per-sample axes (the batch kept first)", where)

    def _Concat(self, node, a, ins, out, path, where):
        rank = len(self.shapes.get(ins[0]) or [])
        axis = a.get("axis", 1)
        axis = axis + rank if axis < 0 else axis
        if axis < 1:
            self.refuse("Concat over the batch axis", where)
            return
        if any(i in self.consts for i in ins):
            self.refuse("Concat of a constant tensor", where)
            return
        repeated = [i for i in ins if i in self.expanded]
        if len(repeated) > 1:
            self.refuse("Concat of two constants repeated over the batch", where)
            return
        kw = {} if axis == 1 else {"axis": axis - 1}
        if not repeated:
            self.add(Layer("concat", [], kw, list(ins), out, {}, path, where))
            return
        const, value = self.expanded[repeated[0]]   # a class token: a `param`, in place
        name = self._param_name(const)
        shapes = [[None, *value.shape] if i == repeated[0] else self.shapes.get(i)
                  for i in ins]
        if all(sh and len(sh) == len(shapes[0]) for sh in shapes) and all(
                d is not None for sh in shapes for d in sh[1:]):
            # ONNX's inference does not follow the Expand's computed shape: the joined
            # shape is known here, for the layers after it
            joined = list(shapes[0])
            joined[axis] = sum(sh[axis] for sh in shapes)
            self.shapes[out] = joined
        self.add(Layer("concat", [], kw, [name if i == repeated[0] else i for i in ins], out,
                       {"value": value}, path, where, declares=name))

    def _Resize(self, node, a, ins, out, path, where):
        mode = a.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        ctm = a.get("coordinate_transformation_mode", b"half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
        near = a.get("nearest_mode", b"round_prefer_floor")
        near = near.decode() if isinstance(near, bytes) else near
        size = None
        if node.op_type == "Upsample":
            scales = self.const(ins[1]) if len(ins) > 1 else np.array(a.get("scales", []))
            ctm, near = "asymmetric", "floor"
        else:
            scales = self.const(ins[2]) if len(ins) > 2 and ins[2] else None
            sizes = self.const(ins[3]) if len(ins) > 3 and ins[3] else None
            if (scales is None or scales.size == 0) and sizes is not None and sizes.size > 2:
                size = [int(v) for v in sizes[2:]]
                scales = None
            elif (scales is None or scales.size == 0) and len(ins) > 3 and ins[3]:
                size = self._sizes_of(ins[3])
                scales = None
        if size is None and (scales is None or scales.size < 3 or
                             any(float(s) != 1 for s in scales[:2])):
            self.refuse("Resize without constant spatial scales or sizes", where)
            return
        nd = len(size) if size is not None else len(scales) - 2
        linear = {1: "linear", 2: "bilinear", 3: "trilinear"}.get(nd)
        kw = {}
        if mode == "nearest" and ctm == "asymmetric" and near == "floor":
            pass
        elif mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            kw["mode"] = linear
        elif mode == "cubic" and nd == 2 and float(a.get("cubic_coeff_a", -0.75)) == -0.75 \
                and not a.get("exclude_outside", 0) and ctm in ("half_pixel",
                                                                "pytorch_half_pixel",
                                                                "align_corners"):
            kw["mode"] = "bicubic"
        else:
            self.refuse(f"Resize mode {mode} with {ctm}"
                        + (f" and {near}" if mode == "nearest" else ""), where)
            return
        if ctm == "align_corners":
            kw["align_corners"] = True
        if size is not None:
            self.add(Layer("upsample", [], {"size": _one(size), **kw}, [ins[0]], out, {}, path,
                           where))
            return
        sc = [float(s) for s in scales[2:]]
        scale = sc[0] if len(set(sc)) == 1 else sc
        scale = int(scale) if isinstance(scale, float) and scale.is_integer() else scale
        self.add(Layer("upsample", [scale], kw, [ins[0]], out, {}, path, where))

    def _sizes_of(self, name: str) -> list[int] | None:
        """The spatial sizes of a Resize whose `sizes` input is computed from the input's
        shape (Shape -> Slice -> Concat with constant spatial sizes, as exported)."""
        return self.concat_sizes.get(name)

    _Upsample = _Resize

    def _Slice(self, node, a, ins, out, path, where):
        """A centred spatial crop (the original U-Net's skip crop) -> `crop(size=[...])`."""
        if len(ins) >= 3:   # opset 10+: starts, ends, axes, steps as inputs
            parts = [self.const(i) if i else None for i in (ins + ["", ""])[1:5]]
            if parts[0] is None or parts[1] is None or (ins[3:4] and ins[3] and
                                                        parts[2] is None):
                self.refuse("Slice with bounds computed at run time", where)
                return
            starts, ends, axes, steps = parts
        else:
            starts, ends = np.array(a.get("starts", [])), np.array(a.get("ends", []))
            axes, steps = (np.array(a["axes"]) if "axes" in a else None), None
        src = self.shapes.get(ins[0])
        if not src or any(not isinstance(s, int) for s in src[2:]):
            self.refuse("Slice of a value of unknown size", where)
            return
        rank = len(src)
        axes = [int(x) % rank for x in (axes if axes is not None else range(len(starts)))]
        if steps is not None and any(int(s) != 1 for s in steps):
            self.refuse("Slice with a step other than 1", where)
            return
        if any(ax < 2 for ax in axes):
            self.refuse("Slice over the batch or channel axis", where)
            return
        box = [0] * (2 * (rank - 2))
        for ax, s, e in zip(axes, starts, ends):
            size = src[ax]
            s, e = int(s), int(e)
            s = max(0, s + size if s < 0 else min(s, size))
            e = max(0, e + size if e < 0 else min(e, size))
            box[2 * (ax - 2)], box[2 * (ax - 2) + 1] = s, size - e
        target = [src[2 + i] - box[2 * i] - box[2 * i + 1] for i in range(rank - 2)]
        if any(t < 1 for t in target) or any(
                box[2 * i] != (src[2 + i] - target[i]) // 2 for i in range(rank - 2)):
            self.refuse("Slice that is not a centred crop (netlang's `crop` centres, the odd "
                        "pixel going at the end)", where)
            return
        if not any(box):
            self.alias[out] = ins[0]
            return
        self.add(Layer("crop", [], {"size": _one(target)}, [ins[0]], out, {}, path, where))

    def _Pad(self, node, a, ins, out, path, where):
        """Padding of the spatial axes -> `pad(amount)`, with its mode (reflect, edge as
        replicate, wrap as circular) or constant value."""
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = self.const(ins[1]) if len(ins) > 1 and ins[1] else (
            np.array(a["pads"]) if "pads" in a else None)
        value = self.const(ins[2]) if len(ins) > 2 and ins[2] else np.array(a.get("value", 0.0))
        if len(ins) > 3 and ins[3]:
            self.refuse("Pad with an axes input", where)
            return
        modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate",
                 "wrap": "circular"}
        if mode not in modes or value is None or value.size != 1:
            self.refuse(f"Pad of mode {mode}" if mode not in modes else
                        "Pad with a value computed at run time", where)
            return
        kw = {}
        if modes[mode] != "constant":
            kw["mode"] = modes[mode]
        elif float(value) != 0:
            kw["value"] = float(value)
        if pads is None:
            self.refuse("Pad with amounts computed at run time", where)
            return
        pads = [int(p) for p in pads]
        rank = len(pads) // 2
        if any(pads[i] or pads[i + rank] for i in (0, 1)) or rank < 3:
            self.refuse("Pad of the batch or channel axis", where)
            return
        if any(p < 0 for p in pads):
            self.refuse("Pad with a negative amount (a crop)", where)
            return
        flat = [v for i in range(2, rank) for v in (pads[i], pads[i + rank])]
        amount = _pad_kw(flat)
        if amount is None:
            self.alias[out] = ins[0]
            return
        self.add(Layer("pad", [amount], kw, [ins[0]], out, {}, path, where))


# ----------------------------------------------------------------------------- structure

@dataclass
class _Block:
    name: str
    instances: list[frozenset]          # sets of layer indices, in graph order
    slots: list[list[int]]              # per instance: its channel-taking layers, in order
    params: list[int]                   # per block parameter: the first slot it sets
    slot_param: list[int | None]        # per slot: its parameter, or None (a literal)
    # A block whose instances differ in how often a run repeats (`repeat n { ... }`): its
    # runs as (the layers of one repetition, its count parameter or None, its count when
    # fixed) and, per instance, the counts of its count parameters. None: every instance
    # has one structure.
    runs: list[tuple[tuple[int, ...], int | None, int]] | None = None
    counts: list[list[int]] = field(default_factory=list)

    def pnames(self) -> list[str]:
        chans = ["c"] if len(self.params) == 1 else [f"c{k + 1}" for k in
                                                     range(len(self.params))]
        n = len(self.counts[0]) if self.counts else 0
        return chans + (["n"] if n == 1 else [f"n{k + 1}" for k in range(n)])


@dataclass
class _Call:
    block: _Block
    instance: int
    members: frozenset
    inputs: list[str] = field(default_factory=list)
    out: str = ""


def _consumers(layers) -> dict[str, list[int]]:
    consumers: dict[str, list[int]] = {}
    for i, L in enumerate(layers):
        for v in L.inputs:
            consumers.setdefault(v, []).append(i)
    return consumers


def _region(layers: list[Layer], members: frozenset, producer_index: dict, consumers: dict,
            graph_outputs: set):
    """(external inputs in order of first use, results) of a set of layer indices."""
    ext, results = [], []
    for i in sorted(members):
        for v in layers[i].inputs:
            p = producer_index.get(v)
            if (p is None or p not in members) and v not in ext:
                ext.append(v)
        v = layers[i].out
        if v in graph_outputs or any(c not in members for c in consumers.get(v, [])):
            results.append(v)
    return ext, results


def _structure(layers: list[Layer], members: frozenset, ext: list[str]):
    """(the region's structure with channel counts left out, its channel-taking layers)."""
    order = sorted(members)
    local = {layers[i].out: k for k, i in enumerate(order)}
    sig, slots = [], []
    for i in order:
        L = layers[i]
        refs = tuple(("in", ext.index(v)) if v not in local else ("l", local[v])
                     for v in L.inputs)
        if L.op in CHANNEL_OPS:
            slots.append(i)
        rest = tuple(L.args[1:]) if L.op in CHANNEL_OPS else tuple(L.args)
        sig.append((L.op, _freeze(rest), _freeze(sorted(L.kw.items())), refs,
                    tuple(sorted(L.params))))
    return tuple(sig), slots


def _freeze(v):
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def _block_name(path: tuple[str, ...]) -> str:
    last = path[-1]
    if last.isdigit():
        parent = re.sub(r"\d+$", "", path[-2]) if len(path) > 1 else "unit"
        return _identifier(f"{parent}_block")
    return _identifier(re.sub(r"_\d+$", "", last) if re.search(r"_\d+$", last)
                       else re.sub(r"\d+$", "", last) or last)


def _make_block(name: str, layers, inst: list[tuple]) -> _Block:
    """A block of instances [(members, slots)]: channel counts that vary together are one
    parameter; counts equal in every instance are written as numbers."""
    inst.sort(key=lambda t: min(t[0]))
    slots = [t[1] for t in inst]
    values = [tuple(layers[s[k]].args[0] for s in slots) for k in range(len(slots[0]))]
    params: list[int] = []
    slot_param: list[int | None] = []
    for k, vals in enumerate(values):
        if len(inst) > 1 and len(set(vals)) == 1:
            slot_param.append(None)
            continue
        same = next((j for j, first in enumerate(params) if values[first] == vals), None)
        if same is None:
            params.append(k)
            same = len(params) - 1
        slot_param.append(same)
    return _Block(name, [t[0] for t in inst], slots, params, slot_param)


def find_blocks(layers: list[Layer], graph_outputs: set, netlang: bool,
                block_names: set[str] | None = None) -> list[_Block]:
    """The blocks to write (see the module docstring). `block_names`: the blocks a netlang
    export names in its metadata; their scopes are exactly the source's blocks."""
    producer_index = {L.out: i for i, L in enumerate(layers)}
    consumers = _consumers(layers)
    scopes: dict[tuple, set] = {}
    for i, L in enumerate(layers):
        first = 1 if netlang else 0   # netlang's first component is the statement
        for d in range(first + 1, len(L.path) + 1):
            scopes.setdefault(L.path[:d], set()).add(i)
    known = block_names is not None
    by_members: dict[frozenset, tuple] = {}
    for path, members in scopes.items():
        last = path[-1]
        if known:
            if re.sub(r"_\d+$", "", last) not in block_names:
                continue
        elif netlang and (re.fullmatch(r"repeat\d+", last) or (
                last.isdigit() and len(path) > 1 and re.fullmatch(r"repeat\d+", path[-2]))):
            continue
        fm = frozenset(members)
        if len(fm) < (1 if known else 2):
            continue
        if fm not in by_members or len(path) > len(by_members[fm]):   # the deepest names it
            by_members[fm] = path
    groups: dict[tuple, list] = {}
    for fm, path in by_members.items():
        ext, results = _region(layers, fm, producer_index, consumers, graph_outputs)
        if len(results) != 1 or not ext or (len(ext) > 4 and not known):
            continue
        if not _convex(layers, fm, ext, producer_index, consumers):
            continue
        sig, slots = _structure(layers, fm, ext)
        name = _block_name(path)
        groups.setdefault((name, sig) if known else sig, []).append((fm, slots, name))
    blocks = [_make_block(inst[0][2], layers, [(m, s) for m, s, _ in inst])
              for inst in groups.values() if known or len(inst) >= 2]
    if known:   # a netlang block called with different repeat counts is still one block
        by_name: dict[str, list[_Block]] = {}
        for b in blocks:
            by_name.setdefault(b.name, []).append(b)
        for same in by_name.values():
            if len(same) > 1:
                merged = _repeat_block(same, blocks, layers, producer_index)
                if merged is not None:
                    blocks = [b for b in blocks if b not in same] + [merged]
    if not known:   # keep a block only where the source calls it from two or more places
        changed = True
        while changed:
            changed = False
            for b in list(blocks):
                sites = 0
                for fm in b.instances:
                    outer = _enclosing(fm, blocks)
                    sites += outer is None or outer[1] is outer[0].instances[0]
                if sites < 2:
                    blocks.remove(b)
                    changed = True
    seen: Counter = Counter()
    for b in sorted(blocks, key=lambda b: min(b.instances[0])):
        seen[b.name] += 1
        if seen[b.name] > 1:
            b.name = f"{b.name}{seen[b.name]}"
    return blocks


def _runs(sig: list) -> list[tuple[int, int, int]]:
    """A chain's structure as runs (start, unit length, count), longest runs first from
    the left, as `_compress` writes them."""
    out, i = [], 0
    while i < len(sig):
        best = (1, 1)
        for p in range(1, 5):
            unit = sig[i:i + p]
            if len(unit) < p:
                break
            n = 1
            while sig[i + n * p:i + (n + 1) * p] == unit:
                n += 1
            if n >= 2 and n * p > best[0] * best[1]:
                best = (n, p)
        out.append((i, best[1], best[0]))
        i += best[0] * best[1]
    return out


def _repeat_block(same: list[_Block], blocks, layers, producer_index) -> _Block | None:
    """One block for instances of one netlang block whose structures differ only in the
    count of a repeated run (VGG's `stage(c, n)`: `repeat n { conv(c, 3) -> relu }`), for
    blocks that are a chain of layers (no other block inside). None when they differ
    otherwise."""
    insts = sorted((m for b in same for m in b.instances), key=min)
    if any(o < m for b in blocks for o in b.instances for m in insts):
        return None
    shapes = []
    for m in insts:
        order = sorted(m)
        if any(len(layers[i].inputs) != 1 or (k and producer_index.get(layers[i].inputs[0])
                                              != order[k - 1])
               for k, i in enumerate(order)):
            return None   # not a chain
        sig = []
        for i in order:
            L = layers[i]
            rest = tuple(L.args[1:]) if L.op in CHANNEL_OPS else tuple(L.args)
            sig.append((L.op, _freeze(rest), _freeze(sorted(L.kw.items())),
                        tuple(sorted(L.params))))
        runs = _runs(sig)
        units = [tuple(sig[a:a + p]) for a, p, _ in runs]
        # channel counts: every repetition of a unit the same (one `repeat` body)
        chans = []
        for a, p, n in runs:
            for j in range(p):
                vals = {layers[order[a + r * p + j]].args[0] for r in range(n)} \
                    if layers[order[a + j]].op in CHANNEL_OPS else None
                if vals is not None:
                    if len(vals) != 1:
                        return None
                    chans.append(order[a + j])
        shapes.append((units, [n for _, _, n in runs], chans, runs))
    if any(u != shapes[0][0] for u, *_ in shapes):
        return None
    varying = [k for k in range(len(shapes[0][1])) if len({s[1][k] for s in shapes}) > 1]
    base = _make_block(same[0].name, layers, [(m, s[2]) for m, s in zip(insts, shapes)])
    first = shapes[0][3]
    order = sorted(insts[0])
    base.runs = [(tuple(order[a:a + p]), varying.index(k) if k in varying else None, n)
                 for k, (a, p, n) in enumerate(first)]
    base.counts = [[s[1][k] for k in varying] for s in shapes]
    return base


def _enclosing(fm: frozenset, blocks: list[_Block]):
    """The smallest instance of a chosen block that strictly contains `fm`."""
    best = None
    for b in blocks:
        for inst in b.instances:
            if fm < inst and (best is None or len(inst) < len(best[1])):
                best = (b, inst)
    return best


def _convex(layers, fm, ext, producer_index, consumers) -> bool:
    """No path leaves the set and comes back (the set can be one call)."""
    targets = {producer_index[v] for v in ext if v in producer_index}
    stack = [c for i in fm for c in consumers.get(layers[i].out, []) if c not in fm]
    seen = set()
    while stack:
        j = stack.pop()
        if j in seen:
            continue
        seen.add(j)
        if j in targets:
            return False
        stack.extend(c for c in consumers.get(layers[j].out, []) if c not in fm)
    return True


# ----------------------------------------------------------------------------- writing

class _Writer:
    def __init__(self, layers: list[Layer], blocks: list[_Block], netlang: bool,
                 graph_outputs: set):
        from netlang.ops import registry

        self.layers = layers
        self.blocks = blocks
        self.netlang = netlang
        self.graph_outputs = graph_outputs
        self.index = {id(L): i for i, L in enumerate(layers)}
        self.producer_index = {L.out: i for i, L in enumerate(layers)}
        self.consumers = _consumers(layers)
        self.block_names = {b.name for b in blocks}
        self.op_names = set(registry.all_ops())

    def items(self, members: frozenset | None, blocks: list[_Block]) -> list:
        """A region's items in graph order: its layers, and calls of the outermost block
        instances inside it."""
        idx = sorted(members) if members is not None else list(range(len(self.layers)))
        inside = set(idx)
        cands = [(b, k, inst) for b in blocks for k, inst in enumerate(b.instances)
                 if inst <= inside and inst != members]
        cands.sort(key=lambda t: -len(t[2]))
        covered: set[int] = set()
        starts = {}
        for b, k, inst in cands:
            if inst & covered:
                continue
            covered |= inst
            ext, results = _region(self.layers, inst, self.producer_index, self.consumers,
                                   self.graph_outputs)
            starts[min(inst)] = _Call(b, k, inst, ext, results[0])
        return [starts[i] if i in starts else self.layers[i] for i in idx
                if i in starts or i not in covered]

    def call_args(self, call: _Call, channel: dict[int, str]) -> list[str]:
        """A call's arguments: its block's parameters, as the channel counts (or the
        enclosing block's parameters) of the layers that set them."""
        slots = call.block.slots[call.instance]
        counts = call.block.counts[call.instance] if call.block.counts else []
        return [channel.get(slots[k], _value(self.layers[slots[k]].args[0]))
                for k in call.block.params] + [str(n) for n in counts]

    def write_region(self, items, inputs: list[str], names: dict[str, str], outputs: list,
                     channel: dict[int, str], taken: set, scope: int) -> list[str]:
        """Statements for `items`. `names`: the values already named (the inputs);
        `outputs`: [(value, "output", name)] for a network, [(value, "return", None)] for
        a block; `channel`: layer index -> how its channel count is written (a parameter);
        `scope`: how many name components the region's own scope has."""
        prod = {it.out: it for it in items}
        taken |= {it.declares for it in items if isinstance(it, Layer) and it.declares}
        uses: Counter = Counter()
        for it in items:
            for v in it.inputs:
                uses[v] += 1
        names = dict(names)
        for it in items:   # a declared `param` read as an input (a class token) is a name
            if isinstance(it, Layer) and it.declares in it.inputs:
                names[it.declares] = it.declares
        declared: dict[str, str] = {}   # value -> the output statement that defines it
        for v, kind, oname in outputs:
            if kind == "output" and v not in names:
                names[v] = declared[v] = oname

        def fresh(it) -> str:
            base = _identifier(self.value_name(it, scope))
            if base in self.block_names or base in self.op_names:
                base = f"{base}_out"
            name, k = base, 1
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            taken.add(name)
            return name

        returned = {v for v, kind, _ in outputs if kind == "return"}
        for it in items:   # a value used twice (a skip) is named
            if it.out not in names and (uses[it.out] > 1 or
                                        (it.out in returned and uses[it.out] > 0)):
                names[it.out] = fresh(it)

        def render(it) -> tuple[str, list[str]]:
            if isinstance(it, Layer):
                text = it.render(channel.get(self.index[id(it)]))
                return text, []
            return it.block.name, self.call_args(it, channel)

        def chain(v: str) -> list[str]:
            if v in names:
                return [names[v]]
            it = prod[v]
            op, extra = render(it)
            if len(it.inputs) == 1:
                return chain(it.inputs[0]) + [f"{op}({', '.join(extra)})" if extra else op]
            head, rest = it.inputs[0], it.inputs[1:]
            if isinstance(it, Layer):
                op = it.op
            args = [expr(r) for r in rest] + extra
            if head in names:
                return [f"{op}({', '.join([names[head]] + args)})"]
            return chain(head) + [f"{op}({', '.join(args)})"]

        def expr(v: str) -> str:
            parts = chain(v)
            if len(parts) >= 4 and v not in names:   # a long branch reads better named
                names[v] = fresh(prod[v])
                statements.append(self.statement(f"{names[v]} = ", parts))
                return names[v]
            return " -> ".join(_compress(parts))

        statements: list[str] = []
        for it in items:   # `param` declarations first: the statements read them
            if isinstance(it, Layer) and it.declares:
                shape = _value(list(it.params["value"].shape))
                statements.append(f"param {it.declares}: {shape} = zeros")
        for it in items:
            v = it.out
            if v in names and v not in inputs:
                named = names.pop(v)
                parts = chain(v)
                names[v] = named
                statements.append(self.statement(
                    f"output {named} = " if v in declared else f"{named} = ", parts))
        for v, kind, oname in outputs:
            if kind == "return":
                statements.append(self.statement("return ", chain(v)))
            elif declared.get(v) != oname:   # a second output of a value, or an input
                statements.append(f"output {oname} = {names[v]}")
        return statements

    def statement(self, prefix: str, parts: list[str]) -> str:
        parts = _compress(parts)
        indent = len(prefix) + len(parts[0]) + 1
        if indent > 40:
            indent = len(prefix) + 4
        lines, line = [], prefix + parts[0]
        for p in parts[1:]:
            if len(line) + 4 + len(p) > 92:
                lines.append(line)
                line = " " * indent + "-> " + p
            else:
                line += " -> " + p
        lines.append(line)
        return "\n".join(lines)

    def value_name(self, it, scope: int) -> str:
        """A name for the value `it` makes, from the scope names of its nodes."""
        L = it if isinstance(it, Layer) else self.layers[max(it.members)]
        path = L.path
        if self.netlang:   # the statement (or, in a block, the block's statement) it is in
            return path[scope] if len(path) > scope else "y"
        for d in range(scope + 1, len(path) + 1):   # the widest scope whose last layer it is
            sub = path[:d]
            last = max(i for i, M in enumerate(self.layers) if M.path[:d] == sub)
            if self.layers[last] is L:
                if sub[-1].isdigit() and d > 1:
                    return f"{sub[-2]}_{sub[-1]}"
                if d < len(path) or isinstance(it, _Call):
                    return sub[-1]
        return path[-1] if len(path) > scope and not path[-1].isdigit() else "x"


def _compress(parts: list[str]) -> list[str]:
    """Runs of equal calls in a chain as `repeat n { ... }` (units of 1 to 4 calls; of two
    runs of the same length, the later one: `conv -> relu` rather than `relu -> conv`)."""
    head, calls = parts[:1], parts[1:]

    def best_at(i: int):
        best = None
        for p in range(1, 5):
            unit = calls[i:i + p]
            if len(unit) < p:
                break
            n = 1
            while calls[i + n * p:i + (n + 1) * p] == unit:
                n += 1
            if n >= 2 and (best is None or n * p > best[0] * best[1]):
                best = (n, p)
        return best

    out: list[str] = []
    i = 0
    while i < len(calls):
        best = best_at(i)
        later = best_at(i + 1) if best is not None else None
        if best is None or (later is not None and later[0] * later[1] >= best[0] * best[1]):
            out.append(calls[i])
            i += 1
            continue
        n, p = best
        out.append(f"repeat {n} {{ {' -> '.join(calls[i:i + p])} }}")
        i += n * p
    return head + out


# ----------------------------------------------------------------------------- entry

def _onnx():
    try:
        import onnx
    except ImportError:
        raise error("E072", "import-onnx needs the `onnx` package, which is not installed",
                    None, help="pip install 'netlang[onnx]' (or: pip install onnx)") from None
    return onnx


def import_model(path: str, network: str | None = None) -> Imported:
    """The `.net` source and weights of the ONNX model at `path`."""
    onnx = _onnx()
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except FileNotFoundError:
        raise error("E004", f"no such file: {path}", None) from None
    except Exception as exc:   # onnx raises its own and protobuf's errors
        raise error("E074", f"{path} is not a valid ONNX model: {str(exc).splitlines()[0]}",
                    None) from None
    tr = _Translator(model, str(path))
    tr.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    g = model.graph
    tr.inputs = {}
    net_inputs: dict[str, tuple[int, ...]] = {}
    for vi in g.input:
        if vi.name in tr.consts:
            continue
        shape = tr.shapes.get(vi.name) or []
        if len(shape) < 2 or any(not isinstance(s, int) or s <= 0 for s in shape[1:]):
            tr.refuse("an input whose non-batch dimensions are not fixed numbers "
                      f"({vi.name}: {shape})", vi.name)
            continue
        elem = vi.type.tensor_type.elem_type
        if elem != onnx.TensorProto.FLOAT:
            tr.refuse(f"an input of type {onnx.TensorProto.DataType.Name(elem)} "
                      "(netlang's inputs are float32)", vi.name)
        net_inputs[vi.name] = tuple(shape[1:])
        tr.inputs[vi.name] = True
    layers = tr.run()
    for _, where in tr.causal.values():
        tr.refuse("Add of a constant tensor (a causal mask not read by a Softmax)", where)
    outputs = [tr.src(o.name) for o in g.output]
    for o, v in zip(g.output, outputs):
        if v in tr.consts:
            tr.refuse("an output that is a constant", o.name)
        elif v in net_inputs and len(layers) == 0:
            tr.refuse("an output that is an input", o.name)
    tr.refusals.raise_if_any(str(path))
    for L in layers:   # weights as float32
        L.params = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in L.params.items()}
    meta = {p.key: p.value for p in model.metadata_props}
    known = None
    if tr.netlang and "netlang_blocks" in meta:
        known = {b for b in meta["netlang_blocks"].split(",") if b}
    blocks = find_blocks(layers, set(outputs), tr.netlang, known)
    name = _identifier(network or (g.name if tr.netlang and g.name else
                                   re.sub(r"\.onnx$", "", str(path).rsplit("/", 1)[-1])),
                       "net")
    source, written, out_map = _write(layers, blocks, net_inputs, g.output, outputs, name,
                                      tr.netlang, str(path))
    weights = _pair_weights(source, name, layers, out_map, net_inputs, str(path))
    return Imported(source, weights, name, written, inputs=net_inputs,
                    outputs=list(out_map))


def _write(layers, blocks, net_inputs, graph_outputs, outputs, name, netlang, path):
    w = _Writer(layers, blocks, netlang, set(outputs))
    text = [f"# Imported from {path.rsplit('/', 1)[-1]} by `netlang import-onnx`."]
    if not netlang:
        text.append("# An ONNX inference graph has no dropout, and PyTorch's exporter folds "
                    "batchnorm into\n# the convolutions: add them back before training.")
    written = []
    for b in sorted(blocks, key=lambda b: len(b.instances[0])):   # inner blocks first
        inst = b.instances[0]
        ext, results = _region(layers, inst, w.producer_index, w.consumers, w.graph_outputs)
        pnames = b.pnames()
        channel = {}
        for k, slot in enumerate(b.slots[0]):
            p = b.slot_param[k]
            channel[slot] = pnames[p] if p is not None else _value(layers[slot].args[0])
        inner = [x for x in blocks if x is not b and any(i < inst for i in x.instances)]
        in_names = ["x"] + [f"skip{'' if k == 1 else k}" for k in range(1, len(ext))]
        taken = set(RESERVED) | w.block_names | set(in_names) | set(pnames)
        depth = min(len(layers[i].path) for i in inst)
        depth = max(k for k in range(depth + 1)
                    if len({layers[i].path[:k] for i in inst}) == 1)
        if b.runs is not None:   # a chain with `repeat n { ... }` runs
            pnames_n = pnames[len(b.params):]
            parts = ["x"]
            for unit_layers, param, fixed in b.runs:
                unit = [layers[i].render(channel.get(i)) for i in unit_layers]
                count = fixed if param is None else pnames_n[param]
                parts += unit if count == 1 else \
                    [f"repeat {count} {{ {' -> '.join(unit)} }}"]
            body = [w.statement("return ", parts)]
        else:
            body = w.write_region(w.items(inst, inner), ext, dict(zip(ext, in_names)),
                                  [(results[0], "return", None)], channel, taken, depth)
        text += ["", f"block {b.name}({', '.join(pnames)}) {{",
                 f"    input {', '.join(in_names)}"]
        text += ["    " + line for s in body for line in s.split("\n")]
        text.append("}")
        written.append(b.name)
    taken = set(RESERVED) | w.block_names
    in_names = {}
    for v in net_inputs:
        in_names[v] = _identifier(v, "input")
        taken.add(in_names[v])
    out_specs, out_map = [], {}
    for o, v in zip(graph_outputs, outputs):
        oname = "output" if o.name.isdigit() else _identifier(o.name, "output")   # torch's `22`
        if oname in taken or oname in w.op_names or oname in w.block_names:
            oname = f"{oname}_out"
        taken.add(oname)
        out_specs.append((v, "output", oname))
        out_map[oname] = v
    body = w.write_region(w.items(None, blocks), list(net_inputs), in_names, out_specs, {},
                          taken, 0)
    text += ["", f"network {name}() {{"]
    text += [f"    input {in_names[v]}: {_value(list(s))}" for v, s in net_inputs.items()]
    text += ["    " + line for s in body for line in s.split("\n")]
    text.append("}")
    return "\n".join(text) + "\n", written, out_map


def _pair_weights(source, name, layers, out_map, net_inputs, path):
    """netlang parameter name -> array, by walking netlang's graph of the written source
    and the translated layers together from the outputs."""
    from netlang.lang.imports import read_program
    from netlang.lang.lower import lower
    from netlang.passes.shape_infer import infer_shapes

    try:   # the front end checks the written source as it would a user's file
        graph = lower(read_program(source, f"{name}.net"))
        infer_shapes(graph)
    except Exception as exc:   # the writer's own mistake: say so plainly
        raise error("E074", f"the source written for {path} does not check: {exc}", None,
                    help="this is a netlang bug; please report it with the model") from None
    producer = {L.out: L for L in layers}
    weights: dict[str, np.ndarray] = {}
    seen: dict[int, str] = {}
    stack = [(graph.outputs[k], v) for k, v in out_map.items()]
    while stack:
        node, v = stack.pop()
        if node.id in seen:
            if seen[node.id] != v:
                raise AssertionError(f"import: {node.name} paired with {seen[node.id]} and {v}")
            continue
        seen[node.id] = v
        if node.op == "input":
            if v not in net_inputs:
                raise AssertionError(f"import: input {node.name} paired with {v}")
            continue
        L = producer[v]
        if node.op != L.op:
            raise AssertionError(f"import: {node.name} ({node.op}) paired with {L.where} "
                                 f"({L.op})")
        data = [i for i in node.inputs if i.op != "param"]
        l_inputs = [v for v in L.inputs if v != L.declares]   # a class token is a param
        if len(data) != len(l_inputs):
            raise AssertionError(f"import: {node.name} has {len(data)} inputs, {L.where} "
                                 f"{len(l_inputs)}")
        for p in node.inputs:
            if p.op == "param":
                arr = L.params[p.attrs["role"]]
                if tuple(arr.shape) != tuple(p.type.shape):
                    raise error("E074", f"{L.where}: weights of shape {list(arr.shape)} where "
                                f"netlang's {p.name} is {list(p.type.shape)}", None)
                weights[p.name] = arr
        stack.extend(zip(data, l_inputs))
    missing = [p.name for p in graph.params if p.name not in weights]
    if missing:
        raise AssertionError(f"import: parameters without weights: {missing[:3]}")
    return weights
