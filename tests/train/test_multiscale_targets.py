"""Deep supervision with heads at several resolutions: one target, read by every head at
its own size. The loss equals PyTorch's with the target shrunk by F.interpolate (`area`
for masks, `nearest` for class indices), on NumPy in float64 and on the compiled
backends in float32; the data need only the full-size target; training reports each
head's metrics against its own shrunk target; sizes that are not whole factors are E031."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.config import TrainConfig, apply_overrides
from netlang.diagnostics import NetlangError
from netlang.train.loop import Trainer
from tests.backends.test_cuda import HAVE_CXX

NET = """
block head(k, prob) {
  if prob { conv(k, 1) -> sigmoid } else { conv(k, 1) }
}

network heads(k = 2, prob = false) {
  input x: [2, 8, 12]
  f = x -> conv(4, 3, pad=same) -> relu
  output full = f -> head(k, prob)
  output half = f -> maxpool(2) -> head(k, prob)
  output quarter = f -> avgpool(4) -> head(k, prob)
}
"""
MASKS = "bce(full, t) + 0.5 * dice(half, t) + 0.25 * mse(quarter, t)"
CLASSES = "cross_entropy(full, t) + 0.5 * cross_entropy(half, t, ignore_index=1)"


def _torch_loss(torch, outs, t, kind):
    F = torch.nn.functional
    if kind == "masks":
        half = F.interpolate(t, scale_factor=0.5, mode="area")
        quarter = F.interpolate(t, scale_factor=0.25, mode="area")
        p = torch.sigmoid(outs["half"])
        dims = (0, 2, 3)   # netlang's dice: per channel, over the batch and the pixels
        inter = (p * half).sum(dims)
        dice = 1 - (2 * inter + 1) / (p.sum(dims) + half.sum(dims) + 1)
        return (F.binary_cross_entropy_with_logits(outs["full"], t) + 0.5 * dice.mean()
                + 0.25 * F.mse_loss(torch.sigmoid(outs["quarter"]), quarter))
    half = F.interpolate(t[:, None].double(), scale_factor=0.5, mode="nearest")[:, 0].long()
    return (F.cross_entropy(outs["full"], t)
            + 0.5 * F.cross_entropy(outs["half"], half, ignore_index=1))


def _case(kind, seed=0):
    k = 1 if kind == "masks" else 3
    net = netlang.loads(NET, params={"k": k, "prob": kind == "masks"})
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 2, 8, 12))
    t = (rng.uniform(size=(3, 1, 8, 12)) < 0.4).astype(np.float64) if kind == "masks" \
        else rng.integers(0, k, (3, 8, 12))
    return net, net.init(seed), x, t


def _torch_side(torch, net, weights, x, t, kind):
    F = torch.nn.functional
    w = {k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()}
    xt = torch.tensor(x, requires_grad=True)

    def conv(name, v, pad=0):
        return F.conv2d(v, w[f"{name}.weight"], w[f"{name}.bias"], padding=pad)

    f_ = F.relu(conv("f.conv0", xt, 1))
    outs = {"full": conv("full.head.conv0", f_),
            "half": conv("half.head.conv0", F.max_pool2d(f_, 2)),
            "quarter": conv("quarter.head.conv0", F.avg_pool2d(f_, 4))}
    tt = torch.tensor(t) if kind == "masks" else torch.tensor(t, dtype=torch.long)
    loss = _torch_loss(torch, outs, tt, kind)
    loss.backward()
    return loss.item(), xt.grad.numpy()


@pytest.mark.torch
@pytest.mark.parametrize("kind,loss", [("masks", MASKS), ("classes", CLASSES)])
def test_the_loss_matches_pytorch_with_shrunk_targets(kind, loss, torch_mod):
    net, weights, x, t = _case(kind)
    want, want_dx = _torch_side(torch_mod, net, weights, x, t, kind)
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    value, grads = net.value_and_grad(w64, {"x": x, "t": t}, loss=loss, wrt_inputs=True,
                                      dtype=np.float64)
    assert abs(value - want) <= 1e-10 * max(1.0, abs(want)), (value, want)
    np.testing.assert_allclose(grads["x"], want_dx, rtol=1e-8, atol=1e-12)
    prog = net.program_for(True, loss, True)
    assert set(prog.graph.targets) >= {"t", "t@4x6"}
    assert prog.graph.targets["t@4x6"].attrs["resized_from"] == "t"


@pytest.mark.emu
@pytest.mark.skipif(not HAVE_CXX, reason="the compiled backends need a C++ compiler")
@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_the_compiled_backends_shrink_the_same_way(backend):
    for kind, loss in (("masks", MASKS), ("classes", CLASSES)):
        net, weights, x, t = _case(kind)
        batch = {"x": x.astype(np.float32), "t": t.astype(np.float32) if kind == "masks" else t}
        v0, g0 = net.value_and_grad(weights, batch, loss=loss)
        v1, g1 = net.value_and_grad(weights, batch, loss=loss, backend=backend)
        assert abs(v0 - v1) <= 2e-5 * max(1.0, abs(v0)), (kind, v0, v1)
        for k in g0:
            np.testing.assert_allclose(g1[k], g0[k], rtol=2e-3, atol=2e-5, err_msg=k)


@pytest.mark.parametrize("text,message", [
    ("output a = x -> conv(1, 1)\n output b = x -> conv(1, 3)",
     "E031: target `t` is read at [1, 8, 12] and at [1, 6, 10]: a target is shrunk for a "
     "smaller head only by a whole factor per axis"),
    ("output a = x -> conv(1, 1)\n output b = x -> conv(2, 1)",
     "E031: target `t` is used as [1, 8, 12] float32 and as [2, 8, 12] float32"),
])
def test_targets_that_cannot_be_shrunk_are_refused(text, message):
    net = netlang.loads("network n {\n input x: [2, 8, 12]\n " + text + "\n}")
    with pytest.raises(NetlangError) as err:
        net.compile(True, "mse(a, t) + mse(b, t)")
    assert message in str(err.value)


def test_training_reports_every_head_against_its_own_target(tmp_path):
    net = netlang.loads(NET.replace("[2, 8, 12]", "[1, 16, 16]"),
                        params={"k": 1, "prob": True})
    cfg = apply_overrides(TrainConfig(), [("loss", "bce(full, target) + bce(half, target) + "
                                                   "dice(quarter, target)"),
                                          ("data", "shapes(size = 16, count = 32)"),
                                          ("epochs", "1"), ("batch", "8")], list(net.outputs))
    lines = []
    result = Trainer(net, cfg, tmp_path, progress=False,
                     log=lambda *a, **k: lines.append(" ".join(map(str, a)))).run()
    log = "\n".join(lines)
    assert "targets `target` shrunk to [1, 8, 8] for a smaller head (block means)" in log
    assert "targets `target` shrunk to [1, 4, 4] for a smaller head (block means)" in log
    for head in ("full", "half", "quarter"):
        assert 0.0 <= result.test[f"{head}_dice"] <= 1.0
