"""Loop-level lowerings of the losses (ops/loss.py): reductions in double precision,
and their gradients as map kernels."""

from __future__ import annotations

import math

from netlang.ir.graph import Node
from netlang.ir.types import TensorType
from netlang.kernels.builder import KernelBuilder, _at, _f, position_in_channel
from netlang.kernels.registry import lowers
from netlang.ir.fusion import Group
from netlang.ops.loss import BCE_GRAD_EPS, BCE_LOG_FLOOR, DICE_SMOOTH, SMOOTH_L1_BETA

# The constants of ops/loss.py, as C literals (one definition for NumPy and the kernels).
FLOOR = repr(BCE_LOG_FLOOR)          # used in double arithmetic
SMOOTH = _f(DICE_SMOOTH)


def _loss_reduce(r: KernelBuilder, grp: Group, term: list[str], count: str, inputs) -> None:
    n = grp.anchor
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type, inputs, count, [], term,
                     final=f"(float)(sh[0] / (double)({count}))", acc="double")


def _elementwise_loss(r: KernelBuilder, grp: Group, term: list[str]) -> None:
    """The mean over every element of a term of prediction {p} and target {t}."""
    p, t = grp.anchor.inputs
    term = [line.replace("{p}", r.key(p)).replace("{t}", r.key(t)) for line in term]
    _loss_reduce(r, grp, term, f"(long long)N * {p.type.size}",
                 {r.key(p): "const float*", r.key(t): "const float*"})


@lowers("mse")
def lower_mse(r: KernelBuilder, grp: Group) -> None:
    _elementwise_loss(r, grp, ["float dd = {p}[r] - {t}[r];", "acc_v += (double)dd * dd;"])


@lowers("l1")
def lower_l1(r: KernelBuilder, grp: Group) -> None:
    _elementwise_loss(r, grp, ["acc_v += fabs((double){p}[r] - {t}[r]);"])


@lowers("smooth_l1")
def lower_smooth_l1(r: KernelBuilder, grp: Group) -> None:
    b = repr(float(SMOOTH_L1_BETA))
    _elementwise_loss(r, grp, ["double dd = fabs((double){p}[r] - {t}[r]);",
                               f"acc_v += dd < {b} ? 0.5 * dd * dd / {b} : dd - 0.5 * {b};"])


@lowers("nll")
def lower_nll(r: KernelBuilder, grp: Group) -> None:
    z, t = grp.anchor.inputs
    per = math.prod(z.type.shape[1:])
    term = [f"int nn = (int)(r / {per}); long long pos = r % {per};",
            f"int tc = (int){r.key(t)}[(long long)nn * {per} + pos];",
            f"acc_v -= {r.key(z)}[(long long)nn * {z.type.size} + (long long)tc * {per} + pos];"]
    _loss_reduce(r, grp, term, f"(long long)N * {per}",
                 {r.key(z): "const float*", r.key(t): "const long long*"})


@lowers("nll_grad")
def lower_nll_grad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    z, t, g = n.inputs
    per = math.prod(z.type.shape[1:])
    rest = position_in_channel(z.type)
    body = [f"long long pos = {rest};",
            f"int tc = (int){r.key(t)}[(long long)n * {per} + pos];",
            f"float v = tc == o0 ? -{r.key(g)}[0] / (float)((long long)N * {per}) : 0.0f;"]
    r.finish_map(grp, grp.name, {r.key(t): "const long long*", r.key(g): "const float*"},
                 body)


@lowers("bce")
def lower_bce(r: KernelBuilder, grp: Group) -> None:
    _elementwise_loss(r, grp, [
        "double pp = {p}[r]; double tt = {t}[r];",
        f"double lp = pp > 0.0 ? log(pp) : {FLOOR}; if (lp < {FLOOR}) lp = {FLOOR};",
        f"double lq = pp < 1.0 ? log(1.0 - pp) : {FLOOR}; if (lq < {FLOOR}) lq = {FLOOR};",
        "acc_v += -(tt * lp + (1.0 - tt) * lq);"])


@lowers("bce_logits")
def lower_bce_logits(r: KernelBuilder, grp: Group) -> None:
    _elementwise_loss(r, grp, [
        "double zz = {p}[r]; double tt = {t}[r];",
        "acc_v += (zz > 0.0 ? zz : 0.0) - zz * tt + log1p(exp(-fabs(zz)));"])


def _ce_position(r: KernelBuilder, z: Node, var: str = "r") -> list[str]:
    c = z.type.shape[0]
    per = math.prod(z.type.shape[1:])
    zi = f"{r.key(z)}[(long long)nn * {z.type.size} + (long long)cc * {per} + pos]"
    return [f"int nn = (int)({var} / {per}); long long pos = {var} % {per};",
            "float m = -NL_INF;",
            f"for (int cc = 0; cc < {c}; ++cc) m = fmaxf(m, {zi});",
            "double s = 0.0;",
            f"for (int cc = 0; cc < {c}; ++cc) s += exp((double)({zi} - m));"]


@lowers("cross_entropy")
def lower_cross_entropy(r: KernelBuilder, grp: Group) -> None:
    z, t = grp.anchor.inputs
    per = math.prod(z.type.shape[1:])
    total = f"(long long)N * {per}"
    term = _ce_position(r, z) + [
        f"int tc = (int){r.key(t)}[(long long)nn * {per} + pos];",
        f"acc_v += log(s) + m - {r.key(z)}[(long long)nn * {z.type.size} + "
        f"(long long)tc * {per} + pos];"]
    _loss_reduce(r, grp, term, total,
                      {r.key(z): "const float*", r.key(t): "const long long*"})


def _dice_parts(r: KernelBuilder, grp: Group, p: Node, t: Node) -> str:
    """Scratch [3, C]: sum(p t), sum(p), sum(t) per channel."""
    c = p.type.shape[0]
    per = math.prod(p.type.shape[1:])
    parts = r.new_scratch(3 * c, False)
    off = f"(long long)(r / {per}) * {p.type.size} + (long long)ch * {per} + r % {per}"
    term = [f"float a = {r.key(p)}[{off}]; float b = {r.key(t)}[{off}];",
            "acc_v += which == 0 ? (double)a * b : (which == 1 ? (double)a : (double)b);"]
    r.emit_reduce(grp.anchor.name + "_parts", [grp.anchor], parts,
                     TensorType((3, c), batched=False),
                     {r.key(p): "const float*", r.key(t): "const float*"},
                     f"(long long)N * {per}", ["int which = o0; int ch = o1;"], term,
                     acc="double")
    return parts


@lowers("dice")
def lower_dice(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    p, t = n.inputs
    c = p.type.shape[0]
    parts = _dice_parts(r, grp, p, t)
    body = ["float v = 0.0f;",
            f"for (int ch = 0; ch < {c}; ++ch) v += (2.0f * {parts}[ch] + {SMOOTH}) / "
            f"({parts}[{c} + ch] + {parts}[{2 * c} + ch] + {SMOOTH});",
            f"v = 1.0f - v / {c}.0f;"]
    r.finish_map(grp, grp.name, {parts: "const float*"}, body)


@lowers("dice_grad")
def lower_dice_grad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    p, t, g = n.inputs
    c = p.type.shape[0]
    parts = _dice_parts(r, grp, p, t)
    coords = r.coords(n.type)
    tv = _at(t.type, r.key(t), coords)
    body = [f"float num = 2.0f * {parts}[o0] + {SMOOTH};",
            f"float den = {parts}[{c} + o0] + {parts}[{2 * c} + o0] + {SMOOTH};",
            f"float v = -(2.0f * {tv} * den - num) / (den * den) / {c}.0f * "
            f"{r.key(g)}[0];"]
    r.finish_map(grp, grp.name, {parts: "const float*", r.key(t): "const float*",
                                    r.key(g): "const float*"}, body)


def _pointwise_loss_grad(r: KernelBuilder, grp: Group, expr: str) -> None:
    """Gradient of a mean-reduced pointwise loss: expr(p, t) times g / count."""
    n = grp.anchor
    p, t, g = n.inputs
    coords = r.coords(n.type)
    pv, tv = _at(p.type, r.key(p), coords), _at(t.type, r.key(t), coords)
    body = [f"float pp = {pv}; float tt = {tv};",
            f"float v = ({expr}) * ({r.key(g)}[0] / "
            f"(float)((long long)N * {p.type.size}));"]
    r.finish_map(grp, grp.name, {r.key(p): "const float*", r.key(t): "const float*",
                                    r.key(g): "const float*"}, body)


@lowers("mse_grad")
def lower_mse_grad(r: KernelBuilder, grp: Group) -> None:
    _pointwise_loss_grad(r, grp, "2.0f * (pp - tt)")


@lowers("l1_grad")
def lower_l1_grad(r: KernelBuilder, grp: Group) -> None:
    _pointwise_loss_grad(r, grp, "(pp > tt ? 1.0f : (pp < tt ? -1.0f : 0.0f))")


@lowers("smooth_l1_grad")
def lower_smooth_l1_grad(r: KernelBuilder, grp: Group) -> None:
    b = _f(SMOOTH_L1_BETA)
    _pointwise_loss_grad(r, grp, f"(fabsf(pp - tt) < {b} ? (pp - tt) / {b} : "
                                 "(pp > tt ? 1.0f : -1.0f))")


@lowers("bce_grad")
def lower_bce_grad(r: KernelBuilder, grp: Group) -> None:
    _pointwise_loss_grad(r, grp, f"(pp - tt) / fmaxf(pp * (1.0f - pp), {_f(BCE_GRAD_EPS)})")


@lowers("bce_logits_grad")
def lower_bce_logits_grad(r: KernelBuilder, grp: Group) -> None:
    _pointwise_loss_grad(r, grp, "nl_sigmoid(pp) - tt")


@lowers("cross_entropy_grad")
def lower_cross_entropy_grad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    z, t, g = n.inputs
    per = math.prod(z.type.shape[1:])
    rest = position_in_channel(z.type)
    body = [f"long long pos = {rest}; int nn = n;"]
    body += _ce_position(r, z, "0")[1:]   # reuses nn, pos
    body += [f"int tc = (int){r.key(t)}[(long long)n * {per} + pos];",
             f"float pr = (float)(exp((double)({_at(z.type, r.key(z), r.coords(n.type))}"
             " - m)) / s);",
             f"float v = (pr - (o0 == tc ? 1.0f : 0.0f)) * ({r.key(g)}[0] / "
             f"(float)((long long)N * {per}));"]
    r.finish_map(grp, grp.name, {r.key(z): "const float*",
                                    r.key(t): "const long long*",
                                    r.key(g): "const float*"}, body)
