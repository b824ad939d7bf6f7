"""Every example network checks, has the published parameter count, and matches a PyTorch
twin (built from torch.nn Lazy* layers) layer by layer."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.api import network_names
from tests.conftest import EXAMPLES

EXAMPLE_NETS = [(p, n) for p in sorted(EXAMPLES.glob("*.net")) for n in network_names(p)]

# Published counts (torchvision, and the reference figures of our benchmarks).
PUBLISHED = {
    "vgg16": 138_357_544,
    "resnet18": 11_689_512,
    "alexnet": 61_100_840,
    "lenet5": 61_706,
    "simple_cnn": 545_098,
    "resnet18_cifar": 11_173_962,
    "unet": 31_030_593,
}


def test_every_expected_example_exists():
    names = {p.name for p in EXAMPLES.glob("*.net")}
    for want in ("lenet5.net", "simple_cnn.net", "alexnet.net", "vgg16.net", "resnet18.net",
                 "unet.net", "unet_valid.net", "attention_unet.net", "unet_plus_plus.net",
                 "unet3d.net", "unet_resnet18.net", "vit_tiny.net", "transformer_blocks.net",
                 "mlp_digits.net", "lenet_digits.net"):
        assert want in names


@pytest.mark.parametrize("path,name", EXAMPLE_NETS, ids=[n for _, n in EXAMPLE_NETS])
def test_example_checks(path, name):
    net = netlang.load(path, network=name)
    assert net.outputs
    if name in PUBLISHED:
        assert net.param_count() == PUBLISHED[name]


def test_unet_valid_follows_the_paper():
    net = netlang.load(EXAMPLES / "unet_valid.net")
    assert net.inputs["image"].shape == (1, 572, 572)
    assert net.outputs["scores"].shape == (2, 388, 388)


@pytest.mark.parametrize("path,name", EXAMPLE_NETS, ids=[n for _, n in EXAMPLE_NETS])
def test_example_matches_pytorch_layer_by_layer(path, name, torch_mod):
    torch = torch_mod
    from tests.torch_ref import TorchTwin

    net = netlang.load(path, network=name)
    meta = torch.device("meta")   # shapes and parameters only: no arithmetic
    twin = TorchTwin(net.graph, device=meta)
    inputs = {k: torch.empty((2,) + t.shape, device=meta) for k, t in net.inputs.items()}
    twin.materialize(inputs)
    for node in net.graph.nodes:
        if node.name in twin.shapes:
            assert twin.shapes[node.name] == node.type.shape, node.name
    torch_params = sum(p.numel() for p in twin.parameters())
    assert torch_params == net.param_count()
    torch_buffers = {k.split(".", 1)[1].replace("__", "."): tuple(b.shape)
                     for k, b in twin.named_buffers() if "running" in k}
    ours = {k: t.shape for k, t in net.params.items() if "running" in k}
    assert torch_buffers == ours


def test_se_resnet18_matches_pytorch_and_counts_its_gates(torch_mod):
    """`--set se=true`: a squeeze-and-excitation gate (two dense layers, reduction 16) in
    every basic block, the same shapes and parameter count as PyTorch's twin."""
    torch = torch_mod
    from tests.torch_ref import TorchTwin

    plain = netlang.load(EXAMPLES / "resnet18.net", network="resnet18_cifar")
    se = netlang.load(EXAMPLES / "resnet18.net", network="resnet18_cifar",
                      params={"se": True})
    # per block of c channels: dense(c // 16) and dense(c), with biases
    gates = sum(2 * (c * (c // 16)) + c // 16 + c for c in (64, 64, 128, 128, 256, 256,
                                                             512, 512))
    assert se.param_count() == plain.param_count() + gates
    twin = TorchTwin(se.graph)
    x = torch.randn(2, 3, 32, 32)
    twin.materialize({"image": x})
    w = se.init(0)
    twin.load_netlang(w)
    twin.eval()
    with torch.no_grad():
        want = twin({"image": x})["logits"].numpy()
    got = se.forward(w, {"image": x.numpy()})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class _GridAttention:
    """Oktay et al.'s grid attention gate as their code writes it (GridAttentionBlock2D,
    sub-sample factor 2, concatenation mode), from torch.nn, not from netlang's graph."""

    def __init__(self, torch, cx, cg, inter):
        nn = torch.nn
        self.theta = nn.Conv2d(cx, inter, 2, stride=2, bias=False)
        self.phi = nn.Conv2d(cg, inter, 1)
        self.psi = nn.Conv2d(inter, 1, 1)
        self.w = nn.Conv2d(cx, cx, 1, bias=False)   # their bias: cancelled by the batchnorm
        self.bn = nn.BatchNorm2d(cx)
        self.torch = torch

    def __call__(self, g, x):
        F = self.torch.nn.functional
        theta_x = self.theta(x)
        phi_g = F.interpolate(self.phi(g), size=theta_x.shape[2:], mode="bilinear")
        sig = self.torch.sigmoid(self.psi(F.relu(theta_x + phi_g)))
        sig = F.interpolate(sig, size=x.shape[2:], mode="bilinear")
        return self.bn(self.w(sig.expand_as(x) * x))

    def params(self):
        p = "y.grid_attention_gate"
        return {f"{p}.theta.conv0.weight": self.theta.weight,
                f"{p}.phi.conv0.weight": self.phi.weight, f"{p}.phi.conv0.bias": self.phi.bias,
                f"{p}.alpha.conv0.weight": self.psi.weight,
                f"{p}.alpha.conv0.bias": self.psi.bias,
                f"{p}.conv0.weight": self.w.weight,
                f"{p}.batchnorm0.weight": self.bn.weight, f"{p}.batchnorm0.bias": self.bn.bias}


def test_attention_unet_gate_is_oktays(torch_mod):
    """The example's gate against the paper's code: the gating signal at half the skip's
    size, a stride-2 W_x, bilinear resampling of the coefficients, then W; outputs and
    every gradient agree in float64, batchnorm in training mode."""
    torch = torch_mod
    net = netlang.loads('import "attention_unet.net"\nnetwork gate() {\n'
                        "    input g: [6, 4, 4]\n    input x: [3, 8, 8]\n"
                        "    output y = grid_attention_gate(g, x, 5)\n}\n",
                        base_dir=EXAMPLES)
    torch.manual_seed(0)
    twin = _GridAttention(torch, 3, 6, 5)
    for m in (twin.theta, twin.phi, twin.psi, twin.w, twin.bn):
        m.double()
    tp = twin.params()
    trainable = {k for k, t in net.params.items() if "running" not in k}
    assert set(tp) == trainable
    w = {k: tp[k].detach().numpy().copy() if k in tp else net.init(0)[k].astype(np.float64)
         for k in net.params}
    rng = np.random.default_rng(0)
    g, x = rng.standard_normal((2, 6, 4, 4)), rng.standard_normal((2, 3, 8, 8))
    target = rng.standard_normal((2, 3, 8, 8))
    want = twin(torch.tensor(g), torch.tensor(x))
    loss = torch.nn.functional.mse_loss(want, torch.tensor(target))
    loss.backward()
    batch = {"g": g, "x": x, "target": target}
    value, grads = net.value_and_grad(w, batch, loss="mse(y, target)", dtype=np.float64)
    assert value == pytest.approx(loss.item(), rel=1e-10)
    for k, t in tp.items():
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=1e-8, atol=1e-11, err_msg=k)


def test_attention_unet_variants():
    oktay = netlang.load(EXAMPLES / "attention_unet.net", params={"base": 4, "size": 32})
    simple = netlang.load(EXAMPLES / "attention_unet.net",
                          params={"base": 4, "size": 32, "gate": "simple"})
    assert any(n.op == "conv" and n.attrs["stride"] == (2, 2) for n in oktay.graph.nodes)
    assert not any(n.op == "conv" and n.attrs["stride"] == (2, 2) for n in simple.graph.nodes)
    assert oktay.outputs["mask"].shape == simple.outputs["mask"].shape == (1, 32, 32)
    with pytest.raises(netlang.NetlangError) as exc:
        netlang.load(EXAMPLES / "attention_unet.net", params={"gate": "other"})
    assert exc.value.diagnostics[0].code == "E082"
