"""Loop-level lowerings of pooling and resampling (ops/pool.py). Backward kernels are
gathers (each input pixel sums what reaches it), so no kernel needs atomics."""

from __future__ import annotations

import math

from netlang.kernels.builder import KernelBuilder, _f, _offsets_of
from netlang.kernels.registry import lowers
from netlang.passes.fusion import Group


def _window_loops(r: KernelBuilder, at: dict, sp_in, nd: int, inner: list[str], bounds: str = "skip"
                  ) -> list[str]:
    k, s = at["kernel"], at["stride"]
    d = at.get("dilation", (1,) * nd)
    p = at["pad"]
    body, ind = [], ""
    for j in range(nd):
        body.append(ind + f"for (int k{j} = 0; k{j} < {k[j]}; ++k{j}) {{")
        ind += "    "
        body.append(ind + f"int i{j} = o{j + 1} * {s[j]} - {p[2 * j]} + k{j} * {d[j]};")
        if bounds == "skip":
            body.append(ind + f"if (i{j} < 0 || i{j} >= {sp_in[j]}) continue;")
    body += [ind + x for x in inner]
    for _ in range(nd):
        ind = ind[:-4]
        body.append(ind + "}")
    return body


@lowers("maxpool")
def lower_maxpool(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    nd = x.type.rank - 1
    inner = [f"float t = {r._xat(x, 'o0', [f'i{j}' for j in range(nd)])};",
             "if (t > m) m = t;"]
    body = ["float m = -NL_INF;"] + _window_loops(r, n.attrs, x.type.shape[1:], nd, inner)
    body.append("float v = m;")
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


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
    body = ["float acc = 0.0f;"]
    ind = ""
    for j in range(nd):   # output windows that may contain this pixel
        body.append(ind + f"for (int w{j} = 0; w{j} < {sp_out[j]}; ++w{j}) {{")
        ind += "    "
        body.append(ind + f"int kk{j} = o{j + 1} + {p[2 * j]} - w{j} * {s[j]};")
        body.append(ind + f"if (kk{j} < 0 || kk{j} % {d[j]} != 0 || kk{j} / {d[j]} >= "
                          f"{k[j]}) continue;")
    # find the window's first maximum (row-major over the kernel, as NumPy/PyTorch)
    body.append(ind + "float m = -NL_INF; int first = 1; int is_me = 0;")
    inner = [f"float t = {r._xat(x, 'o0', [f'i{j}' for j in range(nd)])};",
             "if (first || t > m) { m = t; first = 0; is_me = ("
             + " && ".join(f"i{j} == o{j + 1}" for j in range(nd)) + "); }"]
    loops, ind2 = [], ind
    for j in range(nd):
        loops.append(ind2 + f"for (int q{j} = 0; q{j} < {k[j]}; ++q{j}) {{")
        ind2 += "    "
        loops.append(ind2 + f"int i{j} = w{j} * {s[j]} - {p[2 * j]} + q{j} * {d[j]};")
        loops.append(ind2 + f"if (i{j} < 0 || i{j} >= {sp_in[j]}) continue;")
    loops += [ind2 + x_ for x_ in inner]
    for _ in range(nd):
        ind2 = ind2[:-4]
        loops.append(ind2 + "}")
    body += loops
    dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
    dyi += _offsets_of("w", sp_out)
    body.append(ind + f"if (is_me) acc += {r.key(dy)}[{dyi}];")
    for _ in range(nd):
        ind = ind[:-4]
        body.append(ind + "}")
    body.append("float v = acc;")
    r.finish_map(grp, grp.name, {r.key(dy): "const float*", r.key(x): "const float*"},
                    body)


def _avg_count(r: KernelBuilder, at: dict, sp_in, nd: int, wvars: list[str]) -> list[str]:
    """Divisor of the window at output position `wvars` (PyTorch's rule)."""
    k, s = at["kernel"], at["stride"]
    p = at["pad"]
    lines = ["int cnt = 1;"]
    for j in range(nd):
        lo = f"{wvars[j]} * {s[j]} - {p[2 * j]}"
        if at["count_include_pad"]:
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
    p = at["pad"]
    body, ind = ["float acc = 0.0f;"], ""
    for j in range(nd):
        body.append(ind + f"for (int w{j} = 0; w{j} < {sp_out[j]}; ++w{j}) {{")
        ind += "    "
        body.append(ind + f"int kk{j} = o{j + 1} + {p[2 * j]} - w{j} * {s[j]};")
        body.append(ind + f"if (kk{j} < 0 || kk{j} >= {k[j]}) continue;")
    body += [ind + x_ for x_ in _avg_count(r, at, sp_in, nd,
                                                 [f"w{j}" for j in range(nd)])]
    dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
    dyi += _offsets_of("w", sp_out)
    body.append(ind + f"acc += {r.key(dy)}[{dyi}] / (float)cnt;")
    for _ in range(nd):
        ind = ind[:-4]
        body.append(ind + "}")
    body.append("float v = acc;")
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"}, body)


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


@lowers("upsample")
def lower_upsample(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    at = n.attrs
    nd = x.type.rank - 1
    sp_in = x.type.shape[1:]
    body = []
    if at["mode"] == "nearest":
        idx = []
        for j in range(nd):
            body.append(f"int i{j} = (int)floorf((float)o{j + 1} / {_f(at['scale'][j])}); "
                        f"if (i{j} > {sp_in[j] - 1}) i{j} = {sp_in[j] - 1};")
            idx.append(f"i{j}")
        body.append(f"float v = {r._xat(x, 'o0', idx)};")
    else:
        for j in range(nd):
            body += [f"float c{j} = ((float)o{j + 1} + 0.5f) / {_f(at['scale'][j])} - 0.5f; "
                     f"if (c{j} < 0.0f) c{j} = 0.0f;",
                     f"int a{j} = (int)floorf(c{j}); if (a{j} > {sp_in[j] - 1}) "
                     f"a{j} = {sp_in[j] - 1};",
                     f"int b{j} = a{j} + 1 < {sp_in[j]} ? a{j} + 1 : {sp_in[j] - 1};",
                     f"float l{j} = c{j} - (float)a{j};"]
        body.append("float v = 0.0f;")
        for combo in range(2 ** nd):
            idx, wts = [], []
            for j in range(nd):
                hi = (combo >> j) & 1
                idx.append(f"b{j}" if hi else f"a{j}")
                wts.append(f"l{j}" if hi else f"(1.0f - l{j})")
            body.append(f"v += {' * '.join(wts)} * {r._xat(x, 'o0', idx)};")
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


@lowers("upsample_grad")
def lower_upsample_grad(r: KernelBuilder, grp: Group) -> None:
    """dx at input pixel i: sum over output pixels whose interpolation reads i."""
    n = grp.anchor
    dy = n.inputs[0]
    at = n.attrs
    sp_out = dy.type.shape[1:]
    nd = len(sp_out)
    sp_in = tuple(at["in_shape"][1:])
    body, ind = ["float acc = 0.0f;"], ""
    for j in range(nd):
        sc = at["scale"][j]
        lo = f"(int)floorf(((float)o{j + 1} - 1.0f) * {_f(sc)}) - 1"
        hi = f"(int)ceilf(((float)o{j + 1} + 2.0f) * {_f(sc)}) + 1"
        body.append(ind + f"int lo{j} = {lo}; if (lo{j} < 0) lo{j} = 0;")
        body.append(ind + f"int hi{j} = {hi}; if (hi{j} > {sp_out[j]}) hi{j} = {sp_out[j]};")
        if at["mode"] == "nearest":   # the last input row also takes the overflow rows
            body.append(ind + f"if (o{j + 1} == {sp_in[j] - 1}) hi{j} = {sp_out[j]};")
        body.append(ind + f"for (int d{j} = lo{j}; d{j} < hi{j}; ++d{j}) {{")
        ind += "    "
        if at["mode"] == "nearest":
            body.append(ind + f"int s{j} = (int)floorf((float)d{j} / {_f(sc)}); if (s{j} > "
                              f"{sp_in[j] - 1}) s{j} = {sp_in[j] - 1};")
            body.append(ind + f"float w{j} = s{j} == o{j + 1} ? 1.0f : 0.0f;")
        else:
            body += [ind + f"float c{j} = ((float)d{j} + 0.5f) / {_f(sc)} - 0.5f; if (c{j} < "
                           f"0.0f) c{j} = 0.0f;",
                     ind + f"int a{j} = (int)floorf(c{j}); if (a{j} > {sp_in[j] - 1}) a{j} = "
                           f"{sp_in[j] - 1};",
                     ind + f"int b{j} = a{j} + 1 < {sp_in[j]} ? a{j} + 1 : {sp_in[j] - 1};",
                     ind + f"float l{j} = c{j} - (float)a{j};",
                     ind + f"float w{j} = (a{j} == o{j + 1} ? 1.0f - l{j} : 0.0f) + "
                           f"(b{j} == o{j + 1} ? l{j} : 0.0f);"]
        body.append(ind + f"if (w{j} == 0.0f) continue;")
    dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
    dyi += _offsets_of("d", sp_out)
    body.append(ind + f"acc += {' * '.join(f'w{j}' for j in range(nd))} * "
                      f"{r.key(dy)}[{dyi}];")
    for _ in range(nd):
        ind = ind[:-4]
        body.append(ind + "}")
    body.append("float v = acc;")
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"}, body)
