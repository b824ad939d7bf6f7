"""Loop-level lowerings of the convolutions of ops/nn.py (their NumPy cores are in
ops/_conv.py): direct kernels that gather over the window (forward, transposed, input
gradient) and weight gradients as reductions; large layers as im2col + GEMM + epilogue.
Split from kernels/nn.py, which lowers the rest of the family (dense, batchnorm, dropout).
"""

from __future__ import annotations

import math

from netlang.ir.fusion import Group
from netlang.ir.graph import Node
from netlang.ir.types import TensorType
from netlang.kernels.builder import (
    Gemm, KernelBuilder, Loop, _at, _decompose, _offsets_of, gather_taps, nest, window_taps,
)
from netlang.kernels.registry import lowers
from netlang.ops import registry


def _gemm_conv(r: KernelBuilder, n: Node, x: Node, w_shape: tuple[int, ...]) -> bool:
    """Whether a convolution-like node goes through cuBLAS: by its multiply-adds per sample
    (the op's `macs` rule; a convolution's gradients cost what the convolution does)."""
    macs = registry.get(n.op).macs([i.type for i in n.inputs], n.type, n.attrs)
    return n.attrs["groups"] == 1 and macs >= r.gemm_conv_macs


def _im2col(r: KernelBuilder, n: Node, x: Node, k, out_sp) -> tuple[str, int, int]:
    """Scratch cols [N, C * prod(k), prod(out)] of x for a convolution's windows."""
    at = n.attrs
    s, d, p = at["stride"], at["dilation"], at["pad"]
    nd = len(k)
    cin, sp_in = x.type.shape[0], x.type.shape[1:]
    kk, P = math.prod(k), math.prod(out_sp)
    K = cin * kk
    cols = r.new_scratch(K * P, True)
    t = TensorType((K, P))
    body = [f"int ci = o0 / {kk}; int tap = o0 % {kk}; long long q = o1;"]
    body += _decompose(tuple(k), "tap", "t") if nd else []
    body += _decompose(tuple(out_sp), "q", "u")
    conds, idx = [], []
    for j in range(nd):
        body.append(f"int i{j} = u{j} * {s[j]} - {p[2 * j]} + t{j} * {d[j]};")
        conds.append(f"i{j} >= 0 && i{j} < {sp_in[j]}")
        idx.append(f"i{j}")
    body.append(f"float v = ({' && '.join(conds)}) ? {r._xat(x, 'ci', idx)} : 0.0f;")
    r.emit_map(n.name + "_im2col", [n], cols, t, {r.key(x): "const float*"}, body)
    return cols, K, P


def _conv_gemm(r: KernelBuilder, grp: Group) -> None:
    """y[n] = W [Cout, K] @ cols[n] [K, P] (batched GEMM), then bias and the epilogue."""
    n = grp.anchor
    x, w = n.inputs[0], n.inputs[1]
    cout = n.type.shape[0]
    cols, K, P = _im2col(r, n, x, tuple(n.attrs["kernel"]), n.type.shape[1:])
    gemm = Gemm(r.key(w), cols, "", (cout, K), (-1, K, P), (-1, cout, P), False, False,
                (n.id,))
    _gemm_then(r, grp, gemm, n.type, n.inputs[2] if n.attrs["bias"] else None)


def _conv_grad_weight_gemm(r: KernelBuilder, grp: Group) -> None:
    """dW = sum_n dy[n] [Cout, P] @ cols[n]^T [P, K]: a batched GEMM, then a batch sum."""
    n = grp.anchor
    dy, x = n.inputs
    cout = dy.type.shape[0]
    cols, K, P = _im2col(r, n, x, tuple(n.attrs["kernel"]), dy.type.shape[1:])
    per = r.new_scratch(cout * K, True)
    r.add_gemm(Gemm(r.key(dy), cols, per, (-1, cout, P), (-1, K, P),
                           (-1, cout, K), False, True, (n.id,)))
    r._info(f"gemm:{n.name}", [n], "gemm")
    size = cout * K
    body = ["float v = 0.0f;",
            f"for (int b = 0; b < N; ++b) v += {per}[(long long)b * {size} + i];"]
    r.emit_map(n.name + "_batch_sum", grp.nodes, r.key(n), n.type,
                  {per: "const float*"}, body)


def _conv_grad_input_gemm(r: KernelBuilder, grp: Group) -> None:
    """dcols[n] = W^T [K, Cout] @ dy[n] [Cout, P], then a col2im gather per input pixel
    (no atomics), which also runs the fused epilogue (the activation's gradient mask)."""
    n = grp.anchor
    dy, w = n.inputs
    at = n.attrs
    k = tuple(w.type.shape[2:])
    s, d, p = at["stride"], at["dilation"], at["pad"]
    nd = len(k)
    cout, out_sp = dy.type.shape[0], dy.type.shape[1:]
    cin = n.type.shape[0]
    kk, P = math.prod(k), math.prod(out_sp)
    K = cin * kk
    dcols = r.new_scratch(K * P, True)
    r.add_gemm(Gemm(r.key(w), r.key(dy), dcols, (cout, K), (-1, cout, P),
                           (-1, K, P), True, False, (n.id,)))
    r._info(f"gemm:{n.name}", [n], "gemm")
    tap = " + ".join(f"k{j} * {math.prod(k[j + 1:])}" for j in range(nd)) or "0"
    pos = " + ".join(f"u{j} * {math.prod(out_sp[j + 1:])}" for j in range(nd)) or "0"
    body = ["float acc = 0.0f;"] + nest(gather_taps(k, s, d, p, out_sp, "u"), [
        f"acc += {dcols}[(long long)n * {K * P} + (long long)(o0 * {kk} + {tap}) * {P} + "
        f"{pos}];"]) + ["float v = acc;"]
    r.finish_map(grp, grp.name + "_col2im", {dcols: "const float*"}, body)


# -- host routines (the C dialect): im2col + BLAS per image, backends/cpu/routines.h --------

def _routine_ok(r: KernelBuilder, n: Node) -> bool:
    return r.dialect.routines and n.attrs["groups"] == 1 and len(n.attrs["stride"]) in (1, 2)


def _conv_struct(n: Node, inner: TensorType, outer: TensorType, k) -> str:
    """`nl_conv{...}`: the input side (C, H, W), the output side (K, OH, OW) and the window;
    a 1-D convolution is a 2-D one of height 1."""
    at = n.attrs
    s, d, p = list(at["stride"]), list(at["dilation"]), list(at["pad"])
    k = list(k)
    sp_in, sp_out = list(inner.shape[1:]), list(outer.shape[1:])
    if len(k) == 1:
        k, s, d, p = [1] + k, [1] + s, [1] + d, [0, 0] + p
        sp_in, sp_out = [1] + sp_in, [1] + sp_out
    vals = [inner.shape[0], *sp_in, outer.shape[0], *sp_out, *k, *s, p[0], p[2], *d]
    return "nl_conv{" + ", ".join(str(v) for v in vals) + "}"


def _bias_arg(r: KernelBuilder, n: Node) -> tuple[str, list[str]]:
    if n.op in ("conv", "conv_transpose") and n.attrs["bias"]:
        return f"${r.key(n.inputs[2])}", [r.key(n.inputs[2])]
    return "nullptr", []


def _routine(r: KernelBuilder, grp: Group) -> None:
    """The five convolution ops as the three host routines (forward, transposed, weight
    gradient), with the roles of their operands."""
    n = grp.anchor
    a, b = n.inputs[0], n.inputs[1]
    bias, bkeys = _bias_arg(r, n)
    keys = [r.key(a), r.key(b)] + bkeys
    if n.op == "conv":                 # x, w -> y
        p = _conv_struct(n, a.type, n.type, n.attrs["kernel"])
        fn, extra = "nl_conv_forward", bias
    elif n.op == "conv_grad_input":     # dy, w -> dx
        p = _conv_struct(n, n.type, a.type, b.type.shape[2:])
        fn, extra = "nl_conv_transposed", bias
    elif n.op == "conv_transpose":      # x, w [Cin, Cout, k] -> y: dx of the conv y -> x
        p = _conv_struct(n, n.type, a.type, n.attrs["kernel"])
        fn, extra = "nl_conv_transposed", bias
    elif n.op == "conv_grad_weight":    # dy, x -> dW
        p = _conv_struct(n, b.type, a.type, n.attrs["kernel"])
        fn, extra = "nl_conv_weight_grad", None
    else:                               # conv_transpose_grad_weight: dy, x -> dW [Cin, Cout, k]
        a, b = b, a
        keys = [r.key(a), r.key(b)]
        p = _conv_struct(n, b.type, a.type, n.attrs["kernel"])
        fn, extra = "nl_conv_weight_grad", None

    def call(dst: str, stride: int):
        if extra is None:
            return f"{fn}(${r.key(a)}, ${r.key(b)}, {dst}, N, {p});", keys
        return f"{fn}(${r.key(a)}, ${r.key(b)}, {extra}, {dst}, N, {p}, {stride}LL);", keys

    r.call_then(grp, call, n.type)


@lowers("conv")
def lower_conv(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x, w = n.inputs[0], n.inputs[1]
    if _routine_ok(r, n):
        return _routine(r, grp)
    if _gemm_conv(r, n, x, w.type.shape):
        return _conv_gemm(r, grp)
    at = n.attrs
    cin, sp_in = x.type.shape[0], x.type.shape[1:]
    cout = at["channels"]
    g = at["groups"]
    cg, og = cin // g, cout // g
    k, s, d, p = at["kernel"], at["stride"], at["dilation"], at["pad"]
    inputs = {r.key(x): "const float*", r.key(w): "const float*"}
    xi = "(long long)n * {} + (long long)(gbase + ci) * {}".format(x.type.size,
                                                                    math.prod(sp_in))
    xi += _offsets_of("i", sp_in)
    wi = f"(o0 * {cg} + ci) * {math.prod(k)}"
    wi += _offsets_of("k", k)
    loops = [Loop("ci", cg)] + window_taps(k, s, d, p, sp_in)
    body = ["float acc = 0.0f;", f"int gbase = (o0 / {og}) * {cg};"]
    body += nest(loops, [f"acc += {r.key(x)}[{xi}] * {r.key(w)}[{wi}];"])
    _bias_and_finish(r, grp, inputs, body)


def _bias_and_finish(r: KernelBuilder, grp: Group, inputs: dict[str, str], body: list[str]) -> None:
    """`v = acc (+ bias[o0])`, then the group's epilogue and the store."""
    n = grp.anchor
    if n.attrs["bias"]:
        b = n.inputs[2]
        inputs[r.key(b)] = "const float*"
        body.append(f"float v = acc + {r.key(b)}[o0];")
    else:
        body.append("float v = acc;")
    r.finish_map(grp, grp.name, inputs, body)


def _transposed_body(r: KernelBuilder, x: Node, w: Node, out_t: TensorType, at: dict,
                     inputs: dict[str, str]) -> list[str]:
    """Gather form of a transposed convolution (conv_transpose, conv_grad_input): the
    output pixel o receives x[i] * w[k] wherever i * s - p + k * d == o."""
    cx, sp_x = x.type.shape[0], x.type.shape[1:]
    cy = out_t.shape[0]
    g = at["groups"]
    k, s, d, p = w.type.shape[2:], at["stride"], at["dilation"], at["pad"]
    gx, gy = cx // g, cy // g
    inputs[r.key(x)] = "const float*"
    inputs[r.key(w)] = "const float*"
    xi = f"(long long)n * {x.type.size} + (long long)cx * {math.prod(sp_x)}"
    xi += _offsets_of("i", sp_x)
    # conv_transpose weights are [Cin, Cout/g, *k] and conv_grad_input reads conv's
    # [Cout, Cin/g, *k]: in both, the first axis is the side being gathered from (cx).
    wi = f"(cx * {gy} + oc) * {math.prod(k)}"
    wi += _offsets_of("k", k)
    loops = [Loop("cj", gx, (f"int cx = grp * {gx} + cj;",))] + gather_taps(k, s, d, p, sp_x, "i")
    return ["float acc = 0.0f;", f"int grp = o0 / {gy}; int oc = o0 % {gy};"] + \
        nest(loops, [f"acc += {r.key(x)}[{xi}] * {r.key(w)}[{wi}];"])


@lowers("conv_transpose")
def lower_conv_transpose(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    if _routine_ok(r, n):
        return _routine(r, grp)
    inputs: dict[str, str] = {}
    body = _transposed_body(r, n.inputs[0], n.inputs[1], n.type, n.attrs, inputs)
    _bias_and_finish(r, grp, inputs, body)


@lowers("conv_grad_input")
def lower_conv_grad_input(r: KernelBuilder, grp: Group) -> None:
    # dx = transposed conv of dy with w [Cout, Cin/g, *k]: w[co, ci_local, k], where the
    # "input" channels of the transposed conv are the forward's output channels.
    n = grp.anchor
    dy, w = n.inputs
    if _routine_ok(r, n):
        return _routine(r, grp)
    if _gemm_conv(r, n, dy, w.type.shape):
        return _conv_grad_input_gemm(r, grp)
    inputs: dict[str, str] = {}
    body = _transposed_body(r, dy, w, n.type, n.attrs, inputs)
    body.append("float v = acc;")
    r.finish_map(grp, grp.name, inputs, body)


def _weight_grad(r: KernelBuilder, grp: Group, dy: Node, x: Node, transposed: bool) -> None:
    """dW by reduction over (n, positions): conv's [Cout, Cin/g, *k] from dy (output
    side) and x (input side); conv_transpose's [Cin, Cout/g, *k] with the roles swapped."""
    n = grp.anchor
    at = n.attrs
    out_t = n.type
    s, d, p = at["stride"], at["dilation"], at["pad"]
    g = at["groups"]
    # "small" side: the tensor indexed by positions r (dy for conv, x for conv_transpose)
    big, small = (dy, x) if transposed else (x, dy)
    nd = small.type.rank - 1
    sp_small, sp_big = small.type.shape[1:], big.type.shape[1:]
    c_small_g = small.type.shape[0] // g
    c_big_g = big.type.shape[0] // g
    # Output coords: o0 = the weight's first axis, which is the small side's channel
    # (conv: dy's Cout; conv_transpose: x's Cin), o1 = the big side's channel in the
    # group, o2.. = kernel taps.
    setup = [f"int grp = o0 / {c_small_g};",
             f"int cs = o0; int cb = grp * {c_big_g} + o1;"]
    per = math.prod(sp_small)
    term = [f"int nn = (int)(r / {per}); long long rr = r % {per};"]
    term += _decompose(sp_small, "rr", "p")
    cond = []
    for j in range(nd):
        term.append(f"int b{j} = p{j} * {s[j]} - {p[2 * j]} + o{j + 2} * {d[j]};")
        cond.append(f"b{j} >= 0 && b{j} < {sp_big[j]}")
    si = f"(long long)nn * {small.type.size} + (long long)cs * {per}"
    si += _offsets_of("p", sp_small)
    bi = f"(long long)nn * {big.type.size} + (long long)cb * {math.prod(sp_big)}"
    bi += _offsets_of("b", sp_big)
    term.append(f"if ({' && '.join(cond) or '1'}) acc_v += "
                f"{r.key(small)}[{si}] * {r.key(big)}[{bi}];")
    inputs = {r.key(dy): "const float*", r.key(x): "const float*"}
    r.emit_reduce(grp.name, grp.nodes, r.key(n), out_t, inputs, f"(long long)N * {per}",
                     setup, term)


@lowers("conv_grad_weight")
def lower_conv_grad_weight(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    if _routine_ok(r, n):
        return _routine(r, grp)
    if _gemm_conv(r, n, n.inputs[0], n.type.shape) and not grp.epilogue:
        return _conv_grad_weight_gemm(r, grp)
    _weight_grad(r, grp, n.inputs[0], n.inputs[1], False)


@lowers("conv_transpose_grad_weight")
def lower_conv_transpose_grad_weight(r: KernelBuilder, grp: Group) -> None:
    if _routine_ok(r, grp.anchor):
        return _routine(r, grp)
    _weight_grad(r, grp, grp.anchor.inputs[0], grp.anchor.inputs[1], True)


@lowers("bias_grad")
def lower_bias_grad(r: KernelBuilder, grp: Group) -> None:
    """Per channel, a sum over batch and positions. CUDA: threads stride over (n, position);
    C: a loop over images of an inner loop over a contiguous plane (no division per
    element, vectorised)."""
    n = grp.anchor
    dy = n.inputs[0]
    per = math.prod(dy.type.shape[1:])
    if r.dialect.nested:
        term = [f"const float* plane = {r.key(dy)} + (long long)r * {dy.type.size} + "
                f"(long long)o0 * {per};",
                f"for (long long q = 0; q < {per}; ++q) acc_v += plane[q];"]
        extent = "(long long)N"
    else:
        term = [f"int nn = (int)(r / {per}); long long rr = r % {per};",
                f"acc_v += {r.key(dy)}[(long long)nn * {dy.type.size} + (long long)o0 * "
                f"{per} + rr];"]
        extent = f"(long long)N * {per}"
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type,
                  {r.key(dy): "const float*"}, extent, [], term)


def _gemm_then(r: KernelBuilder, grp: Group, gemm: Gemm, tmp_t: TensorType,
               bias: Node | None, bias_axis: int = 0) -> None:
    """The GEMM, then (if anything follows it) a map kernel adding the bias along the
    output's axis `bias_axis` (channels; a dense layer's last axis) and the epilogue."""
    in_concat = r.key(grp.output) in r.cat_slot   # needs the map kernel's store
    if bias is None and not grp.epilogue and not in_concat:
        gemm.out = r.key(grp.output)
        r.add_gemm(gemm)
        r._info(f"gemm:{grp.anchor.name}", grp.nodes, "gemm")
        return
    tmp = r.new_scratch(tmp_t.size, tmp_t.batched)
    gemm.out = tmp
    r.add_gemm(gemm)
    r._info(f"gemm:{grp.anchor.name}", [grp.anchor], "gemm")
    inputs = {tmp: "const float*"}
    body = [f"float v = {_at(tmp_t, tmp, r.coords(tmp_t))};"]
    if bias is not None:
        inputs[r.key(bias)] = "const float*"
        body.append(f"v += {r.key(bias)}[o{bias_axis}];")
    r.finish_map(grp, grp.name + "_epilogue", inputs, body)
