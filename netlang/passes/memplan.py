"""Memory planning: liveness, then buffer reuse in one arena.

Every value computed by the program (not inputs or parameters, which the caller owns) gets
an offset in one arena. A value is live from the step that computes it to the last step
that reads it; the program's results (outputs, loss, gradients) live to the end. Offsets
are assigned in schedule order, best fit over the free blocks, so buffers of dead values
are reused. Sizes depend on the batch, so a plan is made per batch size.

The NumPy backend honours the plan's liveness (it drops every value after its last use),
so its peak memory follows the arena, not the sum of all tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from netlang.ir.graph import Graph

ALIGN = 256


@dataclass(frozen=True)
class MemoryPlan:
    batch: int
    offsets: dict[int, int]          # node id -> byte offset in the arena
    sizes: dict[int, int]            # node id -> bytes
    last_use: dict[int, int]         # node id -> index of the last step reading it
    free_after: tuple[tuple[int, ...], ...]  # per step: values dead after it
    arena_bytes: int
    total_bytes: int                 # sum of all computed values (no reuse)

    def to_json(self) -> dict:
        return {"batch": self.batch, "arena_bytes": self.arena_bytes,
                "total_bytes": self.total_bytes,
                "buffers": {str(k): {"offset": self.offsets[k], "bytes": self.sizes[k]}
                            for k in self.offsets}}


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(g: Graph, batch: int, by_kernel: bool = False) -> MemoryPlan:
    """Plan per node (the NumPy backend runs node by node), or per fused kernel
    (`by_kernel`): a kernel writes its group's output at the group's first step and reads
    every outside input of the group there; a concat written in place by its producers is
    allocated when its first producer runs, and its own step disappears."""
    steps: list[tuple[list, list]] = []
    if by_kernel and g.fusion is not None:
        fusion = g.fusion
        slot_of = {x: c for c, xs in fusion.inplace.items() for x in xs}
        started: set[int] = set()
        by_id = {n.id: n for n in g.nodes}
        for grp in fusion.groups:
            if grp.anchor.id in fusion.inplace:
                continue   # written by its producers
            out = grp.output
            defines = [] if out.id in slot_of and not fusion.keeps_own[out.id] else [out]
            cat = slot_of.get(out.id)
            if cat is not None and cat not in started:
                started.add(cat)
                defines.append(by_id[cat])
            members = {m.id for m in grp.nodes}
            reads = [i for n in grp.nodes for i in n.inputs if i.id not in members]
            steps.append((defines, reads))
    else:
        steps = [([n], n.inputs) for n in g.nodes if n.op not in ("input", "param")]
    index: dict[int, int] = {}
    for i, (defs, _) in enumerate(steps):
        for n in defs:
            index.setdefault(n.id, i)
    defined = {n.id: n for defs, _ in steps for n in defs}
    end = len(steps)
    keep = {n.id for n in g.roots()}
    last: dict[int, int] = {nid: (end if nid in keep else i) for nid, i in index.items()}
    for i, (_, reads) in enumerate(steps):
        for src in reads:
            if src.id in index and last[src.id] < end:
                last[src.id] = max(last[src.id], i)
    sizes = {nid: _align(n.type.nbytes * (batch if n.type.batched else 1))
             for nid, n in defined.items()}

    free: list[tuple[int, int]] = []   # (offset, size), sorted by offset
    arena = 0
    offsets: dict[int, int] = {}
    dying: list[list[int]] = [[] for _ in steps]
    for nid, li in last.items():
        if li < end:
            dying[li].append(nid)
    for i, (defs, _) in enumerate(steps):
        for n in defs:
            if n.id in offsets:
                continue
            size = sizes[n.id]
            best = None
            for j, (_, sz) in enumerate(free):
                if sz >= size and (best is None or sz < free[best][1]):
                    best = j
            if best is None:
                # Grow the arena, reusing a free block at its end if there is one.
                if free and free[-1][0] + free[-1][1] == arena:
                    off, sz = free.pop()
                    arena = off + size
                else:
                    off = arena
                    arena += size
            else:
                off, sz = free.pop(best)
                if sz > size:
                    free.append((off + size, sz - size))
            offsets[n.id] = off
        for nid in dying[i]:
            free.append((offsets[nid], sizes[nid]))
        free = _coalesce(free)
    return MemoryPlan(batch, offsets, sizes, last, tuple(tuple(d) for d in dying), arena,
                      sum(sizes.values()))


def _coalesce(free: list[tuple[int, int]]) -> list[tuple[int, int]]:
    free.sort()
    out: list[tuple[int, int]] = []
    for off, sz in free:
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + sz)
        else:
            out.append((off, sz))
    return out
