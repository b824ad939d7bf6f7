"""Loop-level lowerings of data movement (ops/shape.py): index remapping, no arithmetic
(concat, crop, pad, flatten, reshape, permute).
A concat that fusion writes in place runs no kernel (its producers store into it)."""

from __future__ import annotations

from netlang.kernels.builder import KernelBuilder, Loop, _at, _f, nest
from netlang.kernels.registry import lowers
from netlang.ir.fusion import Group


@lowers("concat")
def lower_concat(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    if n.id in r.fusion.inplace:
        return   # its inputs' kernels wrote it
    inputs, body = {}, ["float v;"]
    start = 0
    axis = n.attrs.get("axis", 0)
    coords = r.coords(n.type)
    o = coords[axis]
    for k, x in enumerate(n.inputs):
        c = x.type.shape[axis]
        inputs[r.key(x)] = "const float*"
        rest = list(coords)
        rest[axis] = f"({o} - {start})"
        kw = "if" if k == 0 else "else if"
        body.append(f"{kw} ({o} < {start + c}) v = {_at(x.type, r.key(x), rest)};")
        start += c
    r.finish_map(grp, grp.name, inputs, body)


def _read_at(r: KernelBuilder, grp: Group, coords: list[str]) -> None:
    """A map kernel whose value is the input at remapped coordinates."""
    x = grp.anchor.inputs[0]
    r.finish_map(grp, grp.name, {r.key(x): "const float*"},
                 [f"float v = {_at(x.type, r.key(x), coords)};"])


@lowers("slice_channels")
def lower_slice_channels(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    _read_at(r, grp, [f"(o0 + {n.attrs['start']})"] + r.coords(n.type)[1:])


@lowers("slice_axis")
def lower_slice_axis(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    coords = r.coords(n.type)
    ax = n.attrs["axis"]
    coords[ax] = f"({coords[ax]} + {n.attrs['start']})"
    _read_at(r, grp, coords)


@lowers("slice_axis_grad")
def lower_slice_axis_grad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    dy = n.inputs[0]
    ax, start = n.attrs["axis"], n.attrs["start"]
    coords = r.coords(n.type)
    o = coords[ax]
    inside = f"{o} >= {start} && {o} < {start + dy.type.shape[ax]}"
    coords[ax] = f"({o} - {start})"
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"},
                 [f"float v = ({inside}) ? {_at(dy.type, r.key(dy), coords)} : 0.0f;"])


@lowers("crop")
def lower_crop(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    box = n.attrs["box"]
    _read_at(r, grp, ["o0"] + [f"(o{j + 1} + {box[2 * j]})" for j in range(n.type.rank - 1)])


def _source(mode: str, o: str, lo: int, size: int) -> str:
    """C expression: the input position padded position `o` reads (ops/shape.pad_source)."""
    i = f"({o} - {lo})"
    if mode == "reflect":
        a = f"({i} < 0 ? -{i} : {i})"
        return f"({a} >= {size} ? {2 * (size - 1)} - {a} : {a})"
    if mode == "replicate":
        return f"({i} < 0 ? 0 : ({i} >= {size} ? {size - 1} : {i}))"
    return f"((({i} % {size}) + {size}) % {size})"


@lowers("pad")
def lower_pad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    box = n.attrs["box"]
    nd = x.type.rank - 1
    mode = n.attrs.get("mode", "constant")
    if mode != "constant":
        coords = ["o0"] + [_source(mode, f"o{j + 1}", box[2 * j], x.type.shape[j + 1])
                           for j in range(nd)]
        return _read_at(r, grp, coords)
    conds = [f"o{j + 1} >= {box[2 * j]} && o{j + 1} < {box[2 * j] + x.type.shape[j + 1]}"
             for j in range(nd)]
    coords = ["o0"] + [f"(o{j + 1} - {box[2 * j]})" for j in range(nd)]
    value = _f(n.attrs.get("value", 0.0))
    body = [f"float v = ({' && '.join(conds)}) ? {_at(x.type, r.key(x), coords)} : {value};"]
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


def _readers(mode: str, j: int, i: str, lo: int, hi: int, size: int) -> Loop:
    """The loop over the padded positions p{j} that read input position `i` along one
    axis (at most three; a run of them at a replicated edge)."""
    p, last = f"p{j}", lo + size + hi
    if mode == "replicate":
        return Loop(p, f"({i} == {size - 1} ? {last} : {lo} + {i} + 1)",
                    start=f"({i} == 0 ? 0 : {lo} + {i})")
    if mode == "reflect":   # lo + i; its mirror in the front band; its mirror in the back
        return Loop(f"c{j}", 3, (
            f"if (c{j} == 1 && ({i} < 1 || {i} > {lo})) continue;",
            f"if (c{j} == 2 && ({i} < {size - 1 - hi} || {i} > {size - 2})) continue;",
            f"int {p} = c{j} == 0 ? {lo} + {i} : (c{j} == 1 ? {lo} - {i} : "
            f"{lo + 2 * (size - 1)} - {i});"))
    return Loop(f"c{j}", 2, (f"int {p} = {lo} + {i} + c{j} * {size};",   # circular
                             f"if ({p} < 0 || {p} >= {last}) continue;"), start=-1)


@lowers("pad_grad")
def lower_pad_grad(r: KernelBuilder, grp: Group) -> None:
    """Each input position gathers the gradients of the padded positions that read it."""
    n = grp.anchor
    dy = n.inputs[0]
    box, mode = n.attrs["box"], n.attrs["mode"]
    nd = n.type.rank - 1
    loops = [_readers(mode, j, f"o{j + 1}", box[2 * j], box[2 * j + 1], n.type.shape[j + 1])
             for j in range(nd)]
    read = _at(dy.type, r.key(dy), ["o0"] + [f"p{j}" for j in range(nd)])
    body = ["float v = 0.0f;"] + nest(loops, [f"v += {read};"])
    r.finish_map(grp, grp.name, {r.key(dy): "const float*"}, body)


def _copy(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    if x.type.batched:
        src = f"{r.key(x)}[(long long)n * {x.type.size} + r0]"
    else:
        src = f"{r.key(x)}[r0]"
    body = ["long long r0 = i - (long long)n * " + str(n.type.size if n.type.batched else 0)
            + ";", f"float v = {src};"]
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


lowers("flatten")(_copy)


lowers("reshape")(_copy)


@lowers("permute")
def lower_permute(r: KernelBuilder, grp: Group) -> None:
    """Output axis j is input axis axes[j]: the input is read at coordinates whose
    axes[j]-th entry is o_j."""
    axes = grp.anchor.attrs["axes"]
    coords = [""] * len(axes)
    for j, a in enumerate(axes):
        coords[a] = f"o{j}"
    _read_at(r, grp, coords)
