"""Export a network's inference graph to ONNX.

The graph exported is the checked forward graph specialised for inference (batchnorm with
its running statistics, dropout removed), op by op: netlang's fusion is a compiler
decision, so fused groups are exported as their ops. Every value is [N, ...] with a
symbolic batch axis `N`; parameters are initializers under their netlang names; each
node's `doc_string` is the `.net` line it comes from. An op or attribute ONNX cannot
express is E071 (losses and gradients never reach an export: they are not part of a
network's graph).

The `onnx` package builds and checks the model (the schema and checker are ONNX's own:
writing the protobuf by hand would duplicate both); it is imported only here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from netlang.diagnostics import error
from netlang.ops.loss import LOSS_OPS

OPSET = 17
TRAINING_ONLY = set(LOSS_OPS) | {"sum_all", "sum_to", "constant", "broadcast_like",
                                 "dropout_mask"}


@dataclass
class Exported:
    model: object                          # onnx.ModelProto
    notes: list[str] = field(default_factory=list)


def _onnx():
    try:
        import onnx
    except ImportError:
        raise error("E072", "export needs the `onnx` package, which is not installed", None,
                    help="pip install 'netlang[onnx]' (or: pip install onnx)") from None
    return onnx


def export_model(net, weights: dict[str, np.ndarray], opset: int = OPSET,
                 fold_batchnorm: bool = False) -> Exported:
    """The ONNX model of `net`'s inference graph with `weights` as initializers; with
    `fold_batchnorm`, each batchnorm right after a convolution or dense layer is folded
    into its weights and bias (see `_fold_batchnorm`)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    from netlang.passes.mode import specialize
    from netlang.passes.simplify import dce

    if opset < 13:
        raise error("E071", f"opset {opset} is too old: netlang exports opset 13 or newer "
                    "(Softmax over one axis, Resize with scales)", None,
                    help=f"use --opset {OPSET}")
    g = copy.deepcopy(net.graph)
    specialize(g, False)
    dce(g)
    notes: list[str] = []
    if fold_batchnorm:
        weights, kept = _fold_batchnorm(g, weights)
        if kept:
            notes.append(f"{len(kept)} batchnorm(s) kept as BatchNormalization (not right "
                         "after a convolution or dense layer whose only reader they are): "
                         + ", ".join(kept[:4]) + (", ..." if len(kept) > 4 else ""))
    names: dict[int, str] = {}
    used: set[str] = set()

    def unique(base: str) -> str:
        name, i = base, 1
        while name in used:
            i += 1
            name = f"{base}_{i}"
        used.add(name)
        return name

    inputs, inits, nodes = [], [], []
    for n in g.nodes:
        if n.op == "input":
            names[n.id] = unique(n.name)
            inputs.append(helper.make_tensor_value_info(
                names[n.id], TensorProto.FLOAT, ["N", *n.type.shape]))
        elif n.op == "param":
            if n.name not in weights:
                raise error("E042", f"weights have no `{n.name}`", n.span)
            arr = np.asarray(weights[n.name], dtype=np.float32)
            if arr.shape != n.type.shape:
                raise error("E042", f"weight `{n.name}` is {list(arr.shape)}, the network "
                            f"needs {list(n.type.shape)}", n.span)
            names[n.id] = unique(n.name)
            inits.append(numpy_helper.from_array(arr, names[n.id]))
    consts: list = []

    def const(base: str, values, dtype=np.int64) -> str:
        name = unique(base)
        consts.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    out_names: dict[int, str] = {}
    for key, node in g.outputs.items():
        out_names.setdefault(node.id, key)
    for n in g.nodes:
        if n.op in ("input", "param"):
            continue
        if n.op in TRAINING_ONLY or n.op.endswith("_grad"):   # never in a network's graph
            raise AssertionError(f"{n.name}: training-only op {n.op} in an inference graph")
        doc = f"{n.span.file.rsplit('/', 1)[-1]}:{n.span.line}" if n.span else ""
        out = unique(out_names.get(n.id, n.name))   # a network output keeps its name
        names[n.id] = out
        ins = [names[i.id] for i in n.inputs]
        for op_type, node_ins, node_outs, attrs in _lower(n, ins, out, const, unique, opset):
            nodes.append(helper.make_node(op_type, node_ins, node_outs, name=unique(
                f"{n.name}/{op_type}"), doc_string=doc, **attrs))
    outputs = []
    for key, node in g.outputs.items():
        name = names[node.id]
        if name != key:   # a second output of the same value, or an input passed through
            alias = unique(key)
            nodes.append(helper.make_node("Identity", [name], [alias], name=unique(alias)))
            name = alias
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                     ["N", *node.type.shape]))
    graph = helper.make_graph(nodes, net.name, inputs, outputs, initializer=inits + consts,
                              doc_string=f"netlang network {net.name} from {net.file}")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="netlang")
    # the blocks of the source, so that `netlang import-onnx` writes the same blocks back
    # (node names hold the block and statement scopes, but cannot tell them apart)
    helper.set_model_props(model, {"netlang_blocks": ",".join(sorted(net.source.blocks))})
    if opset <= 17:   # the IR version runtimes of that opset read (onnx writes its newest)
        model.ir_version = min(model.ir_version, 8)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    return Exported(model, notes)


FOLDABLE = ("conv", "conv_transpose", "dense")


def _fold_batchnorm(g, weights: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                 list[str]]:
    """Fold each inference batchnorm into the layer before it, PyTorch's
    `fuse_conv_bn_eval`: with s = gamma / sqrt(var + eps), the layer's weight is scaled by s
    per output channel and its bias becomes (bias - mean) * s + beta (a layer without a
    bias gets one). Only where that layer's output is read by the batchnorm alone, its
    weight by it alone, and (a transposed convolution) it has one group. Returns the new
    weights and the batchnorms kept; a folded batchnorm and its parameters leave `g`."""
    from netlang.ir.types import TensorType

    weights = dict(weights)
    users = g.users()
    outs = {n.id for n in g.outputs.values()}
    kept = []
    # one without running statistics normalises with the batch's: nothing to fold
    for bn in [n for n in g.nodes if n.op == "batchnorm"
               and n.attrs.get("track_running_stats", True)]:
        layer = bn.inputs[0]
        ok = (layer.op in FOLDABLE and users[layer.id] == [bn] and layer.id not in outs
              and len(users[layer.inputs[1].id]) == 1
              and not (layer.op == "conv_transpose" and layer.attrs["groups"] != 1))
        if not ok:
            kept.append(bn.name)
            continue
        stats = [weights[i.name].astype(np.float64) for i in bn.inputs[1:]]
        if bn.attrs["affine"]:
            gamma, beta, mean, var = stats
        else:
            mean, var = stats
            gamma, beta = np.ones_like(mean), np.zeros_like(mean)
        scale = gamma / np.sqrt(var + float(bn.attrs["eps"]))
        wnode = layer.inputs[1]
        w = weights[wnode.name].astype(np.float64)
        axis = 1 if layer.op == "conv_transpose" else 0   # [in, out, k...] vs [out, ...]
        shape = [1] * w.ndim
        shape[axis] = -1
        weights[wnode.name] = (w * scale.reshape(shape)).astype(np.float32)
        if len(layer.inputs) > 2:
            bias = weights[layer.inputs[2].name].astype(np.float64)
            bname = layer.inputs[2].name
        else:   # a bias for the folded shift, under the name the layer would give it
            bias = np.zeros_like(scale)
            bname = f"{layer.name}.bias"
            p = g.add("param", [], {"role": "bias"}, name=bname, span=layer.span,
                      type=TensorType((int(scale.shape[0]),), batched=False))
            g.nodes.remove(p)
            g.nodes.insert(g.nodes.index(wnode) + 1, p)
            layer.inputs.append(p)
            layer.attrs["bias"] = True
        weights[bname] = ((bias - mean) * scale + beta).astype(np.float32)
        g.replace_all_uses(bn, layer)
        g.remove([bn, *bn.inputs[1:]])   # its parameters are read by nothing else
    return weights, kept


def _lower_tokens(n, ins, out, const, unique, opset):
    """The ops on tokens and axes (per-sample axis a is ONNX axis a + 1), or None."""
    a = n.attrs
    op = n.op
    if op == "dense" and n.type.rank > 1:   # rows of [N, T, F] times W^T, plus the bias
        wt, mm = unique(f"{n.name}.weight_t"), unique(f"{n.name}.matmul")
        nodes = [("Transpose", [ins[1]], [wt], {"perm": [1, 0]})]
        if not a["bias"]:
            return nodes + [("MatMul", [ins[0], wt], [out], {})]
        return nodes + [("MatMul", [ins[0], wt], [mm], {}), ("Add", [mm, ins[2]], [out], {})]
    if op == "permute":
        return [("Transpose", ins, [out], {"perm": [0] + [i + 1 for i in a["axes"]]})]
    if op == "matmul":
        steps, xs = [], list(ins)
        for k, t in enumerate((a["trans_a"], a["trans_b"])):
            if t:
                rank = n.inputs[k].type.rank + (1 if n.inputs[k].type.batched else 0)
                perm = list(range(rank - 2)) + [rank - 1, rank - 2]
                name = unique(f"{n.name}.t{k}")
                steps.append(("Transpose", [xs[k]], [name], {"perm": perm}))
                xs[k] = name
        return steps + [("MatMul", xs, [out], {})]
    if op in ("mean", "sum"):   # ReduceSum takes its axes as an input from opset 13
        kind = "ReduceMean" if op == "mean" else "ReduceSum"
        if opset >= 18 or op == "sum":
            return [(kind, [ins[0], const(f"{n.name}.axes", [a["axis"] + 1])], [out],
                     {"keepdims": 0})]
        return [(kind, ins, [out], {"axes": [a["axis"] + 1], "keepdims": 0})]
    if op == "layernorm":
        if opset < 17:
            raise error("E071", f"`{n.name}`: LayerNormalization needs opset 17 or newer",
                        n.span, help="use --opset 17")
        if a["affine"]:
            return [("LayerNormalization", ins, [out], {"axis": -1, "epsilon": float(a["eps"])})]
        d = n.type.shape[-1]
        scale = const(f"{n.name}.unit_scale", np.ones(d), np.float32)
        shift = const(f"{n.name}.zero_shift", np.zeros(d), np.float32)
        return [("LayerNormalization", [ins[0], scale, shift], [out],
                 {"axis": -1, "epsilon": float(a["eps"])})]
    if op in ("groupnorm", "instancenorm"):
        # InstanceNormalization normalises each channel of [N, C, ...]; a group is a
        # channel of the input reshaped to [N, G, -1] (PyTorch's own export of GroupNorm)
        c, g = n.type.shape[0], a["groups"]
        eps = float(a["eps"])
        w, b = (ins[1], ins[2]) if a["affine"] else (None, None)
        if op == "instancenorm":
            scale = w or const(f"{n.name}.unit_scale", np.ones(c), np.float32)
            shift = b or const(f"{n.name}.zero_shift", np.zeros(c), np.float32)
            return [("InstanceNormalization", [ins[0], scale, shift], [out],
                     {"epsilon": eps})]
        grouped, normed = unique(f"{n.name}.grouped"), unique(f"{n.name}.normed")
        steps = [("Reshape", [ins[0], const(f"{n.name}.groups", [0, g, -1])], [grouped], {}),
                 ("InstanceNormalization", [grouped, const(f"{n.name}.ones", np.ones(g),
                                                           np.float32),
                                            const(f"{n.name}.zeros", np.zeros(g), np.float32)],
                  [normed], {"epsilon": eps})]
        if not a["affine"]:
            return steps + [("Reshape", [normed, const(f"{n.name}.shape", [0, *n.type.shape])],
                             [out], {})]
        back, scaled = unique(f"{n.name}.back"), unique(f"{n.name}.scaled")
        per_channel = [c] + [1] * (n.type.rank - 1)
        wr, br = unique(f"{n.name}.weight_c"), unique(f"{n.name}.bias_c")
        return steps + [
            ("Reshape", [normed, const(f"{n.name}.shape", [0, *n.type.shape])], [back], {}),
            ("Reshape", [w, const(f"{n.name}.per_channel", per_channel)], [wr], {}),
            ("Reshape", [b, const(f"{n.name}.per_channel_b", per_channel)], [br], {}),
            ("Mul", [back, wr], [scaled], {}), ("Add", [scaled, br], [out], {})]
    return None


def _batch_statistics_norm(n, ins, out, const, unique, opset):
    """A batchnorm without running statistics normalises with the batch's in inference
    too; ONNX's BatchNormalization in inference reads stored ones, so it is written out:
    the mean and (biased) variance over the batch and spatial axes, then the affine."""
    a = n.attrs
    rank = n.type.rank + 1
    axes = [0] + list(range(2, rank))

    def reduce_mean(x, y):
        if opset >= 18:
            return ("ReduceMean", [x, const(f"{n.name}.axes", axes)], [y], {"keepdims": 1})
        return ("ReduceMean", [x], [y], {"axes": axes, "keepdims": 1})

    mean, d, sq, var = (unique(f"{n.name}.{k}") for k in ("mean", "centred", "sq", "var"))
    shifted, std = unique(f"{n.name}.var_eps"), unique(f"{n.name}.std")
    eps = const(f"{n.name}.eps", np.array(a["eps"]), np.float32)
    normed = out if not a["affine"] else unique(f"{n.name}.normed")
    steps = [reduce_mean(ins[0], mean), ("Sub", [ins[0], mean], [d], {}),
             ("Mul", [d, d], [sq], {}), reduce_mean(sq, var),
             ("Add", [var, eps], [shifted], {}), ("Sqrt", [shifted], [std], {}),
             ("Div", [d, std], [normed], {})]
    if not a["affine"]:
        return steps
    per_channel = [n.type.shape[0]] + [1] * (n.type.rank - 1)
    wr, br, scaled = (unique(f"{n.name}.{k}") for k in ("weight_c", "bias_c", "scaled"))
    return steps + [
        ("Reshape", [ins[1], const(f"{n.name}.per_channel", per_channel)], [wr], {}),
        ("Reshape", [ins[2], const(f"{n.name}.per_channel_b", per_channel)], [br], {}),
        ("Mul", [normed, wr], [scaled], {}), ("Add", [scaled, br], [out], {})]


def _adaptive_avgpool(n, ins, out, const, unique):
    """GlobalAveragePool for size 1, AveragePool where every size divides its axis, and
    otherwise one MatMul per axis with the averaging matrix (ops/pool.adaptive_matrix):
    ONNX has no adaptive pool, the product is exact."""
    from netlang.ops.pool import adaptive_matrix

    sp_in, size = n.inputs[0].type.shape[1:], n.attrs["size"]
    if all(s == 1 for s in size):
        return [("GlobalAveragePool", ins, [out], {})]
    if all(h % s == 0 for h, s in zip(sp_in, size)):
        k = [h // s for h, s in zip(sp_in, size)]
        return [("AveragePool", ins, [out], {"kernel_shape": k, "strides": k})]
    rank = len(sp_in) + 2
    steps, x = [], ins[0]
    for j, (h, s) in enumerate(zip(sp_in, size)):
        ax = 2 + j
        perm = list(range(rank))
        perm[ax], perm[-1] = perm[-1], perm[ax]   # axis j last, and back (its own inverse)
        m = const(f"{n.name}.avg{j}", adaptive_matrix(h, s).T, np.float32)
        last = j == len(size) - 1
        if ax == rank - 1:
            y = out if last else unique(f"{n.name}.axis{j}")
            steps.append(("MatMul", [x, m], [y], {}))
        else:
            t1, t2 = unique(f"{n.name}.t{j}"), unique(f"{n.name}.mm{j}")
            y = out if last else unique(f"{n.name}.axis{j}")
            steps += [("Transpose", [x], [t1], {"perm": perm}),
                      ("MatMul", [t1, m], [t2], {}),
                      ("Transpose", [t2], [y], {"perm": perm})]
        x = y
    return steps


def _pads(flat: tuple[int, ...]) -> list[int]:
    """netlang's (lo, hi) per spatial dim -> ONNX's [begins..., ends...]."""
    return list(flat[0::2]) + list(flat[1::2])


def _lower(n, ins: list[str], out: str, const, unique, opset: int = OPSET):
    """[(op_type, inputs, outputs, attributes)] for one netlang node."""
    a = n.attrs
    op = n.op
    tokens = _lower_tokens(n, ins, out, const, unique, opset)
    if tokens is not None:
        return tokens
    simple = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "add": "Add",
              "mul": "Mul"}
    if op in simple:
        return [(simple[op], ins, [out], {})]
    if op == "leaky_relu":
        return [("LeakyRelu", ins, [out], {"alpha": float(a["alpha"])})]
    if op == "hardtanh":
        lo = const(f"{n.name}.min", np.float32(a["min_val"]), np.float32)
        hi = const(f"{n.name}.max", np.float32(a["max_val"]), np.float32)
        return [("Clip", [ins[0], lo, hi], [out], {})]
    if op == "prelu":   # the slope [C] (or [1]) broadcast over the channel axis
        slope = unique(f"{n.name}.slope")
        shape = [-1] + [1] * (n.type.rank - 1) if n.type.rank else [-1]
        return [("Reshape", [ins[1], const(f"{n.name}.slope_shape", shape)], [slope], {}),
                ("PRelu", [ins[0], slope], [out], {})]
    if op == "elu":
        return [("Elu", ins, [out], {"alpha": float(a["alpha"])})]
    if op == "silu":
        s = unique(f"{n.name}.sigmoid")
        return [("Sigmoid", ins, [s], {}), ("Mul", [ins[0], s], [out], {})]
    if op == "gelu":   # Gelu is opset 20: its formula in opset 13 ops
        x, half = ins[0], const(f"{n.name}.half", [0.5], np.float32)
        one = const(f"{n.name}.one", [1.0], np.float32)
        t = [unique(f"{n.name}.t{i}") for i in range(6)]
        if a["approximate"] == "tanh":
            cube = const(f"{n.name}.c", [0.044715], np.float32)
            k = const(f"{n.name}.k", [0.7978845608028654], np.float32)
            x3, xt = unique(f"{n.name}.x3"), unique(f"{n.name}.xt")
            return [("Mul", [x, x], [t[0]], {}), ("Mul", [t[0], x], [x3], {}),
                    ("Mul", [x3, cube], [t[1]], {}), ("Add", [x, t[1]], [t[2]], {}),
                    ("Mul", [t[2], k], [t[3]], {}), ("Tanh", [t[3]], [t[4]], {}),
                    ("Add", [t[4], one], [t[5]], {}),
                    ("Mul", [x, t[5]], [xt], {}), ("Mul", [xt, half], [out], {})]
        r2 = const(f"{n.name}.rsqrt2", [0.7071067811865476], np.float32)
        return [("Mul", [x, r2], [t[0]], {}), ("Erf", [t[0]], [t[1]], {}),
                ("Add", [t[1], one], [t[2]], {}), ("Mul", [x, t[2]], [t[3]], {}),
                ("Mul", [t[3], half], [out], {})]
    if op == "softplus":   # ONNX Softplus has no beta: softplus(beta x) / beta
        if a["beta"] == 1.0:
            return [("Softplus", ins, [out], {})]
        beta = const(f"{n.name}.beta", [a["beta"]], np.float32)
        bx, sp = unique(f"{n.name}.bx"), unique(f"{n.name}.sp")
        return [("Mul", [ins[0], beta], [bx], {}), ("Softplus", [bx], [sp], {}),
                ("Div", [sp, beta], [out], {})]
    if op == "scale":
        return [("Mul", [ins[0], const(f"{n.name}.factor", [a["factor"]], np.float32)],
                 [out], {})]
    if op == "softmax" and a.get("causal"):   # -inf on the keys after each query
        from netlang.ops.elementwise import causal_mask
        keep = causal_mask(n.type.shape)
        mask = const(f"{n.name}.causal", np.where(keep, 0.0, -np.inf), np.float32)
        masked = unique(f"{n.name}.masked")
        return [("Add", [ins[0], mask], [masked], {}),
                ("Softmax", [masked], [out], {"axis": a["axis"] + 1})]
    if op == "softmax":
        return [("Softmax", ins, [out], {"axis": a["axis"] + 1})]
    if op == "log_softmax":
        return [("LogSoftmax", ins, [out], {"axis": a["axis"] + 1})]
    if op in ("conv", "conv_transpose"):
        if any(p < 0 for p in a["pad"]):
            raise error("E071", f"`{n.name}`: a negative padding (a crop) has no ONNX "
                        "convolution attribute", n.span)
        attrs = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
                 "pads": _pads(a["pad"]), "dilations": list(a["dilation"]),
                 "group": int(a["groups"])}
        if op == "conv_transpose":
            attrs["output_padding"] = list(a["output_padding"])
        return [("Conv" if op == "conv" else "ConvTranspose", ins, [out], attrs)]
    if op == "dense" and n.type.rank == 1:
        return [("Gemm", ins, [out], {"transB": 1})]
    if op == "batchnorm" and a.get("training"):   # track_running_stats=false
        return _batch_statistics_norm(n, ins, out, const, unique, opset)
    if op == "batchnorm":
        if a["affine"]:
            x, w, b, mean, var = ins
        else:
            x, mean, var = ins
            c = n.type.shape[0]
            # not named as parameters: `import-onnx` reads these names as affine=false
            w = const(f"{n.name}.unit_scale", np.ones(c), np.float32)
            b = const(f"{n.name}.zero_shift", np.zeros(c), np.float32)
        return [("BatchNormalization", [x, w, b, mean, var], [out],
                 {"epsilon": float(a["eps"])})]
    if op == "maxpool":
        return [("MaxPool", ins, [out], {
            "kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
            "pads": _pads(a["pad"]), "dilations": list(a["dilation"]),
            "ceil_mode": int(bool(a["ceil"]))})]
    if op == "avgpool":
        attrs = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]),
                 "pads": _pads(a["pad"]), "ceil_mode": int(bool(a["ceil"])),
                 "count_include_pad": int(bool(a["count_include_pad"]))}
        if any(d != 1 for d in a["dilation"]):
            if opset < 19:
                raise error("E071", f"`{n.name}`: AveragePool takes dilations from opset 19",
                            n.span, help="use --opset 19")
            attrs["dilations"] = list(a["dilation"])
        return [("AveragePool", ins, [out], attrs)]
    if op == "adaptive_avgpool":
        return _adaptive_avgpool(n, ins, out, const, unique)
    if op == "global_avgpool":
        pooled = unique(f"{n.name}.pooled")
        return [("GlobalAveragePool", ins, [pooled], {}),
                ("Flatten", [pooled], [out], {"axis": 1})]
    if op == "global_maxpool":
        pooled = unique(f"{n.name}.pooled")
        return [("GlobalMaxPool", ins, [pooled], {}),
                ("Flatten", [pooled], [out], {"axis": 1})]
    if op == "flatten":
        if a.get("axis", 0) == 0:
            return [("Flatten", ins, [out], {"axis": 1})]
        return [("Reshape", [ins[0], const(f"{n.name}.shape", [-1, *n.type.shape])], [out],
                 {})]
    if op == "reshape":
        return [("Reshape", [ins[0], const(f"{n.name}.shape", [-1, *n.type.shape])], [out],
                 {})]
    if op == "concat":
        steps, xs = [], list(ins)
        batched = next(name for name, x in zip(ins, n.inputs) if x.type.batched)
        for k, x in enumerate(n.inputs):
            if x.type.batched:
                continue
            # a parameter, repeated for every sample: [1, ...] expanded to [N, ...]
            u, sh, nb, full, e = (unique(f"{n.name}.{t}{k}") for t in
                                  ("unsqueezed", "shape", "batch", "expand_to", "expanded"))
            steps += [("Unsqueeze", [ins[k], const(f"{n.name}.axis0_{k}", [0])], [u], {}),
                      ("Shape", [batched], [sh], {}),
                      ("Slice", [sh, const(f"{n.name}.zero{k}", [0]),
                                 const(f"{n.name}.one{k}", [1])], [nb], {}),
                      ("Concat", [nb, const(f"{n.name}.dims{k}", list(x.type.shape))], [full],
                       {"axis": 0}),
                      ("Expand", [u, full], [e], {})]
            xs[k] = e
        return steps + [("Concat", xs, [out], {"axis": a.get("axis", 0) + 1})]
    if op == "slice_axis":
        return [("Slice", [ins[0], const(f"{n.name}.starts", [a["start"]]),
                           const(f"{n.name}.ends", [a["stop"]]),
                           const(f"{n.name}.axes", [a["axis"] + 1])], [out], {})]
    if op == "slice_channels":
        return [("Slice", [ins[0], const(f"{n.name}.starts", [a["start"]]),
                           const(f"{n.name}.ends", [a["stop"]]),
                           const(f"{n.name}.axes", [1])], [out], {})]
    if op == "crop":
        box = a["box"]
        nd = len(box) // 2
        src = n.inputs[0].type.shape[1:]
        return [("Slice", [ins[0], const(f"{n.name}.starts", list(box[0::2])),
                           const(f"{n.name}.ends", [src[i] - box[2 * i + 1]
                                                    for i in range(nd)]),
                           const(f"{n.name}.axes", list(range(2, 2 + nd)))], [out], {})]
    if op == "pad":   # box = (before, after) per spatial dim
        box = a["box"]
        mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
                "circular": "wrap"}[a.get("mode", "constant")]
        if mode == "wrap" and opset < 19:
            raise error("E071", f"`{n.name}`: circular padding needs opset 19 or newer (Pad "
                        "mode `wrap`)", n.span, help="use --opset 19")
        pad_ins = [ins[0], const(f"{n.name}.pads", [0, 0, *box[0::2], 0, 0, *box[1::2]])]
        if a.get("value", 0.0):
            pad_ins.append(const(f"{n.name}.value", np.array(a["value"]), np.float32))
        return [("Pad", pad_ins, [out], {"mode": mode})]
    if op == "upsample":
        if a["mode"] == "nearest":
            attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                     "nearest_mode": "floor"}
        else:
            ctm = "align_corners" if a.get("align_corners") else "half_pixel"
            attrs = {"mode": "cubic" if a["mode"] == "bicubic" else "linear",
                     "coordinate_transformation_mode": ctm}
            if a["mode"] == "bicubic":
                attrs["cubic_coeff_a"] = -0.75   # PyTorch's
        if a.get("size") is not None:   # sizes = (batch, channels) of x, then the size
            shape = unique(f"{n.name}.shape")
            head = unique(f"{n.name}.batch_channels")
            full = unique(f"{n.name}.full_size")
            return [("Shape", [ins[0]], [shape], {}),
                    ("Slice", [shape, const(f"{n.name}.zero", [0]), const(f"{n.name}.two", [2]),
                               const(f"{n.name}.axis0", [0])], [head], {}),
                    ("Concat", [head, const(f"{n.name}.spatial", list(a["size"]))], [full],
                     {"axis": 0}),
                    ("Resize", [ins[0], "", "", full], [out], attrs)]
        scales = [1.0, 1.0] + [float(v) for v in a["scale"]]
        return [("Resize", [ins[0], "", const(f"{n.name}.scales", scales, np.float32)],
                 [out], attrs)]
    raise error("E071", f"`{n.name}`: no ONNX export for the op `{op}`", n.span,
                help="file an issue with the network; the op list is in docs/interop.md")
