"""PyTorch weights in: a `state_dict` saved as safetensors
(`safetensors.torch.save_file(model.state_dict(), "model.safetensors")`) mapped onto a
network's parameters by structure, with the mapping printed and any mismatch refused.

Both sides are read as a sequence of layers: PyTorch's by module (the tensor names up to
their last dot; a safetensors file keeps no order, so in the natural order of the names,
numbers read as numbers: `features.2` before `features.10`, `layer1.0.conv1` before
`layer1.0.conv2`), netlang's by layer (in the order of the graph). A layer's signature is
its kind (a convolution or transposed convolution, a linear layer, a batchnorm, or a
layer of vectors only: LayerNorm, GroupNorm, InstanceNorm, PReLU) and the shapes of its
tensors by role (weight, bias, running_mean, running_var). Each netlang
layer takes the first PyTorch module not yet taken with the same signature. So layers of
one signature map in the order of their names, and a layer whose signature is unique maps
wherever it is. That is exact for torchvision's ResNets, VGGs and AlexNet (the tests build
their structure) and for most hand-written models. `num_batches_tracked` is skipped.

A mapping file (JSON, `{"netlang parameter": "PyTorch tensor"}`) settles the rest: its
pairs are taken first, then the structure maps what is left. A network layer without a
PyTorch module, or PyTorch tensors left over, are E073, naming the first one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np

from netlang.diagnostics import error

# netlang op -> the kind of PyTorch module its tensors look like. Normalisation layers
# without running statistics (LayerNorm, GroupNorm, affine InstanceNorm) and PReLU hold
# only vectors, which tell them apart by shape and position, not by kind.
LAYER_OPS = {"conv": "conv", "conv_transpose": "conv", "dense": "linear",
             "batchnorm": "batchnorm", "layernorm": "vector", "groupnorm": "vector",
             "instancenorm": "vector", "prelu": "vector"}
SKIPPED = ("num_batches_tracked",)


@dataclass
class Mapping:
    weights: dict[str, np.ndarray]       # netlang name -> array
    pairs: list[tuple[str, str]]         # (netlang name, PyTorch name), in netlang order
    unused: list[str] = field(default_factory=list)   # PyTorch tensors left (with `only`)

    def describe(self) -> list[str]:
        """One line a layer: `stem.conv0 <- conv1 (weight [64, 3, 7, 7])`."""
        lines, seen = [], set()
        for ours, theirs in self.pairs:
            layer, their_mod = ours.rsplit(".", 1)[0], theirs.rsplit(".", 1)[0]
            if (layer, their_mod) in seen:
                continue
            seen.add((layer, their_mod))
            lines.append(f"{layer} <- {their_mod}")
        return lines


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise error("E050", f"{path} is not a readable safetensors file: {exc}", None) from None
    return {k: v for k, v in tensors.items() if k.rsplit(".", 1)[-1] not in SKIPPED}


def _natural(name: str) -> tuple:
    """A sort key reading numbers as numbers: `features.2` before `features.10`."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                 for part in name.split(".") for t in re.findall(r"\d+|\D+", part))


def _their_layers(state: dict[str, np.ndarray]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """PyTorch's modules (tensor names up to the last dot) in the natural order of their
    names: a safetensors file keeps no order of its own."""
    mods: dict[str, dict[str, np.ndarray]] = {}
    for name, arr in state.items():
        mod, role = name.rsplit(".", 1) if "." in name else ("", name)
        mods.setdefault(mod, {})[role] = arr
    return sorted(mods.items(), key=lambda kv: _natural(kv[0]))


def _kind_of(tensors: dict[str, np.ndarray]) -> str:
    w = tensors.get("weight")
    if "running_mean" in tensors:
        return "batchnorm"
    if w is not None and w.ndim == 2:
        return "linear"
    if w is not None and w.ndim >= 3:
        return "conv"
    if w is not None and all(a.ndim == 1 for a in tensors.values()):
        return "vector"
    return "other"


def _layer_kind(node) -> str:
    """The kind of PyTorch module a netlang node's parameters look like; a batchnorm
    without running statistics holds only a weight and a bias, as a LayerNorm does."""
    if node is None:
        return "other"
    if node.op == "batchnorm" and not node.attrs.get("track_running_stats", True):
        return "vector"
    return LAYER_OPS.get(node.op, node.op)


def _signature(kind: str, shapes: dict[str, tuple]) -> tuple:
    return (kind, tuple(sorted(shapes.items())))


def _module_signature(kind: str, tensors: dict[str, np.ndarray]) -> tuple:
    return _signature(kind, {r: tuple(a.shape) for r, a in tensors.items()})


def _fmt(sig: tuple) -> str:
    kind, shapes = sig
    return f"{kind} " + ", ".join(f"{r} {list(s)}" for r, s in shapes)


def select(net, only: list[str] | None) -> set[str]:
    """The parameters of `net` that name patterns (`enc*`, `l1.*`) select; every pattern
    must select one (E073)."""
    names = list(net.params)
    if only is None:
        return set(names)
    chosen: set[str] = set()
    for pat in only:
        hit = {n for n in names if fnmatchcase(n, pat)}
        if not hit:
            layers = sorted({n.split(".", 1)[0] for n in names})
            raise error("E073", f"`{pat}` names no parameter of network `{net.name}`", None,
                        notes=["its statements: " + ", ".join(layers[:12])
                               + (", ..." if len(layers) > 12 else "")],
                        help="patterns match parameter names (`netlang summary` lists them); "
                             'e.g. "enc*" or "l1.*"')
        chosen |= hit
    layers = {n.rsplit(".", 1)[0] for n in chosen}   # whole layers: a weight and its bias
    return {n for n in names if n.rsplit(".", 1)[0] in layers}


def map_state_dict(net, state: dict[str, np.ndarray], source: str = "the PyTorch weights",
                   explicit: dict[str, str] | None = None,
                   only: list[str] | None = None) -> Mapping:
    """The network's weights from a PyTorch state_dict (see the module docstring). With
    `only` (name patterns), just the layers those select, and PyTorch tensors may be left
    over (`Mapping.unused`): a U-Net's encoder from a classifier."""
    explicit = dict(explicit or {})
    wanted = select(net, only)
    params = {k: t for k, t in net.params.items() if k in wanted}   # name -> TensorType
    weights: dict[str, np.ndarray] = {}
    pairs: list[tuple[str, str]] = []
    taken: set[str] = set()
    for ours, theirs in explicit.items():
        if ours not in params:
            raise error("E073", f"the mapping names `{ours}`, which network `{net.name}` does "
                        "not have", None)
        if theirs not in state:
            raise error("E073", f"the mapping names `{theirs}`, which {source} do not have",
                        None)
        arr = state[theirs]
        if tuple(arr.shape) != params[ours].shape:
            raise error("E073", f"`{theirs}` is {list(arr.shape)}; `{ours}` needs "
                        f"{list(params[ours].shape)}", None)
        weights[ours] = arr
        pairs.append((ours, theirs))
        taken.add(theirs)
    # (module, kind from all its tensors, the tensors the mapping file has not taken)
    theirs_layers = [(mod, _kind_of(t), {r: a for r, a in t.items()
                                          if f"{mod}.{r}".lstrip(".") not in taken})
                     for mod, t in _their_layers(state)]
    used = [False] * len(theirs_layers)
    by_node: dict[int, list] = {}
    for p in net.graph.params:
        if p.name in weights or p.name not in params:
            continue
        node = next((n for n in net.graph.nodes if p in n.inputs and n.op != "param"), None)
        by_node.setdefault(node.id if node is not None else -p.id, [node, []])[1].append(p)
    for node, ps in by_node.values():
        kind = _layer_kind(node)
        roles = {p.attrs.get("role", p.name.rsplit(".", 1)[-1]): p for p in ps}
        sig = _signature(kind, {r: p.type.shape for r, p in roles.items()})
        hit = None
        for i, (_mod, their_kind, tensors) in enumerate(theirs_layers):
            if used[i] or not tensors:
                continue
            if _module_signature(their_kind, tensors) == sig:
                hit = i
                break
        if hit is None:
            layer = ps[0].name.rsplit(".", 1)[0]
            left = [f"{m or '(top)'} ({_fmt(_module_signature(k, t))})"
                    for (m, k, t), u in zip(theirs_layers, used) if not u and t][:3]
            raise error("E073", f"no PyTorch module of {source} fits `{layer}` ({_fmt(sig)})",
                        node.span if node is not None else None,
                        notes=[f"{len(pairs)} tensors were mapped before it"]
                        + (["the next unmapped PyTorch modules: " + "; ".join(left)]
                           if left else ["every PyTorch module is already mapped"]),
                        help="is this the PyTorch model of this network and these --set "
                             "values? A mapping file (--map) can pair names by hand")
        used[hit] = True
        mod, _, tensors = theirs_layers[hit]
        for role, p in roles.items():
            weights[p.name] = tensors[role]
            pairs.append((p.name, f"{mod}.{role}" if mod else role))
    left = [f"{m}.{r}".lstrip(".") for (m, _, t), u in zip(theirs_layers, used) if not u
            for r in t]
    if left and only is None:
        raise error("E073", f"{len(left)} tensor(s) of {source} belong to no layer of network "
                    f"`{net.name}`, e.g. " + ", ".join(left[:3]), None,
                    help="the PyTorch model has layers this network lacks; check the "
                         "network and its --set values")
    out = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    bad = [k for k, v in out.items() if not np.isfinite(v).all()]
    if bad:
        raise error("E050", f"{source} hold NaN or infinite values (e.g. {bad[0]})", None)
    return Mapping(out, pairs, left)


def load_torch_weights(path: str | Path, net, mapping_file: str | Path | None = None,
                       only: list[str] | None = None) -> Mapping:
    """`map_state_dict` of a safetensors file, with an optional JSON mapping file."""
    return map_state_dict(net, read_state_dict(path), source=str(path),
                          explicit=read_mapping(mapping_file), only=only)


def read_mapping(mapping_file: str | Path | None) -> dict[str, str] | None:
    """A mapping file: JSON, `{"netlang parameter": "PyTorch tensor"}`."""
    if mapping_file is None:
        return None
    try:
        explicit = json.loads(Path(mapping_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error("E073", f"cannot read the mapping file {mapping_file}: {exc}",
                    None) from None
    if not isinstance(explicit, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in explicit.items()):
        raise error("E073", f"the mapping file {mapping_file} must be a JSON object of "
                    'names: {"netlang parameter": "PyTorch tensor"}', None)
    return explicit


def read_template(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a PyTorch model's state_dict: a safetensors file of
    it (only the header is read, so any dtype will do) or a JSON object `{name: shape}`."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise error("E050", f"cannot read the template {path}: {exc.strerror or exc}",
                    None) from None
    how = ('save one from the PyTorch model: safetensors.torch.save_file(model.state_dict(), '
           '"template.safetensors"), or json.dump({k: list(v.shape) for k, v in '
           'model.state_dict().items()}, f)')
    if p.suffix == ".json":
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise error("E050", f"the template {path} is not JSON: {exc}", None,
                        help=how) from None
        ok = isinstance(doc, dict) and all(
            isinstance(k, str) and isinstance(v, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in v)
            for k, v in doc.items())
        if not ok or not doc:
            raise error("E050", f"the template {path} must be a JSON object of tensor names "
                        'and shapes, e.g. {"conv1.weight": [64, 3, 7, 7]}', None, help=how)
        return {k: tuple(v) for k, v in doc.items()}
    # safetensors: an 8-byte little-endian header length, then a JSON header
    try:
        n = int.from_bytes(raw[:8], "little")
        if len(raw) < 8 or n <= 0 or 8 + n > len(raw):
            raise ValueError("the header length does not fit the file")
        head = json.loads(raw[8:8 + n].decode("utf-8"))
        out = {k: tuple(int(d) for d in v["shape"]) for k, v in head.items()
               if k != "__metadata__"}
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise error("E050", f"the template {path} is neither safetensors nor a .json file "
                    f"({exc})", None, help=how) from None
    if not out:
        raise error("E050", f"the template {path} holds no tensors", None, help=how)
    return out


def export_state_dict(net, weights: dict[str, np.ndarray], template: dict[str, tuple],
                      source: str = "the template", explicit: dict[str, str] | None = None,
                      batches: int = 0) -> tuple[dict[str, np.ndarray], Mapping]:
    """The network's weights under the names of a PyTorch state_dict (`template`: names and
    shapes): the mapping of `map_state_dict`, run on the template, read the other way. Every
    template tensor gets a value; `num_batches_tracked` is `batches` (int64), the rest are
    float32 in PyTorch's layouts (netlang's own)."""
    dummy = {k: np.zeros(s, np.float32) for k, s in template.items()
             if k.rsplit(".", 1)[-1] not in SKIPPED}
    m = map_state_dict(net, dummy, source=source, explicit=explicit)
    out: dict[str, np.ndarray] = {}
    for ours, theirs in m.pairs:
        out[theirs] = np.ascontiguousarray(weights[ours], dtype=np.float32)
    for k, s in template.items():
        if k.rsplit(".", 1)[-1] in SKIPPED:
            out[k] = np.full(s, batches, np.int64)
    return {k: out[k] for k in template}, m
