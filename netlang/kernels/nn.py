"""Loop-level lowerings of the layers with parameters (ops/nn.py): dense layers as GEMMs;
batchnorm with its statistics as reductions; the dropout mask from a counter-based hash.
The convolutions are in kernels/_conv.py (as their NumPy cores are in ops/_conv.py).

Each lowering receives the kernel builder and one fusion group whose anchor is the op; it
describes the kernel(s) (a map body computing `v` at output coordinates n, o0, o1.., or a
reduction's terms) and the builder adds the fused epilogue, the store and the launch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from netlang.ir.graph import Node
from netlang.ir.types import TensorType
from netlang.kernels.builder import (
    Arg, Gemm, KernelBuilder, Unsupported, _at, _f,
)
from netlang.kernels._conv import _gemm_then
from netlang.kernels.registry import expression, lowers
from netlang.ops.nn import bn_grad_operands, bn_operands
from netlang.ir.fusion import Group


def _rows(t: TensorType) -> int:
    """A dense layer's GEMM rows per sample: 1 for [F], T for tokens [T, F]. As a view
    extent, -rows: rows times the batch."""
    return math.prod(t.shape[:-1])


@lowers("dense")
def lower_dense(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x, w = n.inputs[:2]
    o, k = w.type.shape
    t = -_rows(x.type)
    gemm = Gemm(r.key(x), r.key(w), "", (t, k), (o, k), (t, o), False, True,
                (n.id,))
    _gemm_then(r, grp, gemm, n.type, n.inputs[2] if n.attrs["bias"] else None,
               bias_axis=n.type.rank - 1)


@lowers("dense_grad_input")
def lower_dense_grad_input(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy, w = n.inputs
    o, k = w.type.shape
    t = -_rows(dy.type)
    gemm = Gemm(r.key(dy), r.key(w), "", (t, o), (o, k), (t, k), False, False,
                (n.id,))
    _gemm_then(r, grp, gemm, n.type, None)


@lowers("dense_grad_weight")
def lower_dense_grad_weight(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy, x = n.inputs
    o, k = n.type.shape
    t = -_rows(dy.type)
    gemm = Gemm(r.key(dy), r.key(x), r.key(n), (t, o), (t, k), (o, k), True,
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
    x, w, b, rm, rv = bn_operands(n.inputs, at)
    inputs = {r.key(x): "const float*"}
    coords = r.coords(n.type)
    xv = _at(x.type, r.key(x), coords)
    ctype = "const float*"
    if at.get("training"):
        mean, var = _bn_stats(r, grp, x, [n])
        mu, va = f"{mean}[o0]", f"{var}[o0]"
        inputs[mean] = inputs[var] = ctype
    if at.get("training") and rm is not None:
        # running statistics (unbiased variance), written to update buffers
        per = math.prod(x.type.shape[1:])
        m = at["momentum"]
        ur, uv = f"u{rm.id}", f"u{rv.id}"
        r.updates[ur], r.updates[uv] = rm.name, rv.name
        r.scratch.setdefault(ur, (rm.type.size, False))
        r.scratch.setdefault(uv, (rv.type.size, False))
        body = [f"float cnt = (float)((long long)N * {per});",
                f"float v = (1.0f - {_f(m)}) * {r.key(rm)}[o0] + {_f(m)} * {mean}[o0];"]
        r.emit_map(n.name + "_running_mean", [n], ur, rm.type,
                      {r.key(rm): ctype, mean: ctype}, body[1:])
        body = [f"float cnt = (float)((long long)N * {per});",
                f"float ub = cnt > 1.0f ? {var}[o0] * cnt / (cnt - 1.0f) : {var}[o0];",
                f"float v = (1.0f - {_f(m)}) * {r.key(rv)}[o0] + {_f(m)} * ub;"]
        r.emit_map(n.name + "_running_var", [n], uv, rv.type,
                      {r.key(rv): ctype, var: ctype}, body)
    if not at.get("training"):
        inputs[r.key(rm)] = inputs[r.key(rv)] = ctype
        mu, va = f"{r.key(rm)}[o0]", f"{r.key(rv)}[o0]"
    body = [f"float v = ({xv} - {mu}) * rsqrtf({va} + {_f(at['eps'])});"]
    if at["affine"]:
        inputs[r.key(w)] = inputs[r.key(b)] = "const float*"
        body.append(f"v = v * {r.key(w)}[o0] + {r.key(b)}[o0];")
    r.finish_map(grp, grp.name, inputs, body)


@lowers("batchnorm_grad_input")
def lower_batchnorm_grad_input(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    at = n.attrs
    dy, x, rm, rv, w = bn_grad_operands(n.inputs, at)
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
    dy, x, rm, rv, _ = bn_grad_operands(n.inputs, at)
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


# -- matmul --------------------------------------------------------------------------------

def _matmul_view(t: TensorType, rows_only: bool) -> tuple[int, ...]:
    """The GEMM view of a matmul operand: (rows, cols) of a parameter matrix; a per-sample
    value as (-batches, rows, cols), or, when `rows_only` (it meets a parameter matrix and
    is not transposed), its rows folded into one tall matrix (-rows, cols)."""
    r, c = t.shape[-2:]
    lead = math.prod(t.shape[:-2])
    if not t.batched:
        return (lead, r, c) if lead > 1 else (r, c)
    if rows_only:
        return (-lead * r, c)
    return (-lead, r, c)


@lowers("matmul")
def lower_matmul(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    a, b = n.inputs
    ta, tb = n.attrs["trans_a"], n.attrs["trans_b"]
    # x @ W with W a parameter: every row of every sample against the same matrix
    tall = a.type.batched and not b.type.batched and not ta
    av = _matmul_view(a.type, tall)
    bv = _matmul_view(b.type, False)
    ov = _matmul_view(n.type, tall)
    gemm = Gemm(r.key(a), r.key(b), "", av, bv, ov, ta, tb, (n.id,))
    _gemm_then(r, grp, gemm, n.type, None)


# -- layernorm -----------------------------------------------------------------------------

def _ln_stats(r: KernelBuilder, x: Node, nodes: list[Node],
              rows: int | None = None) -> tuple[str, str, int, int]:
    """Scratch mean and (biased) variance of every row of x (one per row and sample): the
    last axis (layernorm), or `rows` contiguous runs of each sample (groupnorm's groups)."""
    d = x.type.shape[-1] if rows is None else x.type.size // rows
    rows = x.type.size // d
    stat_t = TensorType((rows,), batched=True)
    mean, var = r.new_scratch(rows, True), r.new_scratch(rows, True)
    xi = f"{r.key(x)}[(long long)n * {x.type.size} + (long long)o0 * {d} + r]"
    r.emit_reduce(nodes[0].name + "_mean", nodes, mean, stat_t, {r.key(x): "const float*"},
                  f"{d}", [], [f"acc_v += {xi};"], final=f"(float)(sh[0] / {d}.0)",
                  acc="double")
    r.emit_reduce(nodes[0].name + "_var", nodes, var, stat_t,
                  {r.key(x): "const float*", mean: "const float*"}, f"{d}",
                  [f"float mu = {mean}[(long long)n * {rows} + o0];"],
                  [f"float dd = {xi} - mu;", "acc_v += (double)dd * dd;"],
                  final=f"(float)(sh[0] / {d}.0)", acc="double")
    return mean, var, rows, d


def _row_of(t: TensorType) -> str:
    """The row index (all coordinates but the last) at output coordinates o0, o1.."""
    return " + ".join([f"(long long)o{j} * {math.prod(t.shape[j + 1:-1])}"
                       for j in range(t.rank - 1)]) or "0"


# -- layernorm, groupnorm, instancenorm: normalisation over rows ---------------------------
# Layernorm's rows are the last axis; a group of groupnorm is C/G contiguous channels (NCHW
# memory), so it is a row too, of C/G * positions elements: the same statistics serve, and
# only where the affine parameters are indexed differs (the last axis, or the channel).

@dataclass(frozen=True)
class _RowLayout:
    groups: int | None    # None: rows along the last axis (layernorm); else the groups
    w_in_row: str         # the weight index of element r of row o0 (in a reduction)
    w_at_out: str         # the weight index at output coordinates o0, o1..
    row_at_out: str       # the row within the sample at output coordinates


def _layout(n: Node, x: Node) -> _RowLayout:
    if n.op.startswith("layernorm"):
        return _RowLayout(None, "r", f"o{x.type.rank - 1}", _row_of(x.type))
    g, cg, per = _group(n)
    return _RowLayout(g, f"o0 * {cg} + r / {per}", "o0", f"o0 / {cg}")


def _group(n: Node) -> tuple[int, int, int]:
    """(groups, channels per group, positions per channel) of a groupnorm node's input."""
    x = n.inputs[0] if n.op in ("groupnorm", "instancenorm") else n.inputs[1]
    c = x.type.shape[0]
    g = n.attrs["groups"]
    return g, c // g, math.prod(x.type.shape[1:])


@lowers("layernorm", "groupnorm", "instancenorm")
def lower_row_norm(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    lay = _layout(n, x)
    mean, var, rows, d = _ln_stats(r, x, [n], rows=lay.groups)
    ctype = "const float*"
    inputs = {r.key(x): ctype, mean: ctype, var: ctype}
    body = [f"long long row = (long long)n * {rows} + {lay.row_at_out};",
            f"float v = ({_at(x.type, r.key(x), r.coords(n.type))} - {mean}[row]) * "
            f"rsqrtf({var}[row] + {_f(n.attrs['eps'])});"]
    if n.attrs["affine"]:
        w, b = n.inputs[1:3]
        inputs[r.key(w)] = inputs[r.key(b)] = ctype
        body.append(f"v = v * {r.key(w)}[{lay.w_at_out}] + {r.key(b)}[{lay.w_at_out}];")
    r.finish_map(grp, grp.name, inputs, body)


@lowers("layernorm_grad_input", "groupnorm_grad_input")
def lower_row_norm_grad_input(r: KernelBuilder, grp: Group) -> None:
    """dx = inv / d (d g - sum(g) - x_hat sum(g x_hat)) with g = dy * weight, the two sums
    per row as reductions."""
    n = grp.anchor
    dy, x = n.inputs[:2]
    w = n.inputs[2] if n.attrs["affine"] else None
    eps = _f(n.attrs["eps"])
    lay = _layout(n, x)
    mean, var, rows, d = _ln_stats(r, x, [n], rows=lay.groups)
    ctype = "const float*"
    stat_t = TensorType((rows,), batched=True)
    wmul = f" * {r.key(w)}[{lay.w_in_row}]" if w is not None else ""
    red_in = {r.key(dy): ctype, r.key(x): ctype, mean: ctype, var: ctype}
    if w is not None:
        red_in[r.key(w)] = ctype
    off = f"(long long)n * {x.type.size} + (long long)o0 * {d} + r"
    setup = [f"float mu = {mean}[(long long)n * {rows} + o0];",
             f"float inv = rsqrtf({var}[(long long)n * {rows} + o0] + {eps});"]
    sg, sgx = r.new_scratch(rows, True), r.new_scratch(rows, True)
    r.emit_reduce(n.name + "_sg", [n], sg, stat_t, red_in, f"{d}", setup,
                  [f"acc_v += (double){r.key(dy)}[{off}]{wmul};"], acc="double")
    r.emit_reduce(n.name + "_sgx", [n], sgx, stat_t, red_in, f"{d}", setup,
                  [f"acc_v += (double){r.key(dy)}[{off}]{wmul} * "
                   f"(({r.key(x)}[{off}] - mu) * inv);"], acc="double")
    inputs = dict(red_in, **{sg: ctype, sgx: ctype})
    coords = r.coords(n.type)
    wv = f" * {r.key(w)}[{lay.w_at_out}]" if w is not None else ""
    body = [f"long long row = (long long)n * {rows} + {lay.row_at_out};",
            f"float inv = rsqrtf({var}[row] + {eps});",
            f"float xh = ({_at(x.type, r.key(x), coords)} - {mean}[row]) * inv;",
            f"float g = {_at(dy.type, r.key(dy), coords)}{wv};",
            f"float v = inv / {d}.0f * ({d}.0f * g - {sg}[row] - xh * {sgx}[row]);"]
    r.finish_map(grp, grp.name, inputs, body)


@lowers("layernorm_grad_weight")
def lower_layernorm_grad_weight(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy, x = n.inputs
    mean, var, rows, d = _ln_stats(r, x, [n])
    ctype = "const float*"
    term = [f"long long nn = r / {rows}; long long q = r % {rows};",
            f"long long at = nn * {x.type.size} + q * {d} + o0;",
            f"float xh = ({r.key(x)}[at] - {mean}[nn * {rows} + q]) * "
            f"rsqrtf({var}[nn * {rows} + q] + {_f(n.attrs['eps'])});",
            f"acc_v += (double){r.key(dy)}[at] * xh;"]
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type,
                  {r.key(dy): ctype, r.key(x): ctype, mean: ctype, var: ctype},
                  f"((long long)N * {rows})", [], term, acc="double")


@lowers("groupnorm_grad_weight")
def lower_groupnorm_grad_weight(r: KernelBuilder, grp: Group) -> None:
    """Per channel: the sum over batch and positions of dy * x_hat."""
    n = grp.anchor
    dy, x = n.inputs
    g, cg, per = _group(n)
    mean, var, rows, d = _ln_stats(r, x, [n], rows=g)
    ctype = "const float*"
    term = [f"long long nn = r / {per}; long long q = r % {per};",
            f"long long at = nn * {x.type.size} + (long long)o0 * {per} + q;",
            f"long long row = nn * {rows} + o0 / {cg};",
            f"float xh = ({r.key(x)}[at] - {mean}[row]) * "
            f"rsqrtf({var}[row] + {_f(n.attrs['eps'])});",
            f"acc_v += (double){r.key(dy)}[at] * xh;"]
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type,
                  {r.key(dy): ctype, r.key(x): ctype, mean: ctype, var: ctype},
                  f"((long long)N * {per})", [], term, acc="double")
