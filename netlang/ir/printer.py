"""Stable text form of the IR: one node a line, SSA-like, creation order, `# file:line` last.

    %3 = conv(%0, %1, %2) {kernel=[3, 3], pad=[1, 1, 1, 1]} : [N, 16, 32, 32]  # e1.conv0  net.net:4

Deterministic (no set iteration, attributes sorted) so that dumps diff well and serve
as golden files. `parse_graph` reads the text back (without the kernel annotations), so
that pass tests can be written as IR text: `before`, run the pass, compare with `expected`.
"""

from __future__ import annotations

import re
from typing import Any

from netlang.diagnostics import SourceSpan
from netlang.ir.graph import Graph, Node
from netlang.ir.types import TensorType


def _fmt_attr(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_attr(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def format_node(n: Node) -> str:
    args = ", ".join(f"%{i.id}" for i in n.inputs)
    attrs = ""
    if n.attrs:
        attrs = " {" + ", ".join(f"{k}={_fmt_attr(n.attrs[k])}" for k in sorted(n.attrs)) + "}"
    ty = ""
    if n.type is not None:
        ty = f" : {n.type}" + (f" {n.type.dtype}" if n.type.dtype != "float32" else "")
    where = f"  {n.span.file.rsplit('/', 1)[-1]}:{n.span.line}" if n.span else ""
    return f"%{n.id} = {n.op}({args}){attrs}{ty}  # {n.name}{where}"


def format_graph(g: Graph) -> str:
    """The graph, one node a line; after fusion each computed node is prefixed by its
    kernel (`k3:`), and nodes of one kernel are consecutive in the schedule."""
    lines = [f"graph {g.name} {{"]
    kernel_of = {}
    if g.fusion is not None:
        for i, grp in enumerate(g.fusion.groups):
            for n in grp.nodes:
                kernel_of[n.id] = f"k{i}: "
    lines += ["  " + kernel_of.get(n.id, "") + format_node(n) for n in g.nodes]
    for name, n in g.outputs.items():
        lines.append(f"  output {name} = %{n.id}")
    if g.loss is not None:
        lines.append(f"  loss = %{g.loss.id}")
    for name, n in g.grads.items():
        lines.append(f"  grad {name} = %{n.id}")
    lines.append("}")
    return "\n".join(lines)


# -- reading ----------------------------------------------------------------------------

_NODE = re.compile(r"^(?:k\d+: )?%(\d+) = (\w+)\(([^)]*)\)(?: \{(.*)\})?"
                   r"(?: : (\[[^\]]*\])(?: (\w+))?)?  # (\S+)(?:  (\S+):(\d+))?$")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _parse_value(text: str) -> Any:
    if text.startswith("["):
        return tuple(_parse_value(v) for v in _split_top(text[1:-1]))
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_type(text: str, dtype: str | None) -> TensorType:
    dims = [d.strip() for d in text[1:-1].split(",") if d.strip()]
    batched = bool(dims) and dims[0] == "N"
    shape = tuple(int(d) for d in (dims[1:] if batched else dims))
    return TensorType(shape, batched, dtype or "float32")


def parse_graph(text: str) -> Graph:
    """The graph a `format_graph` text describes (node ids, names, attributes, types, spans,
    inputs, targets, outputs, loss and gradients); the inverse of `format_graph` up to the
    fusion annotations."""
    lines = [ln.strip() for ln in text.strip().splitlines()]
    head = re.match(r"graph (\S+) \{$", lines[0])
    if head is None or lines[-1] != "}":
        raise ValueError("expected `graph NAME { ... }`")
    g = Graph(head.group(1))
    by_id: dict[int, Node] = {}
    for ln in lines[1:-1]:
        if not ln:
            continue
        m = _NODE.match(ln)
        if m is not None:
            nid, op, args, attrs, ty, dtype, name, file, line = m.groups()
            inputs = [by_id[int(a.strip()[1:])] for a in args.split(",") if a.strip()]
            attr = {}
            for item in _split_top(attrs or ""):
                k, v = item.split("=", 1)
                attr[k] = _parse_value(v)
            span = SourceSpan(file, int(line), 1, int(line), 1) if file else None
            node = Node(int(nid), op, inputs, attr, name, span,
                        _parse_type(ty, dtype) if ty else None)
            g.nodes.append(node)
            by_id[node.id] = node
            if op == "input":
                (g.targets if attr.get("target") else g.inputs)[name] = node
            continue
        m = re.match(r"^(output|grad) (\S+) = %(\d+)$", ln)
        if m is not None:
            (g.outputs if m.group(1) == "output" else g.grads)[m.group(2)] = by_id[int(m.group(3))]
            continue
        m = re.match(r"^loss = %(\d+)$", ln)
        if m is None:
            raise ValueError(f"cannot read IR line: {ln}")
        g.loss = by_id[int(m.group(1))]
    g._next_id = max(by_id, default=-1) + 1
    return g
