"""Kernel groups: the annotation the fusion pass (passes/fusion.py) leaves on a graph, read
by the kernel builder and the backends. A group is an anchor and the elementwise epilogue
applied to its result before the store; fusion changes no node."""

from __future__ import annotations

from dataclasses import dataclass, field

from netlang.ir.graph import Node


@dataclass
class Group:
    anchor: Node
    epilogue: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [self.anchor] + self.epilogue

    @property
    def output(self) -> Node:
        return self.nodes[-1]

    @property
    def name(self) -> str:
        ops = "_".join(n.op for n in self.nodes)
        return f"{ops}" if len(ops) < 60 else f"{self.anchor.op}_plus{len(self.epilogue)}"


@dataclass
class Fusion:
    groups: list[Group]
    refusals: list[tuple[Node, Node, str]]    # (producer, consumer, reason)
    group_of: dict[int, Group]
    # Concats whose inputs' kernels write straight into the concatenated buffer (no copy):
    # concat id -> input ids; keeps_own[input id]: the input also keeps its own buffer
    # (other users read it).
    inplace: dict[int, list[int]] = field(default_factory=dict)
    keeps_own: dict[int, bool] = field(default_factory=dict)

    @property
    def kernel_count(self) -> int:
        """Groups that run as kernels (a concat written in place runs none)."""
        return len(self.groups) - len(self.inplace)

    def explain(self) -> str:
        lines = [f"{self.kernel_count} kernels for {sum(len(g.nodes) for g in self.groups)} "
                 "ops"]
        for g in self.groups:
            if g.epilogue:
                lines.append(f"fused: {' + '.join(n.name for n in g.nodes)}")
        for cid, xs in self.inplace.items():
            lines.append(f"in place: {self.group_of[cid].anchor.name} is written by the "
                         f"kernels of {', '.join(self.group_of[x].output.name for x in xs)}")
        for p, c, why in self.refusals:
            lines.append(f"not fused: {p.name} ({p.op}) -> {c.name} ({c.op}): {why}")
        return "\n".join(lines)
