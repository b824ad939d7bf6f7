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
