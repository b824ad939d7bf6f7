"""PyTorch weights in: state_dicts of PyTorch modules written with torchvision's exact
structure and names (the torchvision wheel does not load with the CPU torch of the tests),
saved as safetensors, load into the examples and reproduce PyTorch's logits; the mapping
is printed; another model's weights are refused naming the first mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest

import netlang
from netlang.cli import main
from netlang.diagnostics import NetlangError
from netlang.interop.torch_weights import load_torch_weights
from tests.conftest import EXAMPLES

torch = pytest.importorskip("torch")
nn = torch.nn
save_file = pytest.importorskip("safetensors.torch").save_file

from tests.interop.torchvision_like import ResNet18, alexnet, vgg16  # noqa: E402


CASES = {   # (torch model, example file, network, --set values, input size)
    "resnet18": (lambda: ResNet18(base=16, classes=10), "resnet18.net", "resnet18",
                 {"base": 16, "size": 64, "classes": 10}, 64),
    "vgg16": (lambda: vgg16(width=8, classes=10, size=32), "vgg16.net", "vgg16",
              {"width": 8, "size": 32, "classes": 10}, 32),
    "alexnet": (lambda: alexnet(classes=10), "alexnet.net", "alexnet", {"classes": 10}, 224),
}


def _saved(tmp_path, model) -> str:
    torch.manual_seed(0)
    for mod in model.modules():   # running statistics that are not the identity
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_torchvision_weights_reproduce_pytorchs_logits(tmp_path, case):
    make, file, network, params, size = CASES[case]
    torch.manual_seed(1)
    model = make().eval()
    path = _saved(tmp_path, model)
    net = netlang.load(EXAMPLES / file, network=network, params=params)
    m = load_torch_weights(path, net)
    assert sorted(m.weights) == sorted(net.params)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = net.forward(m.weights, {"image": x})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    if case == "resnet18":   # torchvision's names, mapped onto netlang's layers
        pairs = dict(m.pairs)
        assert pairs["stem.conv0.weight"] == "conv1.weight"
        assert pairs["l2.basic_down.shortcut.batchnorm0.running_var"] == \
            "layer2.0.downsample.1.running_var"
        assert pairs["logits.dense0.bias"] == "fc.bias"


def test_the_commands_take_pytorch_weights_and_print_the_mapping(tmp_path, capsys):
    make, file, network, params, size = CASES["resnet18"]
    path = _saved(tmp_path, make().eval())
    sets = [a for k, v in params.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "r.onnx"
    assert main(["export", str(EXAMPLES / file), "--network", network, *sets, "--weights",
                 path, "-o", str(out)]) == 0
    text = capsys.readouterr()
    assert f"PyTorch weights {path}: 102 tensors mapped onto resnet18 by structure" in text.err
    assert "  l4.basic_down.shortcut.conv0 <- layer4.0.downsample.0" in text.err
    assert f"PyTorch weights {path}" in text.out


def test_another_models_weights_are_refused_at_the_first_mismatch(tmp_path):
    path = _saved(tmp_path, ResNet18(base=16, classes=10))
    net = netlang.load(EXAMPLES / "resnet18.net", network="resnet18",
                       params={"base": 32, "size": 64, "classes": 10})
    with pytest.raises(NetlangError) as exc:
        load_torch_weights(path, net)
    text = exc.value.render(net.sources)
    assert "E073" in text and "no PyTorch module of" in text
    assert "fits `stem.conv0` (conv weight [32, 3, 7, 7])" in text
    assert "the next unmapped PyTorch modules: bn1 (batchnorm" in text
    assert "conv1 (conv weight [16, 3, 7, 7])" in text


def test_leftover_tensors_and_a_mapping_file(tmp_path):
    model = ResNet18(base=16, classes=10)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["extra.weight"] = torch.zeros(3, 3)
    path = tmp_path / "x.safetensors"
    save_file(state, str(path))
    net = netlang.load(EXAMPLES / "resnet18.net", network="resnet18",
                       params={"base": 16, "size": 64, "classes": 10})
    with pytest.raises(NetlangError, match=r"1 tensor\(s\) of .* belong to no layer"):
        load_torch_weights(path, net)
    # A mapping file pairs a name by hand: the extra 3x3 linear layer cannot take the
    # place of a netlang parameter of another shape.
    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"logits.dense0.bias": "extra.weight"}))
    with pytest.raises(NetlangError, match=r"`extra.weight` is \[3, 3\]; `logits.dense0.bias`"):
        load_torch_weights(path, net, bad)
    del state["extra.weight"]
    swapped = {"logits.dense0.weight": "fc.weight"}
    save_file(state, str(path))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(swapped))
    assert dict(load_torch_weights(path, net, good).pairs)["logits.dense0.weight"] == \
        "fc.weight"


def test_train_init_from_pytorch_weights(tmp_path, capsys):
    """--init-from takes PyTorch weights: the first epoch starts from them."""
    model = nn.Module()   # lenet_digits' layers in PyTorch names
    torch.manual_seed(3)
    net = netlang.load(EXAMPLES / "lenet_digits.net", params={"width": 4})
    shapes = [(n.type.shape) for n in net.graph.params]
    state = {f"layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}":
             torch.randn(*s) * 0.1 for i, s in enumerate(shapes)}
    path = tmp_path / "init.safetensors"
    save_file(state, str(path))
    del model
    run = tmp_path / "run"
    assert main(["train", str(EXAMPLES / "lenet_digits.net"), "--set", "width=4",
                 "--epochs", "1", "--init-from", str(path), "--out", str(run),
                 "--no-progress", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert f"initial weights from PyTorch weights {path}" in out
    assert json.loads((run / "config.json").read_text())["init_from"] == \
        f"PyTorch weights {path}"


def test_a_unet_encoder_starts_from_a_resnet18_and_trains(tmp_path, capsys):
    """--init-from with --init-only: the encoder of examples/unet_resnet18.net takes a
    PyTorch ResNet-18's weights (its head is left over, and listed), the decoder its
    initialisation; with the encoder frozen, training leaves those weights as PyTorch's."""
    from safetensors.numpy import load_file

    torch.manual_seed(4)
    path = _saved(tmp_path, ResNet18(base=8, classes=10))
    file = EXAMPLES / "unet_resnet18.net"
    net = netlang.load(file, params={"base": 8, "size": 32})
    m = load_torch_weights(path, net, only=["enc*"])
    pairs = dict(m.pairs)
    assert pairs["enc0.conv0.weight"] == "conv1.weight"
    assert pairs["enc1.repeat0.1.basic.y.batchnorm1.running_var"] == "layer1.1.bn2.running_var"
    assert pairs["enc4.basic_down.shortcut.conv0.weight"] == "layer4.0.downsample.0.weight"
    assert m.unused == ["fc.bias", "fc.weight"]
    assert set(m.weights) == {k for k in net.params if k.startswith("enc")}
    with pytest.raises(NetlangError, match=r"`dec\*` names no parameter"):
        load_torch_weights(path, net, only=["dec*"])

    run = tmp_path / "run"
    assert main(["train", str(file), "--set", "base=8", "--set", "size=32",
                 "--data", "shapes(size = 32, count = 16, channels = 3)", "--epochs", "1",
                 "--batch", "8", "--init-from", path, "--init-only", "enc*",
                 "--opt", 'freeze = ["enc*"]', "--out", str(run), "--no-progress",
                 "--backend", "numpy"]) == 0
    text = capsys.readouterr()
    assert "  enc4.basic.y.conv1 <- layer4.1.conv2" in text.err
    assert "  not used: 2 PyTorch tensor(s) (fc.bias, fc.weight)" in text.err
    n_enc = len(m.weights)
    assert (f"initial weights from PyTorch weights {path} ({n_enc} of {len(net.params)} "
            "parameters: enc*; the rest initialised)") in text.out
    state = load_file(path)
    after = checkpoint_weights(run / "last.safetensors")
    for ours, theirs in m.pairs:
        if "running" not in ours:   # frozen: the PyTorch values still
            np.testing.assert_array_equal(after[ours], state[theirs], err_msg=ours)
    assert not np.array_equal(after["mask.conv1.weight"],
                              net.init(0)["mask.conv1.weight"])   # the decoder trained
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["init_from"].startswith(f"PyTorch weights {path} (")


def checkpoint_weights(path):
    from netlang.train import checkpoint

    return checkpoint.load(path).weights


def test_init_only_needs_init_from(capsys):
    assert main(["train", str(EXAMPLES / "unet_resnet18.net"), "--init-only", "enc*"]) == 1
    assert "--init-only selects parameters of --init-from" in capsys.readouterr().err


def _netlang_checkpoint(tmp_path, net, seed=5):
    """Weights of `net` (batchnorm statistics that are not the identity) as a checkpoint."""
    from netlang.train import checkpoint

    rng = np.random.default_rng(seed)
    w = net.init(seed)
    for k in w:
        if k.endswith("running_mean"):
            w[k] = rng.uniform(-0.3, 0.3, w[k].shape).astype(np.float32)
        elif k.endswith("running_var"):
            w[k] = rng.uniform(0.5, 2.0, w[k].shape).astype(np.float32)
    path = tmp_path / "trained.safetensors"
    checkpoint.save(path, checkpoint.Checkpoint(w, {}, {"network": net.name, "epoch": 3,
                                                        "global_step": 42}))
    return path, w


@pytest.mark.parametrize("like", ["safetensors", "json"])
def test_export_weights_loads_into_the_pytorch_model_strictly(tmp_path, capsys, like):
    """netlang's trained weights under torchvision's names: a ResNet-18 twin loads them
    with strict=True and gives netlang's logits."""
    from safetensors.torch import load_file

    make, file, network, params, size = CASES["resnet18"]
    net = netlang.load(EXAMPLES / file, network=network, params=params)
    ck, w = _netlang_checkpoint(tmp_path, net)
    model = make()
    template = tmp_path / f"template.{like}"
    if like == "json":
        template.write_text(json.dumps({k: list(v.shape)
                                        for k, v in model.state_dict().items()}))
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(template))
    out = tmp_path / "for_torch.safetensors"
    sets = [a for k, v in params.items() for a in ("--set", f"{k}={v}")]
    assert main(["export-weights", str(EXAMPLES / file), "--network", network, *sets,
                 "--weights", str(ck), "--like", str(template), "-o", str(out)]) == 0
    text = capsys.readouterr()
    assert "102 tensors mapped from resnet18 onto the names of" in text.err
    assert "  l4.basic_down.shortcut.conv0 -> layer4.0.downsample.0" in text.err
    assert f"wrote {out}: 122 tensors of resnet18 under the names of {template}" in text.out
    state = load_file(str(out))
    assert state["layer1.0.bn1.num_batches_tracked"].dtype == torch.int64
    assert int(state["layer1.0.bn1.num_batches_tracked"]) == 42
    model.load_state_dict(state, strict=True)
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = net.forward(w, {"image": x})["logits"]
    np.testing.assert_allclose(want, got, rtol=1e-4, atol=1e-5)


def test_export_weights_refusals(tmp_path, capsys):
    make, file, network, params, size = CASES["resnet18"]
    net = netlang.load(EXAMPLES / file, network=network, params=params)
    ck, w = _netlang_checkpoint(tmp_path, net)
    sets = [a for k, v in params.items() for a in ("--set", f"{k}={v}")]
    base = ["export-weights", str(EXAMPLES / file), "--network", network, *sets,
            "--weights", str(ck)]

    def err(*extra):
        assert main([*base, *extra]) == 1
        return capsys.readouterr().err

    out = str(tmp_path / "o.safetensors")
    assert "--format torch needs the PyTorch model's names: --like" in err("-o", out)
    assert "the weights go to a .safetensors file, not" in err("-o", str(tmp_path / "o.pt"))
    assert "would write over the --weights file" in err("-o", str(ck), "--format", "netlang")
    other = tmp_path / "vgg.json"   # another model's names: the first layer that does not fit
    other.write_text(json.dumps({k: list(v.shape) for k, v in
                                 vgg16(width=8, classes=10, size=32).state_dict().items()}))
    text = err("--like", str(other), "-o", out)
    assert "E073" in text and "fits `stem.conv0`" in text
    broken = tmp_path / "broken.json"
    broken.write_text('{"conv1.weight": "big"}')
    assert "must be a JSON object of tensor names and shapes" in err("--like", str(broken),
                                                                      "-o", out)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05" * 20)
    assert "is neither safetensors nor a .json file" in err("--like", str(junk), "-o", out)
    assert not (tmp_path / "o.safetensors").exists()
    # netlang's own names need no template
    assert main([*base, "--format", "netlang", "-o", out]) == 0
    from safetensors.numpy import load_file

    assert sorted(load_file(out)) == sorted(net.params)


def test_norm_layers_and_prelu_map_by_shape_and_order(tmp_path):
    """GroupNorm, PReLU and LayerNorm hold vectors only: they map by shape and order as
    the other layers do, and the network then computes PyTorch's outputs."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.PReLU(8),
                          nn.Conv2d(8, 4, 1), nn.PReLU(), nn.Flatten(), nn.Linear(4 * 36, 16),
                          nn.LayerNorm(16), nn.Linear(16, 5))
    with torch.no_grad():
        for p in model.parameters():   # not the initial ones/zeros/0.25
            p.add_(torch.randn_like(p) * 0.3)
    path = _saved(tmp_path, model)
    net = netlang.loads("network n {\n    input x: [3, 6, 6]\n"
                        "    output y = x -> conv(8, 3, pad=1) -> groupnorm(2)\n"
                        "      -> prelu(per_channel=true) -> conv(4, 1) -> prelu -> flatten\n"
                        "      -> dense(16) -> layernorm -> dense(5)\n}\n")
    mapping = load_torch_weights(path, net)
    pairs = dict(mapping.pairs)
    assert pairs["y.groupnorm0.weight"] == "1.weight" and pairs["y.prelu0.weight"] == "2.weight"
    assert pairs["y.prelu1.weight"] == "4.weight" and pairs["y.layernorm0.bias"] == "7.bias"
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32)
    want = model(torch.from_numpy(x)).detach().numpy()
    got = net.forward(mapping.weights, {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
