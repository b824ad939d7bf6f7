"""Fusion: group nodes into kernels, by op kind (TVM Relax's rule), not by special cases.

A group is an *anchor* followed by an *epilogue*: a chain of elementwise or broadcast ops
applied to the anchor's result at the same index, before it is written to memory. Anchors
are out-elementwise-fusable ops (conv, conv_transpose, dense, and the input gradients of
conv and dense) and elementwise ops themselves (so that `bias -> batchnorm -> relu` chains
collapse too). So conv + bias + relu is one kernel, a residual `add` joins the conv before
it, and on the backward side the activation's gradient mask (`relu_grad`) joins the kernel
that produces the incoming gradient.

A consumer joins its producer's group when
  - the consumer is elementwise/broadcast,
  - the producer's group accepts an epilogue (its anchor is out-elementwise-fusable or
    elementwise),
  - the consumer is the producer's only user and the producer is not a program result
    (otherwise the intermediate value must be written anyway),
  - the consumer's output has the producer's shape (no broadcast expansion of the group),
  - the producer is the consumer's first input (the value flowing through the epilogue).
Every refused (producer, consumer) pair is recorded with its reason for `--explain fusion`.

Fusion changes no node; it annotates. Backends run a group as one kernel (CUDA) or as the
anchor followed by in-place epilogue updates of its buffer (NumPy), and a fused program
must equal the unfused one (tests).
"""

from __future__ import annotations

from netlang.ir.fusion import Fusion, Group
from netlang.ir.graph import Graph, Node
from netlang.ops import registry
from netlang.ops.registry import FusionKind

ANCHORS = (FusionKind.OUT_ELEMWISE_FUSABLE, FusionKind.ELEMWISE, FusionKind.BROADCAST)
EPILOGUE = (FusionKind.ELEMWISE, FusionKind.BROADCAST)


def fusable(n: Node) -> bool:
    """Whether an elementwise node may join an epilogue (an op fact: `OpDef.fusable`)."""
    return registry.get(n.op).fuses(n.attrs)


def _kind(n: Node) -> FusionKind:
    return registry.get(n.op).kind


def fuse(g: Graph, enabled: bool = True) -> Fusion:
    users = g.users()
    roots = {n.id for n in g.roots()}
    position = {n.id: i for i, n in enumerate(g.nodes)}
    groups: list[Group] = []
    group_of: dict[int, Group] = {}
    refusals: list[tuple[Node, Node, str]] = []
    for n in g.nodes:
        if n.op in ("input", "param"):
            continue
        joined = False
        if enabled and _kind(n) in EPILOGUE and fusable(n):
            # Candidate producers: computed data inputs of n.
            for p in n.inputs:
                if p.id not in group_of:
                    continue
                reason = _refusal(p, n, group_of[p.id], users, roots, position)
                if reason is None:
                    group_of[p.id].epilogue.append(n)
                    group_of[n.id] = group_of[p.id]
                    joined = True
                    break
                refusals.append((p, n, reason))
        elif enabled:
            for p in n.inputs:
                if p.id in group_of and not _trivial(p):
                    why = (f"{n.op} is {_kind(n).value}, not elementwise"
                           if _kind(n) not in EPILOGUE
                           else f"{n.op} needs more than the element it writes (batch "
                                "statistics, randomness or broadcasting)")
                    refusals.append((p, n, why))
        if not joined:
            grp = Group(n)
            groups.append(grp)
            group_of[n.id] = grp
    fusion = Fusion(groups, refusals, group_of)
    if enabled:
        _concats_in_place(g, fusion, users, roots)
    return fusion


# Anchors whose kernels compute one output element per thread, so that each element can
# also be stored into a concat's buffer: these kinds, and ops that say so
# (`OpDef.writes_per_element`: pools, softmax, upsample).
ELEMENTWISE_WRITERS = (FusionKind.ELEMWISE, FusionKind.BROADCAST, FusionKind.INJECTIVE,
                       FusionKind.OUT_ELEMWISE_FUSABLE)


def _concats_in_place(g: Graph, fusion: Fusion, users, roots) -> None:
    taken: set[int] = set()
    for n in g.nodes:
        if n.op != "concat":
            continue
        ids = [x.id for x in n.inputs]
        why = None
        if len(set(ids)) != len(ids):
            why = "an input appears twice"
        elif n.attrs.get("axis", 0) != 0:
            why = "it joins another axis than the channels (not contiguous runs)"
        elif not all(x.type.batched for x in n.inputs):
            why = "a parameter is broadcast over the batch"
        for x in n.inputs:
            grp = fusion.group_of.get(x.id)
            if why:
                break
            if grp is None or x.op in ("input", "param"):
                why = f"{x.name} is an input of the program"
            elif grp.output is not x:
                why = f"{x.name} is inside a kernel"
            elif _kind(grp.anchor) not in ELEMENTWISE_WRITERS and \
                    not registry.get(grp.anchor.op).writes_per_element:
                why = f"{x.name} is made by a reduction"
            elif x.id in taken:
                why = f"{x.name} is written in place into another concat"
        if why:
            fusion.refusals.append((n.inputs[0], n, f"concat not in place: {why}"))
            continue
        fusion.inplace[n.id] = ids
        for x in n.inputs:
            taken.add(x.id)
            fusion.keeps_own[x.id] = len(users[x.id]) > 1 or x.id in roots


def _trivial(n: Node) -> bool:
    return n.op in ("input", "param")


def _refusal(p: Node, n: Node, grp: Group, users, roots, position) -> str | None:
    if grp.output is not p:
        return "the producer is not the end of its kernel"
    if _kind(grp.anchor) not in ANCHORS or not fusable(grp.anchor):
        return f"{grp.anchor.op} is {_kind(grp.anchor).value}: its kernel takes no epilogue"
    if n.inputs[0] is not p:
        return f"{p.name} is not the value flowing through {n.op} (its first input)"
    if len(users[p.id]) > 1:
        return f"{p.name} has {len(users[p.id])} users, so it must be written to memory"
    if p.id in roots:
        return f"{p.name} is a result of the program"
    if n.type != p.type:
        return f"the shape changes ({p.type} -> {n.type})"
    # The kernel runs where its anchor stands in the schedule: the epilogue's other inputs
    # must be computed by then.
    for other in n.inputs[1:]:
        if other.op not in ("input", "param") and position[other.id] > position[grp.anchor.id]:
            return f"its other input {other.name} is computed after {grp.anchor.name}"
    return None
