"""Loop-level lowerings of the layers with parameters (ops/nn.py): convolutions as direct
gather loops or, when large, im2col + GEMM; dense layers as GEMMs; batchnorm with its
statistics as reductions; the dropout mask from a counter-based hash.

Each lowering receives the kernel builder and one fusion group whose anchor is the op; it
describes the kernel(s) (a map body computing `v` at output coordinates n, o0, o1.., or a
reduction's terms) and the builder adds the fused epilogue, the store and the launch.
"""

from __future__ import annotations

import math

from netlang.ir.graph import Node
from netlang.ir.types import TensorType
from netlang.kernels.builder import (
    Arg, Gemm, KernelBuilder, Unsupported, _at, _decompose, _f, _offsets_of,
)
from netlang.kernels.registry import expression, lowers
from netlang.passes.fusion import Group


def _gemm_conv(r: KernelBuilder, n: Node, x: Node, w_shape: tuple[int, ...]) -> bool:
    """Whether a convolution-like node goes through cuBLAS."""
    macs = math.prod(w_shape) * math.prod(n.type.shape[1:]) if n.op == "conv" else \
        math.prod(w_shape) * math.prod(x.type.shape[1:])
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
    body, ind = ["float acc = 0.0f;"], ""
    for j in range(nd):
        body.append(ind + f"for (int k{j} = 0; k{j} < {k[j]}; ++k{j}) {{")
        ind += "    "
        body.append(ind + f"int t{j} = o{j + 1} + {p[2 * j]} - k{j} * {d[j]};")
        body.append(ind + f"if (t{j} < 0 || t{j} % {s[j]} != 0) continue;")
        body.append(ind + f"int u{j} = t{j} / {s[j]};")
        body.append(ind + f"if (u{j} >= {out_sp[j]}) continue;")
    tap = " + ".join(f"k{j} * {math.prod(k[j + 1:])}" for j in range(nd)) or "0"
    pos = " + ".join(f"u{j} * {math.prod(out_sp[j + 1:])}" for j in range(nd)) or "0"
    body.append(ind + f"acc += {dcols}[(long long)n * {K * P} + (long long)(o0 * {kk} + "
                      f"{tap}) * {P} + {pos}];")
    for _ in range(nd):
        ind = ind[:-4]
        body.append(ind + "}")
    body.append("float v = acc;")
    r.finish_map(grp, grp.name + "_col2im", {dcols: "const float*"}, body)


@lowers("conv")
def lower_conv(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x, w = n.inputs[0], n.inputs[1]
    if _gemm_conv(r, n, x, w.type.shape):
        return _conv_gemm(r, grp)
    at = n.attrs
    nd = x.type.rank - 1
    cin, sp_in = x.type.shape[0], x.type.shape[1:]
    cout = at["channels"]
    g = at["groups"]
    cg, og = cin // g, cout // g
    k, s, d, p = at["kernel"], at["stride"], at["dilation"], at["pad"]
    inputs = {r.key(x): "const float*", r.key(w): "const float*"}
    body = ["float acc = 0.0f;",
            f"int gbase = (o0 / {og}) * {cg};",
            f"for (int ci = 0; ci < {cg}; ++ci) {{"]
    ind = "    "
    for j in range(nd):
        body.append(ind + f"for (int k{j} = 0; k{j} < {k[j]}; ++k{j}) {{")
        ind += "    "
        body.append(ind + f"int i{j} = o{j + 1} * {s[j]} - {p[2 * j]} + k{j} * {d[j]};")
        body.append(ind + f"if (i{j} < 0 || i{j} >= {sp_in[j]}) continue;")
    xi = "(long long)n * {} + (long long)(gbase + ci) * {}".format(x.type.size,
                                                                    math.prod(sp_in))
    xi += _offsets_of("i", sp_in)
    wi = f"(o0 * {cg} + ci) * {math.prod(k)}"
    wi += _offsets_of("k", k)
    body.append(ind + f"acc += {r.key(x)}[{xi}] * {r.key(w)}[{wi}];")
    for _ in range(nd + 1):
        ind = ind[:-4]
        body.append(ind + "}")
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
    nd = x.type.rank - 1
    cx, sp_x = x.type.shape[0], x.type.shape[1:]
    cy = out_t.shape[0]
    g = at["groups"]
    k, s, d, p = w.type.shape[2:], at["stride"], at["dilation"], at["pad"]
    gx, gy = cx // g, cy // g
    inputs[r.key(x)] = "const float*"
    inputs[r.key(w)] = "const float*"
    body = ["float acc = 0.0f;", f"int grp = o0 / {gy}; int oc = o0 % {gy};",
            f"for (int cj = 0; cj < {gx}; ++cj) {{", f"    int cx = grp * {gx} + cj;"]
    ind = "    "
    for j in range(nd):
        body.append(ind + f"for (int k{j} = 0; k{j} < {k[j]}; ++k{j}) {{")
        ind += "    "
        body.append(ind + f"int t{j} = o{j + 1} + {p[2 * j]} - k{j} * {d[j]};")
        body.append(ind + f"if (t{j} < 0 || t{j} % {s[j]} != 0) continue;")
        body.append(ind + f"int i{j} = t{j} / {s[j]};")
        body.append(ind + f"if (i{j} >= {sp_x[j]}) continue;")
    xi = f"(long long)n * {x.type.size} + (long long)cx * {math.prod(sp_x)}"
    xi += _offsets_of("i", sp_x)
    # conv_transpose weights are [Cin, Cout/g, *k] and conv_grad_input reads conv's
    # [Cout, Cin/g, *k]: in both, the first axis is the side being gathered from (cx).
    wi = f"(cx * {gy} + oc) * {math.prod(k)}"
    wi += _offsets_of("k", k)
    body.append(ind + f"acc += {r.key(x)}[{xi}] * {r.key(w)}[{wi}];")
    for _ in range(nd + 1):
        ind = ind[:-4]
        body.append(ind + "}")
    return body


@lowers("conv_transpose")
def lower_conv_transpose(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    inputs: dict[str, str] = {}
    body = _transposed_body(r, n.inputs[0], n.inputs[1], n.type, n.attrs, inputs)
    _bias_and_finish(r, grp, inputs, body)


@lowers("conv_grad_input")
def lower_conv_grad_input(r: KernelBuilder, grp: Group) -> None:
    # dx = transposed conv of dy with w [Cout, Cin/g, *k]: w[co, ci_local, k], where the
    # "input" channels of the transposed conv are the forward's output channels.
    n = grp.anchor
    dy, w = n.inputs
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
    if _gemm_conv(r, n, n.inputs[0], n.type.shape) and not grp.epilogue:
        return _conv_grad_weight_gemm(r, grp)
    _weight_grad(r, grp, n.inputs[0], n.inputs[1], False)


@lowers("conv_transpose_grad_weight")
def lower_conv_transpose_grad_weight(r: KernelBuilder, grp: Group) -> None:
    _weight_grad(r, grp, grp.anchor.inputs[0], grp.anchor.inputs[1], True)


@lowers("bias_grad")
def lower_bias_grad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy = n.inputs[0]
    per = math.prod(dy.type.shape[1:])
    term = [f"int nn = (int)(r / {per}); long long rr = r % {per};",
            f"acc_v += {r.key(dy)}[(long long)nn * {dy.type.size} + (long long)o0 * "
            f"{per} + rr];"]
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type,
                     {r.key(dy): "const float*"}, f"(long long)N * {per}", [], term)


def _gemm_then(r: KernelBuilder, grp: Group, gemm: Gemm, tmp_t: TensorType,
               bias: Node | None) -> None:
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
        body.append(f"v += {r.key(bias)}[o0];")
    r.finish_map(grp, grp.name + "_epilogue", inputs, body)


@lowers("dense")
def lower_dense(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x, w = n.inputs[:2]
    o, k = w.type.shape
    gemm = Gemm(r.key(x), r.key(w), "", (-1, k), (o, k), (-1, o), False, True,
                (n.id,))
    _gemm_then(r, grp, gemm, n.type, n.inputs[2] if n.attrs["bias"] else None)


@lowers("dense_grad_input")
def lower_dense_grad_input(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy, w = n.inputs
    o, k = w.type.shape
    gemm = Gemm(r.key(dy), r.key(w), "", (-1, o), (o, k), (-1, k), False, False,
                (n.id,))
    _gemm_then(r, grp, gemm, n.type, None)


@lowers("dense_grad_weight")
def lower_dense_grad_weight(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy, x = n.inputs
    o, k = n.type.shape
    gemm = Gemm(r.key(dy), r.key(x), r.key(n), (-1, o), (-1, k), (o, k), True,
                False, (n.id,))
    r.add_gemm(gemm)
    r._info(f"gemm:{n.name}", [n], "gemm")


def _bn_stats(r: KernelBuilder, grp: Group, x: Node, nodes: list[Node]) -> tuple[str, str]:
    """Scratch [C] mean and (biased) variance of x over batch and positions."""
    c = x.type.shape[0]
    per = math.prod(x.type.shape[1:])
    stat_t = TensorType((c,), batched=False)
    mean, var = r.new_scratch(c, False), r.new_scratch(c, False)
    count = f"((long long)N * {per})"
    xi = f"{r.key(x)}[(long long)(r / {per}) * {x.type.size} + (long long)o0 * {per} + " \
         f"r % {per}]"
    r.emit_reduce(grp.anchor.name + "_mean", nodes, mean, stat_t,
                     {r.key(x): "const float*"}, count, [], [f"acc_v += {xi};"],
                     final=f"(float)(sh[0] / (double){count})", acc="double")
    r.emit_reduce(grp.anchor.name + "_var", nodes, var, stat_t,
                     {r.key(x): "const float*", mean: "const float*"}, count,
                     [f"float mu = {mean}[o0];"],
                     [f"float dd = {xi} - mu;", "acc_v += (double)dd * dd;"],
                     final=f"(float)(sh[0] / (double){count})", acc="double")
    return mean, var


@lowers("batchnorm")
def lower_batchnorm(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    at = n.attrs
    x = n.inputs[0]
    rm, rv = n.inputs[-2:]
    inputs = {r.key(x): "const float*"}
    coords = r.coords(n.type)
    xv = _at(x.type, r.key(x), coords)
    if at.get("training"):
        mean, var = _bn_stats(r, grp, x, [n])
        # running statistics (unbiased variance), written to update buffers
        per = math.prod(x.type.shape[1:])
        m = at["momentum"]
        ur, uv = f"u{rm.id}", f"u{rv.id}"
        r.updates[ur], r.updates[uv] = rm.name, rv.name
        r.scratch.setdefault(ur, (rm.type.size, False))
        r.scratch.setdefault(uv, (rv.type.size, False))
        ctype = "const float*"
        body = [f"float cnt = (float)((long long)N * {per});",
                f"float v = (1.0f - {_f(m)}) * {r.key(rm)}[o0] + {_f(m)} * {mean}[o0];"]
        r.emit_map(n.name + "_running_mean", [n], ur, rm.type,
                      {r.key(rm): ctype, mean: ctype}, body[1:])
        body = [f"float cnt = (float)((long long)N * {per});",
                f"float ub = cnt > 1.0f ? {var}[o0] * cnt / (cnt - 1.0f) : {var}[o0];",
                f"float v = (1.0f - {_f(m)}) * {r.key(rv)}[o0] + {_f(m)} * ub;"]
        r.emit_map(n.name + "_running_var", [n], uv, rv.type,
                      {r.key(rv): ctype, var: ctype}, body)
        mu, va = f"{mean}[o0]", f"{var}[o0]"
        inputs[mean] = inputs[var] = ctype
    else:
        inputs[r.key(rm)] = inputs[r.key(rv)] = "const float*"
        mu, va = f"{r.key(rm)}[o0]", f"{r.key(rv)}[o0]"
    body = [f"float v = ({xv} - {mu}) * rsqrtf({va} + {_f(at['eps'])});"]
    if at["affine"]:
        w, b = n.inputs[1], n.inputs[2]
        inputs[r.key(w)] = inputs[r.key(b)] = "const float*"
        body.append(f"v = v * {r.key(w)}[o0] + {r.key(b)}[o0];")
    r.finish_map(grp, grp.name, inputs, body)


@lowers("batchnorm_grad_input")
def lower_batchnorm_grad_input(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    at = n.attrs
    dy, x, rm, rv = n.inputs[:4]
    w = n.inputs[4] if at["affine"] else None
    coords = r.coords(n.type)
    ctype = "const float*"
    inputs = {r.key(dy): ctype, r.key(x): ctype}
    gexpr = _at(dy.type, r.key(dy), coords)
    wexpr = f" * {r.key(w)}[o0]" if w is not None else ""
    if w is not None:
        inputs[r.key(w)] = ctype
    if not at["training"]:
        inputs[r.key(rv)] = ctype
        body = [f"float v = {gexpr}{wexpr} * rsqrtf({r.key(rv)}[o0] + {_f(at['eps'])});"]
        return r.finish_map(grp, grp.name, inputs, body)
    mean, var = _bn_stats(r, grp, x, [n])
    c = x.type.shape[0]
    per = math.prod(x.type.shape[1:])
    stat_t = TensorType((c,), batched=False)
    count = f"((long long)N * {per})"
    off = f"(long long)(r / {per}) * {x.type.size} + (long long)o0 * {per} + r % {per}"
    sg, sgx = r.new_scratch(c, False), r.new_scratch(c, False)
    red_in = {r.key(dy): ctype, r.key(x): ctype, mean: ctype, var: ctype}
    if w is not None:
        red_in[r.key(w)] = ctype
    wmul = f" * {r.key(w)}[o0]" if w is not None else ""
    setup = [f"float mu = {mean}[o0]; float inv = rsqrtf({var}[o0] + {_f(at['eps'])});"]
    r.emit_reduce(n.name + "_sg", [n], sg, stat_t, red_in, count, setup,
                     [f"acc_v += (double){r.key(dy)}[{off}]{wmul};"], acc="double")
    r.emit_reduce(n.name + "_sgx", [n], sgx, stat_t, red_in, count, setup,
                     [f"acc_v += (double){r.key(dy)}[{off}]{wmul} * "
                      f"(({r.key(x)}[{off}] - mu) * inv);"], acc="double")
    inputs.update({mean: ctype, var: ctype, sg: ctype, sgx: ctype})
    xv = _at(x.type, r.key(x), coords)
    body = [f"float inv = rsqrtf({var}[o0] + {_f(at['eps'])});",
            f"float m = (float){count};",
            f"float xh = ({xv} - {mean}[o0]) * inv;",
            f"float g = {gexpr}{wexpr};",
            f"float v = inv / m * (m * g - {sg}[o0] - xh * {sgx}[o0]);"]
    r.finish_map(grp, grp.name, inputs, body)


@lowers("batchnorm_grad_weight")
def lower_batchnorm_grad_weight(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    at = n.attrs
    dy, x, rm, rv = n.inputs
    ctype = "const float*"
    per = math.prod(x.type.shape[1:])
    if at["training"]:
        mean, var = _bn_stats(r, grp, x, [n])
    else:
        mean, var = r.key(rm), r.key(rv)
    off = f"(long long)(r / {per}) * {x.type.size} + (long long)o0 * {per} + r % {per}"
    setup = [f"float mu = {mean}[o0]; float inv = rsqrtf({var}[o0] + {_f(at['eps'])});"]
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type,
                     {r.key(dy): ctype, r.key(x): ctype, mean: ctype, var: ctype},
                     f"((long long)N * {per})", setup,
                     [f"acc_v += (double){r.key(dy)}[{off}] * (({r.key(x)}[{off}] - mu)"
                      " * inv);"], acc="double")


@lowers("dropout_mask")
def lower_dropout_mask(r: KernelBuilder, grp: Group) -> None:
    p = grp.anchor.attrs["p"]
    keep = 1.0 - p
    body = [f"float v = nl_uniform((unsigned int)seed, (unsigned int)i) < {_f(keep)} ? "
            f"{_f(1.0 / keep)} : 0.0f;"]
    r.finish_map(grp, grp.name, {}, body, extra=[Arg("int", "seed")])


def _batchnorm_expression(e: Node, v: str, loads: dict[int, str]) -> str:
    """Inference batchnorm as an epilogue line (running statistics, affine)."""
    a = e.attrs
    if a.get("training"):
        raise Unsupported("batchnorm in training is not an epilogue")
    k = len(e.inputs)
    rm, rv = loads[k - 2], loads[k - 1]
    affine = f"* {loads[1]} + {loads[2]}" if a["affine"] else ""
    return f"((({v}) - {rm}) * rsqrtf({rv} + {_f(a['eps'])}) {affine})"


expression("batchnorm", _batchnorm_expression)
