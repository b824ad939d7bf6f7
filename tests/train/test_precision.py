"""Reduced precision (`precision = tf32 | bf16 | fp16`, passes/precision.py): the rounding
is the hardware's (bf16 and fp16 bit for bit as PyTorch's conversions, in NumPy and in the
kernels; tf32 against an independent mantissa reference), bf16 and fp16 networks follow
`torch.autocast("cpu")` forward and backward on every backend, tf32 rounds what the GEMMs
read, a bf16 run tracks the fp32 loss curve, fp16 loss scaling follows GradScaler (skip
and halve on overflow, double after 2000 finite steps, kept in checkpoints), and the
setting travels through the train section, the command line and the run's record."""

from __future__ import annotations

import json

import numpy as np
import pytest

import netlang
from netlang.cli import main
from netlang.config import Call
from netlang.diagnostics import NetlangError
from netlang.ops.elementwise import round_mantissa
from netlang.train import data as data_mod
from netlang.train.optim import Optimizer
from tests.backends.test_cuda import HAVE_CXX
from tests.conftest import EXAMPLES, render_error
from tests.ops import reference as ref

BACKENDS = ["numpy"] + (["cpu", "cuda-emu"] if HAVE_CXX else [])
CONV = """
network n {
  input x: [3, 8, 8]
  output y = x -> conv(8, 3, pad=same) -> relu -> conv(4, 3) -> flatten -> dense(5)
}
"""
TOKENS = """
network n {
  input x: [6, 8]
  q = x -> dense(8)
  output y = matmul(q, x, trans_b = true) -> flatten -> dense(3)
}
"""


def _special_values():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(2000) * 10.0 ** rng.integers(-30, 30, 2000),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-40, 1e-45,
                         1.00390625, 1.005859375, 1.0 + 2 ** -9]])
    return x.astype(np.float32)


def test_bf16_rounding_is_pytorchs_bit_for_bit(torch_mod):
    x = _special_values()
    want = torch_mod.tensor(x).bfloat16().float().numpy()
    got = round_mantissa(x, "bf16")
    nan = np.isnan(x)   # a NaN stays a NaN (PyTorch writes its own payload)
    assert np.isnan(got[nan]).all() and np.isnan(want[nan]).all()
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


def test_fp16_rounding_is_pytorchs_bit_for_bit(torch_mod):
    x = _special_values()
    want = torch_mod.tensor(x).half().float().numpy()
    got = round_mantissa(x, "fp16")
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.emu
@pytest.mark.skipif(not HAVE_CXX, reason="the compiled backends need a C++ compiler")
@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_the_kernels_round_as_numpy_does(backend):
    """nl_round_bits and nl_round_half on every special value, bit for bit."""
    from netlang.backends.cuda.runtime import Runner
    from netlang.passes import fusion
    from netlang.passes.memplan import plan_memory
    from netlang.program import Program
    from tests.ops.test_ops import build

    x = _special_values()[None]
    for precision in ("tf32", "bf16", "fp16"):
        g, y, feeds = build("round_to", [x.shape[1:]], dict(precision=precision, forward=True,
                                                             backward=True),
                            np.random.default_rng(0))
        g.outputs["y"] = y
        g.fusion = fusion.fuse(g, True)
        prog = Program(g, training=False, dumps={}, plan_fn=plan_memory)
        inp = next(iter(g.inputs.values()))
        got, _ = Runner(prog, backend).execute({inp.id: x}, 1)
        got = np.asarray(got[y.id], np.float32).reshape(x.shape)
        want = round_mantissa(x, precision)
        nan = np.isnan(x)
        assert np.isnan(got[nan]).all(), precision
        assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32)), precision


def test_tf32_rounding_keeps_eleven_significant_bits():
    x = _special_values()
    got = round_mantissa(x, "tf32")
    normal = np.isfinite(x) & (np.abs(x) >= np.finfo(np.float32).tiny)
    np.testing.assert_array_equal(got[normal], ref.round_precision(x[normal], "tf32"))
    assert (got.view(np.uint32)[np.isfinite(got)] & 0x1FFF == 0).all()
    assert np.isnan(got[np.isnan(x)]).all() and (got[np.isinf(x)] == x[np.isinf(x)]).all()


def _torch_autocast(torch, text, w, x, t, dtype):
    """Loss, output and gradients of the network in PyTorch under CPU autocast(dtype)."""
    F = torch.nn.functional
    tw = {k: torch.tensor(v, requires_grad=True) for k, v in w.items()}
    xt = torch.tensor(x, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        if text is CONV:
            h = F.relu(F.conv2d(xt, tw["y.conv0.weight"], tw["y.conv0.bias"], padding=1))
            h = F.conv2d(h, tw["y.conv1.weight"], tw["y.conv1.bias"])
            y = F.linear(h.flatten(1), tw["y.dense0.weight"], tw["y.dense0.bias"])
        else:
            q = F.linear(xt, tw["q.dense0.weight"], tw["q.dense0.bias"])
            y = F.linear((q @ xt.transpose(1, 2)).flatten(1), tw["y.dense0.weight"],
                         tw["y.dense0.bias"])
    loss = ((y.float() - torch.tensor(t)) ** 2).mean()
    loss.backward()
    return loss.item(), y.float().detach().numpy(), \
        {k: v.grad.numpy() for k, v in tw.items()} | {"x": xt.grad.numpy()}


# How close to torch.autocast each precision must be, relative to each tensor's largest
# value: a tenth of a bf16 step (2^-8; measured: equal bit for bit), and six fp16 steps
# (2^-11; measured: up to 2.3 steps, PyTorch's CPU fp16 kernels round their own way).
AUTOCAST_TOL = {"bf16": 4e-4, "fp16": 3e-3}


@pytest.mark.torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text", [CONV, TOKENS], ids=["conv", "tokens"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_is_torch_autocast(precision, text, backend, torch_mod):
    """Forward, loss and every gradient within AUTOCAST_TOL of autocast's, while fp32
    differs from autocast's output by more (the rounding is really there)."""
    net = netlang.loads(text)
    w = net.init(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(net.inputs["x"].full_shape(4)).astype(np.float32)
    t = rng.standard_normal(net.outputs["y"].full_shape(4)).astype(np.float32)
    dtype = torch_mod.bfloat16 if precision == "bf16" else torch_mod.float16
    want_loss, want_y, want = _torch_autocast(torch_mod, text, w, x, t, dtype)
    low = net.with_precision(precision)
    y = low.forward(w, {"x": x}, backend=backend)["y"]
    loss, grads = low.value_and_grad(w, {"x": x, "t": t}, loss="mse(y, t)", wrt_inputs=True,
                                     backend=backend)

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    tol = AUTOCAST_TOL[precision]
    assert rel(y, want_y) <= tol and abs(loss - want_loss) <= tol * want_loss
    for k in want:
        assert rel(grads[k], want[k]) <= tol, k
    y32 = net.forward(w, {"x": x}, backend=backend)["y"]
    assert rel(y32, want_y) > rel(y, want_y)


@pytest.mark.torch
def test_tf32_rounds_what_the_products_read(torch_mod):
    """One conv at tf32: the output is the float64 convolution of the rounded input and
    weight plus the unrounded bias; the weight gradient reads the rounded incoming
    gradient and the rounded input."""
    torch = torch_mod
    F = torch.nn.functional
    net = netlang.loads("network n {\n input x: [3, 6, 6]\n output y = x -> conv(4, 3)\n}")
    w = net.init(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    t = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    tf = net.with_precision("tf32")
    xr, wr = (torch.tensor(round_mantissa(a, "tf32"), dtype=torch.float64)
              for a in (x, w["y.conv0.weight"]))
    b = torch.tensor(w["y.conv0.bias"], dtype=torch.float64)
    y64 = F.conv2d(xr, wr, b)
    y = tf.forward(w, {"x": x})["y"]
    np.testing.assert_allclose(y, y64.numpy(), rtol=1e-5, atol=1e-6)
    dy = 2 * (y - t) / y.size   # mse's gradient, rounded where the GEMMs read it
    dyr = torch.tensor(round_mantissa(dy.astype(np.float32), "tf32"), dtype=torch.float64)
    dw = torch.nn.grad.conv2d_weight(xr, wr.shape, dyr)
    _, grads = tf.value_and_grad(w, {"x": x, "t": t}, loss="mse(y, t)")
    np.testing.assert_allclose(grads["y.conv0.weight"], dw.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.emu
@pytest.mark.skipif(not HAVE_CXX, reason="cuda-emu needs a C++ compiler")
def test_a_bf16_run_on_cuda_emu_tracks_the_fp32_loss_curve():
    """LeNet on the digits, 10 Adam steps: each step's loss within 2% of fp32's (0.7% was
    the largest gap over 30 steps when measured)."""
    from netlang.backends.step import train_step

    net = netlang.load(EXAMPLES / "lenet_digits.net")
    arrays = data_mod.digits().train.arrays
    curves = {}
    for p in ("fp32", "bf16"):
        n = net.with_precision(p)
        opt = Optimizer.from_config(Call("adam", (("lr", 3e-3),)))
        step = train_step(n, "cross_entropy(logits, label)", n.init(0), opt, "cuda-emu")
        curves[p] = np.array([step.run({"image": arrays["input"][i * 32:(i + 1) * 32],
                                        "label": arrays["target"][i * 32:(i + 1) * 32]},
                                       opt.lr, i) for i in range(10)])
    gap = np.abs(curves["bf16"] - curves["fp32"]) / curves["fp32"]
    assert gap.max() <= 0.02 and gap.max() > 0, gap


def _fp16_step(backend, scale):
    from netlang.backends.step import train_step

    net = netlang.loads(CONV).with_precision("fp16")
    opt = Optimizer.from_config(Call("adam", (("lr", 1e-2),)))
    opt.loss_scale = scale
    return net, opt, train_step(net, "mse(y, t)", net.init(0), opt, backend)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32),
            "t": rng.standard_normal((4, 5)).astype(np.float32)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_loss_scaling_skips_an_overflow_and_recovers(backend):
    """torch.amp.GradScaler's schedule: a scale that overflows the gradients skips the
    step (weights, optimizer state and step count unchanged) and halves; the next steps
    train; GROWTH_INTERVAL finite steps double it; and it is not a non-finite loss."""
    from netlang.backends.step import GROWTH_INTERVAL, INITIAL_SCALE

    net, opt, step = _fp16_step(backend, None)
    assert opt.loss_scale == INITIAL_SCALE   # the step starts the schedule
    opt.loss_scale = 1e30                    # an injected overflow: S * gradient = inf
    before = step.weights()
    loss = step.run(_batch(), opt.lr, 0)
    assert np.isnan(loss) and opt.loss_scale == 5e29 and opt.step_count == 0
    assert opt.skipped_steps == 1
    after = step.weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert "loss_scale" not in after      # the scale is no weight of the network
    opt.loss_scale, opt.scale_good = 1024.0, GROWTH_INTERVAL - 1
    loss = step.run(_batch(1), opt.lr, 1)
    assert np.isfinite(loss) and opt.step_count == 1 and opt.loss_scale == 2048.0
    assert not all(np.array_equal(before[k], v) for k, v in step.weights().items())
    total, count, bad, _ = step.take_losses()
    assert bad == 0 and count == 4 and total == pytest.approx(4 * loss)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp16_scaled_gradients_are_the_unscaled_ones(backend):
    """The gradients a step applies do not depend on the scale, while it neither
    overflows nor lets them underflow: powers of two scale exactly."""
    net = netlang.loads(CONV).with_precision("fp16")
    w, batch = net.init(0), _batch()
    _, g1 = net.value_and_grad(w, batch, loss="mse(y, t)", backend=backend)   # scale 1
    _, g2 = net.value_and_grad({**w, "loss_scale": np.float32(256.0),
                                "loss_scale.inverse": np.float32(1 / 256)}, batch,
                               loss="mse(y, t)", backend=backend)
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


def test_a_non_finite_loss_at_scale_one_is_the_losss_own():
    net, opt, step = _fp16_step("numpy", 1.0)
    bad = _batch()
    bad["x"][0, 0, 0, 0] = np.nan
    assert np.isnan(step.run(bad, opt.lr, 0))
    assert opt.loss_scale == 1.0 and step.take_losses()[2] == 1   # reported: E053 follows


def test_fp16_runs_keep_the_scale_in_their_checkpoints(tmp_path, capsys):
    from netlang.train import checkpoint

    run = tmp_path / "run"
    assert main(["train", str(EXAMPLES / "lenet_digits.net"), "--epochs", "1", "--out",
                 str(run), "--precision", "fp16", "--backend", "numpy", "--no-progress"]) == 0
    assert "fp16 products" in capsys.readouterr().out
    state = checkpoint.load(run / "last.safetensors").state
    assert state["loss_scale"][0] == 2.0 ** 16 and state["loss_scale"][1] > 0
    assert "loss_scale" not in checkpoint.load(run / "last.safetensors").weights


def test_the_setting_is_checked_where_it_is_written():
    net = netlang.loads(CONV)
    with pytest.raises(NetlangError) as err:
        net.with_precision("fp8")
    text = render_error(err.value)
    assert "error[E030]: unknown precision `fp8`" in text and "fp16" in text
    with pytest.raises(NetlangError) as err:
        netlang.loads(CONV + "train { precision = bf61 }")
    text = render_error(err.value)
    assert "unknown precision `bf61`" in text and "bf16" in text
    assert netlang.loads(CONV + "train { precision = tf32 }").train.precision == "tf32"


def test_train_records_the_precision_and_eval_uses_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(EXAMPLES / "lenet_digits.net"), "--epochs", "1", "--out",
                 str(run), "--precision", "bf16", "--backend", "numpy", "--no-progress"]) == 0
    assert "bf16 products" in capsys.readouterr().out
    rec = json.loads((run / "config.json").read_text())
    assert rec["precision"] == "bf16"
    assert main(["eval", str(EXAMPLES / "lenet_digits.net"), "--weights", str(run),
                 "--backend", "numpy"]) == 0
    bf16 = capsys.readouterr().out
    assert main(["eval", str(EXAMPLES / "lenet_digits.net"), "--weights", str(run),
                 "--backend", "numpy", "--precision", "fp32"]) == 0
    fp32 = capsys.readouterr().out
    loss = [float(line.split()[1]) for out in (bf16, fp32) for line in out.splitlines()
            if line.startswith("loss ")]
    assert len(loss) == 2 and loss[0] != loss[1]
