"""The compiled cpu backend: a step is one native call on buffers allocated once, the
convolutions are host routines (im2col + BLAS) that equal NumPy on every window shape,
libraries are cached, `--backend auto` picks it (or says why not), `--threads` is obeyed,
and a resumed run on cpu continues exactly."""

from __future__ import annotations

import re

import numpy as np
import pytest

import netlang
from netlang.backends.cpu import runtime as cpu_runtime
from netlang.backends.cpu.render import render
from netlang.backends.select import choose
from netlang.cli import main
from netlang.kernels.builder import Call, Gemm, Launch
from tests.backends.test_cuda import HAVE_CXX, _close
from tests.conftest import EXAMPLES

pytestmark = [pytest.mark.emu,
              pytest.mark.skipif(not HAVE_CXX, reason="the cpu backend needs a C++ compiler")]


def _unet():
    return netlang.load(EXAMPLES / "unet.net", params={"base": 2, "size": 16})


def test_a_step_is_one_native_call(monkeypatch):
    from netlang.backends.cuda.runtime import Runner

    net = _unet()
    prog = net.program_for(True, "bce(mask, t)")
    runner = Runner(prog, "cpu")
    steps = runner.cprog.steps
    body = runner.cprog.source.split('extern "C" void nl_step', 1)[1]
    for st in steps:   # every kernel and routine is called from nl_step, in order
        if isinstance(st, Launch):
            assert f"{st.kernel}(" in body
    assert body.count("NL_TIC") == len(steps)
    assert body.count("(implements unet.net:") >= len(steps) // 2   # comments name the lines
    # Convolutions and their gradients are routine calls; no im2col kernel is generated.
    calls = [s.code for s in steps if isinstance(s, Call)]
    for fn in ("nl_conv_forward", "nl_conv_transposed", "nl_conv_weight_grad",
               "nl_maxpool_grad"):
        assert any(c.startswith(fn) for c in calls), fn
    assert "im2col" not in " ".join(s.kernel for s in steps if isinstance(s, Launch))

    def no_launch(*a, **k):
        raise AssertionError("a per-kernel launch from Python")

    monkeypatch.setattr(runner.device.module, "launch", no_launch)
    rng = np.random.default_rng(0)
    batch = {"image": rng.standard_normal((2, 1, 16, 16)).astype(np.float32),
             "t": rng.uniform(0, 1, (2, 1, 16, 16)).astype(np.float32)}
    feeds, n = prog.feeds(net.init(0), batch)
    bufs = runner.buffers(feeds, n)
    again = runner.buffers(feeds, n)
    for key in runner.cprog.scratch:   # arena slices and scratch: allocated once per batch
        assert again[key] is bufs[key]
    runner.run_steps(bufs, n, 0)
    assert np.isfinite(bufs[f"v{prog.graph.loss.id}"]).all()


WINDOWS = [
    "conv(3, 3)", "conv(3, 3, stride=2, pad=1)", "conv(2, [3, 2], dilation=[2, 1], pad=[2, 0])",
    "conv(4, 1)", "conv(3, 1, stride=2)", "conv(2, 3, pad=[0, 2, 1, 0])",
    "conv(2, 5, stride=3, pad=same)", "conv(3, 3, bias=false) -> relu",
    "conv_transpose(3, 2, stride=2)", "conv_transpose(2, 3, stride=2, pad=1, output_padding=1)",
    "conv_transpose(2, 3, dilation=2) -> sigmoid",
    "maxpool(2)", "maxpool(3, stride=2, pad=1)", "maxpool(2, ceil=true)",
    "maxpool(3, stride=1, dilation=2) -> relu",
]


@pytest.mark.parametrize("shape", ["[2, 9, 7]", "[2, 11]"], ids=["2d", "1d"])
def test_routines_equal_numpy_on_every_window(shape):
    """Forward and training step of conv -> layer on an odd-sized input, for every layer
    of WINDOWS at once (one output each, so a failure names its layer), 2-D and 1-D."""
    is_1d = shape.count(",") == 1
    lines, loss = [], []
    for i, layer in enumerate(WINDOWS):
        text = layer
        if is_1d:   # one value per spatial dim: keep the first of each list
            text = re.sub(r"\[(\d+), \d+\]", r"\1", text).replace("pad=[0, 2, 1, 0]",
                                                                   "pad=[0, 2]")
        lines.append(f" output y{i} = x -> conv(3, 3, pad=same) -> {text}")
        loss.append(f"mse(y{i}, t{i})")
    net = netlang.loads(f"network t {{ input x: {shape}\n" + "\n".join(lines) + " }")
    rng = np.random.default_rng(1)
    w = net.init(0)
    x = rng.standard_normal((3,) + net.inputs["x"].shape).astype(np.float32)
    batch = {"x": x} | {f"t{i}": rng.standard_normal((3,) + net.outputs[f"y{i}"].shape)
                        .astype(np.float32) for i in range(len(WINDOWS))}
    got, want = net.forward(w, {"x": x}, backend="cpu"), net.forward(w, {"x": x})
    bad = []

    def close(a, b, what):
        try:
            _close(a, b, 1e-5)
        except AssertionError as exc:
            bad.append(f"{what}: {exc}")

    for i, layer in enumerate(WINDOWS):
        close(got[f"y{i}"], want[f"y{i}"], f"forward of {layer}")
    v1, g1 = net.value_and_grad(w, batch, loss=" + ".join(loss), backend="cpu")
    v0, g0 = net.value_and_grad(w, batch, loss=" + ".join(loss))
    assert float(v1) == pytest.approx(float(v0), rel=1e-5)
    for k in g0:   # parameter names start with their output: y3.conv1.weight
        close(g1[k], g0[k], f"gradient {k} ({WINDOWS[int(k.split('.')[0][1:])]})")
    assert bad == []


def test_concat_of_convolutions_is_written_in_place():
    net = netlang.loads("network t { input x: [2, 8, 8]\n a = x -> conv(3, 3, pad=same)\n"
                        " b = x -> conv(2, 1)\n output y = concat(a, b) -> relu }")
    prog = net.compile(training=False)
    calls = [s for s in render(prog.graph).steps if isinstance(s, Call)]
    assert any(" + " in c.code for c in calls)   # a channel offset into the concat
    rng = np.random.default_rng(0)
    w = net.init(0)
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    _close(net.forward(w, {"x": x}, backend="cpu")["y"], net.forward(w, {"x": x})["y"], 1e-5)


def test_dense_gemms_run_natively():
    net = netlang.load(EXAMPLES / "lenet5.net")
    prog = net.program_for(True, "cross_entropy(logits, label)")
    cprog = render(prog.graph)
    assert any(isinstance(s, Gemm) for s in cprog.steps)
    assert "nl_gemm_step(" in cprog.source


def test_libraries_are_cached_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    src = 'extern "C" int nl_probe(void) { return 7; }\n'
    first = cpu_runtime.compile_library(src)
    assert cpu_runtime.LAST_COMPILE["source"] == "compiled"
    assert cpu_runtime.compile_library(src) == first
    assert cpu_runtime.LAST_COMPILE["source"] == "cache"
    assert str(tmp_path) in first


def test_auto_picks_cpu_here_and_numpy_without_a_compiler(monkeypatch):
    backend, line = choose("auto")
    assert backend == "cpu" and line.startswith("backend: cpu (auto")
    monkeypatch.setattr(cpu_runtime, "compiler", lambda: None)
    backend, line = choose("auto")
    assert backend == "numpy"
    assert "no C++ compiler" in line and "g++" in line
    assert choose("numpy") == ("numpy", "backend: numpy")


def test_train_log_says_which_backend_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cpu_runtime, "compiler", lambda: None)
    code = main(["train", str(EXAMPLES / "lenet_digits.net"), "--epochs", "1",
                 "--out", str(tmp_path / "run"), "--no-progress", "--set", "width=2"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("backend: numpy (auto: the cpu backend is unavailable: no C++")


def test_threads_setting(capsys):
    from netlang.backends.cuda.runtime import Runner

    net = netlang.load(EXAMPLES / "lenet5.net")
    runner = Runner(net.program_for(False), "cpu")
    try:
        cpu_runtime.set_threads(1)
        assert runner.device.module.threads == 1
        cpu_runtime.set_threads(None)
        assert runner.device.module.threads == cpu_runtime.threads()
    finally:
        cpu_runtime.set_threads(None)
    assert main(["train", str(EXAMPLES / "lenet_digits.net"), "--threads", "0"]) != 0
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_resume_on_cpu_continues_exactly(tmp_path):
    from netlang.train.loop import Trainer
    from tests.train.test_loop import digits_net, quiet, small_cfg

    net = digits_net()
    cfg = small_cfg(net, augment=())
    full = Trainer(net, cfg, tmp_path / "full", progress=False, log=quiet,
                   backend="cpu").run()
    Trainer(net, cfg, tmp_path / "part", progress=False, log=quiet, backend="cpu",
            stop_after_steps=7).run()
    resumed = Trainer(net, cfg, tmp_path / "part", resume=tmp_path / "part", progress=False,
                      log=quiet, backend="cpu").run()
    for k in full.weights:   # the same program, the same order of sums: bit for bit
        np.testing.assert_array_equal(resumed.weights[k], full.weights[k])


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_an_epilogue_may_read_a_fused_value_twice(backend):
    """y = add(x, x) under mse: the gradient kernel computes dy and then dy + dy in one
    kernel; the second operand is the register, not a buffer (found by the random
    architectures on cpu)."""
    net = netlang.loads("network t { input x: [2, 3, 3]\n output y = add(x, x) }")
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((2, 2, 3, 3)).astype(np.float32),
             "t": rng.standard_normal((2, 2, 3, 3)).astype(np.float32)}
    v1, g1 = net.value_and_grad({}, batch, loss="mse(y, t)", wrt_inputs=True, backend=backend)
    v0, g0 = net.value_and_grad({}, batch, loss="mse(y, t)", wrt_inputs=True)
    assert float(v1) == pytest.approx(float(v0), rel=1e-6)
    _close(g1["x"], g0["x"], 1e-6)


NAN_NET = """
network nans {
    input x: [2, 8, 8]
    a = relu(x)
    b = maxpool(leaky_relu(x, alpha = 0.1), 2)
    c = upsample(avgpool(tanh(x), 2), 2)
    output y = concat(a, sigmoid(c))
    output p = b
    output s = softmax(dense(flatten(relu(conv(x, 3, kernel = 3, pad = same))), 4))
}
"""


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_a_nan_goes_where_numpy_puts_it(backend):
    """relu, max-pool and the rest keep a NaN where NumPy does (a diverged run must show a
    NaN loss on every backend, not a finite one computed from zeros)."""
    net = netlang.loads(NAN_NET)
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    x[0, 1, 3, 4] = np.nan
    w = net.init(0)
    want = net.forward(w, {"x": x})
    got = net.forward(w, {"x": x}, backend=backend)
    for k in want:
        assert np.isnan(want[k]).any(), k
        np.testing.assert_array_equal(np.isnan(got[k]), np.isnan(want[k]), err_msg=k)
        ok = ~np.isnan(want[k])
        _close(got[k][ok], want[k][ok], 1e-5)
