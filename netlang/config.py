"""The `train` section as typed configuration, validated key by key.

Every key is checked here (unknown keys get "did you mean", values get type and range
checks) so that `netlang check` reports a bad `train` section before any training starts.
The command line overrides the file through the same validation (`apply_overrides`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from netlang.diagnostics import SourceSpan, did_you_mean, error
from netlang.lang import ast
from netlang.ops import registry
from netlang.ops.elementwise import PRECISIONS
from netlang.ops.loss import HUBER, LOSSES as LOSS_OPS, loss_attrs
from netlang.ops.registry import INIT_SCHEMES, AttrError, Symbol, coerce_attr
from netlang.optimizers import OPTIMIZERS as OPTIMIZER_TABLE
from netlang.passes.loss import LossTerm


@dataclass(frozen=True)
class Call:
    """A validated `name(key = value, ...)` item such as `adam(lr = 1e-3)`."""

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.args).get(key, default)


@dataclass(frozen=True)
class TrainConfig:
    data: Call | None = None
    loss: tuple[LossTerm, ...] = ()
    loss_text: str = ""
    optimizer: Call = Call("adam", (("lr", 1e-3),))
    schedule: Call = Call("constant")
    batch: int = 32
    epochs: int = 10
    seed: int = 0
    val_split: float = 0.2
    test_split: float = 0.2
    early_stop: Call | None = None
    augment: tuple[Call, ...] = ()
    metrics: tuple[str, ...] = ()
    checkpoint_every: int = 1
    freeze: tuple[str, ...] = ()       # parameter-name patterns the optimizer leaves alone
    lr_groups: tuple[tuple[str, float], ...] = ()   # (pattern, learning-rate factor)
    init: str | None = None            # initialisation of layers that give no `init=`
    precision: str = "fp32"            # the products' numerics (passes/precision.py)
    span: SourceSpan | None = None


# Schemas: name -> allowed arguments with their kinds (positional order = dict order).
NUM, INT, BOOL, STR, NAME = "number", "integer", "boolean", "string", "name"
DATA = {
    "digits": {"test_fraction": NUM},
    "shapes": {"size": INT, "count": INT, "classes": INT, "noise": NUM, "seed": INT,
               "channels": INT},
    "npz": {"path": STR, "val": STR, "test": STR},
    "folder": {"images": STR, "masks": STR, "val_images": STR, "val_masks": STR,
               "test_images": STR, "test_masks": STR, "gray": BOOL},
}
# From the optimizer table: every argument, a boolean or a number as its default is.
OPTIMIZERS = {name: {k: BOOL if isinstance(v, bool) else NUM for k, v in o.defaults.items()}
              for name, o in OPTIMIZER_TABLE.items()}
SCHEDULES = {
    "constant": {},
    "step": {"step_size": INT, "gamma": NUM},
    "exponential": {"gamma": NUM},
    "cosine": {"epochs": INT, "min_lr": NUM},
    "warmup": {"epochs": INT, "then": NAME},
    "plateau": {"factor": NUM, "patience": INT, "min_lr": NUM, "monitor": NAME},
}
AUGMENTS = {
    "flip": {"horizontal": BOOL, "vertical": BOOL},
    "rotate": {"degrees": NUM},
    "scale": {"min": NUM, "max": NUM},
    "translate": {"fraction": NUM},
    "elastic": {"alpha": NUM, "sigma": NUM},
}
EARLY_STOP = {"patience": INT, "monitor": NAME, "min_delta": NUM, "mode": NAME}
# Value ranges, checked wherever a value comes from (the file, --opt, --lr): name -> (test,
# the range in words). A learning rate of -1, NaN or infinity is refused before training.
RANGES: dict[str, tuple[Any, str]] = {
    "lr": (lambda v: 0 < v < math.inf, "a positive, finite number"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (lambda v: 0 < v < math.inf, "a positive, finite number"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "zero or positive"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "factor": (lambda v: 0 < v < 1, "in (0, 1)"),
    "min_lr": (lambda v: 0 <= v < math.inf, "zero or positive"),
    "step_size": (lambda v: v >= 1, "at least 1"),
    "patience": (lambda v: v >= 0, "zero or positive"),
    "min_delta": (lambda v: 0 <= v < math.inf, "zero or positive"),
    "epochs": (lambda v: v >= 1, "at least 1"),
    "degrees": (lambda v: 0 <= v <= 180, "in [0, 180]"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "test_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "noise": (lambda v: 0 <= v < math.inf, "zero or positive"),
    "size": (lambda v: v >= 1, "at least 1"),
    "count": (lambda v: v >= 1, "at least 1"),
}
METRICS = ("loss", "accuracy", "top5", "dice", "iou")
KEYS = ("data", "loss", "optimizer", "schedule", "batch", "epochs", "seed", "val_split",
        "test_split", "early_stop", "augment", "metrics", "checkpoint_every", "freeze", "init",
        "lr_groups", "precision")
LR_GROUP = {"group": {"pattern": STR, "scale": NUM}}


def named_choice(what: str, v: str, choices, label: str, span: SourceSpan | None = None
                 ) -> str:
    """`v` if it is one of `choices`, else E030 naming them (`label`: what they are)."""
    if v not in choices:
        raise error("E030", f"unknown {what} `{v}`", span,
                    notes=[f"{label}: " + ", ".join(choices)], help=did_you_mean(v, choices))
    return v


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _literal(e: ast.Expr) -> Any:
    """Evaluate a literal expression of the train section (numbers, names, strings)."""
    if isinstance(e, ast.Number):
        return e.value
    if isinstance(e, ast.String):
        return e.value
    if isinstance(e, ast.Name):
        if e.id in ("true", "false"):
            return e.id == "true"
        return Symbol(e.id)
    if isinstance(e, ast.Chain) and len(e.items) == 1:
        return _literal(e.items[0])
    if isinstance(e, ast.ListExpr):
        return [_literal(x) for x in e.items]
    if isinstance(e, ast.Neg):
        v = _literal(e.operand)
        if _num(v):
            return -v
    if isinstance(e, ast.BinOp):
        a, b = _literal(e.left), _literal(e.right)
        if _num(a) and _num(b):
            try:
                return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None,
                        "**": a ** b}.get(e.op)
            except (OverflowError, ZeroDivisionError):
                pass
    raise error("E030", "expected a number, a name or a string here", e.span)


def _check_kind(key: str, kind: str, v: Any, span: SourceSpan) -> Any:
    finite = _num(v) and math.isfinite(v)
    ok = {NUM: finite, INT: finite and int(v) == v, BOOL: isinstance(v, bool),
          STR: isinstance(v, str), NAME: isinstance(v, Symbol)}[kind]
    if not ok:
        what = "finite number" if kind == NUM and _num(v) else kind
        raise error("E030", f"`{key}` must be a {what}, got {v}", span)
    if kind in (NUM, INT) and key in RANGES and not RANGES[key][0](v):
        raise error("E030", f"`{key}` must be {RANGES[key][1]}, got {v}", span)
    if kind == INT:
        return int(v)
    if kind == NAME:
        return v.name
    return v


def call_from(e: ast.Expr, schema: dict[str, dict[str, str]], what: str) -> Call:
    """Validate `name` or `name(args)` against a schema of allowed names and arguments."""
    if isinstance(e, ast.Name):
        name, args, kwargs, nspan = e.id, (), (), e.span
    elif isinstance(e, ast.Call):
        name, args, kwargs, nspan = e.func, e.args, e.kwargs, e.name_span
    else:
        raise error("E030", f"expected {what}, such as `{next(iter(schema))}`", e.span,
                    notes=["choices: " + ", ".join(schema)])
    if name not in schema:
        raise error("E030", f"unknown {what} `{name}`", nspan,
                    notes=["choices: " + ", ".join(schema)],
                    help=did_you_mean(name, schema))
    allowed = schema[name]
    out: dict[str, Any] = {}
    if len(args) > len(allowed):
        raise error("E030", f"`{name}` takes at most {len(allowed)} arguments", e.span)
    for (key, kind), a in zip(allowed.items(), args):
        out[key] = _check_kind(key, kind, _literal(a), a.span)
    for kw in kwargs:
        if kw.name not in allowed:
            raise error("E030", f"`{name}` has no argument `{kw.name}`", kw.span,
                        notes=["arguments: " + (", ".join(allowed) or "none")],
                        help=did_you_mean(kw.name, allowed))
        out[kw.name] = _check_kind(kw.name, allowed[kw.name], _literal(kw.value), kw.span)
    return Call(name, tuple(out.items()))


def _loss_terms(e: ast.Expr, outputs: list[str], sign: float = 1.0) -> list[LossTerm]:
    if isinstance(e, ast.BinOp) and e.op in ("+", "-"):
        right_sign = sign if e.op == "+" else -sign
        return _loss_terms(e.left, outputs, sign) + _loss_terms(e.right, outputs, right_sign)
    if isinstance(e, ast.BinOp) and e.op == "*":
        for num, rest in ((e.left, e.right), (e.right, e.left)):
            if isinstance(num, ast.Number):
                return _loss_terms(rest, outputs, sign * num.value)
    if isinstance(e, ast.Call):
        if e.func not in LOSS_OPS:
            raise error("E030", f"unknown loss `{e.func}`", e.name_span,
                        notes=["losses: " + ", ".join(LOSS_OPS)],
                        help=did_you_mean(e.func, LOSS_OPS))
        if len(e.args) != 2 or not all(isinstance(a, ast.Name) for a in e.args):
            raise error("E030", f"`{e.func}` takes a network output and a target name",
                        e.span, help=f"for example `{e.func}({outputs[0] if outputs else 'y'}, "
                        "target)`")
        pred, tgt = e.args[0].id, e.args[1].id
        if outputs and pred not in outputs:
            raise error("E030", f"`{pred}` is not an output of the network", e.args[0].span,
                        notes=["outputs: " + ", ".join(outputs)],
                        help=did_you_mean(pred, outputs))
        if tgt in outputs:
            raise error("E030", f"the target `{tgt}` is a network output", e.args[1].span,
                        help="name the target after the data it comes from, e.g. `label`")
        op, attrs = _loss_options(e)
        if e.func == "huber":   # PyTorch's HuberLoss(delta) = delta * SmoothL1Loss(beta=delta)
            delta = attrs.pop("delta")
            if delta <= 0:
                raise error("E030", f"`delta` must be positive, got {delta:g}", e.span,
                            help="1.0 is PyTorch's default")
            attrs = loss_attrs(op, {"beta": delta, **attrs})
            sign *= delta
        return [LossTerm(sign, op, pred, tgt, tuple(attrs.items()), e.span)]
    raise error("E030", "a loss is a sum of terms such as `bce(mask, target) + "
                "0.5 * dice(mask, target)`", e.span)


def _loss_options(e: ast.Call) -> tuple[str, dict[str, Any]]:
    """The loss op of a term and its attributes, checked against the op's schema."""
    op = "smooth_l1" if e.func == "huber" else e.func
    schema = HUBER if e.func == "huber" else registry.get(op).attrs
    given = {}
    for kw in e.kwargs:
        attr = next((a for a in schema if a.name == kw.name), None)
        if attr is None:
            names = [a.name for a in schema]
            raise error("E030", f"`{e.func}` has no option `{kw.name}`", kw.span,
                        notes=["options: " + (", ".join(names) or "none")],
                        help=did_you_mean(kw.name, names))
        try:
            given[kw.name] = coerce_attr(attr, _literal(kw.value))
        except AttrError as err:
            raise error("E030", str(err), kw.value.span,
                        help=f"{attr.name}: {attr.doc}" if attr.doc else None) from None
    if e.func == "huber":
        delta = given.pop("delta", 1.0)
        return op, {"delta": delta, **loss_attrs(op, given)}
    return op, loss_attrs(op, given)


def parse_loss(text_or_expr: str | ast.Expr, outputs: list[str]) -> tuple[LossTerm, ...]:
    if isinstance(text_or_expr, str):
        from netlang.lang.parser import parse
        mod = parse(f"train {{ loss = {text_or_expr} }}", "<loss>")
        text_or_expr = mod.trains[0].items[0].value
    return tuple(_loss_terms(text_or_expr, outputs))


def _text(e: ast.Expr, source: str | None) -> str:
    """The source text of an expression (a loss), joined onto one line."""
    if source is None:
        return ""
    lines = source.splitlines()[e.span.line - 1:e.span.end_line]
    if len(lines) == 1:
        return lines[0][e.span.col - 1:e.span.end_col - 1]
    lines[0] = lines[0][e.span.col - 1:]
    lines[-1] = lines[-1][:e.span.end_col - 1]
    return " ".join(part.strip() for part in lines)


def _items(td: ast.TrainDef) -> dict[str, tuple[ast.Expr, SourceSpan]]:
    """A section's keys, checked (unknown keys, a key set twice)."""
    seen: dict[str, tuple[ast.Expr, SourceSpan]] = {}
    for item in td.items:
        if isinstance(item, ast.Call):   # `early_stop(patience = 3)` written as a statement
            key, value, span = item.func, item, item.span
            if key != "early_stop":
                raise error("E030", f"`{key}(...)` is not a train setting", item.name_span,
                            help=did_you_mean(key, KEYS) or "write `key = value`")
        else:
            key, value, span = item.key, item.value, item.span
        if key not in KEYS:
            raise error("E030", f"unknown key `{key}` in the train section", span,
                        notes=["keys: " + ", ".join(KEYS)], help=did_you_mean(key, KEYS))
        if key in seen:
            raise error("E030", f"`{key}` is set twice", span,
                        related=[(seen[key][1], "first set here")])
        seen[key] = (value, span)
    return seen


def train_config(sections, outputs: list[str], source: str | None = None) -> TrainConfig:
    """The settings of a network from its train sections: the file's shared one (`train
    { }`) and then its own (`train name { }`), whose keys replace the shared ones."""
    if isinstance(sections, ast.TrainDef):
        sections = [sections]
    cfg = TrainConfig(span=sections[-1].span)
    merged: dict[str, tuple[ast.Expr, SourceSpan]] = {}
    for td in sections:
        merged.update(_items(td))
    for key, (value, _) in merged.items():
        cfg = _set(cfg, key, value, outputs, source)
    return cfg


def _set(cfg: TrainConfig, key: str, e: ast.Expr, outputs: list[str],
         source: str | None) -> TrainConfig:
    if key == "data":
        return replace(cfg, data=call_from(e, DATA, "data set"))
    if key == "loss":
        return replace(cfg, loss=parse_loss(e, outputs), loss_text=_text(e, source))
    if key == "optimizer":
        return replace(cfg, optimizer=call_from(e, OPTIMIZERS, "optimizer"))
    if key == "schedule":
        return replace(cfg, schedule=call_from(e, SCHEDULES, "schedule"))
    if key == "early_stop":
        return replace(cfg, early_stop=call_from(e, {"early_stop": EARLY_STOP}, "setting"))
    if key == "augment":
        items = e.items if isinstance(e, ast.ListExpr) else (e,)
        return replace(cfg, augment=tuple(call_from(i, AUGMENTS, "augmentation") for i in items))
    if key == "metrics":
        items = e.items if isinstance(e, ast.ListExpr) else (e,)
        names = []
        for i in items:
            if not isinstance(i, ast.Name) or i.id not in METRICS:
                bad = i.id if isinstance(i, ast.Name) else "?"
                raise error("E030", f"unknown metric `{bad}`", i.span,
                            notes=["metrics: " + ", ".join(METRICS)],
                            help=did_you_mean(bad, METRICS))
            names.append(i.id)
        return replace(cfg, metrics=tuple(names))
    if key == "freeze":   # `freeze = ["stem.*", "l1.*"]`: glob patterns of parameter names
        items = e.items if isinstance(e, ast.ListExpr) else (e,)
        pats = [_check_kind("freeze", STR, _literal(i), i.span) for i in items]
        return replace(cfg, freeze=tuple(pats))
    if key == "lr_groups":   # `lr_groups = [group("stem.*", 0.1)]`: the first match wins
        items = e.items if isinstance(e, ast.ListExpr) else (e,)
        groups = []
        for i in items:
            c = call_from(i, LR_GROUP, "learning-rate group")
            a = dict(c.args)
            if "pattern" not in a or "scale" not in a:
                raise error("E030", "a learning-rate group needs a pattern and a scale", i.span,
                            help='write `group("stem.*", 0.1)`')
            if not a["scale"] >= 0:
                raise error("E030", f"a learning-rate scale must be at least 0, got "
                            f"{a['scale']:g}", i.span)
            groups.append((a["pattern"], float(a["scale"])))
        return replace(cfg, lr_groups=tuple(groups))
    v = _literal(e)
    if key == "init":   # `init = kaiming_normal`: the layers that give no `init=`
        v = _check_kind(key, NAME, v, e.span)
        return replace(cfg, init=named_choice("initialisation", v, INIT_SCHEMES, "schemes",
                                              e.span))
    if key == "precision":   # `precision = bf16`: tensor-core numerics of the products
        v = _check_kind(key, NAME, v, e.span)
        return replace(cfg, precision=named_choice("precision", v, PRECISIONS, "precisions",
                                                   e.span))
    if key in ("batch", "epochs", "seed", "checkpoint_every"):
        v = _check_kind(key, INT, v, e.span)
        if v < (0 if key == "seed" else 1):
            raise error("E030", f"`{key}` must be positive", e.span)
        return replace(cfg, **{key: v})
    if key in ("val_split", "test_split"):
        v = _check_kind(key, NUM, v, e.span)
        if not 0 <= v < 1:
            raise error("E030", f"`{key}` must be in [0, 1), got {v:g}", e.span)
        return replace(cfg, **{key: float(v)})
    raise AssertionError(key)


PATH_ARGS = ("path", "val", "test", "images", "masks", "val_images", "val_masks",
             "test_images", "test_masks")


def resolve_data_paths(cfg: TrainConfig, base_dir) -> TrainConfig:
    """Paths in a file's `data = ...` are relative to that file (as imports are); they are
    made absolute, so that a run's record (config.json) names the same files wherever
    `eval` or `--resume` is run from."""
    from pathlib import Path

    if cfg.data is None:
        return cfg
    args = tuple((k, str((Path(base_dir) / v).resolve()) if k in PATH_ARGS and
                  isinstance(v, str) else v) for k, v in cfg.data.args)
    return replace(cfg, data=Call(cfg.data.name, args))


def from_record(rec: dict, base: TrainConfig, outputs: list[str]) -> TrainConfig:
    """The settings a run recorded (its checkpoint's `config`), over `base`: what a resumed
    run continues with unless the command line changes it."""
    def call(v) -> Call:
        return Call(v[0], tuple(v[1].items()))

    cfg = base
    if rec.get("data"):
        cfg = replace(cfg, data=call(rec["data"]))
    if rec.get("loss"):
        cfg = replace(cfg, loss=parse_loss(rec["loss"], outputs), loss_text=rec["loss"])
    for key in ("optimizer", "schedule"):
        if rec.get(key):
            cfg = replace(cfg, **{key: call(rec[key])})
    for key in ("batch", "epochs", "seed", "val_split", "test_split", "checkpoint_every"):
        if key in rec:
            cfg = replace(cfg, **{key: rec[key]})
    if "augment" in rec:
        cfg = replace(cfg, augment=tuple(call(a) for a in rec["augment"]))
    if rec.get("freeze"):
        cfg = replace(cfg, freeze=tuple(rec["freeze"]))
    if rec.get("lr_groups"):
        cfg = replace(cfg, lr_groups=tuple((p, float(f)) for p, f in rec["lr_groups"]))
    if rec.get("init"):
        cfg = replace(cfg, init=rec["init"])
    if rec.get("precision"):
        cfg = replace(cfg, precision=rec["precision"])
    if "early_stop" in rec:
        es = rec["early_stop"]
        cfg = replace(cfg, early_stop=Call("early_stop", tuple(es.items())) if es is not None
                      else None)
    return cfg


def with_lr(cfg: TrainConfig, lr: float) -> TrainConfig:
    """The optimizer with another learning rate (`--lr`), range-checked like the file's."""
    value = _check_kind("lr", NUM, lr, None)
    args = dict(cfg.optimizer.args) | {"lr": float(value)}
    return replace(cfg, optimizer=Call(cfg.optimizer.name, tuple(args.items())))


def apply_overrides(cfg: TrainConfig, items: list[tuple[str, str]], outputs: list[str]
                    ) -> TrainConfig:
    """Command-line `key=value` settings, checked exactly like the file's (they win)."""
    from netlang.lang.parser import parse

    for key, text in items:
        if key not in KEYS:
            raise error("E030", f"unknown train setting `{key}`", None,
                        notes=["keys: " + ", ".join(KEYS)], help=did_you_mean(key, KEYS))
        if key == "data" and (text.endswith(".npz") or "/" in text) and "(" not in text:
            cfg = replace(cfg, data=Call("npz", (("path", text),)))
            continue
        src = f"train {{ {key} = {text} }}"
        item = parse(src, f"--{key.replace('_', '-')}").trains[0].items[0]
        cfg = _set(cfg, key, item.value, outputs, src)
    return cfg
