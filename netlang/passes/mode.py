"""Specialise a graph for training or inference.

Training: batchnorm uses batch statistics (and updates its running ones); dropout becomes
`mul(x, dropout_mask(x))`, so that its mask is an ordinary value that autodiff and the
memory planner see. Inference: dropout disappears; batchnorm uses running statistics
(one with track_running_stats=false has none and keeps using the batch's).
"""

from __future__ import annotations

from netlang.ir.graph import Graph
from netlang.passes.shape_infer import infer_node


def specialize(g: Graph, training: bool) -> None:
    for n in list(g.nodes):
        if n.op == "batchnorm":
            n.attrs["training"] = training or not n.attrs.get("track_running_stats", True)
        elif n.op == "dropout":
            x = n.inputs[0]
            if training and n.attrs["p"] > 0:
                mask = g.add("dropout_mask", [x], {"p": n.attrs["p"]}, name=f"{n.name}.mask",
                             span=n.span, after=n)
                infer_node(mask)
                y = g.add("mul", [x, mask], name=n.name, span=n.span, after=mask)
                infer_node(y)
                g.replace_all_uses(n, y)
            else:
                g.replace_all_uses(n, x)
            g.remove([n])
