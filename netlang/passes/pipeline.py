"""The compiler's table of contents: from a checked network to a runnable program.

    attach_loss    (with a loss) target inputs and the weighted sum of loss terms
    stable_losses  bce(sigmoid) -> bce_logits, cross_entropy(softmax) -> logits form
    specialize     training or inference behaviour of dropout and batchnorm
    precision      (tf32, bf16, fp16) round_to around the products: tensor-core numerics
    autodiff       (training) backward nodes for every trainable parameter
    scale_loss     (training; fp16 only) the backward from the loss scale, gradients unscaled
    cse            merge duplicate computations
    dce            drop what no output, loss or gradient needs
    fusion         group nodes into kernels (annotates; `--no-fuse` gives one node a kernel)
    (memory planning runs per batch size, when a program first runs at that size, and
    rendering per backend, when a kernel backend first runs it: both depend on more than
    the graph)

What each pass leaves behind: attach_loss a scalar `graph.loss` and one target input per
target name; stable_losses no bce of a sigmoid and no cross_entropy of a softmax;
specialize no dropout and every batchnorm's `training` set; precision a `round_to` on each
operand and result of a product (none at fp32); autodiff `graph.grads` for every
trainable parameter (and input, on request); cse no two nodes computing the same value;
dce only nodes that feed an output, the loss or a gradient; fusion `graph.fusion`. Tests
run the verifier (passes/verify.py) after every pass.

Ordering notes: stable_losses runs before specialize so that training and inference fold
the same activations (specialize removes or rewrites dropout), and before autodiff so that
the backward pass is the stable one; dce runs last because autodiff and the loss rewrite
leave dead forward nodes behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from netlang.ir.graph import Graph
from netlang.passes import autodiff as ad
from netlang.passes import fusion, mode, precision, simplify
from netlang.passes import loss as loss_pass
from netlang.passes.loss import LossTerm
from netlang.passes.manager import Pass, PassManager


@dataclass(frozen=True)
class CompileOptions:
    """What kind of program to build from a checked graph."""

    training: bool = False                 # dropout active, batchnorm on batch statistics
    loss: tuple[LossTerm, ...] = ()        # parsed at the API boundary (config.parse_loss)
    wrt_inputs: bool = False               # gradients of the inputs too
    keep_outputs: bool = False             # a loss program that also returns the outputs
    differentiate: bool = True             # with a loss: add the backward pass
    fuse: bool = True                      # False: one kernel per node (bisecting)
    precision: str = "fp32"                # fp32 | tf32 | bf16 (passes/precision.py)


def passes_for(opts: CompileOptions) -> list[Pass]:
    """The pipeline for these options: the only list of pass names."""
    ps: list[Pass] = []
    if opts.loss:
        ps += [Pass("attach_loss", lambda g: loss_pass.attach_loss(g, opts.loss)),
               Pass("stable_losses", loss_pass.stable_losses)]
    ps.append(Pass("specialize", lambda g: mode.specialize(g, opts.training)))
    ps.append(Pass("precision", lambda g: precision.apply_precision(g, opts.precision)))
    if opts.loss and opts.differentiate:
        ps.append(Pass("autodiff", lambda g: ad.autodiff(g, opts.wrt_inputs)))
        ps.append(Pass("scale_loss", lambda g: precision.scale_loss(g)
                       if opts.precision == "fp16" else None))
    if opts.loss and not opts.keep_outputs:   # a training step returns loss and gradients
        ps.append(Pass("drop_outputs", lambda g: g.outputs.clear()))
    ps += [Pass("cse", simplify.cse),
           Pass("dce", simplify.dce),
           Pass("fusion", lambda g: setattr(g, "fusion", fusion.fuse(g, opts.fuse)))]
    return ps


def pass_names(opts: CompileOptions) -> list[str]:
    """The passes a program of this kind runs, in order (what `--dump-after` accepts)."""
    return [p.name for p in passes_for(opts)]


# Every pass name, in pipeline order (a training step with a loss runs them all).
PASS_NAMES = tuple(pass_names(CompileOptions(training=True, loss=(LossTerm(1.0, "mse", "", ""),))))


def compile_graph(g: Graph, opts: CompileOptions, dump_after: tuple[str, ...] = (),
                  verify_each: bool = False) -> dict[str, str]:
    """Run the pipeline over `g` (in place); returns the IR dumps asked for."""
    pm = PassManager(passes_for(opts), dump_after, verify_each)
    pm.run(g)
    return pm.dumps
