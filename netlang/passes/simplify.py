"""Dead-code elimination and common-subexpression elimination."""

from __future__ import annotations

from netlang.ir.graph import Graph
from netlang.ops import registry


def dce(g: Graph) -> None:
    """Remove nodes that no output, loss or gradient depends on (inputs and parameters stay,
    so a program always takes the same weights)."""
    live = {n.id for n in g.ancestors(*g.roots())}
    g.remove([n for n in g.nodes if n.id not in live and n.op not in ("input", "param")])


def _key(n) -> tuple:
    return (n.op, tuple(i.id for i in n.inputs), repr(sorted(n.attrs.items())))


def cse(g: Graph) -> None:
    """Merge nodes computing the same op on the same inputs with the same attributes."""
    seen: dict[tuple, object] = {}
    dead = []
    for n in g.nodes:
        # Inputs and parameters are distinct values whatever their attributes; a random op
        # gives another value at every node (OpDef.impure).
        if n.op in ("input", "param") or registry.get(n.op).impure:
            continue
        k = _key(n)
        if k in seen:
            g.replace_all_uses(n, seen[k])
            dead.append(n)
        else:
            seen[k] = n
    g.remove(dead)
