"""batchnorm(track_running_stats=false) against nn.BatchNorm2d(track_running_stats=False):
no running statistics among the parameters, batch statistics in training and in
inference, the same outputs and gradients (NumPy in float64, the compiled backends in
float32), PyTorch weights imported by shape, and an ONNX export that onnxruntime runs."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from tests.backends.test_cuda import HAVE_CXX

NET = """
network bn_free(affine = true) {
  input x: [3, 6, 5]
  output y = x -> conv(4, 3, pad=same) -> batchnorm(affine=affine, track_running_stats=false)
              -> relu -> conv(2, 1)
}
"""


def _torch_twin(torch, net, weights, affine, dtype):
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                          nn.BatchNorm2d(4, affine=affine, track_running_stats=False),
                          nn.ReLU(), nn.Conv2d(4, 2, 1)).to(dtype)
    from netlang.interop.torch_weights import map_state_dict

    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    mapped = map_state_dict(net, state).weights     # PyTorch's layout matches by shape
    assert sorted(mapped) == sorted(weights)
    return model, mapped


def test_it_keeps_no_running_statistics():
    net = netlang.loads(NET)
    assert not [p for p in net.params if "running" in p]
    tracked = netlang.loads(NET.replace(", track_running_stats=false", ""))
    assert net.param_count() == tracked.param_count()   # running statistics are not params
    assert len(tracked.params) == len(net.params) + 2


@pytest.mark.torch
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_it_matches_pytorch_in_float64(affine, training, torch_mod):
    torch = torch_mod
    net = netlang.loads(NET, params={"affine": affine})
    model, weights = _torch_twin(torch, net, net.init(0), affine, torch.float64)
    model.train(training)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 6, 5))
    xt = torch.tensor(x, requires_grad=True)
    want = model(xt)
    t = rng.standard_normal(want.shape)
    ((want - torch.tensor(t)) ** 2).mean().backward()
    w64 = {k: v.astype(np.float64) for k, v in weights.items()}
    outs, updates = net.run(w64, {"x": x}, training=training, dtype=np.float64)
    np.testing.assert_allclose(outs["y"], want.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert updates == {}
    _, grads = net.value_and_grad(w64, {"x": x, "t": t}, loss="mse(y, t)", training=training,
                                  wrt_inputs=True, dtype=np.float64)
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.emu
@pytest.mark.skipif(not HAVE_CXX, reason="the compiled backends need a C++ compiler")
@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_the_compiled_backends_agree_with_numpy(backend):
    net = netlang.loads(NET)
    weights = net.init(0)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 6, 5)).astype(np.float32)
    t = rng.standard_normal((4, 2, 6, 5)).astype(np.float32)
    for training in (True, False):
        want = net.forward(weights, {"x": x}, training=training)["y"]
        got = net.forward(weights, {"x": x}, training=training, backend=backend)["y"]
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    v0, g0 = net.value_and_grad(weights, {"x": x, "t": t}, loss="mse(y, t)")
    v1, g1 = net.value_and_grad(weights, {"x": x, "t": t}, loss="mse(y, t)", backend=backend)
    assert abs(v0 - v1) <= 1e-5 * abs(v0)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=2e-3, atol=2e-5, err_msg=k)


def test_onnx_export_normalises_with_the_batch_statistics():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from netlang.interop.onnx_export import export_model

    net = netlang.loads(NET)
    weights = net.init(0)
    exported = export_model(net, weights, fold_batchnorm=True)
    assert not [n for n in exported.model.graph.node if n.op_type == "BatchNormalization"]
    sess = ort.InferenceSession(exported.model.SerializeToString(),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).standard_normal((5, 3, 6, 5)).astype(np.float32)
    got = sess.run(None, {"x": x})[0]
    want = net.forward(weights, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
