"""Loop-level lowerings of data movement (ops/shape.py): index remapping, no arithmetic
(concat, crop, pad, flatten, reshape, permute).
A concat that fusion writes in place runs no kernel (its producers store into it)."""

from __future__ import annotations

from netlang.kernels.builder import KernelBuilder, _at
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


@lowers("crop")
def lower_crop(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    box = n.attrs["box"]
    _read_at(r, grp, ["o0"] + [f"(o{j + 1} + {box[2 * j]})" for j in range(n.type.rank - 1)])


@lowers("pad")
def lower_pad(r: KernelBuilder, grp: Group) -> None:
    n = grp.anchor
    x = n.inputs[0]
    box = n.attrs["box"]
    nd = x.type.rank - 1
    conds = [f"o{j + 1} >= {box[2 * j]} && o{j + 1} < {box[2 * j] + x.type.shape[j + 1]}"
             for j in range(nd)]
    coords = ["o0"] + [f"(o{j + 1} - {box[2 * j]})" for j in range(nd)]
    body = [f"float v = ({' && '.join(conds)}) ? {_at(x.type, r.key(x), coords)} : 0.0f;"]
    r.finish_map(grp, grp.name, {r.key(x): "const float*"}, body)


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
