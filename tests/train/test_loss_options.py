"""Loss options against PyTorch: class weights, `ignore_index` and label smoothing of
cross_entropy / nll, `reduction = sum`, smooth_l1's `beta`, `huber(delta)` and the focal
loss (torchvision's sigmoid_focal_loss, written out in torch). The loss and the gradient
with respect to the network's input agree in float64 on the NumPy backend, and in float32
on the compiled backends (cpu, cuda-emu). Then the options as a user meets them: their
errors, and training with a weighted, partly ignored cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.diagnostics import NetlangError
from tests.backends.test_cuda import HAVE_CXX
from tests.conftest import render_error

C = 4
SEG = f"""
network seg {{
  input x: [3, 5, 5]
  output y = x -> conv({C}, 1)
}}
"""
PROB = """
network prob {
  input x: [2, 5, 5]
  output y = x -> conv(2, 1) -> sigmoid
}
"""
ROWS = """
network rows {
  input x: [6]
  output y = x -> dense(3)
}
"""


def _torch_loss(torch, F, text: str, y, t):
    """PyTorch's value of one loss of the table below."""
    w = torch.tensor([0.5, 2.0, 1.0, 0.25], dtype=y.dtype)
    if text == "ce_weight_ignore":
        return F.cross_entropy(y, t, weight=w, ignore_index=2)
    if text == "ce_smoothing":
        return F.cross_entropy(y, t, label_smoothing=0.1)
    if text == "ce_weight_smoothing_sum":
        return F.cross_entropy(y, t, weight=w, label_smoothing=0.2, reduction="sum")
    if text == "nll_weight_ignore":
        return F.nll_loss(F.log_softmax(y, 1), t, weight=w, ignore_index=1)
    if text == "mse_sum":
        return F.mse_loss(y, t, reduction="sum")
    if text == "smooth_l1_beta":
        return F.smooth_l1_loss(y, t, beta=0.3)
    if text == "huber":
        return 0.5 * F.huber_loss(y, t, delta=2.0)
    if text == "bce_sum":
        return F.binary_cross_entropy(y, t, reduction="sum")
    if text in ("focal", "focal_sum"):   # torchvision.ops.sigmoid_focal_loss on probabilities
        gamma, alpha = (2.0, 0.25) if text == "focal" else (1.5, -1)
        ce = F.binary_cross_entropy(y, t, reduction="none")
        p_t = y * t + (1 - y) * (1 - t)
        loss = ce * (1 - p_t) ** gamma
        if alpha >= 0:
            loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
        return loss.mean() if text == "focal" else loss.sum()
    raise AssertionError(text)


# name, network, netlang loss, target kind
CASES = [
    ("ce_weight_ignore", SEG, "cross_entropy(y, t, weight=[0.5, 2, 1, 0.25], ignore_index=2)",
     "classes"),
    ("ce_smoothing", SEG, "cross_entropy(y, t, label_smoothing=0.1)", "classes"),
    ("ce_weight_smoothing_sum", SEG,
     "cross_entropy(y, t, weight=[0.5, 2, 1, 0.25], label_smoothing=0.2, reduction=sum)",
     "classes"),
    ("nll_weight_ignore", SEG.replace(f"conv({C}, 1)", f"conv({C}, 1) -> log_softmax"),
     "nll(y, t, weight=[0.5, 2, 1, 0.25], ignore_index=1)", "classes"),
    ("mse_sum", ROWS, "mse(y, t, reduction=sum)", "values"),
    ("smooth_l1_beta", ROWS, "smooth_l1(y, t, beta=0.3)", "values"),
    ("huber", ROWS, "0.5 * huber(y, t, delta=2)", "values"),
    ("bce_sum", PROB, "bce(y, t, reduction=sum)", "probabilities"),
    ("focal", PROB, "focal(y, t)", "probabilities"),
    ("focal_sum", PROB, "focal(y, t, gamma=1.5, alpha=-1, reduction=sum)", "probabilities"),
]


COMPILED = ("ce_weight_ignore", "ce_weight_smoothing_sum", "focal")


def _case(name, text, kind, seed=0):
    net = netlang.loads(text)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(net.inputs["x"].full_shape(3)) * 2
    out = net.outputs["y"]
    if kind == "classes":
        t = rng.integers(0, C, (3,) + out.shape[1:])
    elif kind == "probabilities":
        t = rng.uniform(0, 1, out.full_shape(3))
    else:
        t = rng.standard_normal(out.full_shape(3)) * 2
    return net, net.init(seed), x, t


def _torch_side(torch, net, weights, x, t, name, dtype):
    F = torch.nn.functional
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    w = {k: torch.tensor(v, dtype=dtype) for k, v in weights.items()}
    conv = [k for k in w if k.endswith(".weight")][0]
    bias = conv[:-len("weight")] + "bias"
    if xt.ndim == 2:
        y = xt @ w[conv].T + w[bias]
    else:
        y = F.conv2d(xt, w[conv], w[bias])
    if "log_softmax" in str(net.graph.nodes):
        y = F.log_softmax(y, 1)
    if any(n.op == "sigmoid" for n in net.graph.nodes):
        y = torch.sigmoid(y)
    tt = torch.tensor(t) if t.dtype.kind == "i" else torch.tensor(t, dtype=dtype)
    loss = _torch_loss(torch, F, name, y, tt)
    loss.backward()
    return loss.item(), xt.grad.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("name,text,loss,kind", CASES, ids=[c[0] for c in CASES])
def test_loss_options_match_pytorch_in_float64(name, text, loss, kind, torch_mod):
    net, weights, x, t = _case(name, text, kind)
    want, want_dx = _torch_side(torch_mod, net, weights, x, t, name, torch_mod.float64)
    value, grads = net.value_and_grad({k: v.astype(np.float64) for k, v in weights.items()},
                                      {"x": x, "t": t}, loss=loss, wrt_inputs=True,
                                      dtype=np.float64)
    assert abs(value - want) <= 1e-10 * max(1.0, abs(want)), (value, want)
    np.testing.assert_allclose(grads["x"], want_dx, rtol=1e-8, atol=1e-12)


@pytest.mark.emu
@pytest.mark.torch
@pytest.mark.skipif(not HAVE_CXX, reason="the compiled backends need a C++ compiler")
@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_loss_options_on_the_compiled_backends(backend, torch_mod):
    """The general class-loss form and the focal fold on one backend, in float32, against
    PyTorch in float64. (Every option's kernels, forward and backward, are also in the op
    table that tests/kernels/test_lowerings.py runs on both backends in one program.)"""
    bad = []
    for name, text, loss, kind in [c for c in CASES if c[0] in COMPILED]:
        net, weights, x, t = _case(name, text, kind)
        want, want_dx = _torch_side(torch_mod, net, weights, x, t, name, torch_mod.float64)
        value, grads = net.value_and_grad(weights, {"x": x.astype(np.float32), "t": t if
                                                    t.dtype.kind == "i" else
                                                    t.astype(np.float32)},
                                          loss=loss, wrt_inputs=True, backend=backend)
        err = np.abs(grads["x"] - want_dx).max() / max(np.abs(want_dx).max(), 1e-6)
        if abs(value - want) > 2e-5 * max(1.0, abs(want)) or err > 2e-4:
            bad.append(f"{name}: loss {value} vs {want}, gradient error {err:.2g}")
    assert bad == []


def test_a_sigmoid_output_trains_focal_on_its_logits():
    net = netlang.loads(PROB)
    prog = net.program_for(True, "focal(y, t)")
    ops = {n.op for n in prog.graph.nodes}
    assert "focal_logits" in ops and "focal" not in ops


def test_all_ignored_positions_give_a_zero_loss():
    net, weights, x, t = _case("ce", SEG, "classes")
    t[:] = 3
    value, grads = net.value_and_grad(weights, {"x": x, "t": t},
                                      loss="cross_entropy(y, t, ignore_index=3)",
                                      wrt_inputs=True)
    assert value == 0.0 and not grads["x"].any()


@pytest.mark.parametrize("loss,message", [
    ("cross_entropy(y, t, wieght=[1, 2, 3, 4])",
     "E030: `cross_entropy` has no option `wieght`"),
    ("cross_entropy(y, t, weight=[1, 2])", "E012: cross_entropy: `weight` has 2 values for "
                                           "4 classes"),
    ("cross_entropy(y, t, weight=[1, -2, 1, 1])", "class weights must not be negative"),
    ("cross_entropy(y, t, label_smoothing=1)", "`label_smoothing` must be below 1, got 1"),
    ("cross_entropy(y, t, ignore_index=0.5)", "`ignore_index` must be an integer, got `0.5`"),
    ("mse(y, t, reduction=max)", "`reduction` must be one of `mean`, `sum`, got `max`"),
    ("dice(y, t, reduction=sum)", "`dice` has no option `reduction`"),
    ("huber(y, t, delta=0)", "`delta` must be positive, got 0"),
    ("focal(y, t, gamma=-1)", "`gamma` must be at least 0, got `-1`"),
    ("smooth_l1(y, t, beta=0)", "`beta` must be positive, got 0"),
])
def test_bad_loss_options_are_reported(loss, message):
    net = netlang.loads(SEG)
    kind = "classes" if "cross_entropy" in loss else "values"
    _, weights, x, t = _case("x", SEG, kind)
    with pytest.raises(NetlangError) as err:
        net.value_and_grad(weights, {"x": x, "t": t}, loss=loss)
    assert message in str(err.value)


def test_training_with_class_weights_and_an_ignored_label(tmp_path):
    """A label map with 255 on the border: refused without `ignore_index`, trained with
    it; the weighted loss goes down."""
    from netlang.config import apply_overrides
    from netlang.train.loop import Trainer

    net = netlang.loads(SEG + """
train {
  data = npz("DATA")
  epochs = 8
  batch = 16
  optimizer = adam(lr = 0.05)
  val_split = 0.2
}
""".replace("DATA", str(tmp_path / "seg.npz")))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 5, 5)).astype(np.float32)
    t = np.argmax(x[:, :3], axis=1) + (x[:, 0] > 1.5)          # classes 0..3
    t[:, 0, :] = 255
    np.savez(tmp_path / "seg.npz", x=x, t=t)

    def train(loss, out):
        cfg = apply_overrides(net.train, [("loss", loss)], list(net.outputs))
        return Trainer(net, cfg, tmp_path / out, progress=False, log=lambda *a: None).run()

    with pytest.raises(NetlangError) as err:
        train("cross_entropy(y, t)", "refused")
    text = render_error(err.value)
    assert "E032" in text and "target `t` holds class 255" in text
    assert "ignore_index=255" in text
    result = train("cross_entropy(y, t, weight=[1, 1, 1, 4], ignore_index=255)", "ok")
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0], losses
    # the metrics skip the ignored border too: a perfect labelling of the rest scores 1
    from netlang.train.metrics import Metrics

    m = Metrics("segmentation", C, ignore=255)
    onehot = (np.arange(C)[None, :, None, None] == np.where(t == 255, 0, t)[:, None])
    m.add(0.0, onehot.astype(np.float32), t, len(t))
    assert m.result()["dice"] == 1.0
