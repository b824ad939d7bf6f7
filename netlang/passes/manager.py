"""Named passes and the manager that runs them, with IR dumps and verification.

The manager runs a list of named passes, dumps the stable IR text after any of them
(`--dump-after NAME`) and verifies the graph after every pass (tests turn this on). What
each pass ensures is written in the table of contents, passes/pipeline.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from netlang.ir.graph import Graph
from netlang.ir.printer import format_graph
from netlang.passes.verify import verify


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph], None]


@dataclass
class PassManager:
    passes: list[Pass]
    dump_after: tuple[str, ...] = ()
    verify_each: bool = False
    dumps: dict[str, str] = field(default_factory=dict)

    def run(self, g: Graph) -> Graph:
        unknown = [d for d in self.dump_after if d not in self.names]
        if unknown:   # callers validate user input (E006); this is an internal error
            raise AssertionError(f"unknown pass {unknown[0]!r}; passes: "
                                 f"{', '.join(self.names)}")
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
