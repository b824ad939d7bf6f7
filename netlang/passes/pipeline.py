"""The compiler's table of contents: from a checked network to a runnable program.

    attach_loss    (with a loss) target inputs and the weighted sum of loss terms
    stable_losses  bce(sigmoid) -> bce_logits, cross_entropy(softmax) -> logits form
    specialize     training or inference behaviour of dropout and batchnorm
    autodiff       (training) backward nodes for every trainable parameter
    cse            merge duplicate computations
    dce            drop what no output, loss or gradient needs
    fusion         group nodes into kernels (annotates; `--no-fuse` gives one node a kernel)
    (memory planning runs per batch size, when the program first runs at that size)

Ordering notes: stable_losses runs before specialize so that training and inference fold
the same activations (specialize removes or rewrites dropout), and before autodiff so that
the backward pass is the stable one; dce runs last because autodiff and the loss rewrite
leave dead forward nodes behind.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from netlang.config import parse_loss
from netlang.passes import autodiff as ad
from netlang.passes import loss as loss_pass
from netlang.passes import fusion, memplan, mode, simplify
from netlang.passes.manager import Pass, PassManager

if TYPE_CHECKING:
    from netlang.api import Network
    from netlang.program import Program

def passes_for(training: bool, loss_terms, wrt_inputs: bool,
               keep_outputs: bool = False, differentiate: bool = True,
               fuse: bool = True) -> list[Pass]:
    ps: list[Pass] = []
    if loss_terms:
        ps += [
            Pass("attach_loss", lambda g: loss_pass.attach_loss(g, loss_terms),
                 "typed graph with the loss's outputs", "`graph.loss` is a scalar node"),
            Pass("stable_losses", loss_pass.stable_losses, "graph.loss",
                 "no bce of a sigmoid, no cross_entropy of a softmax"),
        ]
    ps.append(Pass("specialize", lambda g: mode.specialize(g, training), mode.REQUIRES,
                   mode.ENSURES))
    if loss_terms:
        if differentiate:
            ps.append(Pass("autodiff", lambda g: ad.autodiff(g, wrt_inputs), ad.REQUIRES,
                           ad.ENSURES))
        if not keep_outputs:  # a training step returns the loss and the gradients only
            ps.append(Pass("drop_outputs", lambda g: g.outputs.clear(), "graph.loss",
                           "no outputs"))
    ps += [Pass("cse", simplify.cse, "typed graph", "no two nodes compute the same value"),
           Pass("dce", simplify.dce, "typed graph", "every node feeds an output, the loss or "
                "a gradient"),
           Pass("fusion", lambda g: setattr(g, "fusion", fusion.fuse(g, fuse)),
                "scheduled graph", "`graph.fusion`: kernel groups and the refused pairs")]
    return ps


def pass_names(training: bool, with_loss: bool) -> list[str]:
    """The passes a program of this kind runs, in order (what `--dump-after` accepts)."""
    return [p.name for p in passes_for(training, ("loss",) if with_loss else (), False)]


# Every pass name, in pipeline order (a training step runs them all).
PASS_NAMES = tuple(pass_names(True, True))


def build_program(net: "Network", training: bool, loss: str | None = None,
                  wrt_inputs: bool = False, dump_after: tuple[str, ...] = (),
                  verify_each: bool = False, keep_outputs: bool = False,
                  differentiate: bool = True, fuse: bool = True) -> "Program":
    from netlang.program import Program

    g = copy.deepcopy(net.graph)
    terms = parse_loss(loss, list(g.outputs)) if loss else ()
    pm = PassManager(passes_for(training, terms, wrt_inputs, keep_outputs, differentiate,
                                fuse), dump_after, verify_each)
    pm.run(g)
    return Program(g, training=training, dumps=pm.dumps, plan_fn=memplan.plan_memory)
