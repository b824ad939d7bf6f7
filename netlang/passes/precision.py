"""Reduced-precision numerics (`precision = tf32 | bf16 | fp16`), as `round_to` nodes around
products (conv, conv_transpose, dense, matmul), so that every backend computes what the
tensor cores would: the products read rounded operands and accumulate in float32;
everything else (activations, normalisation, softmax, losses, reductions, the optimizer
and its master weights) stays float32.

- bf16 (a storage type, `torch.autocast(dtype=torch.bfloat16)`): a product's inputs,
  weights and bias are rounded to bf16, and so is its output (the activation is stored in
  bf16); the gradients of those values are bf16 too (a value stored in bf16 has a bf16
  gradient), so the backward products read bf16 operands and write bf16 results.
- fp16 is bf16 with IEEE half precision (11 significant bits, largest 65504), whose range
  small gradients fall out of: a training step scales the loss (`scale_loss`, after
  autodiff) as torch.amp.GradScaler does, the backends/step.py schedule choosing the scale.
- tf32 (a compute mode, PyTorch's `allow_tf32`): a product's inputs and weights are
  rounded where the GEMM reads them, its output and bias stay float32; in the backward
  pass the GEMMs read the incoming gradient rounded to tf32 and write float32.

On the NumPy, cpu and cuda-emu backends this is an emulation (the rounding is exact, the
products run in float32 or float64), so a user previews the numerics of a GPU run on a
laptop; the tolerances are in docs/training.md.
"""

from __future__ import annotations

from netlang.ir.graph import Graph
from netlang.ir.types import TensorType
from netlang.passes.shape_infer import infer_node

PRODUCTS = ("conv", "conv_transpose", "dense", "matmul")
STORAGE = ("bf16", "fp16")   # types values are stored in (tf32 is a way of multiplying)
# The loss scale and its inverse: scalar parameters of an fp16 training step, written by
# the step before it runs (1 when a caller gives none: no scaling).
LOSS_SCALE, INVERSE_SCALE = "loss_scale", "loss_scale.inverse"


def apply_precision(g: Graph, precision: str) -> None:
    if precision == "fp32":
        return
    storage = precision in STORAGE
    for n in [n for n in g.nodes if n.op in PRODUCTS]:
        for k, x in enumerate(list(n.inputs)):
            if x.op == "param" and x.attrs.get("role") == "bias" and not storage:
                continue   # tf32: the bias is added in float32, after the product
            before = g.nodes[g.nodes.index(n) - 1]
            r = g.add("round_to", [x], {"precision": precision, "forward": True,
                                       "backward": storage},
                      name=f"{n.name}.{precision}{k}", span=n.span, after=before)
            infer_node(r)
            n.inputs[k] = r
        out = g.add("round_to", [n], {"precision": precision, "forward": storage,
                                      "backward": True},
                    name=f"{n.name}.{precision}", span=n.span, after=n)
        infer_node(out)
        g.replace_all_uses(n, out)


def scale_loss(g: Graph) -> None:
    """The loss scaling of an fp16 training step, after autodiff: the backward pass starts
    from the loss scale S instead of 1 (so the gradients it rounds to fp16 are S times
    larger, above fp16's underflow), every gradient is multiplied by 1/S before the update
    (float32), and the loss the step reports becomes `loss + 0 * sum(every gradient)`:
    the loss itself when every gradient is finite, NaN when one overflowed, so that the
    backends' rule for a non-finite loss (weights and state untouched) skips the step."""
    seed = next((n for n in g.nodes if n.name == "loss.grad_seed"), None)
    if seed is None or not g.grads:
        return
    scalar = TensorType((), batched=False)
    scale = g.add("param", [], {"role": "loss_scale", "trainable": False}, name=LOSS_SCALE,
                  type=scalar, after=seed)
    g.replace_all_uses(seed, scale)
    g.remove([seed])
    inverse = g.add("param", [], {"role": "loss_scale", "trainable": False},
                    name=INVERSE_SCALE, type=scalar)
    check = None
    for k, grad in list(g.grads.items()):
        unscaled = g.add("mul", [grad, inverse], name=f"{grad.name}.unscaled", type=grad.type)
        g.grads[k] = unscaled
        total = g.add("sum_all", [unscaled], name=f"{grad.name}.sum", type=scalar)
        check = total if check is None else g.add("add", [check, total],
                                                  name=f"{grad.name}.check", type=scalar)
    zero = g.add("scale", [check], {"factor": 0.0}, name="loss.finite_gradients", type=scalar)
    g.loss = g.add("add", [g.loss, zero], name="loss.checked", type=scalar)
