"""Attach a loss to a graph, and rewrite probability losses into their stable forms.

`attach_loss` adds one target input per target name and the weighted sum of the loss
terms, making `graph.loss` a scalar node. `stable_losses` is a simplify rewrite:
`bce(sigmoid(z), t)` becomes `bce_logits(z, t)`, `focal(sigmoid(z), t)` `focal_logits(z, t)`
and `cross_entropy(softmax(z), t)` becomes `cross_entropy(z, t)`, all computed with
log-sum-exp; the sigmoid/softmax node stays for
the network's outputs and is removed by DCE where nothing else reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netlang.diagnostics import SourceSpan, error
from netlang.ir.graph import Graph, Node
from netlang.ir.types import TensorType, fmt_shape
from netlang.ops.loss import target_type
from netlang.ops import registry
from netlang.ops.registry import ShapeCtx, ShapeError
from netlang.passes.shape_infer import infer_node


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of a loss, `0.5 * dice(mask, target)` (config.parse_loss makes
    them from the loss text)."""

    weight: float
    op: str            # a loss op of ops/loss.py: mse | l1 | smooth_l1 | cross_entropy | ...
    pred: str          # a network output
    target: str        # a target name supplied by the data
    attrs: tuple[tuple[str, Any], ...] = ()   # the op's attributes, checked (loss_attrs)
    span: SourceSpan | None = field(default=None, compare=False)   # the term's text


def resized_name(target: str, t: TensorType) -> str:
    """The input name of `target` resized for a smaller head: `target@32x32`."""
    spatial = t.shape if t.dtype == "int64" else t.shape[1:]
    return f"{target}@{'x'.join(map(str, spatial))}"


def target_names(outputs: dict[str, TensorType], terms) -> list[tuple[str, TensorType,
                                                                      str | None]]:
    """For each term (its output must exist): the input name its target is read from, that
    input's type, and the data target it is resized from (None: the data's own).

    A target read by outputs of different spatial sizes (deep supervision with heads at
    several resolutions) is the data's at the largest size; each smaller head reads it
    shrunk by whole factors (ops/loss.resize_target), an input of its own named
    `target@HxW`. Any other disagreement (dtype, channels, rank, sizes that are not whole
    factors, no largest size) is E031."""
    wants: dict[str, list[TensorType]] = {}
    for term in terms:
        wants.setdefault(term.target, []).append(target_type(term.op, outputs[term.pred]))
    primary: dict[str, TensorType] = {}
    for name, types in wants.items():
        first = types[0]
        lead = 0 if first.dtype == "int64" else 1
        for t in types[1:]:
            if t == first:
                continue
            if (t.dtype != first.dtype or t.rank != first.rank
                    or t.shape[:lead] != first.shape[:lead] or t.rank == lead):
                raise error("E031", f"target `{name}` is used as {fmt_shape(first.shape)} "
                            f"{first.dtype} and as {fmt_shape(t.shape)} {t.dtype}", None,
                            help="use a separate target name for each kind of loss")
        big = max(types, key=lambda t: t.size)
        for t in types:
            if any(b < v or b % v for b, v in zip(big.shape[lead:], t.shape[lead:])):
                raise error("E031", f"target `{name}` is read at {fmt_shape(big.shape)} and "
                            f"at {fmt_shape(t.shape)}: a target is shrunk for a smaller "
                            "head only by a whole factor per axis", None,
                            notes=["deep supervision reads one target at every head's "
                                   "resolution, each a whole factor below the largest"],
                            help="give the heads sizes that divide the largest, or a "
                                 "separate target each")
        primary[name] = big
    out = []
    for term, in_type in zip(terms, (target_type(t.op, outputs[t.pred]) for t in terms)):
        big = primary[term.target]
        if in_type == big:
            out.append((term.target, in_type, None))
        else:
            out.append((resized_name(term.target, in_type), in_type, term.target))
    return out


def attach_loss(g: Graph, terms: tuple[LossTerm, ...]) -> None:
    total = None
    for term in terms:
        if term.pred not in g.outputs:
            raise error("E030", f"the loss reads `{term.pred}`, which is not an output of "
                        f"network `{g.name}`", None,
                        notes=["outputs: " + ", ".join(g.outputs)])
    reads = target_names({k: v.type for k, v in g.outputs.items()}, terms)
    for i, (term, (name, want, source)) in enumerate(zip(terms, reads)):
        pred = g.outputs[term.pred]
        tgt = g.targets.get(name)
        if tgt is None:
            if name in g.inputs:
                raise error("E030", f"the target `{name}` is also a network input", None,
                            help="give the target its own name, e.g. `label` or `target`")
            attrs = {"shape": want.shape, "target": True}
            if source is not None:
                attrs["resized_from"] = source
            tgt = g.add("input", [], attrs, name=name, type=want)
            g.targets[name] = tgt
        node = g.add(term.op, [pred, tgt], dict(term.attrs), name=f"loss.{term.op}{i}",
                     span=pred.span)
        try:
            infer_node(node)
        except ShapeError as exc:   # an option that does not fit the output (class weights)
            raise _option_error(exc, term, pred.type) from None
        if term.weight != 1:
            node = g.add("scale", [node], {"factor": float(term.weight)},
                         name=f"loss.{term.op}{i}.scale", span=pred.span)
            infer_node(node)
        if total is None:
            total = node
        else:
            total = g.add("add", [total, node], name=f"loss.sum{i}", span=pred.span)
            infer_node(total)
    if total is None:
        raise error("E030", "the loss has no terms", None)
    g.loss = total


# Which activation turns logits into the probabilities a loss reads, and the loss's form
# on logits.
_PROBABILITY = {"bce": "sigmoid", "focal": "sigmoid", "cross_entropy": "softmax"}
_ON_LOGITS = {"bce": "bce_logits", "focal": "focal_logits", "cross_entropy": "cross_entropy"}


def _probability_source(pred: Node, op: str) -> Node | None:
    """The sigmoid/softmax node whose probabilities `pred` is, looking through dropout
    with p = 0 (the identity); None if `pred` is not such a probability.

    Dropout with p > 0 between the activation and the loss is refused: in training it
    zeroes probabilities (an infinite cross-entropy) and rescales the rest above 1, so no
    reading of the loss means the same thing in training and in inference."""
    node = pred
    while node.op == "dropout":
        if node.attrs["p"] > 0:
            act = node.inputs[0]
            while act.op == "dropout":
                act = act.inputs[0]
            if act.op == _PROBABILITY[op]:
                raise error("E033", f"`{op}` reads the output of `{act.op}` through dropout "
                            f"(p = {node.attrs['p']:g})", node.span,
                            notes=[f"in training, dropout zeroes some {act.op} "
                                   "probabilities and scales the others by 1 / (1 - p), so "
                                   "the loss would read values that are not probabilities"],
                            help=f"apply dropout before the layer that feeds `{act.op}`")
            return None
        node = node.inputs[0]
    if node.op != _PROBABILITY[op]:
        return None
    # cross_entropy reads classes along the channel axis: a softmax over another axis
    # is not its probabilities
    return node if node.attrs.get("axis", 0) == 0 else None


def check_losses(g: Graph, terms: tuple[LossTerm, ...]) -> None:
    """Checked with the network (`netlang check`): the options of each term against the
    output it reads (class weights, one per class), and no probability loss fed through
    dropout."""
    for term in terms:
        if term.pred not in g.outputs:
            continue
        pred = g.outputs[term.pred].type
        ctx = ShapeCtx(term.op, [pred, target_type(term.op, pred)], dict(term.attrs))
        try:
            registry.get(term.op).shape(ctx)
        except ShapeError as exc:
            raise _option_error(exc, term, pred) from None
        if term.op in _PROBABILITY:
            _probability_source(g.outputs[term.pred], term.op)


def _option_error(exc: ShapeError, term: LossTerm, pred):
    return error(exc.code, exc.message, term.span,
                 notes=[f"`{term.pred}` is {fmt_shape(pred.shape)}"], help=exc.help)


def probability_warnings(g: Graph, terms: tuple[LossTerm, ...]) -> list[str]:
    """`bce` or `focal` of an output that no sigmoid makes: it reads values outside [0, 1]
    clamped, which is not a binary cross-entropy (a U-Net ending in a 1x1 conv of
    logits)."""
    out = []
    for term in terms:
        if term.op in ("bce", "focal") and term.pred in g.outputs and \
                _probability_source(g.outputs[term.pred], term.op) is None:
            out.append(f"{term.op} reads `{term.pred}`, which no sigmoid makes: values "
                       "outside [0, 1] are clamped, so this is not the binary cross-entropy "
                       f"of `{term.pred}`; end the output with `-> sigmoid`, or use "
                       "cross_entropy with two classes")
    return out


def stable_losses(g: Graph) -> None:
    """Runs before `specialize`, on the graph both modes share, so that training and
    inference fold the same activations."""
    for n in g.nodes:
        if n.op not in _PROBABILITY:
            continue
        act = _probability_source(n.inputs[0], n.op)
        if act is None:
            continue
        n.op = _ON_LOGITS[n.op]
        n.inputs[0] = act.inputs[0]
