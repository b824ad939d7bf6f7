"""Named passes and the manager that runs them, with IR dumps and verification.

Each pass states what it requires and what it ensures (documentation that tests read), and
the manager can dump the stable IR text after any pass (`--dump-after NAME`) and verify the
graph after every pass (tests turn this on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from netlang.ir.graph import Graph
from netlang.ir.printer import format_graph
from netlang.ir.verify import verify


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph], None]
    requires: str
    ensures: str


@dataclass
class PassManager:
    passes: list[Pass]
    dump_after: tuple[str, ...] = ()
    verify_each: bool = False
    dumps: dict[str, str] = field(default_factory=dict)

    def run(self, g: Graph) -> Graph:
        unknown = [d for d in self.dump_after if d not in self.names]
        if unknown:
            raise ValueError(f"unknown pass {unknown[0]!r}; passes: {', '.join(self.names)}")
        for p in self.passes:
            p.run(g)
            if self.verify_each:
                verify(g)
            if p.name in self.dump_after:
                self.dumps[p.name] = format_graph(g)
        return g

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]
