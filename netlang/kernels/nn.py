"""Loop-level lowerings of the layers with parameters (ops/nn.py): dense layers as GEMMs;
batchnorm with its statistics as reductions; the dropout mask from a counter-based hash.
The convolutions are in kernels/_conv.py (as their NumPy cores are in ops/_conv.py).

Each lowering receives the kernel builder and one fusion group whose anchor is the op; it
describes the kernel(s) (a map body computing `v` at output coordinates n, o0, o1.., or a
reduction's terms) and the builder adds the fused epilogue, the store and the launch.
"""

from __future__ import annotations

import math

from netlang.ir.graph import Node
from netlang.ir.types import TensorType
from netlang.kernels.builder import (
    Arg, Gemm, KernelBuilder, Unsupported, _at, _f,
)
from netlang.kernels._conv import _gemm_then
from netlang.kernels.registry import expression, lowers
from netlang.ir.fusion import Group


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
    # the seed is read from a one-element buffer, not passed by value: a captured step
    # (a CUDA graph replays fixed arguments) draws new masks when the host writes it
    body = [f"float v = nl_uniform((unsigned int)seed[0], (unsigned int)i) < {_f(keep)} ? "
            f"{_f(1.0 / keep)} : 0.0f;"]
    r.finish_map(grp, grp.name, {}, body, extra=[Arg("const long long*", "seed")])


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
