"""Networks that once failed, each against PyTorch in float64 (values and every gradient)
and on cuda-emu against NumPy: fast paths that ignored ceil mode or output padding, an
uncropped input gradient, paddings larger than what they pad, float32 constants in
float64 programs."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from tests.backends.test_cuda import BACKENDS

# (id, layer after `x`, input per sample, torch function of (F, x, weight, bias))
CASES = [
    ("maxpool-ceil-tiles", "maxpool(2, ceil=true)", (1, 5),
     lambda F, x, w, b: F.max_pool1d(x, 2, ceil_mode=True)),
    ("conv_transpose-output-padding-tiles",
     "conv_transpose(2, 2, stride=2, output_padding=1)", (1, 5),
     lambda F, x, w, b: F.conv_transpose1d(x, w, b, 2, 0, 1)),
    ("conv_transpose-output-padding-over-stride",
     "conv_transpose(2, 1, output_padding=1, dilation=2)", (3, 5),
     lambda F, x, w, b: F.conv_transpose1d(x, w, b, 1, 0, 1, 1, 2)),
    ("conv-padding-over-the-input", "conv(1, 2, stride=3, pad=[3, 0])", (1, 1),
     lambda F, x, w, b: F.conv1d(F.pad(x, [3, 0]), w, b, 3)),
    ("conv_transpose-padding-over-the-output",
     "conv_transpose(1, 1, stride=3, pad=[2, 0], output_padding=2)", (1, 1),
     lambda F, x, w, b: F.conv_transpose1d(x, w, b, 3, 0, 2)[..., 2:]),
    ("leaky_relu-alpha", "leaky_relu(0.3)", (2, 6), lambda F, x, w, b: F.leaky_relu(x, 0.3)),
    ("linear-upsample", "upsample(1.5, mode=linear)", (2, 6),
     lambda F, x, w, b: F.interpolate(x, scale_factor=1.5, mode="linear",
                                      align_corners=False)),
    ("batchnorm-eps", "batchnorm(eps=0.1)", (2, 6),
     lambda F, x, w, b: F.batch_norm(x, None, None, w, b, True, 0.1, 0.1)),
]
IDS = [c[0] for c in CASES]


def _net(layer: str, shape):
    return netlang.loads(f"network n {{\n    input x: [{', '.join(map(str, shape))}]\n"
                         f"    output y = x -> {layer}\n}}\n")


@pytest.mark.torch
@pytest.mark.parametrize("layer,shape,fn", [c[1:] for c in CASES], ids=IDS)
def test_matches_pytorch_in_float64(torch_mod, layer, shape, fn):
    torch, F = torch_mod, torch_mod.nn.functional
    net = _net(layer, shape)
    rng = np.random.default_rng(1)
    weights = {k: rng.standard_normal(t.shape) for k, t in net.params.items()}
    x = rng.standard_normal((3,) + shape)
    tw = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()
          if not k.endswith(("running_mean", "running_var"))}
    w = next((v for k, v in tw.items() if k.endswith("weight")), None)
    b = next((v for k, v in tw.items() if k.endswith("bias")), None)
    xt = torch.tensor(x, requires_grad=True)
    y = fn(F, xt, w, b)
    target = rng.standard_normal(tuple(y.shape))
    loss = F.mse_loss(y, torch.tensor(target))
    loss.backward()
    value, grads = net.value_and_grad(weights, {"x": x, "t": target}, loss="mse(y, t)",
                                      wrt_inputs=True, dtype=np.float64)
    # float64 through and through: agreement far beyond float32 rounding (~1e-8).
    np.testing.assert_allclose(value, loss.item(), rtol=1e-12)
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-10, atol=1e-13)
    for k, t in tw.items():
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer,shape", [c[1:3] for c in CASES], ids=IDS)
def test_cuda_kernels_match_numpy(backend, layer, shape):
    net = _net(layer, shape)
    rng = np.random.default_rng(2)
    weights = net.init(0)
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    y = net.forward(weights, {"x": x})["y"]
    t = rng.standard_normal(y.shape).astype(np.float32)
    batch = {"x": x, "t": t}
    want = net.value_and_grad(weights, batch, loss="mse(y, t)", wrt_inputs=True)
    got = net.value_and_grad(weights, batch, loss="mse(y, t)", wrt_inputs=True,
                             backend=backend)
    np.testing.assert_allclose(net.forward(weights, {"x": x}, backend=backend)["y"], y,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for k in want[1]:
        np.testing.assert_allclose(got[1][k], want[1][k], rtol=1e-4, atol=1e-6)
