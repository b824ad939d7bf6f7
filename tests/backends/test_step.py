"""The training step on every backend: the compiled steps (weights, batchnorm statistics and
optimizer state kept in the backend's buffers, the update fused) against the NumPy step
(the reference gradients and update rules), the NaN guard, the cpu step as one native call,
and the training loop on cpu (resume exact, checkpoints like NumPy's)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import netlang
from netlang.config import Call, apply_overrides
from netlang.train import checkpoint
from netlang.train.loop import Trainer
from netlang.train.optim import Optimizer
from netlang.backends.step import NumpyStep, TrainStep, train_step
from tests.backends.test_cuda import BACKENDS, HAVE_CXX
from tests.conftest import EXAMPLES

CPU = pytest.param("cpu", marks=pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler"))
COMPILED = [CPU, *BACKENDS]

# conv + batchnorm (its statistics are updates the step writes back) + dropout-free head
NET = """
network bnnet(classes = 4) {
    input x: [3, 12, 12]
    c1 = conv(x, 8, kernel = 3, pad = same, bias = false)
    b1 = relu(batchnorm(c1))
    p1 = maxpool(b1, 2)
    c2 = conv(p1, 8, kernel = 3, pad = same)
    output logits = dense(flatten(relu(c2)), classes)
}
"""
LOSS = "cross_entropy(logits, label)"
OPTIMIZERS = [("sgd", (("lr", 0.1), ("momentum", 0.9), ("nesterov", True),
                       ("weight_decay", 1e-3))),
              ("sgd", (("lr", 0.1),)),
              ("adam", (("lr", 0.01), ("weight_decay", 0.01))),
              ("adamw", (("lr", 0.01), ("weight_decay", 0.1)))]
IDS = ["sgd-nesterov", "sgd-plain", "adam", "adamw"]


def _batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 3, 12, 12)).astype(np.float32),
            "label": rng.integers(0, 4, n)}


def _run(step, batches, lr: float) -> list[float]:
    return [step.run(b, lr, i) for i, b in enumerate(batches)]


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("name,args", OPTIMIZERS, ids=IDS)
def test_compiled_step_trains_like_the_numpy_step(backend, name, args):
    """Three steps (the last at another batch size, as an epoch's last batch) on each
    backend: losses, weights, batchnorm statistics and optimizer state as NumPy's."""
    net = netlang.loads(NET)
    w = net.init(0)
    batches = [_batch(6, 0), _batch(6, 1), _batch(5, 2)]
    ref_opt, opt = Optimizer.from_config(Call(name, args)), Optimizer.from_config(Call(name, args))
    ref = NumpyStep(net, LOSS, w, ref_opt)
    got = TrainStep(net, LOSS, w, opt, backend)
    want_losses = _run(ref, batches, ref_opt.lr)
    losses = _run(got, batches, opt.lr)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
    assert opt.step_count == ref_opt.step_count == 3
    ws, want = got.weights(), ref.weights()
    assert sorted(ws) == sorted(want)
    # Adam divides by sqrt(v): for near-zero gradients a float32 rounding difference becomes
    # a visible fraction of one step, so it gets 1e-3 (0.1% of the weights' scale).
    tol = 1e-4 if name == "sgd" else 1e-3
    for k in want:
        np.testing.assert_allclose(ws[k], want[k], rtol=tol, atol=tol * 0.1, err_msg=k)
    stat = "b1.batchnorm0.running_mean"
    assert not np.allclose(ws[stat], w[stat])   # the step's statistics were written back
    got.sync()
    assert {s: sorted(v) for s, v in opt.state.items()} == \
        {s: sorted(v) for s, v in ref_opt.state.items()}
    for slot, arrays in ref_opt.state.items():
        for k in arrays:
            np.testing.assert_allclose(opt.state[slot][k], arrays[k], rtol=tol,
                                       atol=tol * 0.01, err_msg=f"{slot} {k}")


@pytest.mark.parametrize("backend", ["numpy", *COMPILED])
def test_a_nan_loss_changes_nothing(backend):
    net = netlang.loads(NET)
    opt = Optimizer.from_config(Call("adam", (("lr", 0.01),)))
    step = train_step(net, LOSS, net.init(0), opt, backend)
    step.run(_batch(4), opt.lr, 0)
    before, count = step.weights(), opt.step_count
    step.sync()
    state = {s: {k: a.copy() for k, a in v.items()} for s, v in opt.state.items()}
    bad = _batch(4, 1)
    bad["x"][0, 0, 0, 0] = np.nan
    assert np.isnan(step.run(bad, opt.lr, 1))
    after = step.weights()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert opt.step_count == count
    step.sync()
    for s, v in state.items():
        for k in v:
            np.testing.assert_array_equal(opt.state[s][k], v[k])


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler")
def test_cpu_step_with_its_update_is_one_native_call(monkeypatch):
    from netlang.backends.cuda import runtime

    net = netlang.loads(NET)
    opt = Optimizer.from_config(Call("sgd", (("lr", 0.1), ("momentum", 0.9))))
    step = TrainStep(net, LOSS, net.init(0), opt, "cpu")
    step.run(_batch(4), opt.lr, 0)

    def refuse(*a, **k):
        raise AssertionError("a Python-level launch during a cpu step")

    monkeypatch.setattr(runtime.Runner, "run_steps", refuse)
    monkeypatch.setattr(runtime.Device, "launch", refuse)
    calls = []
    module = step.dev.module
    real = module.lib.nl_train
    monkeypatch.setattr(module.lib, "nl_train", lambda *a: calls.append(1) or real(*a))
    for i in range(3):
        step.run(_batch(4, i), opt.lr, i + 1)
    assert len(calls) == 3 and opt.step_count == 4


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler")
def test_training_on_cpu_resumes_exactly_and_saves_numpy_checkpoints(tmp_path):
    net = netlang.load(EXAMPLES / "lenet_digits.net", params={"width": 4})
    cfg = apply_overrides(net.train, [("epochs", "2"), ("batch", "64")], list(net.outputs))
    cfg = dataclasses.replace(cfg, augment=())

    def quiet(*a, **k):
        pass

    def trainer(out, **kw):
        return Trainer(net, cfg, tmp_path / out, progress=False, log=quiet, backend="cpu",
                       **kw)

    full = trainer("full").run()
    part = trainer("part", stop_after_steps=7).run()
    assert part.reason.startswith("interrupted")
    resumed = trainer("part", resume=tmp_path / "part").run()
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in full.history]
    for k in full.weights:   # the same program on the same cores: bit for bit
        np.testing.assert_array_equal(resumed.weights[k], full.weights[k], err_msg=k)
    numpy_run = Trainer(net, cfg, tmp_path / "numpy", progress=False, log=quiet).run()
    a = checkpoint.load(tmp_path / "full" / "last.safetensors")
    b = checkpoint.load(tmp_path / "numpy" / "last.safetensors")
    assert sorted(a.weights) == sorted(b.weights)
    assert {s: sorted(v) for s, v in a.optimizer.items()} == \
        {s: sorted(v) for s, v in b.optimizer.items()}
    steps = -(-len(Trainer(net, cfg, tmp_path / "n").data.train) // 64)   # per epoch
    assert a.state["optimizer_steps"] == b.state["optimizer_steps"] == 2 * steps
    assert full.history[-1]["loss"] == pytest.approx(numpy_run.history[-1]["loss"], rel=1e-3)


SEG = """
network seg(classes = 3) {
    input image: [1, 16, 16]
    e = image -> conv(4, 3, pad=same) -> batchnorm -> relu
    d = e -> maxpool(2) -> conv(8, 3, pad=same) -> relu -> conv_transpose(4, 2, stride=2)
    output logits = concat(e, d) -> conv(classes, 1)
}
"""


def _network_case(name):
    """(network, loss, batch of 2) of the whole-step parity cases."""
    rng = np.random.default_rng(0)
    if name == "lenet5":
        net = netlang.load(EXAMPLES / "lenet5.net")
        return net, "cross_entropy(logits, label)", {
            "image": rng.standard_normal((2, 1, 28, 28)).astype(np.float32),
            "label": rng.integers(0, 10, 2)}
    if name == "unet-bce-dice":
        net = netlang.load(EXAMPLES / "unet.net", params={"base": 2, "size": 16})
        return net, "bce(mask, target) + dice(mask, target)", {
            "image": rng.standard_normal((2, 1, 16, 16)).astype(np.float32),
            "target": (rng.uniform(size=(2, 1, 16, 16)) > 0.5).astype(np.float32)}
    if name == "segmentation-ce":   # softmax cross-entropy per pixel
        net = netlang.loads(SEG)
        return net, "cross_entropy(logits, label)", {
            "image": rng.standard_normal((2, 1, 16, 16)).astype(np.float32),
            "label": rng.integers(0, 3, (2, 16, 16))}
    net = netlang.load(EXAMPLES / "resnet18.net", network="resnet18_cifar",
                       params={"base": 4})
    return net, "cross_entropy(logits, label)", {
        "image": rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
        "label": rng.integers(0, 10, 2)}


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("case", ["lenet5", "unet-bce-dice", "segmentation-ce",
                                  "resnet18-cifar"])
def test_whole_training_steps_match_numpy(backend, case):
    """Steps with SGD-momentum through each compiled backend's own step (loss kernels,
    backward, batchnorm in training mode, update), each against NumPy's step from the
    same weights and state. (Compared over several steps instead, float32 rounding can
    move a relu input across 0 and the paths part: ResNet-18 here does at step 2.)"""
    net, loss, batch = _network_case(case)
    call = Call("sgd", (("lr", 0.05), ("momentum", 0.9)))
    opt = Optimizer.from_config(call)
    got = TrainStep(net, loss, net.init(0), opt, backend)
    for i in range(3):
        ref_opt = Optimizer.from_config(call)
        got.sync()
        ref_opt.state = {s: {k: a.copy() for k, a in v.items()} for s, v in opt.state.items()}
        ref_opt.step_count = opt.step_count
        ref = NumpyStep(net, loss, got.weights(), ref_opt)
        assert got.run(batch, opt.lr, i) == pytest.approx(ref.run(batch, ref_opt.lr, i),
                                                          rel=1e-4)
        want, ws = ref.weights(), got.weights()
        for k in want:
            np.testing.assert_allclose(ws[k], want[k], rtol=1e-4, atol=1e-6,
                                       err_msg=f"step {i + 1}: {k}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", [*BACKENDS, CPU])
def test_netlang_train_on_the_device_path_matches_numpy(tmp_path, backend, capsys):
    """`netlang train examples/lenet_digits.net --backend cuda-emu --epochs 1`: the device
    step (the GPU's kernels, update kernels, batchnorm write-back) through the training
    loop, against --backend numpy: the same epoch losses and validation metrics."""
    import json

    from netlang.cli import main

    rows = {}
    for be in (backend, "numpy"):
        out = tmp_path / be
        assert main(["train", str(EXAMPLES / "lenet_digits.net"), "--backend", be,
                     "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
        rows[be] = [json.loads(line) for line in (out / "metrics.jsonl").read_text()
                    .splitlines()]
    assert capsys.readouterr().out.startswith(f"backend: {backend}")
    for a, b in zip(rows[backend], rows["numpy"], strict=True):
        for k in a:
            if k != "seconds":
                assert a[k] == pytest.approx(b[k], rel=1e-4), k


@pytest.mark.parametrize("backend", ["numpy", CPU])
def test_frozen_layers_keep_their_weights(tmp_path, backend):
    """`freeze = ["features.conv0.*"]`: the optimizer leaves those parameters alone (no
    state for them), the others train; a pattern that names nothing is an error."""
    from netlang.diagnostics import NetlangError

    net = netlang.load(EXAMPLES / "lenet_digits.net", params={"width": 4})
    cfg = apply_overrides(net.train, [("epochs", "1"), ("freeze", '["features.conv0.*"]')],
                          list(net.outputs))
    frozen = [k for k in net.trainable if k.startswith("features.conv0.")]
    assert frozen
    logs = []
    res = Trainer(net, cfg, tmp_path / "run", progress=False, log=logs.append,
                  backend=backend).run()
    start = net.init(cfg.seed)
    for k in net.trainable:
        same = np.array_equal(res.weights[k], start[k])
        assert same == (k in frozen), k
    assert any(line.startswith(f"frozen: {len(frozen)} of ") for line in logs)
    ck = checkpoint.load(tmp_path / "run" / "last.safetensors")
    assert not any(k in frozen for slot in ck.optimizer.values() for k in slot)
    bad = apply_overrides(net.train, [("freeze", '["nope.*"]')], list(net.outputs))
    with pytest.raises(NetlangError, match='`freeze` pattern "nope.\\*" matches no'):
        Trainer(net, bad, tmp_path / "b", progress=False, log=logs.append)


@pytest.mark.parametrize("backend", ["numpy", *COMPILED])
def test_learning_rate_groups_scale_their_parameters(backend):
    """Per-parameter learning-rate factors: SGD's first step moves a parameter by
    lr * factor * grad, on every backend, against the NumPy update at that rate."""
    net = netlang.loads(NET)
    w = net.init(0)
    scales = {"c1.conv0.weight": 0.0, "logits.dense0.weight": 3.0}
    call = Call("sgd", (("lr", 0.1),))
    opt = Optimizer.from_config(call)
    step = train_step(net, LOSS, w, opt, backend, scales=scales)
    b = _batch(4)
    step.run(b, opt.lr, 0)
    _, grads = net.value_and_grad(w, b, loss=LOSS)
    got = step.weights()
    for k, g in grads.items():
        want = w[k] - 0.1 * scales.get(k, 1.0) * g
        np.testing.assert_allclose(got[k], want, rtol=1e-4, atol=1e-6, err_msg=k)


def test_lr_groups_in_the_train_section(tmp_path):
    net = netlang.load(EXAMPLES / "lenet_digits.net", params={"width": 4})
    cfg = apply_overrides(net.train, [("epochs", "1"), (
        "lr_groups", '[group("features.*", 0.0), group("logits.*", scale = 2.0)]')],
        list(net.outputs))
    assert cfg.lr_groups == (("features.*", 0.0), ("logits.*", 2.0))
    logs = []
    res = Trainer(net, cfg, tmp_path / "run", progress=False, log=logs.append).run()
    start = net.init(cfg.seed)
    for k in net.trainable:   # a factor of 0: unchanged
        assert np.array_equal(res.weights[k], start[k]) == k.startswith("features."), k
    assert "learning-rate groups: features.* x0 (4 parameters); logits.* x2 (4 parameters)" \
        in logs
    from netlang.diagnostics import NetlangError

    for text, msg in [('[group("x.*", 1.0)]', 'pattern "x.\\*" matches no'),
                      ('[group("logits.*", -1.0)]', "at least 0"),
                      ('[group("logits.*")]', "needs a pattern and a scale")]:
        with pytest.raises(NetlangError, match=msg):
            bad = apply_overrides(net.train, [("lr_groups", text)], list(net.outputs))
            Trainer(net, bad, tmp_path / "b", progress=False, log=logs.append)


DROPNET = """
network dropnet(classes = 4) {
    input x: [3, 12, 12]
    c1 = conv(x, 8, kernel = 3, pad = same, bias = false) -> batchnorm -> relu
    p1 = c1 -> maxpool(2) -> dropout(0.3)
    output logits = p1 -> flatten -> dense(16) -> relu -> dropout(0.5) -> dense(classes)
}
"""


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_a_replayed_step_is_the_step(backend, opt_name):
    """After its first step, a step is replayed as one captured graph (cuda-emu: the same
    recorded call list) whose kernel arguments never change: dropout seeds, the learning
    rate, Adam's bias corrections and SGD's first step reach it through device buffers.
    So replayed steps equal launched ones exactly, across seeds, a learning-rate change and
    a second batch size (a graph each)."""
    net = netlang.loads(DROPNET)
    w = net.init(0)
    args = (("lr", 0.01),) if opt_name == "adam" else (("lr", 0.05), ("momentum", 0.9))
    steps = {}
    for graphs in (True, False):
        opt = Optimizer.from_config(Call(opt_name, args))
        step = TrainStep(net, LOSS, w, opt, backend, capturable=True, graphs=graphs)
        losses = []
        for i, (n, lr) in enumerate([(6, 0.01), (6, 0.01), (6, 0.005), (5, 0.005),
                                     (5, 0.005), (6, 0.002)]):
            losses.append(step.run(_batch(n, i), lr, 100 + i))
        steps[graphs] = (step, losses, opt)
    (g, g_losses, g_opt), (e, e_losses, e_opt) = steps[True], steps[False]
    assert sorted(g.graphs) == [5, 6] and not e.graphs
    assert "replayed" in g.graph_note() and "off" in e.graph_note()
    assert g_losses == e_losses   # the same kernels on the same buffers: bit for bit
    assert len(set(g_losses)) == len(g_losses)
    gw, ew = g.weights(), e.weights()
    for k in ew:
        np.testing.assert_array_equal(gw[k], ew[k], err_msg=k)
    g.sync()
    e.sync()
    assert g_opt.step_count == e_opt.step_count == 6
    for slot in e_opt.state:
        for k in e_opt.state[slot]:
            np.testing.assert_array_equal(g_opt.state[slot][k], e_opt.state[slot][k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_with_cublas_gemms_is_not_captured_and_says_why(backend):
    net = netlang.loads(NET)
    opt = Optimizer.from_config(Call("sgd", (("lr", 0.1),)))
    step = TrainStep(net, LOSS, net.init(0), opt, backend)   # GEMMs to cuBLAS
    for i in range(3):
        step.run(_batch(4, i), opt.lr, i)
    assert not step.graphs
    assert "GEMM(s) go to cuBLAS through CuPy, which refuses stream capture" in \
        step.graph_note()
    # chosen for the training loop: this step's GEMMs are small, so they become kernels
    auto = TrainStep(net, LOSS, net.init(0), opt, backend, capturable=None)
    auto.run(_batch(4), opt.lr, 0)
    auto.run(_batch(4, 1), opt.lr, 1)
    assert sorted(auto.graphs) == [4]
