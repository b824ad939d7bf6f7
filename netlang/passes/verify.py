"""The IR verifier: run after every pass in tests (and by the pass manager in debug mode).
It lives beside the passes because re-deriving types uses shape inference.

Checks that the node list is topologically ordered, that every op exists with a valid
number of inputs, that every node is typed, and that re-deriving each node's type from its
inputs gives the type it carries.
"""

from __future__ import annotations

from netlang.ir.graph import Graph
from netlang.ops import registry
from netlang.passes.shape_infer import data_inputs, infer_node


class VerifyError(AssertionError):
    """An internal inconsistency in the graph: a compiler bug, never a user error."""


def verify(g: Graph) -> None:
    seen: set[int] = set()
    ids: set[int] = set()
    for n in g.nodes:
        if n.id in ids:
            raise VerifyError(f"{n!r}: duplicate node id")
        ids.add(n.id)
        for i in n.inputs:
            if i.id not in seen:
                raise VerifyError(f"{n!r} uses {i!r} before it is defined")
        seen.add(n.id)
        if n.type is None:
            raise VerifyError(f"{n!r} has no type")
        if n.op in ("input", "param"):
            if n.inputs:
                raise VerifyError(f"{n!r} must have no inputs")
            continue
        if n.op not in registry.all_ops():
            raise VerifyError(f"{n!r}: unknown op")
        op = registry.get(n.op)
        k = len(data_inputs(n))
        if k < op.min_inputs or (op.max_inputs is not None and k > op.max_inputs):
            raise VerifyError(f"{n!r}: {k} inputs, op takes {op.min_inputs}..{op.max_inputs}")
        before = n.type
        infer_node(n)
        if n.type != before:
            raise VerifyError(f"{n!r}: carries {before}, its inputs give {n.type}")
    for name, n in g.outputs.items():
        if n.id not in ids:
            raise VerifyError(f"output {name} refers to a removed node {n!r}")
