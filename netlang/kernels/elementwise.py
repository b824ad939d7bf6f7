"""Loop-level lowerings of the elementwise family (ops/elementwise.py).

Most elementwise ops are one C expression each (EXPRESSIONS below): `{v}` is the value
flowing through the fused chain, `{1}`, `{2}`.. the op's other inputs at the same output
coordinates, `{name}` a numeric attribute. Such ops need no kernel of their own: they
become a line of the epilogue of whatever kernel produces their input, or, standing alone,
a map kernel of one line. Ops that read more than their own element (softmax over the
channels, broadcasts, reductions) have lowerings here.
"""

from __future__ import annotations

import math

from netlang.ops.elementwise import PRECISION_DROP
from netlang.ir.graph import Node
from netlang.ir.types import TensorType
from netlang.kernels.builder import KernelBuilder, _at, _decompose, _f, _strides
from netlang.kernels.registry import expression, lowers
from netlang.ir.fusion import Group

# `{v}` is the flowing value, `{1}`.. the other inputs at the same coordinates (per-channel
# vectors read at o0), `{alpha}`-style names the op's numeric attributes.
EXPRESSIONS = {
    # NaN stays NaN, as in NumPy and PyTorch (fmaxf would return 0 and hide a divergence)
    "relu": "({v} < 0.0f ? 0.0f : {v})",
    "relu_grad": "({1} > 0.0f ? {v} : 0.0f)",
    "leaky_relu": "({v} > 0.0f ? {v} : {v} * {alpha})",
    "leaky_relu_grad": "({1} > 0.0f ? {v} : {v} * {alpha})",
    "sigmoid": "nl_sigmoid({v})",
    "sigmoid_grad": "({v} * {1} * (1.0f - {1}))",
    "tanh": "tanhf({v})",
    "tanh_grad": "({v} * (1.0f - {1} * {1}))",
    "add": "({v} + {1})",
    "mul": "({v} * {1})",
    "scale": "({v} * {factor})",
}
for _op, _text in EXPRESSIONS.items():
    expression(_op, _text)


def _gelu_expression(grad: bool):
    def text(e: Node, v: str, loads: dict) -> str:
        tanh = "1" if e.attrs["approximate"] == "tanh" else "0"
        if grad:
            return f"({v} * nl_gelu_grad({loads[1]}, {tanh}))"
        return f"nl_gelu({v}, {tanh})"
    return text


def _round_expression(e: Node, v: str, loads: dict) -> str:
    if not e.attrs["forward"]:
        return v
    if e.attrs["precision"] == "fp16":
        return f"nl_round_half({v})"
    return f"nl_round_bits({v}, {PRECISION_DROP[e.attrs['precision']]})"


expression("round_to", _round_expression)
expression("gelu", _gelu_expression(False))
expression("gelu_grad", _gelu_expression(True))
expression("hardtanh", "fminf(fmaxf({v}, {min_val}), {max_val})")
expression("hardtanh_grad", "(({1} > {min_val} && {1} < {max_val}) ? {v} : 0.0f)")
expression("prelu", "({v} > 0.0f ? {v} : {1} * {v})")
expression("prelu_grad_input", "({2} > 0.0f ? {v} : {1} * {v})")
expression("prelu_weight_terms", "({1} > 0.0f ? 0.0f : {v} * {1})")
expression("silu", "({v} * nl_sigmoid({v}))")
expression("silu_grad", "({v} * nl_silu_grad({1}))")
expression("elu", "({v} > 0.0f ? {v} : {alpha} * expm1f(fminf({v}, 0.0f)))")
expression("elu_grad", "({1} > 0.0f ? {v} : {v} * {alpha} * expf(fminf({1}, 0.0f)))")
expression("softplus", "nl_softplus({v}, {beta}, {threshold})")
expression("softplus_grad", "({1} * {beta} > {threshold} ? {v} : {v} * nl_sigmoid({1} * {beta}))")


@lowers("broadcast_like")
def lower_broadcast_like(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    out_t = n.type
    coords = r.coords(out_t)
    if x.type.shape == () or (not x.type.batched and x.type.size == 1):
        body = [f"float v = {r.key(x)}[0];"]
    elif x.type.rank < out_t.rank:
        body = [f"float v = {r.key(x)}[o0];"]
    else:
        body = [f"float v = {_at(x.type, r.key(x), coords)};"]
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


@lowers("constant")
def lower_constant(r: KernelBuilder, grp: Group) -> None:
    r.finish_map(grp, grp.name, {}, [f"float v = {_f(grp.anchor.attrs['value'])};"])


@lowers("sum_to")
def lower_sum_to(r: KernelBuilder, grp: Group) -> None:
    """Sum a broadcast gradient back: reduce over the batch (if the target is unbatched)
    and over dims where the target has size 1."""
    n = grp.anchor
    x = n.inputs[0]
    xs, ts = x.type.shape, n.type.shape
    lead = len(xs) - len(ts)
    red_dims = [j for j in range(len(xs)) if j < lead or ts[j - lead] == 1 and xs[j] != 1]
    red_sizes = [xs[j] for j in red_dims]
    batch_red = x.type.batched and not n.type.batched
    R = math.prod(red_sizes)
    term = []
    if batch_red:
        term.append(f"int nn = (int)(r / {R}); long long rr = r % {R};")
    else:
        term.append("int nn = n; long long rr = r;")
    term += _decompose(tuple(red_sizes), "rr", "q") if red_sizes else []
    idx, qk = [], 0
    for j in range(len(xs)):
        if j in red_dims:
            idx.append(f"q{qk}")
            qk += 1
        else:
            idx.append(f"o{j - lead}")
    inner = " + ".join(f"{v} * {s}" for v, s in zip(idx, _strides(xs))) or "0"
    base = f"(long long)nn * {x.type.size} + " if x.type.batched else ""
    term.append(f"acc_v += {r.key(x)}[{base}{inner}];")
    total = f"(long long)N * {R}" if batch_red else f"{R}"
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type,
                     {r.key(x): "const float*"}, total, [], term)


@lowers("sum_all")
def lower_sum_all(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    total = f"(long long)N * {x.type.size}" if x.type.batched else f"{x.type.size}"
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type, {r.key(x): "const float*"},
                     total, [], [f"acc_v += {r.key(x)}[r];"], acc="double")


def _rows_of(x: Node, axis: int) -> TensorType:
    """The rows of a softmax along `axis`: x's shape without that axis."""
    return TensorType(x.type.shape[:axis] + x.type.shape[axis + 1:], True)


def _row_at(x: Node, axis: int, coords: list[str]) -> str:
    """The row index (the coordinates other than `axis`, row-major) of an element."""
    rest = x.type.shape[:axis] + x.type.shape[axis + 1:]
    cs = coords[:axis] + coords[axis + 1:]
    inner = " + ".join(f"(long long){c} * {math.prod(rest[j + 1:])}"
                       for j, c in enumerate(cs)) or "0"
    return f"(long long)n * {math.prod(rest)} + {inner}"


def _per_row(r: KernelBuilder, grp: Group, label: str, x: Node, axis: int,
             inputs: dict[str, str], body) -> str:
    """A scratch value per row (one thread per row looping along the axis): `body(at)`
    gives the lines computing `v` with `at(var)` the element at position var."""
    rows = _rows_of(x, axis)
    key = r.new_scratch(rows.size, True)
    coords = r.coords(rows)
    coords.insert(axis, "c")

    def at(node: Node, var: str = "c") -> str:
        cs = list(coords)
        cs[axis] = var
        strides = [math.prod(node.type.shape[j + 1:]) for j in range(node.type.rank)]
        inner = " + ".join(f"(long long){c} * {st}" for c, st in zip(cs, strides))
        return f"{r.key(node)}[(long long)n * {node.type.size} + {inner}]"

    r.emit_map(grp.anchor.name + label, [grp.anchor], key, rows, inputs, body(at))
    return key


def _logsumexp_rows(r: KernelBuilder, grp: Group, x: Node, axis: int,
                    causal: bool = False) -> str:
    """Per row, m + log(sum(exp(x - m))) with m the row's maximum; `causal`: over the
    first i + 1 entries of row i (i the coordinate before the last axis)."""
    c = x.type.shape[axis]
    if causal:
        q = r.coords(_rows_of(x, axis))[-1]   # the query: the last row coordinate
        c = f"({q} + 1 < {c} ? {q} + 1 : {c})"
    return _per_row(r, grp, "_logsumexp", x, axis, {r.key(x): "const float*"}, lambda at: [
        "float m = -NL_INF;",
        f"for (int c = 0; c < {c}; ++c) m = fmaxf(m, {at(x)});",
        "float s = 0.0f;",
        f"for (int c = 0; c < {c}; ++c) s += expf({at(x)} - m);",
        "float v = m + logf(s);"])


def _softmax_family(r: KernelBuilder, grp: Group, log: bool) -> None:
    """Two passes: each row's log-sum-exp once, then every element from it (instead of
    the row's max and sum again for every element)."""
    n = grp.anchor
    x = n.inputs[0]
    ax = n.attrs["axis"]
    causal = bool(n.attrs.get("causal"))
    lse = _logsumexp_rows(r, grp, x, ax, causal)
    coords = r.coords(n.type)
    xv = _at(x.type, r.key(x), coords)
    row = _row_at(x, ax, coords)
    value = f"{xv} - {lse}[{row}]" if log else f"expf({xv} - {lse}[{row}])"
    if causal:   # key after query: probability 0
        value = f"{coords[-1]} > {coords[-2]} ? 0.0f : {value}"
    r.finish_map(grp, grp.name, {r.key(x): "const float*", lse: "const float*"},
                 [f"float v = {value};"])


@lowers("softmax")
def lower_softmax(r: KernelBuilder, grp: Group) -> None:
    _softmax_family(r, grp, log=False)


@lowers("log_softmax")
def lower_log_softmax(r: KernelBuilder, grp: Group) -> None:
    _softmax_family(r, grp, log=True)


def _softmax_grad_family(r: KernelBuilder, grp: Group, log: bool) -> None:
    """softmax: y (dy - sum(dy y)); log_softmax: dy - exp(y) sum(dy); the sums per row."""
    n = grp.anchor
    dy, y = n.inputs
    ax = n.attrs["axis"]
    c = y.type.shape[ax]
    ins = {r.key(dy): "const float*", r.key(y): "const float*"}
    term = (lambda at: f"{at(dy)}") if log else (lambda at: f"{at(dy)} * {at(y)}")
    sums = _per_row(r, grp, "_rowsum", y, ax, dict(ins), lambda at: [
        "float v = 0.0f;", f"for (int c = 0; c < {c}; ++c) v += {term(at)};"])
    coords = r.coords(n.type)
    dv, yv = _at(dy.type, r.key(dy), coords), _at(y.type, r.key(y), coords)
    row = _row_at(y, ax, coords)
    value = f"{dv} - expf({yv}) * {sums}[{row}]" if log else f"{yv} * ({dv} - {sums}[{row}])"
    r.finish_map(grp, grp.name, dict(ins, **{sums: "const float*"}), [f"float v = {value};"])


@lowers("softmax_grad")
def lower_softmax_grad(r: KernelBuilder, grp: Group) -> None:
    _softmax_grad_family(r, grp, log=False)


@lowers("log_softmax_grad")
def lower_log_softmax_grad(r: KernelBuilder, grp: Group) -> None:
    _softmax_grad_family(r, grp, log=True)
