"""Loop-level lowerings of pooling and resampling (ops/pool.py). Backward kernels are
gathers (each input pixel sums what reaches it), so no kernel needs atomics."""

from __future__ import annotations

import itertools
import math

from netlang.kernels.builder import (
    KernelBuilder, Loop, _f, _offsets_of, nest, position_in_channel, window_taps,
)
from netlang.kernels.registry import lowers
from netlang.ir.fusion import Group
from netlang.ops.pool import CUBIC_A, nearest_ratio


def _window_loops(r: KernelBuilder, at: dict, sp_in, nd: int, inner: list[str]) -> list[str]:
    """`inner` for every tap of the window at output o that lies in the input."""
    d = at.get("dilation", (1,) * nd)
    return nest(window_taps(at["kernel"], at["stride"], d, at["pad"], sp_in), inner)


@lowers("maxpool")
def lower_maxpool(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    nd = x.type.rank - 1
    inner = [f"float t = {r._xat(x, 'o0', [f'i{j}' for j in range(nd)])};",
             "if (t > m || t != t) m = t;"]   # a NaN propagates, as np.maximum's
    body = ["float m = -NL_INF;"] + _window_loops(r, n.attrs, x.type.shape[1:], nd, inner)
    body.append("float v = m;")
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


def _covering(j: int, pad: int, reach: int, s: int, out: int, head) -> Loop:
    """The windows w_j whose taps w * s - pad + [0, reach] cover input pixel o_{j+1}:
    ceil((o + pad - reach) / s) <= w <= (o + pad) / s, within [0, out)."""
    a = f"o{j + 1} + {pad} - {reach}"
    before = (f"int wa{j} = {a} <= 0 ? 0 : ({a} + {s - 1}) / {s};",
              f"int wb{j} = (o{j + 1} + {pad}) / {s} + 1; if (wb{j} > {out}) wb{j} = {out};")
    return Loop(f"w{j}", f"wb{j}", tuple(head), f"wa{j}", before)


@lowers("maxpool_grad")
def lower_maxpool_grad(r: KernelBuilder, grp: Group) -> None:
    """dx at an input pixel: the dy of every window whose first maximum is this pixel."""
    n = grp.anchor
    dy, x = n.inputs
    at = n.attrs
    nd = x.type.rank - 1
    sp_in, sp_out = x.type.shape[1:], dy.type.shape[1:]
    k, s = at["kernel"], at["stride"]
    d = at.get("dilation", (1,) * nd)
    p = at["pad"]
    if r.dialect.routines and nd in (1, 2):   # scatter each window's dy to its maximum
        def pad2(v, fill):
            return [fill] * (2 - nd) + list(v)
        vals = [x.type.shape[0], *pad2(sp_in, 1), *pad2(sp_out, 1), *pad2(k, 1), *pad2(s, 1),
                *pad2(p[0::2], 0), *pad2(d, 1)]
        struct = "nl_pool{" + ", ".join(str(v) for v in vals) + "}"

        def call(dst: str, stride: int):
            return (f"nl_maxpool_grad(${r.key(dy)}, ${r.key(x)}, {dst}, N, {struct}, "
                    f"{stride}LL);", [r.key(dy), r.key(x)])
        return r.call_then(grp, call, n.type)
    # Output windows that may contain this pixel; in each, find the window's first maximum
    # (row-major over the kernel, as NumPy and PyTorch do).
    windows = [_covering(j, p[2 * j], (k[j] - 1) * d[j], s[j], sp_out[j], (
        f"int kk{j} = o{j + 1} + {p[2 * j]} - w{j} * {s[j]};",
        f"if (kk{j} % {d[j]} != 0) continue;"))
        for j in range(nd)]
    taps = window_taps(k, s, d, p, sp_in, out="w", tap="q", first=0)
    first_max = [f"float t = {r._xat(x, 'o0', [f'i{j}' for j in range(nd)])};",
                 "if (first || t > m) { m = t; first = 0; is_me = ("
                 + " && ".join(f"i{j} == o{j + 1}" for j in range(nd)) + "); }"]
    dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
    dyi += _offsets_of("w", sp_out)
    body = ["float acc = 0.0f;"] + nest(windows, [
        "float m = -NL_INF; int first = 1; int is_me = 0;", *nest(taps, first_max),
        f"if (is_me) acc += {r.key(dy)}[{dyi}];"]) + ["float v = acc;"]
    r.finish_map(grp, grp.name, {r.key(dy): "const float*", r.key(x): "const float*"},
                    body)


def _avg_count(r: KernelBuilder, at: dict, sp_in, nd: int, wvars: list[str]) -> list[str]:
    """Divisor of the window at output position `wvars` (PyTorch's rule): its elements in
    the input (with count_include_pad, in the padded input, less the ceil-mode margin);
    of a dilated window, its taps there."""
    k, s = at["kernel"], at["stride"]
    d = at.get("dilation", (1,) * nd)
    p = at["pad"]
    lines = ["int cnt = 1;"]
    for j in range(nd):
        lo = f"{wvars[j]} * {s[j]} - {p[2 * j]}"
        if d[j] != 1:
            lo_b, hi_b = ((f"-{p[2 * j]}", f"{sp_in[j]} + {p[2 * j + 1]}")
                          if at["count_include_pad"] else ("0", f"{sp_in[j]}"))
            lines.append(f"{{ int a = {lo}; int c = 0; for (int t = 0; t < {k[j]}; ++t) {{ "
                         f"int q = a + t * {d[j]}; if (q >= {lo_b} && q < {hi_b}) ++c; }} "
                         "cnt *= c; }")
        elif at["count_include_pad"]:
            lines.append(f"{{ int a = {lo}; int b = a + {k[j]}; if (b > {sp_in[j]} + "
                         f"{p[2 * j + 1]}) b = {sp_in[j]} + {p[2 * j + 1]}; cnt *= (b - a); }}")
        else:
            lines.append(f"{{ int a = {lo}; int b = a + {k[j]}; if (a < 0) a = 0; if (b > "
                         f"{sp_in[j]}) b = {sp_in[j]}; cnt *= (b - a); }}")
    lines.append("if (cnt < 1) cnt = 1;")
    return lines


@lowers("avgpool")
def lower_avgpool(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    nd = x.type.rank - 1
    inner = [f"acc += {r._xat(x, 'o0', [f'i{j}' for j in range(nd)])};"]
    body = ["float acc = 0.0f;"] + _window_loops(r, n.attrs, x.type.shape[1:], nd, inner)
    body += _avg_count(r, n.attrs, x.type.shape[1:], nd, [f"o{j + 1}" for j in range(nd)])
    body.append("float v = acc / (float)cnt;")
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


@lowers("avgpool_grad")
def lower_avgpool_grad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy = n.inputs[0]
    at = n.attrs
    sp_in = tuple(at["in_shape"][1:])
    sp_out = dy.type.shape[1:]
    nd = len(sp_in)
    k, s = at["kernel"], at["stride"]
    d = at.get("dilation", (1,) * nd)
    p = at["pad"]
    windows = [_covering(j, p[2 * j], (k[j] - 1) * d[j], s[j], sp_out[j], (
        f"int kk{j} = o{j + 1} + {p[2 * j]} - w{j} * {s[j]};",)
        + ((f"if (kk{j} % {d[j]} != 0) continue;",) if d[j] != 1 else ()))
        for j in range(nd)]
    dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
    dyi += _offsets_of("w", sp_out)
    inner = _avg_count(r, at, sp_in, nd, [f"w{j}" for j in range(nd)])
    body = ["float acc = 0.0f;"] + nest(windows, inner + [
        f"acc += {r.key(dy)}[{dyi}] / (float)cnt;"]) + ["float v = acc;"]
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"}, body)


def _strided(shape, coords) -> str:
    return " + ".join(f"(long long){c} * {math.prod(shape[j + 1:])}"
                      for j, c in enumerate(coords)) or "0"


@lowers("mean", "sum")
def lower_mean(r: KernelBuilder, grp: Group) -> None:
    """Mean (or sum) along an axis: one output element per thread, a loop along the axis
    (short: a transformer's tokens)."""
    n = grp.anchor
    x = n.inputs[0]
    ax = n.attrs["axis"]
    length = x.type.shape[ax]
    coords = r.coords(n.type)
    coords.insert(ax, "t")
    at = f"{r.key(x)}[(long long)n * {x.type.size} + {_strided(x.type.shape, coords)}]"
    body = ["float acc = 0.0f;",
            f"for (int t = 0; t < {length}; ++t) acc += {at};",
            f"float v = acc / {length}.0f;" if n.op == "mean" else "float v = acc;"]
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


@lowers("mean_grad")
def lower_mean_grad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy = n.inputs[0]
    ax = n.attrs["axis"]
    coords = r.coords(n.type)
    del coords[ax]
    at = f"{r.key(dy)}[(long long)n * {dy.type.size} + {_strided(dy.type.shape, coords)}]"
    body = [f"float v = {at} / {n.type.shape[ax]}.0f;" if n.attrs.get("mean", True)
            else f"float v = {at};"]
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"}, body)


def _first_max(r: KernelBuilder, x, per: int, var: str = "q") -> list[str]:
    """Lines finding channel o0's maximum `m` and its first position `{var}`."""
    at = f"{r.key(x)}[(long long)n * {x.type.size} + (long long)o0 * {per} + p]"
    return [f"float m = {r.key(x)}[(long long)n * {x.type.size} + (long long)o0 * {per}];",
            f"long long {var} = 0;",
            f"for (long long p = 1; p < {per}; ++p) {{",
            f"    float t = {at};",
            f"    if (t > m || (t != t && m == m)) {{ m = t; {var} = p; }}",
            "}"]


@lowers("global_maxpool")
def lower_global_maxpool(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    per = math.prod(x.type.shape[1:])
    r.finish_map(grp, grp.name, {r.key(x): "const float*"},
                 _first_max(r, x, per) + ["float v = m;"])


@lowers("global_maxpool_grad")
def lower_global_maxpool_grad(r: KernelBuilder, grp: Group) -> None:
    """Per channel, the first maximal position gets dy (a map over the input: each
    element asks whether it is that position; channels are small planes here)."""
    n = grp.anchor
    dy, x = n.inputs
    per = math.prod(x.type.shape[1:])
    body = _first_max(r, x, per) + [
        f"long long here = {position_in_channel(x.type)};",
        f"float v = here == q ? {r.key(dy)}[(long long)n * {x.type.shape[0]} + o0] : 0.0f;"]
    r.finish_map(grp, grp.name, {r.key(x): "const float*", r.key(dy): "const float*"}, body)


@lowers("global_avgpool")
def lower_global_avgpool(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    per = math.prod(x.type.shape[1:])
    term = [f"acc_v += {r.key(x)}[(long long)n * {x.type.size} + (long long)o0 * {per} "
            "+ r];"]
    r.emit_reduce(grp.name, grp.nodes, r.key(n), n.type, {r.key(x): "const float*"},
                     f"{per}", [], term, final=f"v / {per}.0f")


@lowers("global_avgpool_grad")
def lower_global_avgpool_grad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy = n.inputs[0]
    per = math.prod(n.type.shape[1:])
    body = [f"float v = {r.key(dy)}[(long long)n * {dy.type.size} + o0] / {per}.0f;"]
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"}, body)


def _adaptive_bounds(j: int, o: str, n_in: int, n_out: int) -> list[str]:
    """s{j}, e{j}: output position `o`'s window along axis j (ops/pool.adaptive_window)."""
    return [f"int s{j} = ({o} * {n_in}) / {n_out};",
            f"int e{j} = (({o} + 1) * {n_in} + {n_out - 1}) / {n_out};"]


@lowers("adaptive_avgpool")
def lower_adaptive_avgpool(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    sp_in, size = x.type.shape[1:], n.attrs["size"]
    nd = len(size)
    body = [line for j in range(nd) for line in _adaptive_bounds(j, f"o{j + 1}", sp_in[j],
                                                                   size[j])]
    loops = [Loop(f"i{j}", f"e{j}", start=f"s{j}") for j in range(nd)]
    count = " * ".join(f"(e{j} - s{j})" for j in range(nd))
    body += ["float acc = 0.0f;"]
    body += nest(loops, [f"acc += {r._xat(x, 'o0', [f'i{j}' for j in range(nd)])};"])
    body.append(f"float v = acc / (float)({count});")
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


@lowers("adaptive_avgpool_grad")
def lower_adaptive_avgpool_grad(r: KernelBuilder, grp: Group) -> None:
    """Input position h lies in the windows of outputs floor(h S / H) .. ceil((h + 1) S / H)
    - 1; each adds its dy divided by its window's length."""
    n = grp.anchor
    dy = n.inputs[0]
    sp_in, size = n.type.shape[1:], n.attrs["size"]
    nd = len(size)
    loops = []
    for j in range(nd):
        h, o = sp_in[j], size[j]
        win = _adaptive_bounds(j, f"d{j}", h, o)
        loops.append(Loop(f"d{j}", f"(((o{j + 1} + 1) * {o} + {h - 1}) / {h})",
                          start=f"((o{j + 1} * {o}) / {h})",
                          head=tuple(win) + (f"float w{j} = 1.0f / (float)(e{j} - s{j});",)))
    dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(size)}"
    dyi += _offsets_of("d", size)
    body = ["float v = 0.0f;"] + nest(loops, [
        f"v += {' * '.join(f'w{j}' for j in range(nd))} * {r.key(dy)}[{dyi}];"])
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"}, body)


def _coord(at: dict, j: int, d: str, n_in: int, n_out: int) -> list[str]:
    """C lines giving where output position `d` reads along axis j (ops/pool.source_coord):
    int i{j} for `nearest`; else float c{j}, with a{j} = floor and the fraction l{j}."""
    by_size = at.get("size") is not None
    if at["mode"] == "nearest":
        ratio = _f(nearest_ratio(at, j, n_in, n_out))
        return [f"int i{j} = (int)floorf((float){d} * {ratio}); "
                f"if (i{j} > {n_in - 1}) i{j} = {n_in - 1};"]
    if at.get("align_corners"):
        ratio = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        lines = [f"float c{j} = (float){d} * {_f(ratio)};"]
    else:
        ratio = n_in / n_out if by_size else 1.0 / at["scale"][j]
        lines = [f"float c{j} = ((float){d} + 0.5f) * {_f(ratio)} - 0.5f;"]
        if at["mode"] != "bicubic":
            lines.append(f"if (c{j} < 0.0f) c{j} = 0.0f;")
    lines.append(f"int a{j} = (int)floorf(c{j}); float l{j} = c{j} - (float)a{j};")
    return lines


def _taps(at: dict, j: int, n_in: int) -> tuple[list[str], list[tuple[str, str]]]:
    """After _coord: lines, and (index, weight) C expressions of the taps along axis j."""
    last = n_in - 1
    if at["mode"] == "bicubic":
        a = CUBIC_A

        def near(x):
            return f"((({_f(a + 2)} * {x} - {_f(a + 3)}) * {x}) * {x} + 1.0f)"

        def far(x):
            return f"((({_f(a)} * {x} - {_f(5 * a)}) * {x} + {_f(8 * a)}) * {x} - {_f(4 * a)})"
        lines = [f"float u{j}[4] = {{{far(f'(l{j} + 1.0f)')}, {near(f'l{j}')}, "
                 f"{near(f'(1.0f - l{j})')}, {far(f'(2.0f - l{j})')}}};"]
        taps = []
        for k in range(4):
            idx = f"(a{j} + {k - 1} < 0 ? 0 : (a{j} + {k - 1} > {last} ? {last} : a{j} + {k - 1}))"
            taps.append((idx, f"u{j}[{k}]"))
        return lines, taps
    lines = [f"if (a{j} > {last}) a{j} = {last};",
             f"int b{j} = a{j} + 1 < {n_in} ? a{j} + 1 : {last};"]
    return lines, [(f"a{j}", f"(1.0f - l{j})"), (f"b{j}", f"l{j}")]


@lowers("upsample")
def lower_upsample(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    at = n.attrs
    nd = x.type.rank - 1
    sp_in, sp_out = x.type.shape[1:], n.type.shape[1:]
    body = []
    for j in range(nd):
        body += _coord(at, j, f"o{j + 1}", sp_in[j], sp_out[j])
    if at["mode"] == "nearest":
        body.append(f"float v = {r._xat(x, 'o0', [f'i{j}' for j in range(nd)])};")
        return r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)
    taps = []
    for j in range(nd):
        lines, t = _taps(at, j, sp_in[j])
        body += lines
        taps.append(t)
    body.append("float v = 0.0f;")
    for combo in itertools.product(*taps):
        idx = [c[0] for c in combo]
        wts = [c[1] for c in combo]
        body.append(f"v += {' * '.join(wts)} * {r._xat(x, 'o0', idx)};")
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


@lowers("upsample_grad")
def lower_upsample_grad(r: KernelBuilder, grp: Group) -> None:
    """dx at input pixel i: sum over the output pixels whose interpolation reads i (a range
    around i's image in the output, each checked tap by tap)."""
    n = grp.anchor
    dy = n.inputs[0]
    at = n.attrs
    sp_out = dy.type.shape[1:]
    nd = len(sp_out)
    sp_in = tuple(at["in_shape"][1:])
    loops = []
    for j in range(nd):
        # output positions per input position, whichever mapping (scale, size, corners
        # aligned): bounds with a margin of the widest reach (two taps for cubic)
        ratio = max(sp_out[j] / sp_in[j], (sp_out[j] - 1) / max(sp_in[j] - 1, 1))
        lo = f"(int)floorf(((float)o{j + 1} - 2.0f) * {_f(ratio)}) - 2"
        hi = f"(int)ceilf(((float)o{j + 1} + 3.0f) * {_f(ratio)}) + 2"
        before = [f"int lo{j} = {lo}; if (lo{j} < 0) lo{j} = 0;",
                  f"int hi{j} = {hi}; if (hi{j} > {sp_out[j]}) hi{j} = {sp_out[j]};"]
        if at["mode"] == "nearest":   # the last input row also takes the overflow rows
            before.append(f"if (o{j + 1} == {sp_in[j] - 1}) hi{j} = {sp_out[j]};")
            head = _coord(at, j, f"d{j}", sp_in[j], sp_out[j])
            head.append(f"float w{j} = i{j} == o{j + 1} ? 1.0f : 0.0f;")
        else:
            head = _coord(at, j, f"d{j}", sp_in[j], sp_out[j])
            lines, taps = _taps(at, j, sp_in[j])
            head += lines
            head.append(f"float w{j} = " + " + ".join(
                f"({idx} == o{j + 1} ? {w} : 0.0f)" for idx, w in taps) + ";")
        head.append(f"if (w{j} == 0.0f) continue;")
        loops.append(Loop(f"d{j}", f"hi{j}", tuple(head), f"lo{j}", tuple(before)))
    dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
    dyi += _offsets_of("d", sp_out)
    body = ["float acc = 0.0f;"] + nest(loops, [
        f"acc += {' * '.join(f'w{j}' for j in range(nd))} * {r.key(dy)}[{dyi}];"]) + \
        ["float v = acc;"]
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"}, body)
