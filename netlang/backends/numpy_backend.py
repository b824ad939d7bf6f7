"""The NumPy backend: the reference semantics and the CPU default.

Interprets a program's nodes in schedule order with each op's NumPy forward. Arrays are
NCHW float32 with the batch first. Following the memory plan's liveness, every value is
dropped right after its last reader, so peak memory tracks the planned arena.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from netlang.ir.graph import Graph, Node
from netlang.ops import registry
from netlang.passes.memplan import MemoryPlan


@dataclass
class Runtime:
    """What an op's forward may use besides its inputs."""

    batch: int
    rng: np.random.Generator
    dtype: type = np.float32        # the program's float type: constants take it too
    current: Node | None = None
    updates: dict[str, np.ndarray] = field(default_factory=dict)

    def buffer_update(self, param: Node, value: np.ndarray) -> None:
        self.updates[param.name] = value


class OpFailed(Exception):
    """An op raised while running; carries the node so the caller can point at its line."""

    def __init__(self, node: Node, cause: Exception):
        super().__init__(str(cause))
        self.node = node
        self.cause = cause


def execute(g: Graph, plan: MemoryPlan, feeds: Mapping[int, np.ndarray], batch: int,
            seed: int = 0) -> tuple[dict[int, np.ndarray], dict[str, np.ndarray]]:
    """Run every node; returns the root values (by node id) and buffer updates."""
    floats = [a.dtype for a in feeds.values() if a.dtype.kind == "f"]
    rt = Runtime(batch, np.random.default_rng(seed), floats[0].type if floats else np.float32)
    env: dict[int, np.ndarray] = dict(feeds)
    steps = [n for n in g.nodes if n.op not in ("input", "param")]
    ops = registry.all_ops()
    for i, node in enumerate(steps):
        rt.current = node
        xs = [env[s.id] for s in node.inputs]
        try:
            y = ops[node.op].forward(xs, node.attrs, rt)
        except (ValueError, FloatingPointError) as exc:
            raise OpFailed(node, exc) from exc
        env[node.id] = y
        for dead in plan.free_after[i]:
            env.pop(dead, None)
    roots = {n.id: env[n.id] for n in g.roots()}
    return roots, rt.updates
