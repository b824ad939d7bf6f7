"""Reduced-precision numerics (`precision = tf32 | bf16`), as `round_to` nodes around the
products (conv, conv_transpose, dense, matmul), so that every backend computes what the
tensor cores would: the products read rounded operands and accumulate in float32;
everything else (activations, normalisation, softmax, losses, reductions, the optimizer
and its master weights) stays float32.

- bf16 (a storage type, `torch.autocast(dtype=torch.bfloat16)`): a product's inputs,
  weights and bias are rounded to bf16, and so is its output (the activation is stored in
  bf16); the gradients of those values are bf16 too (a value stored in bf16 has a bf16
  gradient), so the backward products read bf16 operands and write bf16 results.
- tf32 (a compute mode, PyTorch's `allow_tf32`): a product's inputs and weights are
  rounded where the GEMM reads them, its output and bias stay float32; in the backward
  pass the GEMMs read the incoming gradient rounded to tf32 and write float32.

On the NumPy, cpu and cuda-emu backends this is an emulation (the rounding is exact, the
products run in float32 or float64), so a user previews the numerics of a GPU run on a
laptop; the tolerances are in docs/training.md.
"""

from __future__ import annotations

from netlang.ir.graph import Graph
from netlang.passes.shape_infer import infer_node

PRODUCTS = ("conv", "conv_transpose", "dense", "matmul")


def apply_precision(g: Graph, precision: str) -> None:
    if precision == "fp32":
        return
    storage = precision == "bf16"
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
