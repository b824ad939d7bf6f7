"""The op registry: one `OpDef` per op, holding every rule of that op together.

An op module registers each op in one block: attribute schema, shape rule, parameter
shapes and their PyTorch-style initialisation, MAC count, fusion kind, NumPy forward
and VJP rule. Adding an op touches one module and one test row; tests walk the
registry, so no op can lack a shape test or a gradient test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from netlang.diagnostics import Diagnostic, warning
from netlang.ir.types import TensorType, fmt_shape


class FusionKind(Enum):
    """How an op may be fused (the TVM Relax classification)."""

    ELEMWISE = "elementwise"          # out[i] = f(in[i])
    BROADCAST = "broadcast"           # elementwise with broadcasting inputs
    INJECTIVE = "injective"           # each output element reads one input element (copy/crop)
    REDUCE = "reduce"                 # reductions (pool, sum, loss)
    OUT_ELEMWISE_FUSABLE = "out-elementwise-fusable"   # conv / dense: absorbs an epilogue
    OPAQUE = "opaque"                 # anything else


@dataclass(frozen=True)
class Symbol:
    """A bare identifier used as an attribute value (`same`, `bilinear`, `true`)."""

    name: str

    def __str__(self) -> str:
        return self.name


REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    name: str
    kind: str  # int | float | bool | ints | floats | pad | choice | size
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    doc: str = ""
    minimum: float | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class AttrError(Exception):
    """An attribute value of the wrong type or range (the lowering turns it into E012)."""


def coerce_attr(attr: Attr, value: Any) -> Any:
    """Check a user value against the schema; return it in canonical Python form."""
    kind = attr.kind

    def as_int(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise AttrError(f"`{attr.name}` must be an integer, got {_show(v)}")
        if attr.minimum is not None and v < attr.minimum:
            raise AttrError(f"`{attr.name}` must be at least {attr.minimum:g}, got {_show(v)}")
        return int(v)

    def as_float(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise AttrError(f"`{attr.name}` must be a number, got {_show(v)}")
        if attr.minimum is not None and v < attr.minimum:
            raise AttrError(f"`{attr.name}` must be at least {attr.minimum:g}, got {_show(v)}")
        return float(v)

    if kind == "int":
        return as_int(value)
    if kind == "float":
        return as_float(value)
    if kind == "bool":
        if isinstance(value, Symbol) and value.name in ("true", "false"):
            return value.name == "true"
        if isinstance(value, bool):
            return value
        raise AttrError(f"`{attr.name}` must be `true` or `false`, got {_show(value)}")
    if kind in ("ints", "size"):
        if isinstance(value, list):
            if not value:
                raise AttrError(f"`{attr.name}` must not be an empty list")
            return tuple(as_int(v) for v in value)
        return as_int(value)
    if kind == "floats":
        if isinstance(value, list):
            return tuple(as_float(v) for v in value)
        return as_float(value)
    if kind == "pad":
        if isinstance(value, Symbol):
            if value.name not in ("same", "valid"):
                raise AttrError(f"`{attr.name}` must be `same`, `valid`, an integer or a list, "
                                f"got `{value.name}`")
            return value.name
        values = value if isinstance(value, list) else [value]
        for v in values:
            if _number(v) and v < 0:
                raise AttrError(f"`{attr.name}` must not be negative, got {_show(v)}")
        if isinstance(value, list):
            return tuple(as_int(v) for v in value)
        return as_int(value)
    if kind == "choice":
        if not isinstance(value, Symbol) or value.name not in attr.choices:
            opts = ", ".join(f"`{c}`" for c in attr.choices)
            raise AttrError(f"`{attr.name}` must be one of {opts}, got {_show(value)}")
        return value.name
    raise AssertionError(f"unknown attribute kind {kind}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _show(v: Any) -> str:
    if isinstance(v, Symbol):
        return f"`{v.name}`"
    if isinstance(v, list):
        return "[" + ", ".join(_show(x) for x in v) + "]"
    if isinstance(v, str):
        return f'"{v}"'
    return f"`{v}`" if not hasattr(v, "type") else "a tensor"


class ShapeError(Exception):
    """A shape rule refusing its inputs; shape inference attaches the node's span."""

    def __init__(self, code: str, message: str, *, notes: tuple[str, ...] = (),
                 help: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.notes = notes
        self.help = help


@dataclass
class ShapeCtx:
    """What a shape rule sees: input types and attributes (which it may normalise)."""

    op: str
    inputs: list[TensorType]
    attrs: dict[str, Any]
    warnings: list[Diagnostic] = field(default_factory=list)
    # Human notes of lossy steps ("floors 35 / 2 to 17"), used to trace shape mismatches.
    lossy: list[str] = field(default_factory=list)

    @property
    def x(self) -> TensorType:
        return self.inputs[0]

    def warn(self, code: str, message: str, help: str | None = None) -> None:
        self.warnings.append(warning(code, message, help=help))


@dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]
    init: str            # uniform | ones | zeros | constant
    bound: float = 0.0   # for uniform: U(-bound, bound)
    trainable: bool = True
    value: float = 0.0   # for constant
    scheme: str = ""     # a layer's `init=` other than PyTorch's (INIT_SCHEMES)


# A layer's `init=` (conv, conv_transpose, dense): `pytorch` is each layer's own default
# (kaiming-uniform with a = sqrt(5), bias U(+-1/sqrt(fan_in))); the others are torch.nn.init's
# functions on the weight, with fans from its shape as PyTorch computes them (fan_in =
# size(1) * receptive field, fan_out = size(0) * receptive field), and a zero bias.
INIT_SCHEMES = ("pytorch", "kaiming_normal", "kaiming_normal_fan_out", "kaiming_uniform",
                "xavier_normal", "xavier_uniform", "normal", "zeros")
INIT_STD = 0.02   # `normal`: N(0, 0.02), as BERT and ViT initialise their linear layers


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight, as torch.nn.init._calculate_fan_in_and_fan_out."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def scheme_init(scheme: str, role: str, shape: tuple[int, ...],
                rng) -> Any:
    """The initial value of a layer's weight or bias under a scheme other than PyTorch's."""
    import numpy as np

    if role != "weight" or scheme == "zeros":
        return np.zeros(shape, np.float32)
    fan_in, fan_out = fans(shape)
    if scheme == "kaiming_normal":
        std = math.sqrt(2.0 / fan_in)
    elif scheme == "kaiming_normal_fan_out":
        std = math.sqrt(2.0 / fan_out)
    elif scheme == "xavier_normal":
        std = math.sqrt(2.0 / (fan_in + fan_out))
    elif scheme == "normal":
        std = INIT_STD
    else:
        bound = math.sqrt(6.0 / fan_in) if scheme == "kaiming_uniform" else \
            math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)
    return (rng.standard_normal(size=shape) * std).astype(np.float32)


@dataclass
class OpDef:
    name: str
    attrs: tuple[Attr, ...]
    shape: Callable[[ShapeCtx], TensorType]
    kind: FusionKind
    min_inputs: int = 1
    max_inputs: int | None = 1       # None: variadic
    params: Callable[[list[TensorType], dict[str, Any]], dict[str, ParamSpec]] | None = None
    param_roles: Callable[[dict[str, Any]], list[str]] | None = None
    macs: Callable[[list[TensorType], TensorType, dict[str, Any]], int] | None = None
    forward: Callable[..., Any] | None = None
    vjp: Callable[..., Any] | None = None
    user: bool = True                # callable from `.net` files
    # Replaced by a pass before any backend sees it (dropout: `specialize` removes it or
    # rewrites it into mul(x, dropout_mask(x))), so it needs no kernel lowering.
    rewritten: bool = False
    # Random: two nodes with equal inputs are different values (CSE must not merge them).
    impure: bool = False
    # For elementwise/broadcast kinds: whether it may join a kernel's epilogue, given its
    # attributes. False for ops that read more than the flowing value's own element or
    # make values from nothing (broadcast_like, constant); batchnorm only in inference.
    fusable: Callable[[dict[str, Any]], bool] | bool = True
    # Its kernel computes one output element per thread, so the element can also be stored
    # straight into a concat's buffer (every elementwise, injective and conv-like op; among
    # window ops the ones listed).
    writes_per_element: bool = False
    example: str = ""                # shown in "for example `conv(64, 3, pad=same)`"
    color: str = "#ffffff"           # its boxes' fill in `netlang viz`
    doc: str = ""

    def fuses(self, attrs: dict[str, Any]) -> bool:
        return self.fusable(attrs) if callable(self.fusable) else self.fusable

    def attr(self, name: str) -> Attr | None:
        for a in self.attrs:
            if a.name == name:
                return a
        return None

    def roles(self, attrs: dict[str, Any]) -> list[str]:
        return self.param_roles(attrs) if self.param_roles else []


REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in REGISTRY:
        raise AssertionError(f"op {op.name} registered twice")
    REGISTRY[op.name] = op
    return op


def get(name: str) -> OpDef:
    _load_all()
    return REGISTRY[name]


def user_ops() -> dict[str, OpDef]:
    _load_all()
    return {k: v for k, v in REGISTRY.items() if v.user}


def all_ops() -> dict[str, OpDef]:
    _load_all()
    return dict(REGISTRY)


def _load_all() -> None:
    # Importing the op modules fills REGISTRY; done lazily to keep imports acyclic.
    from netlang.ops import elementwise, loss, nn, pool, shape  # noqa: F401


# -- helpers shared by shape rules -------------------------------------------------------

def spatial_rank(ctx: ShapeCtx, what: str) -> int:
    x = ctx.x
    nd = x.rank - 1
    if nd not in (1, 2, 3):
        raise ShapeError(
            "E025",
            f"{what} needs a [C, L], [C, H, W] or [C, D, H, W] input, got {fmt_shape(x.shape)}",
            help="a flat input has lost its spatial layout: apply this layer before `flatten`"
            if nd == 0 else None)
    return nd


def per_dim(ctx: ShapeCtx, name: str, nd: int) -> tuple[int, ...]:
    v = ctx.attrs[name]
    if isinstance(v, tuple):
        if len(v) != nd:
            raise ShapeError("E012", f"`{name}` has {len(v)} values but the input has {nd} "
                             f"spatial dimension{'s' if nd > 1 else ''}",
                             help=f"give one value, or {nd}")
        return v
    return (v,) * nd


def resolve_pad(ctx: ShapeCtx, nd: int, spatial: tuple[int, ...], keff: tuple[int, ...],
                stride: tuple[int, ...], allow_same: bool = True) -> tuple[tuple[int, int], ...]:
    """Padding as (before, after) per spatial dimension.

    `same` follows PyTorch at stride 1 and ONNX SAME_UPPER / TensorFlow at larger strides:
    out = ceil(H / s), the odd pixel of padding goes at the end.
    """
    p = ctx.attrs["pad"]
    if p == "valid":
        return ((0, 0),) * nd
    if p == "same":
        if not allow_same:
            raise ShapeError("E012", "`pad=same` is not supported here", help="give a number")
        pads = []
        for h, k, s in zip(spatial, keff, stride):
            out = -(-h // s)
            total = max((out - 1) * s + k - h, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(p, tuple):
        if len(p) == nd:
            return tuple((v, v) for v in p)
        if len(p) == 2 * nd:
            return tuple((p[2 * i], p[2 * i + 1]) for i in range(nd))
        raise ShapeError("E012", f"`pad` has {len(p)} values; expected 1, {nd} or {2 * nd}",
                         help=f"give one value, one per spatial dimension ({nd}), or a "
                              f"(before, after) pair per dimension ({2 * nd})")
    if p < 0:
        raise ShapeError("E012", f"`pad` must not be negative, got {p}")
    return ((p, p),) * nd


DIM_NAMES = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}


def sliding_out(ctx: ShapeCtx, what: str, spatial: tuple[int, ...], keff: tuple[int, ...],
                stride: tuple[int, ...], pads: tuple[tuple[int, int], ...],
                ceil: bool = False) -> tuple[int, ...]:
    """out = floor((H + p_lo + p_hi - k_eff) / s) + 1, per dimension (ceil mode as PyTorch)."""
    nd = len(spatial)
    out = []
    dropped: list[tuple[str, int, int, int, int, int, int]] = []
    for i, (h, k, s, (lo, hi)) in enumerate(zip(spatial, keff, stride, pads)):
        dim = DIM_NAMES[nd][i]
        span = h + lo + hi
        if span < k:
            raise ShapeError(
                "E021", f"{what}: kernel {k} is larger than the padded input ({dim} = {h}"
                f"{f' + {lo + hi} padding' if lo + hi else ''})",
                notes=(f"the input reaching this layer is {fmt_shape(ctx.x.shape)}",),
                help="use a larger input, pad the input, or remove a downsampling step before it")
        if ceil:
            o = -(-(span - k) // s) + 1
            if (o - 1) * s >= h + lo:  # a last window starting in the padding is dropped
                o -= 1
        else:
            o = (span - k) // s + 1
            # Input rows after the last window (gaps between windows when k < s are the
            # layer's intent, not a loss worth a warning).
            rest = h + lo - ((o - 1) * s + k)
            if rest > 0 and k >= s:
                dropped.append((dim, h, o, rest, lo + hi, k, s))
        out.append(o)
    if dropped:
        # One note for all dimensions that lose the same way ("H and W = 125 -> 62").
        groups: dict[tuple[int, ...], list[str]] = {}
        for dim, *rest in dropped:
            groups.setdefault(tuple(rest), []).append(dim)
        for (h, o, rest, p, k, s), dims in groups.items():
            names = " and ".join(dims)
            px = f"{rest} pixel{'s' if rest > 1 else ''}"
            ctx.lossy.append(f"{what} floors {names} = {h} to {o}, dropping {px}")
            ctx.warn("W001", f"{what} drops {px} of {names} = {h}: {h}"
                     f"{f' + {p}' if p else ''} - {k} is not a multiple of the stride {s}",
                     help="choose an input size that divides evenly, or use ceil mode / "
                          "`pad=same`")
    return tuple(out)


def uniform_fan_in(fan_in: int) -> float:
    """The bound of PyTorch's default init (kaiming_uniform with a=sqrt(5)): 1/sqrt(fan_in)."""
    return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
