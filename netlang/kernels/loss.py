"""Loop-level lowerings of the losses (ops/loss.py): reductions in double precision,
and their gradients as map kernels.

A mean divides by the element count (`reduction = sum`: by 1). cross_entropy and nll with
class weights, an ignored value or label smoothing take their general form: a first
reduction sums the weights of the positions that count (the mean's divisor), which the
loss and its gradient read; without those options they keep the plain form."""

from __future__ import annotations

import math

from netlang.ir.graph import Node
from netlang.ir.types import TensorType
from netlang.kernels.builder import KernelBuilder, _at, _f, position_in_channel
from netlang.kernels.registry import lowers
from netlang.ir.fusion import Group
from netlang.ops.loss import BCE_GRAD_EPS, BCE_LOG_FLOOR, DICE_SMOOTH, SMOOTH_L1_BETA, is_sum

# The constants of ops/loss.py, as C literals (one definition for NumPy and the kernels).
FLOOR = repr(BCE_LOG_FLOOR)          # used in double arithmetic
SMOOTH = _f(DICE_SMOOTH)


def _loss_reduce(r: KernelBuilder, grp: Group, term: list[str], count: str, inputs,
                 setup: list[str] = (), divisor: str | None = None) -> None:
    """The loss as one reduction over `count` elements, divided by `divisor` (the count
    for a mean, 1 for a sum, unless given)."""
    n = grp.anchor
    if divisor is None:
        divisor = "1.0" if is_sum(n.attrs) else f"(double)({count})"
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type, inputs, count, list(setup), term,
                  final=f"(float)(sh[0] / {divisor})", acc="double")


def _elementwise_loss(r: KernelBuilder, grp: Group, term: list[str]) -> None:
    """The mean (or sum) over every element of a term of prediction {p} and target {t}."""
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


def _beta(n: Node) -> float:
    return float(n.attrs.get("beta", SMOOTH_L1_BETA))


@lowers("smooth_l1")
def lower_smooth_l1(r: KernelBuilder, grp: Group) -> None:
    b = repr(_beta(grp.anchor))
    _elementwise_loss(r, grp, ["double dd = fabs((double){p}[r] - {t}[r]);",
                               f"acc_v += dd < {b} ? 0.5 * dd * dd / {b} : dd - 0.5 * {b};"])


# -- class losses: the general form (class weights, an ignored value, label smoothing) --

def _general(n: Node) -> bool:
    a = n.attrs
    return (a.get("weight") is not None or a.get("ignore_index") is not None
            or bool(a.get("label_smoothing", 0.0)))


def _weights_decl(n: Node) -> list[str]:
    w = n.attrs.get("weight")
    if w is None:
        return []
    return [f"const float cw[{len(w)}] = {{{', '.join(_f(v) for v in w)}}};"]


def _cw(n: Node, idx: str) -> str:
    return "1.0f" if n.attrs.get("weight") is None else f"cw[{idx}]"


def _target(r: KernelBuilder, n: Node, z: Node, t: Node, nn: str) -> list[str]:
    """tc: the target at (nn, pos); keep: whether it counts; tk: tc, or 0 where ignored
    (safe to index with)."""
    per = math.prod(z.type.shape[1:])
    ignore = n.attrs.get("ignore_index")
    keep = "1" if ignore is None else f"tc != {int(ignore)}"
    return [f"int tc = (int){r.key(t)}[(long long){nn} * {per} + pos];",
            f"int keep = {keep}; int tk = keep ? tc : 0;"]


def _divisor(r: KernelBuilder, grp: Group) -> str | None:
    """The mean's divisor of a general class loss: a scratch value with the sum of the
    weights of the positions that count (a reduction of the targets); None for a sum."""
    n = grp.anchor
    if is_sum(n.attrs):
        return None
    z, t = n.inputs[:2]
    per = math.prod(z.type.shape[1:])
    den = r.new_scratch(1, False)
    term = ["int nn = (int)(r / " + str(per) + "); long long pos = r % " + str(per) + ";"]
    term += _target(r, n, z, t, "nn") + [f"if (keep) acc_v += {_cw(n, 'tc')};"]
    r.emit_reduce(n.name + "_weights", [n], den, TensorType((1,), batched=False),
                  {r.key(t): "const long long*"}, f"(long long)N * {per}", _weights_decl(n),
                  term, acc="double")
    return den


def _over(den: str | None) -> str:
    """Division by the divisor (1 when it is 0: nothing counts, the loss is 0)."""
    return "" if den is None else f" / ({den}[0] > 0.0f ? {den}[0] : 1.0f)"


def _general_class_loss(r: KernelBuilder, grp: Group, logits: bool) -> None:
    n = grp.anchor
    z, t = n.inputs
    c = z.type.shape[0]
    per = math.prod(z.type.shape[1:])
    den = _divisor(r, grp)
    zat = f"{r.key(z)}[(long long)nn * {z.type.size} + (long long)%s * {per} + pos]"
    eps = float(n.attrs.get("label_smoothing", 0.0))
    if logits:
        term = _ce_position(r, z) + _target(r, n, z, t, "nn")
        term += [f"if (keep) acc_v += {repr(1 - eps)} * {_cw(n, 'tc')} * "
                 f"(log(s) + m - {zat % 'tc'});"]
        if eps:
            term += ["if (keep) {",
                     f"    for (int cc = 0; cc < {c}; ++cc) acc_v += {repr(eps / c)} * "
                     f"{_cw(n, 'cc')} * (log(s) + m - {zat % 'cc'});", "}"]
    else:
        term = [f"int nn = (int)(r / {per}); long long pos = r % {per};"]
        term += _target(r, n, z, t, "nn")
        term += [f"if (keep) acc_v -= (double){_cw(n, 'tc')} * {zat % 'tc'};"]
    inputs = {r.key(z): "const float*", r.key(t): "const long long*"}
    if den is not None:
        inputs[den] = "const float*"
    divisor = "1.0" if den is None else f"({den}[0] > 0.0f ? (double){den}[0] : 1.0)"
    _loss_reduce(r, grp, term, f"(long long)N * {per}", inputs, _weights_decl(n), divisor)


def _general_class_grad(r: KernelBuilder, grp: Group, logits: bool) -> None:
    n = grp.anchor
    z, t, g = n.inputs
    c = z.type.shape[0]
    den = _divisor(r, grp)
    eps = float(n.attrs.get("label_smoothing", 0.0))
    body = _weights_decl(n) + [f"long long pos = {position_in_channel(z.type)}; int nn = n;"]
    body += _target(r, n, z, t, "nn")
    body += [f"float f = keep ? {r.key(g)}[0]{_over(den)} : 0.0f;"]
    if logits:
        body += _ce_position(r, z, "0")[1:]   # reuses nn, pos
        zv = _at(z.type, r.key(z), r.coords(n.type))
        body += [f"float pr = (float)(exp((double)({zv} - m)) / s);",
                 f"float v = f * {_f(1 - eps)} * {_cw(n, 'tk')} * "
                 "(pr - (o0 == tk ? 1.0f : 0.0f));"]
        if eps:
            sw = float(sum(n.attrs["weight"])) if n.attrs.get("weight") is not None else c
            body += [f"v += f * {_f(eps / c)} * ({_f(sw)} * pr - {_cw(n, 'o0')});"]
    else:
        body += [f"float v = o0 == tk ? -f * {_cw(n, 'tk')} : 0.0f;"]
    inputs = {r.key(t): "const long long*", r.key(g): "const float*"}
    if logits:
        inputs = {r.key(z): "const float*", **inputs}
    if den is not None:
        inputs[den] = "const float*"
    r.finish_map(grp, grp.name, inputs, body)


@lowers("nll")
def lower_nll(r: KernelBuilder, grp: Group) -> None:
    if _general(grp.anchor):
        return _general_class_loss(r, grp, logits=False)
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
    if _general(n):
        return _general_class_grad(r, grp, logits=False)
    z, t, g = n.inputs
    per = math.prod(z.type.shape[1:])
    rest = position_in_channel(z.type)
    body = [f"long long pos = {rest};",
            f"int tc = (int){r.key(t)}[(long long)n * {per} + pos];",
            f"float v = tc == o0 ? -{r.key(g)}[0]{_scale(n, per)} : 0.0f;"]
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


def _focal_lines(n: Node) -> list[str]:
    """From double pp (the probability), tt and ce: q = 1 - p_t, at = alpha_t, mod = q^gamma,
    dmod = its derivative in q."""
    gamma, alpha = float(n.attrs.get("gamma", 2.0)), float(n.attrs.get("alpha", 0.25))
    at = f"{alpha!r} * tt + {1 - alpha!r} * (1.0 - tt)" if alpha >= 0 else "1.0"
    zero = "1.0" if gamma == 1 else "0.0"
    return ["double q = 1.0 - (pp * tt + (1.0 - pp) * (1.0 - tt));",
            f"double at = {at};",
            f"double mod = pow(q, {gamma!r});",
            f"double dmod = q > 0.0 ? {gamma!r} * pow(q, {gamma - 1!r}) : {zero};"]


_BCE_PROB = [f"double lp = pp > 0.0 ? log(pp) : {FLOOR}; if (lp < {FLOOR}) lp = {FLOOR};",
             f"double lq = pp < 1.0 ? log(1.0 - pp) : {FLOOR}; if (lq < {FLOOR}) lq = {FLOOR};",
             "double ce = -(tt * lp + (1.0 - tt) * lq);"]
_BCE_LOGITS = ["double ce = (zz > 0.0 ? zz : 0.0) - zz * tt + log1p(exp(-fabs(zz)));",
               "double pp = 1.0 / (1.0 + exp(-zz));"]


@lowers("focal")
def lower_focal(r: KernelBuilder, grp: Group) -> None:
    _elementwise_loss(r, grp, ["double pp = {p}[r]; double tt = {t}[r];", *_BCE_PROB,
                               *_focal_lines(grp.anchor), "acc_v += at * mod * ce;"])


@lowers("focal_logits")
def lower_focal_logits(r: KernelBuilder, grp: Group) -> None:
    _elementwise_loss(r, grp, ["double zz = {p}[r]; double tt = {t}[r];", *_BCE_LOGITS,
                               *_focal_lines(grp.anchor), "acc_v += at * mod * ce;"])


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
    if _general(grp.anchor):
        return _general_class_loss(r, grp, logits=True)
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


def _scale(n: Node, per_sample: int) -> str:
    """The gradient's factor of one element after g: / count for a mean, none for a sum."""
    return "" if is_sum(n.attrs) else f" / (float)((long long)N * {per_sample})"


def _pointwise_loss_grad(r: KernelBuilder, grp: Group, expr: str,
                         pre: list[str] = ()) -> None:
    """Gradient of a pointwise loss: expr(pp, tt) (after the `pre` lines) times g / count
    (times g for a sum)."""
    n = grp.anchor
    p, t, g = n.inputs
    coords = r.coords(n.type)
    pv, tv = _at(p.type, r.key(p), coords), _at(t.type, r.key(t), coords)
    body = [f"float pp = {pv}; float tt = {tv};", *pre,
            f"float v = ({expr}) * ({r.key(g)}[0]{_scale(n, p.type.size)});"]
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
    b = _f(_beta(grp.anchor))
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
    if _general(n):
        return _general_class_grad(r, grp, logits=True)
    z, t, g = n.inputs
    per = math.prod(z.type.shape[1:])
    rest = position_in_channel(z.type)
    body = [f"long long pos = {rest}; int nn = n;"]
    body += _ce_position(r, z, "0")[1:]   # reuses nn, pos
    body += [f"int tc = (int){r.key(t)}[(long long)n * {per} + pos];",
             f"float pr = (float)(exp((double)({_at(z.type, r.key(z), r.coords(n.type))}"
             " - m)) / s);",
             f"float v = (pr - (o0 == tc ? 1.0f : 0.0f)) * ({r.key(g)}[0]{_scale(n, per)});"]
    r.finish_map(grp, grp.name, {r.key(z): "const float*",
                                    r.key(t): "const long long*",
                                    r.key(g): "const float*"}, body)


@lowers("focal_grad")
def lower_focal_grad(r: KernelBuilder, grp: Group) -> None:
    pre = ["double dv;", "{", "    double pp0 = pp, tt0 = tt;"]
    lines = ["double pp = pp0; double tt = tt0;", *_BCE_PROB, *_focal_lines(grp.anchor),
             "double dce = (pp - tt) / fmax(pp * (1.0 - pp), " + repr(BCE_GRAD_EPS) + ");",
             "dv = at * (-dmod * (2.0 * tt - 1.0) * ce + mod * dce);"]
    pre += ["    " + x for x in lines] + ["}"]
    _pointwise_loss_grad(r, grp, "(float)dv", pre)


@lowers("focal_logits_grad")
def lower_focal_logits_grad(r: KernelBuilder, grp: Group) -> None:
    pre = ["double dv;", "{", "    double zz = pp, tt0 = tt;"]
    lines = ["double tt = tt0;", *_BCE_LOGITS, *_focal_lines(grp.anchor),
             "dv = at * (-dmod * (2.0 * tt - 1.0) * pp * (1.0 - pp) * ce + mod * (pp - tt));"]
    pre += ["    " + x for x in lines] + ["}"]
    _pointwise_loss_grad(r, grp, "(float)dv", pre)
