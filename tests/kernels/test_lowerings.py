"""The kernel layer walks the op registry: every op runs on every backend, and every
lowering, forward and backward, equals NumPy on cuda-emu and on cpu.

All op cases of tests/ops/test_ops.py go into ONE program (each with its own inputs and a
loss term sum(y * r)), so cuda-emu compiles once for the whole table; the gradients of the
summed loss run every VJP's backward ops through their own lowerings.
"""

from __future__ import annotations

import numpy as np
import pytest

from netlang.ir.graph import Graph
from netlang.kernels import registry as kernels
from netlang.ops import registry
from netlang.passes import fusion
from netlang.passes.autodiff import autodiff
from netlang.passes.memplan import plan_memory
from netlang.passes.shape_infer import infer_shapes
from netlang.passes.simplify import dce
from netlang.program import Program
from tests.backends.test_cuda import emu
from tests.ops.test_ops import CASES, N, build, run

# Random ops draw differently on each backend (a counter hash on the kernels): their
# statistics are tested in tests/backends/test_cuda.py.
RANDOM = {"dropout_mask"}


def test_every_op_has_a_lowering_on_every_backend():
    missing = {"numpy": [], "cuda, cuda-emu, cpu": []}
    for name, op in registry.all_ops().items():
        if op.forward is None:
            missing["numpy"].append(name)
        if not op.rewritten and not kernels.has_lowering(name):
            missing["cuda, cuda-emu, cpu"].append(name)
    assert missing == {"numpy": [], "cuda, cuda-emu, cpu": []}, missing


def test_rewritten_ops_never_reach_a_backend():
    for name, op in registry.all_ops().items():
        if not op.rewritten:
            continue
        shapes, attrs = next((c[1], c[2]) for c in CASES if c[0] == name)
        for training in (True, False):
            g, y, _ = build(name, shapes, attrs, np.random.default_rng(0))
            from netlang.passes.mode import specialize

            specialize(g, training)
            assert all(n.op != name for n in g.nodes), (name, training)


def _one_program(cases):
    """Every case in one graph: (graph, feeds, forward outputs by case index)."""
    g = Graph()
    rng = np.random.default_rng(3)
    feeds: dict[int, np.ndarray] = {}
    total = None
    for i, (op, shapes, attrs) in enumerate(cases):
        sub, y, sub_feeds = build(op, shapes, attrs, rng)
        ids = {}
        for n in sub.nodes:   # copy the case's nodes into the shared graph
            m = g.add(n.op, [ids[x.id] for x in n.inputs], dict(n.attrs),
                      name=f"c{i}.{n.name}", type=n.type)
            ids[n.id] = m
            if n.id in sub_feeds:
                feeds[m.id] = sub_feeds[n.id]
            if n.op == "input":
                (g.targets if n.name in sub.targets else g.inputs)[m.name] = m
        y = ids[y.id]
        g.outputs[f"c{i}"] = y
        r = g.add("input", [], {"shape": y.type.shape}, name=f"c{i}.r", type=y.type)
        g.targets[r.name] = r
        feeds[r.id] = rng.standard_normal(y.type.full_shape(N))
        term = g.add("sum_all", [g.add("mul", [y, r], name=f"c{i}.prod")], name=f"c{i}.loss")
        total = term if total is None else g.add("add", [total, term], name=f"c{i}.acc")
    infer_shapes(g)
    g.loss = total
    autodiff(g, wrt_inputs=True)
    dce(g)
    g.fusion = fusion.fuse(g, True)
    return g, feeds


@pytest.mark.emu
@emu
@pytest.mark.parametrize("backend", ["cuda-emu", "cpu"])
def test_every_lowering_matches_numpy(backend):
    """On cuda-emu (the CUDA text) and on cpu (the same kernels rendered as C)."""
    from netlang.backends.cuda.runtime import Runner

    cases = [c for c in CASES if not registry.get(c[0]).rewritten and c[0] not in RANDOM]
    g, feeds = _one_program(cases)
    want = run(g, feeds)
    prog = Program(g, training=True, dumps={}, plan_fn=plan_memory)
    got, _ = Runner(prog, backend).execute(
        {k: v.astype(np.int64 if v.dtype.kind == "i" else np.float32) for k, v in feeds.items()},
        N)
    ran = {n.op for n in g.nodes}
    assert ran >= {c[0] for c in cases}
    backward = {n.op for n in g.nodes if n.op not in ("input", "param")
                and not registry.get(n.op).user}
    assert {"conv_grad_input", "maxpool_grad", "upsample_grad", "cross_entropy_grad"} <= backward
    bad = []
    for n in g.roots():
        a, b = np.asarray(got[n.id], np.float64), np.asarray(want[n.id], np.float64)
        err = float(np.abs(a - b).max()) if a.size else 0.0
        if err > 1e-4 * max(1.0, float(np.abs(b).max()) if b.size else 1.0):
            bad.append(f"{n.name} ({n.op}): max error {err:.3g}")
    assert bad == [], bad
