"""The pass pipeline: verification after every pass, golden IR for autodiff, before/after
pairs for the rewrites, the memory plan, dropout, and the API's input checks."""

from __future__ import annotations

import dataclasses
import os
import tracemalloc

import numpy as np
import pytest

import netlang
from netlang.backends.numpy_backend import execute
from netlang.diagnostics import NetlangError
from netlang.ir.printer import format_graph
from netlang.passes.pipeline import PASS_NAMES
from tests.backends.test_torch_parity import CONFIGS
from tests.conftest import EXAMPLES, ROOT

GOLDEN = ROOT / "tests" / "golden"


def golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; NETLANG_UPDATE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / name
    if os.environ.get("NETLANG_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with NETLANG_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} changed; run with NETLANG_UPDATE_GOLDEN=1 " \
                                     "if the change is intended"


@pytest.mark.parametrize("file,network,params,batch", CONFIGS,
                         ids=[c[1] or c[0][:-4] for c in CONFIGS])
def test_every_pass_leaves_a_valid_graph(file, network, params, batch):
    net = netlang.load(EXAMPLES / file, network=network, params=params)
    loss = " + ".join(f"mse({k}, t_{k})" for k in net.outputs)
    net.compile(training=True, loss=loss, verify_each=True)
    net.compile(training=False, verify_each=True)


SMALL = "network small { input x: [1, 5, 5]  output y = x -> conv(2, 3) -> relu }"


def test_autodiff_golden_ir():
    net = netlang.loads(SMALL, file="small.net")
    prog = net.compile(training=True, loss="mse(y, target)", dump_after=PASS_NAMES)
    golden("small_autodiff.txt", prog.dumps["autodiff"])
    golden("small_train_final.txt", prog.dumps["dce"])


def test_backward_nodes_keep_forward_spans():
    net = netlang.load(EXAMPLES / "lenet5.net")
    prog = net.compile(training=True, loss="cross_entropy(logits, label)")
    fwd_spans = {n.span for n in net.graph.nodes}
    grads = [n for n in prog.graph.nodes if ".grad_" in n.name]
    assert grads and all(n.span in fwd_spans for n in grads)


def test_stable_losses_rewrite():
    src = ("network n { input x: [2, 4, 4]\n"
           "  output p = x -> conv(1, 1) -> sigmoid\n"
           "  output q = x -> conv(3, 1) -> softmax }")
    net = netlang.loads(src)
    prog = net.compile(training=True, loss="bce(p, t) + cross_entropy(q, c)")
    ops = [n.op for n in prog.graph.nodes]
    assert "bce_logits" in ops and "bce" not in ops
    ce = next(n for n in prog.graph.nodes if n.op == "cross_entropy")
    assert ce.inputs[0].op == "conv"              # reads the logits, not the softmax
    assert "sigmoid" not in ops                    # only the loss read it: removed by DCE


def test_cse_merges_duplicates_and_dce_drops_dead_nodes():
    src = ("network n { input x: [2, 4, 4]\n"
           "  a = x -> relu  b = x -> relu  unused = x -> tanh\n"
           "  output y = add(a, b) }")
    net = netlang.loads(src)
    before = [n.op for n in net.graph.nodes]
    assert before.count("relu") == 2 and "tanh" in before
    prog = net.compile(training=False)
    after = [n.op for n in prog.graph.nodes]
    assert after == ["input", "relu", "add"]
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(net.forward({}, {"x": x})["y"], 2 * np.maximum(x, 0))


def _intervals_overlap(plan, prog_graph):
    steps = [n for n in prog_graph.nodes if n.op not in ("input", "param")]
    index = {n.id: i for i, n in enumerate(steps)}
    live = [(index[nid], plan.last_use[nid], plan.offsets[nid], plan.sizes[nid])
            for nid in plan.offsets]
    for i, (s1, e1, o1, z1) in enumerate(live):
        for s2, e2, o2, z2 in live[i + 1:]:
            if s1 <= e2 and s2 <= e1 and o1 < o2 + z2 and o2 < o1 + z1:
                return True
    return False


def test_memory_plan_reuses_buffers_without_overlap():
    net = netlang.load(EXAMPLES / "unet.net", params={"base": 4, "size": 64})
    prog = net.compile(training=True, loss="bce(mask, target) + dice(mask, target)")
    plan = prog.plan(4)
    assert plan.arena_bytes < 0.6 * plan.total_bytes
    assert not _intervals_overlap(plan, prog.graph)


def test_numpy_backend_peak_memory_follows_the_plan():
    net = netlang.load(EXAMPLES / "unet.net", params={"base": 8, "size": 64})
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((4, 1, 64, 64)).astype(np.float32),
             "target": (rng.random((4, 1, 64, 64)) > 0.5).astype(np.float32)}
    weights = net.init()
    prog = net.program_for(True, "bce(mask, target)")
    feeds, n = prog.feeds(weights, batch)
    plan = prog.plan(n)
    keep_all = dataclasses.replace(plan, free_after=tuple(() for _ in plan.free_after))

    def peak_of(p):
        execute(prog.graph, p, feeds, n)   # warm up
        tracemalloc.start()
        execute(prog.graph, p, feeds, n)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    planned, unplanned = peak_of(plan), peak_of(keep_all)
    # Dropping values after their last use: the peak is the live set (the arena) plus the
    # temporaries inside one op (im2col buffers), well below keeping every tensor.
    assert planned < 0.6 * unplanned, (planned, unplanned)
    assert planned < plan.arena_bytes + 0.5 * plan.total_bytes, (planned, plan.arena_bytes)


def test_dropout_training_and_inference():
    net = netlang.loads("network n { input x: [1000]  output y = x -> dropout(0.3) }")
    x = np.ones((4, 1000), np.float32)
    np.testing.assert_array_equal(net.forward({}, {"x": x})["y"], x)
    y = net.forward({}, {"x": x}, training=True, seed=1)["y"]
    assert abs((y == 0).mean() - 0.3) < 0.03
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(y, net.forward({}, {"x": x}, training=True, seed=1)["y"])


def test_value_and_grad_defaults_to_the_train_section_loss():
    net = netlang.load(EXAMPLES / "lenet5.net")
    with pytest.raises(NetlangError, match="no loss given"):
        net.value_and_grad(net.init(), {})


API_ERRORS = [
    (lambda net, w, x: net.forward(w, {}), "E040", "missing input `image`"),
    (lambda net, w, x: net.forward(w, {"imag": x}), "E040", "did you mean `image`?"),
    (lambda net, w, x: net.forward(w, {"image": x[:, :, :20]}), "E041",
     "`image` is [2, 1, 20, 28]; expected [N, 1, 28, 28]"),
    (lambda net, w, x: net.forward({k: v for k, v in w.items() if "conv0" not in k},
                                   {"image": x}), "E042", "weights have no `features.conv0"),
    (lambda net, w, x: net.forward(w | {"features.conv0.weight": np.zeros((6, 1, 3, 3))},
                                   {"image": x}), "E042", "the network needs [6, 1, 5, 5]"),
    (lambda net, w, x: net.value_and_grad(w, {"image": x, "label": [0, 1]},
                                          loss="cross_entrpy(logits, label)"), "E030",
     "did you mean `cross_entropy`?"),
    (lambda net, w, x: net.value_and_grad(w, {"image": x, "label": [0, 1]},
                                          loss="mse(logit, label)"), "E030",
     "`logit` is not an output"),
    (lambda net, w, x: net.value_and_grad(w, {"image": x, "label": [0, 12]},
                                          loss="cross_entropy(logits, label)"), "E043",
     "class index out of range"),
    (lambda net, w, x: net.value_and_grad(w, {"image": x, "label": [0.5, 1]},
                                          loss="cross_entropy(logits, label)"), "E041",
     "must hold class indices"),
    (lambda net, w, x: net.forward(w, {"image": np.array([["a"]])}), "E041", "is [1, 1]"),
]


@pytest.mark.parametrize("call,code,text", API_ERRORS, ids=[e[1] + "-" + e[2][:25]
                                                           for e in API_ERRORS])
def test_api_errors_are_netlang_errors(call, code, text):
    net = netlang.load(EXAMPLES / "lenet5.net")
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(NetlangError) as ei:
        call(net, net.init(), x)
    assert ei.value.diagnostics[0].code == code
    assert text in str(ei.value) + ei.value.render()


def test_init_is_deterministic_and_pytorch_like():
    net = netlang.load(EXAMPLES / "simple_cnn.net")
    a, b = net.init(seed=3), net.init(seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    w = a["x.conv0.weight"]
    bound = 1 / np.sqrt(3 * 3 * 3)
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert format_graph(net.graph).count("param(") == len(a)


def test_graph_queries_agree_with_networkx():
    """networkx as an oracle for the Graph API's ancestors and topological order."""
    import networkx as nx

    net = netlang.load(EXAMPLES / "unet.net", params={"base": 4, "size": 32})
    g = net.graph
    idx = nx.DiGraph([(src.id, n.id) for n in g.nodes for src in n.inputs])
    out = g.outputs["mask"]
    assert {n.id for n in g.ancestors(out)} == nx.ancestors(idx, out.id) | {out.id}
    assert nx.is_directed_acyclic_graph(idx)
    position = {n.id: i for i, n in enumerate(g.nodes)}
    assert all(position[a] < position[b] for a, b in idx.edges)
