"""Reverse-mode autodiff at graph level.

Walks the nodes that the loss depends on in reverse topological order and asks each op's
VJP rule for the cotangents of its inputs. The rules add ordinary nodes (conv_grad_input,
relu_grad, sum_to, ...) to the same graph, so the training program is one graph that the
later passes see whole: no tape, no closures. Backward nodes keep the span of their forward
node, so an error in a backward kernel still points at the `.net` line. Cotangents reaching
a value from several users are summed with `add`.

Gradients are produced for trainable parameters (and for inputs on request); nodes that no
requested gradient depends on get no VJP, and dead backward nodes are left to DCE.
"""

from __future__ import annotations

from netlang.ir.graph import Graph, Node
from netlang.ir.types import TensorType
from netlang.ops import registry
from netlang.passes.shape_infer import infer_node


class VjpBuilder:
    """What a VJP rule uses to add backward nodes on behalf of one forward node."""

    def __init__(self, g: Graph, fwd: Node):
        self.g = g
        self.fwd = fwd
        self.count = 0

    def emit(self, op: str, inputs: list[Node], **attrs) -> Node:
        name = f"{self.fwd.name}.grad_{op}" + (f"{self.count}" if self.count else "")
        self.count += 1
        node = self.g.add(op, inputs, attrs, name=name, span=self.fwd.span)
        infer_node(node)
        return node

    def reduce_to(self, dy: Node, ty: TensorType) -> Node:
        """Sum a gradient over broadcast dimensions back to `ty`."""
        if dy.type == ty:
            return dy
        return self.emit("sum_to", [dy], shape=ty.shape, batched=ty.batched)


def autodiff(g: Graph, wrt_inputs: bool = False) -> None:
    loss = g.loss
    if loss is None or loss.type.shape != ():
        raise AssertionError("autodiff needs a scalar loss")
    wrt = [p for p in g.params if p.attrs.get("trainable", True)]
    if wrt_inputs:
        wrt += list(g.inputs.values())
    wrt_ids = {n.id for n in wrt}

    # Forward: which nodes depend on something we differentiate with respect to.
    needs: set[int] = set()
    for n in g.nodes:
        if n.id in wrt_ids or any(i.id in needs for i in n.inputs):
            needs.add(n.id)

    # The part of the forward graph the loss depends on, in reverse order.
    tape = [n for n in g.ancestors(loss) if n.id in needs]
    seed = g.add("constant", [], {"value": 1.0, "shape": (), "batched": False},
                 name="loss.grad_seed", span=loss.span)
    infer_node(seed)
    cot: dict[int, Node] = {loss.id: seed}
    for node in reversed(tape):
        dy = cot.get(node.id)
        if dy is None or node.op in ("input", "param"):
            continue
        rule = registry.get(node.op).vjp
        if rule is None:
            raise AssertionError(f"op {node.op} has no VJP rule")
        b = VjpBuilder(g, node)
        grads = rule(b, node, dy)
        for inp, gi in zip(node.inputs, grads):
            if gi is None or inp.id not in needs:
                continue
            if gi.type != inp.type:
                raise AssertionError(f"VJP of {node!r} gives {gi.type} for {inp!r} ({inp.type})")
            prev = cot.get(inp.id)
            if prev is None:
                cot[inp.id] = gi
            else:
                acc = g.add("add", [prev, gi], name=f"{inp.name}.grad_acc", span=inp.span)
                infer_node(acc)
                cot[inp.id] = acc
    for n in wrt:
        if n.id in cot:
            g.grads[n.name] = cot[n.id]
        else:  # a parameter the loss does not depend on: its gradient is zero
            z = g.add("constant", [], {"value": 0.0, "shape": n.type.shape,
                                       "batched": n.type.batched},
                      name=f"{n.name}.grad_zero", span=n.span)
            infer_node(z)
            g.grads[n.name] = z
