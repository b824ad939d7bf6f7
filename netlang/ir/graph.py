"""The IR graph: named nodes with ordered inputs, attributes, types and source spans.

The node list, kept in topological (creation) order, is the source of truth; passes use
the Graph API (`users`, `ancestors`, `roots`, `replace_all_uses`, `remove`), whose answers
come in node order, so every pass and every dump is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from netlang.diagnostics import Diagnostic, SourceSpan
from netlang.ir.types import TensorType


@dataclass(eq=False)
class Node:
    id: int
    op: str
    inputs: list["Node"]
    attrs: dict[str, Any]
    name: str
    span: SourceSpan | None = None
    type: TensorType | None = None

    def __repr__(self) -> str:
        return f"%{self.id}:{self.op}({self.name})"


@dataclass(frozen=True)
class ShapeAssertion:
    value: str
    node: Node
    shape: tuple[int | float | None, ...]  # None is a wildcard `_`
    span: SourceSpan


@dataclass
class Graph:
    name: str = "net"
    nodes: list[Node] = field(default_factory=list)
    inputs: dict[str, Node] = field(default_factory=dict)
    outputs: dict[str, Node] = field(default_factory=dict)
    values: dict[str, Node] = field(default_factory=dict)  # user-named values
    assertions: list[ShapeAssertion] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    # Training programs: targets fed with the batch, the scalar loss, gradients by name.
    targets: dict[str, Node] = field(default_factory=dict)
    loss: Node | None = None
    grads: dict[str, Node] = field(default_factory=dict)
    # Kernel groups, set by the fusion pass (an ir.fusion.Fusion).
    fusion: Any = None
    # Nodes written in another file (an imported block, the library): the calls that led
    # there, innermost first, so a diagnostic on one can show the user's own line too.
    called_at: dict[int, list[tuple[SourceSpan, str]]] = field(default_factory=dict)
    _next_id: int = 0

    def add(self, op: str, inputs: Iterable[Node], attrs: dict[str, Any] | None = None, *,
            name: str, span: SourceSpan | None = None, type: TensorType | None = None,
            after: Node | None = None) -> Node:
        """A new node, appended, or placed right after `after` (which must precede every
        user of the new node)."""
        node = Node(self._next_id, op, list(inputs), dict(attrs or {}), name, span, type)
        self._next_id += 1
        if after is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(after) + 1, node)
        return node

    def roots(self) -> list[Node]:
        """What a program must compute: outputs, the loss, the gradients."""
        out = list(self.outputs.values())
        if self.loss is not None:
            out.append(self.loss)
        out += list(self.grads.values())
        return out

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def params(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "param"]

    def users(self) -> dict[int, list[Node]]:
        """Consumers of every node, in node order (deterministic)."""
        result: dict[int, list[Node]] = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for src in n.inputs:
                if n not in result[src.id]:
                    result[src.id].append(n)
        return result

    def ancestors(self, *nodes: Node) -> list[Node]:
        """All nodes the given nodes depend on, in topological order, themselves included."""
        seen: set[int] = set()
        stack = list(nodes)
        while stack:
            n = stack.pop()
            if n.id in seen:
                continue
            seen.add(n.id)
            stack.extend(n.inputs)
        return [n for n in self.nodes if n.id in seen]

    def replace_all_uses(self, old: Node, new: Node) -> None:
        for n in self.nodes:
            if n is not new:
                n.inputs = [new if i is old else i for i in n.inputs]
        for d in (self.outputs, self.values, self.inputs, self.grads):
            for k, v in d.items():
                if v is old:
                    d[k] = new
        if self.loss is old:
            self.loss = new

    def remove(self, dead: Iterable[Node]) -> None:
        ids = {n.id for n in dead}
        self.nodes = [n for n in self.nodes if n.id not in ids]
