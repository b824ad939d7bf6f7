"""`netlang summary`: a Keras-like layer table with parameters, MACs and activation memory."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from netlang.api import Network
from netlang.ir.types import fmt_shape
from netlang.ops import registry
from netlang.passes.shape_infer import data_inputs


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    shape: list[int]
    params: int
    macs: int
    activation_bytes: int
    line: int | None


@dataclass(frozen=True)
class Summary:
    network: str
    batch: int
    rows: list[Row]
    trainable_params: int
    non_trainable_params: int
    param_bytes: int
    activation_bytes: int
    total_macs: int

    def to_json(self) -> dict:
        return asdict(self)


def summarize(net: Network, batch: int = 1) -> Summary:
    rows: list[Row] = []
    for node in net.graph.nodes:
        if node.op == "param":
            continue
        op = registry.get(node.op) if node.op != "input" else None
        params = sum(p.type.size for p in node.inputs[len(data_inputs(node)):]
                     if p.op == "param" and p.attrs.get("trainable", True)) if op else 0
        macs = 0
        if op is not None and op.macs is not None:
            macs = op.macs([i.type for i in data_inputs(node)], node.type, node.attrs) * batch
        rows.append(Row(node.name, node.op, list(node.type.shape), params, macs,
                        node.type.nbytes * batch, node.span.line if node.span else None))
    trainable = sum(p.type.size for p in net.graph.params if p.attrs.get("trainable", True))
    buffers = sum(p.type.size for p in net.graph.params if not p.attrs.get("trainable", True))
    return Summary(net.name, batch, rows, trainable, buffers, 4 * (trainable + buffers),
                   sum(r.activation_bytes for r in rows), sum(r.macs for r in rows))


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def human_count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def format_table(s: Summary) -> str:
    head = ("layer", "op", "output shape", "params", "MACs", "activations")
    body = [(r.name, r.op, fmt_shape(tuple(r.shape)), f"{r.params:,}" if r.params else "-",
             human_count(r.macs) if r.macs else "-", human_bytes(r.activation_bytes))
            for r in s.rows]
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) for i in range(len(head))]
    right = {3, 4, 5}

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(head))
    out = [f"network {s.network} (batch {s.batch})", rule, line(head), rule]
    out += [line(b) for b in body]
    out += [rule,
            f"trainable params:     {s.trainable_params:,}",
            f"non-trainable params: {s.non_trainable_params:,} (batchnorm running statistics)",
            f"parameter memory:     {human_bytes(s.param_bytes)}",
            f"activation memory:    {human_bytes(s.activation_bytes)} (forward, all layers, "
            f"batch {s.batch})",
            f"MACs:                 {human_count(s.total_macs)} (batch {s.batch})"]
    return "\n".join(out)
