"""Stable text form of the IR: one node a line, SSA-like, creation order, `# file:line` last.

    %3 = conv(%0, %1, %2) {kernel=[3, 3], pad=[1, 1, 1, 1]} : [N, 16, 32, 32]  # e1.conv0  net.net:4

Deterministic (no set iteration, attributes sorted) so that dumps diff well and serve
as golden files.
"""

from __future__ import annotations

from typing import Any

from netlang.ir.graph import Graph, Node


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
    ty = f" : {n.type}" if n.type is not None else ""
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
    lines.append("}")
    return "\n".join(lines)
