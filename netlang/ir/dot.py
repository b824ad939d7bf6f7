"""Graphviz drawing of a graph: layers as boxes, shapes on edges, blocks as clusters.

Parameters are folded into their layer's label. Block instances (the middle parts of a
hierarchical name, `d1.double_conv`) become nested clusters, so a U-Net reads as its
levels, and skip connections are the long edges between them.
"""

from __future__ import annotations

from typing import Callable

from netlang.ir.graph import Graph, Node
from netlang.ir.types import fmt_shape

INPUT_COLOR = "#eeeeee"
Colors = Callable[[str], str]   # op name -> fill colour (the op's `color`, ops/registry.py)


def _plain(op: str) -> str:
    return "#ffffff"


def _label(n: Node) -> str:
    a = n.attrs
    if n.op == "input":
        return f"{n.name}\\n{fmt_shape(n.type.shape)}"
    if n.op == "param":   # a `param` declaration (layers' weights are not drawn)
        return f"param {n.name.rsplit('.', 1)[-1]}\\n{fmt_shape(n.type.shape)}"
    detail = ""
    if n.op in ("conv", "conv_transpose"):
        k = "x".join(str(v) for v in a["kernel"])
        s = a["stride"]
        detail = f" {a['channels']}@{k}" + (f" /{s[0]}" if any(v > 1 for v in s) else "")
    elif n.op == "dense":
        detail = f" {a['units']}"
    elif n.op in ("maxpool", "avgpool"):
        detail = " " + "x".join(str(v) for v in a["kernel"])
    elif n.op == "upsample":
        detail = f" x{a['scale'][0]:g} {a['mode']}"
    short = n.name.rsplit(".", 1)[-1]
    return f"{n.op}{detail}\\n{short}"


def _drawn(n: Node) -> bool:
    """Inputs, layers and `param` declarations; not the weights of layers."""
    return n.op != "param" or n.attrs.get("role") == "value"


def _esc(s: str) -> str:
    return s.replace('"', '\\"')


RANKDIRS = ("TB", "LR", "BT", "RL")


def _block_of(n: Node) -> str | None:
    """The outermost block instance a node belongs to (`d1.up` for `d1.up.conv0`)."""
    parts = n.name.split(".")
    return ".".join(parts[:2]) if len(parts) >= 3 else None


def to_dot(g: Graph, clusters: dict[str, list[Node]] | None = None, rankdir: str = "TB",
           collapse: bool = False, color: Colors = _plain) -> str:
    """DOT text. `clusters` optionally groups nodes (fused kernels) instead of blocks;
    `collapse` draws each block instance as one node (tall networks become readable);
    `rankdir` is Graphviz's direction (TB top to bottom, LR left to right)."""
    if rankdir not in RANKDIRS:
        raise ValueError(f"rankdir {rankdir!r}")
    if collapse:
        return _collapsed(g, rankdir, color)
    nodes = [n for n in g.nodes if _drawn(n)]
    lines = [f'digraph "{_esc(g.name)}" {{', f"  rankdir={rankdir};",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']

    def node_line(n: Node, indent: str) -> str:
        fill = INPUT_COLOR if n.op in ("input", "param") else color(n.op)
        shape = ', shape=ellipse' if n.op in ("input", "param") else ""
        return f'{indent}n{n.id} [label="{_esc(_label(n))}", fillcolor="{fill}"{shape}];'

    if clusters is None:
        # Tree of scopes from hierarchical names: "d1.double_conv.conv0" -> d1 / double_conv.
        tree: dict = {"__nodes__": []}
        for n in nodes:
            parts = n.name.split(".")[:-1]
            t = tree
            for p in parts:
                t = t.setdefault(p, {"__nodes__": []})
            t["__nodes__"].append(n)
        counter = [0]

        def emit(t: dict, path: str, indent: str) -> None:
            for n in t["__nodes__"]:
                lines.append(node_line(n, indent))
            for key, sub in t.items():
                if key == "__nodes__":
                    continue
                counter[0] += 1
                label = f"{path}.{key}" if path else key
                lines.append(f"{indent}subgraph cluster_{counter[0]} {{")
                lines.append(f'{indent}  label="{_esc(key)}"; style="rounded,dashed"; '
                             f'color="#999999"; fontname="Helvetica"; fontsize=10;')
                emit(sub, label, indent + "  ")
                lines.append(f"{indent}}}")
        emit(tree, "", "  ")
    else:
        in_cluster = set()
        for i, (name, members) in enumerate(clusters.items()):
            lines.append(f"  subgraph cluster_k{i} {{")
            lines.append(f'    label="{_esc(name)}"; style="rounded,filled"; color="#dddddd";')
            for n in members:
                if _drawn(n):
                    lines.append(node_line(n, "    "))
                    in_cluster.add(n.id)
            lines.append("  }")
        for n in nodes:
            if n.id not in in_cluster:
                lines.append(node_line(n, "  "))
    for n in nodes:
        for src in n.inputs:
            if not _drawn(src):
                continue
            shape = fmt_shape(src.type.shape) if src.type else ""
            lines.append(f'  n{src.id} -> n{n.id} [label="{shape}"];')
    return _finish(g, lines, lambda n: f"n{n.id}")


def _collapsed(g: Graph, rankdir: str, color: Colors) -> str:
    nodes = [n for n in g.nodes if _drawn(n)]
    rep: dict[int, str] = {}
    groups: dict[str, list[Node]] = {}
    for n in nodes:
        block = _block_of(n)
        rep[n.id] = f"n{n.id}" if block is None else f"b{len(groups)}" if block not in groups \
            else rep[groups[block][0].id]
        if block is not None:
            groups.setdefault(block, []).append(n)
    lines = [f'digraph "{_esc(g.name)}" {{', f"  rankdir={rankdir};",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']
    for block, members in groups.items():
        value, name = block.split(".")
        last = members[-1]
        label = f"{name}\\n{value}  {fmt_shape(last.type.shape)}"
        lines.append(f'  {rep[members[0].id]} [label="{_esc(label)}", fillcolor="#e8e8f8", '
                     'style="rounded,filled,bold"];')
    for n in nodes:
        if _block_of(n) is None:
            fill = INPUT_COLOR if n.op in ("input", "param") else color(n.op)
            shape = ', shape=ellipse' if n.op in ("input", "param") else ""
            lines.append(f'  n{n.id} [label="{_esc(_label(n))}", fillcolor="{fill}"{shape}];')
    seen: set[tuple[str, str]] = set()
    for n in nodes:
        for src in n.inputs:
            if not _drawn(src):
                continue
            a, b = rep[src.id], rep[n.id]
            if a != b and (a, b) not in seen:
                seen.add((a, b))
                lines.append(f'  {a} -> {b} [label="{fmt_shape(src.type.shape)}"];')
    return _finish(g, lines, lambda n: rep[n.id])


def _finish(g: Graph, lines: list[str], key) -> str:
    """The outputs as ellipses fed by their nodes (`key(node)` names a node), and the end."""
    for name, n in g.outputs.items():
        lines.append(f'  out_{_esc(name)} [label="{_esc(name)}\\n{fmt_shape(n.type.shape)}", '
                     'shape=ellipse, style=filled, fillcolor="#eeeeee"];')
        lines.append(f"  {key(n)} -> out_{_esc(name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
