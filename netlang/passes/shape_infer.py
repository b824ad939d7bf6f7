"""Shape inference: give every node a TensorType, every parameter its shape and init.

Runs each op's shape rule in topological order. Parameter nodes get their types from
the op that consumes them (channels are inferred from the input). Shape rules may
normalise attributes (`kernel=3` becomes `(3, 3)`, `pad=same` becomes explicit
padding), so later passes and backends read one canonical form.

When a skip connection's shapes disagree (E020) the diagnostic says which layers lost
pixels on the way (a pool flooring an odd size) and probes other input sizes, by
re-running this pass on a pristine copy of the graph, to say which sizes are valid.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

from netlang.diagnostics import Diagnostic, NetlangError, SourceSpan
from netlang.ir.graph import Graph, Node
from netlang.ir.types import TensorType, fmt_shape
from netlang.ops import registry
from netlang.ops.registry import ShapeCtx, ShapeError

PROBE_SECONDS = 1.0  # time allowed for finding valid input sizes on an error path
# No tensor (an activation per sample, or a parameter) may hold more elements than this:
# 2^31 float32 values are 8 GiB, beyond any network that trains on one machine, and far
# beyond what a typo (`conv(99999999999, 3)`) should be allowed to allocate.
MAX_ELEMENTS = 2 ** 31


def check_size(ty: TensorType, what: str) -> None:
    if ty.size > MAX_ELEMENTS:
        raise ShapeError("E029", f"{what} {fmt_shape(ty.shape)} would hold {ty.size:,} "
                         f"elements; the limit is {MAX_ELEMENTS:,} (8 GiB of float32)",
                         help="check the channel counts, units and input size for a typo")


@dataclass
class ShapeInfo:
    """Side results of shape inference: warnings and the lossy steps of each node."""

    warnings: list[Diagnostic] = field(default_factory=list)
    lossy: dict[int, list[str]] = field(default_factory=dict)


def data_inputs(node: Node) -> list[Node]:
    op = registry.get(node.op)
    n_params = len(op.roles(node.attrs))
    return node.inputs[:len(node.inputs) - n_params] if n_params else list(node.inputs)


def infer_node(node: Node, info: ShapeInfo | None = None) -> TensorType:
    """Type one node from its (typed) inputs; sets its parameters' types too."""
    op = registry.get(node.op)
    data = data_inputs(node)
    ctx = ShapeCtx(node.op, [i.type for i in data], dict(node.attrs))
    if any(t is None for t in ctx.inputs):
        raise AssertionError(f"{node!r}: input without a type")
    out = op.shape(ctx)
    check_size(out, f"the output of {node.op}" + (" per sample" if out.batched else ""))
    node.attrs = ctx.attrs
    node.type = out
    if info is not None:
        for w in ctx.warnings:
            info.warnings.append(Diagnostic(w.code, w.message, node.span, w.notes, w.help,
                                            w.severity))
        if ctx.lossy:
            info.lossy[node.id] = ctx.lossy
    if op.params is not None:
        specs = op.params(ctx.inputs, ctx.attrs)
        for p in node.inputs[len(data):]:
            if p.op != "param":
                continue
            spec = specs[p.attrs["role"]]
            ptype = TensorType(spec.shape, batched=False)
            check_size(ptype, f"the {p.attrs['role']} of {node.op}")
            if p.type is None:
                p.type = ptype
                p.attrs.update(init=spec.init, bound=spec.bound, trainable=spec.trainable)
                if spec.init == "constant":
                    p.attrs["value"] = spec.value
                if spec.scheme:
                    p.attrs["scheme"] = spec.scheme
            elif p.type != ptype:
                raise AssertionError(f"{p!r} typed {p.type}, {node!r} wants {ptype}")
    return out


def infer_shapes(graph: Graph) -> ShapeInfo:
    """Type the whole graph; raises NetlangError with a traced diagnostic on failure."""
    pristine = {n.id: dict(n.attrs) for n in graph.nodes}
    info = ShapeInfo()
    for node in graph.nodes:
        if node.op in ("input", "param"):
            if node.op == "input" and node.type is not None:
                try:
                    check_size(node.type, f"input `{node.name}`")
                except ShapeError as exc:
                    raise NetlangError(Diagnostic(exc.code, exc.message, node.span,
                                                  help=exc.help)) from None
            continue
        try:
            infer_node(node, info)
        except ShapeError as exc:
            raise _diagnose(graph, node, exc, info, pristine) from None
    _check_assertions(graph, info)
    graph.warnings.extend(info.warnings)
    return info


def _check_assertions(graph: Graph, info: ShapeInfo) -> None:
    for a in graph.assertions:
        have = a.node.type.shape
        ok = len(have) == len(a.shape) and all(w is None or w == h for w, h in zip(a.shape, have))
        if not ok:
            want = "[" + ", ".join("_" if d is None else f"{d:g}" for d in a.shape) + "]"
            notes = [f"`{a.value}` is {fmt_shape(have)}"]
            related = _lossy_related(graph, [a.node], info)
            raise NetlangError(Diagnostic(
                "E023", f"shape assertion failed: `{a.value}` is {fmt_shape(have)}, not {want}",
                a.span, tuple(notes), "check the input size and the strides and paddings on the "
                "way, or update the assertion", related=tuple(related)))


def _lossy_related(graph: Graph, nodes: list[Node], info: ShapeInfo,
                   limit: int = 4) -> list[tuple[SourceSpan, str]]:
    seen: list[tuple[SourceSpan, str]] = []
    for n in nodes:
        for anc in graph.ancestors(n):
            for note in info.lossy.get(anc.id, []):
                item = (anc.span, note)
                if anc.span is not None and item not in seen:
                    seen.append(item)
    return seen[:limit]


def _diagnose(graph: Graph, node: Node, exc: ShapeError, info: ShapeInfo,
              pristine: dict[int, dict[str, Any]]) -> NetlangError:
    notes = list(exc.notes)
    related: list[tuple[SourceSpan, str]] = []
    help_ = exc.help
    if exc.code == "E020":
        data = data_inputs(node)
        for inp in data:
            label = _value_name(graph, inp)
            notes.append(f"{label} is {fmt_shape(inp.type.shape)}")
        related = _lossy_related(graph, data, info)
        sizes = _valid_sizes(graph, pristine)
        if sizes:
            help_ = sizes
            notes.append("or make the sizes agree in the network: `crop(x, like)` centre-crops "
                         "a value to another's size, `pad(x, like)` zero-pads it")
        else:
            help_ = help_ or ("make the sizes agree: `crop(x, like)` centre-crops a value to "
                              "another's size, `pad(x, like)` zero-pads it")
    if exc.code == "E021":
        related = _lossy_related(graph, data_inputs(node), info)
    related += graph.called_at.get(node.id, [])[:3]
    return NetlangError(Diagnostic(exc.code, exc.message, node.span, tuple(notes), help_,
                                   related=tuple(related)))


def _value_name(graph: Graph, node: Node) -> str:
    for name, n in graph.values.items():
        if n is node:
            return f"`{name}`"
    for name, n in graph.inputs.items():
        if n is node:
            return f"input `{name}`"
    line = f", line {node.span.line}" if node.span else ""
    return f"`{node.name}` ({node.op}{line})"


# -- probing other input sizes -----------------------------------------------------------

def _probe(graph: Graph, pristine: dict[int, dict[str, Any]], shapes: dict[str, tuple]) -> bool:
    """Does shape inference succeed with these input shapes? Works on fresh copies."""
    copies: dict[int, Node] = {}
    for n in graph.nodes:
        c = Node(n.id, n.op, [copies[i.id] for i in n.inputs], dict(pristine[n.id]), n.name,
                 n.span)
        copies[n.id] = c
        if n.op == "input":
            c.type = TensorType(shapes.get(n.name, n.type.shape))
        elif n.op == "param":
            continue
        else:
            try:
                infer_node(c)
            except ShapeError:
                return False
    return True


def _valid_sizes(graph: Graph, pristine: dict[int, dict[str, Any]]) -> str | None:
    """'H and W must be multiples of 16; nearest valid: 256, 272', or None."""
    spatial_inputs = [(name, n.type.shape) for name, n in graph.inputs.items()
                      if len(n.type.shape) >= 2]
    if len(spatial_inputs) != 1:
        return None
    name, shape = spatial_inputs[0]
    spatial = shape[1:]
    if len(set(spatial)) != 1:
        return None  # probe only square inputs: the dimensions are changed together
    h = spatial[0]
    dims = {1: "L", 2: "H and W", 3: "D, H and W"}[len(spatial)]

    deadline = time.monotonic() + PROBE_SECONDS

    def ok(s: int) -> bool:
        if time.monotonic() > deadline:
            return False
        return _probe(graph, pristine, {name: (shape[0],) + (s,) * len(spatial)})

    below = list(itertools.islice((s for s in range(h - 1, max(h - 1024, 0), -1) if ok(s)), 3))
    above = list(itertools.islice((s for s in range(h + 1, h + 1024) if ok(s)), 3))
    found = sorted(set(below + above))
    if not found:
        return None
    nearest = [v for v in (max(below) if below else None, min(above) if above else None)
               if v is not None]
    step = 0
    for a, b in zip(found, found[1:]):
        step = math.gcd(step, b - a)
    if step > 1 and len(found) >= 3:
        rest = found[0] % step
        rule = f"{dims} must be multiples of {step}" if rest == 0 else \
            f"{dims} must be {step}k + {rest}"
        return f"{rule}; nearest valid: {', '.join(map(str, nearest))}"
    return f"nearest valid {dims}: {', '.join(map(str, nearest))}"
