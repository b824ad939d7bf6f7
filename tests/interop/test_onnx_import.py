"""ONNX import: netlang -> ONNX -> netlang reproduces every example (outputs, parameter
count, blocks); PyTorch models with torchvision's structure, exported by the TorchScript
exporter, import into readable source that matches PyTorch; what netlang cannot express is
refused with the list of ops and where, and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.cli import main
from netlang.diagnostics import NetlangError
from netlang.train import checkpoint
from tests.conftest import EXAMPLES
from tests.interop.test_onnx_export import COVERAGE, SIZES

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from netlang.interop.onnx_export import export_model  # noqa: E402
from netlang.interop.onnx_import import import_model  # noqa: E402


# Examples whose ONNX form import refuses, and why (the refusal names it); none today
# (vit_tiny's position embedding imports as a `param` declaration).
NOT_IMPORTED: dict[str, str] = {}


def _used_blocks(net) -> set[str]:
    """The blocks the network calls (graph node names hold them: `e2.double_conv.conv0`)."""
    parts = {p for n in net.graph.nodes for p in n.name.split(".")}
    return {b for b in net.source.blocks if b in parts}


def _inputs(net, n=2, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((n, *t.shape)).astype(np.float32)
            for k, t in net.inputs.items()}


@pytest.mark.parametrize("file,network", sorted(SIZES), ids=[n for _, n in sorted(SIZES)])
def test_every_example_round_trips(tmp_path, file, network):
    net = netlang.load(EXAMPLES / file, network=network, params=SIZES[(file, network)])
    w = net.init(1)
    for k in w:   # running statistics that are not the identity
        if "running_var" in k:
            w[k] = np.linspace(0.5, 2.0, w[k].size, dtype=np.float32)
    path = tmp_path / f"{network}.onnx"
    onnx.save(export_model(net, w).model, str(path))
    if network in NOT_IMPORTED:   # refused, with the one construct named
        with pytest.raises(NetlangError) as ei:
            import_model(str(path))
        text = ei.value.render({})
        assert "uses 1 thing(s) netlang cannot import" in text, text
        assert NOT_IMPORTED[network] in text, text
        return
    imp = import_model(str(path))
    back = netlang.loads(imp.source)
    assert back.name == network
    assert back.param_count() == net.param_count()
    assert set(imp.blocks) == _used_blocks(net)
    x = _inputs(net)
    want = net.forward(w, x)
    got = back.forward(imp.weights, dict(zip(back.inputs, x.values())))
    assert list(back.outputs) == list(net.outputs)
    for k in net.outputs:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_the_ops_no_example_uses_round_trip(tmp_path):
    """Including activations exported as formulas (gelu's erf and tanh forms, softplus with
    a beta), which import as the activation, and batchnorm(affine = false)."""
    net = netlang.loads(COVERAGE)
    w = net.init(2)
    path = tmp_path / "coverage.onnx"
    onnx.save(export_model(net, w).model, str(path))
    imp = import_model(str(path))
    for call in ("batchnorm(affine=false)", "-> gelu -> conv(5, 1) -> gelu(approximate=tanh) "
                 "-> silu", "softplus(beta=2) -> scale(0.5)", "softmax(axis=1, causal=true)",
                 "hardtanh -> prelu -> conv(2, 1) -> hardtanh(min_val=0, max_val=6)",
                 "-> prelu(per_channel=true) -> flatten -> prelu(per_channel=true)"):
        assert call in imp.source
    back = netlang.loads(imp.source)
    assert back.param_count() == net.param_count()
    x = _inputs(net)
    got, want = back.forward(imp.weights, x), net.forward(w, x)
    for k in net.outputs:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_class_token_round_trips(tmp_path):
    """A `param` concatenated to every sample (exported as Unsqueeze + Expand to the
    batch's size + Concat) comes back as the declaration and the concat."""
    net = netlang.loads("network cls_token {\n input s: [3, 5]\n param cls: [1, 3]\n"
                        " t = s -> permute([1, 0])\n"
                        " output y = concat(cls, t, axis = 0) -> layernorm -> mean(0)\n}")
    w = net.init(2)
    path = tmp_path / "cls.onnx"
    onnx.save(export_model(net, w).model, str(path))
    imp = import_model(str(path))
    assert "param cls: [1, 3] = zeros" in imp.source and "concat(cls, " in imp.source
    back = netlang.loads(imp.source)
    x = _inputs(net)
    np.testing.assert_allclose(back.forward(imp.weights, x)["y"], net.forward(w, x)["y"],
                               rtol=1e-6, atol=1e-6)


def test_a_round_trip_reads_like_the_source(tmp_path):
    net = netlang.load(EXAMPLES / "unet_valid.net", params={"base": 2, "size": 188})
    path = tmp_path / "u.onnx"
    onnx.save(export_model(net, net.init(0)).model, str(path))
    text = import_model(str(path)).source
    assert "block double_conv(c) {\n    input x\n    return x -> repeat 2 { conv(c, 3) -> relu }" \
        in text
    assert "return crop(skip, x_2) -> concat(x_2) -> double_conv(c)" in text
    assert "    e2 = e1 -> maxpool(2) -> double_conv(4)\n" in text
    assert "-> up(e4, 16) -> up(e3, 8)" in text


# -- PyTorch models --------------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn
from tests.interop.torchvision_like import ResNet18, UNet, alexnet, vgg16  # noqa: E402

class TinyViT(nn.Module):
    """Patch embedding, a learned position embedding [1, T, D] (timm's `pos_embed`), one
    pre-norm MLP residual, mean pooling."""

    def __init__(self, dim=8, patch=4, size=16, classes=3):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.5)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        # tokens [N, T, D]; a -1 batch keeps the exported Reshape's shape constant
        t = self.embed(x).permute(0, 2, 3, 1).reshape(-1, *self.pos_embed.shape[1:])
        t = t + self.pos_embed
        t = t + self.mlp(self.norm(t))
        return self.head(t.mean(1))


class ClsViT(TinyViT):
    """TinyViT with timm's class token: `cls_token.expand(B, -1, -1)` joined before the
    patches (PyTorch exports the batch size as Shape/Gather/.../Where arithmetic)."""

    def __init__(self, dim=8, patch=4, size=16, classes=3):
        super().__init__(dim, patch, size, classes)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2 + 1, dim) * 0.5)

    def forward(self, x):
        t = self.embed(x).permute(0, 2, 3, 1).reshape(-1, *self.embed_tokens())
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = t + self.mlp(self.norm(t))
        return self.head(t.mean(1))

    def embed_tokens(self):
        return self.pos_embed.shape[1] - 1, self.pos_embed.shape[2]


TORCH = {   # name: (model, input size, what the source must say)
    "vit": (TinyViT, 16, ["param pos_embed: [16, 8] = zeros", "-> add(pos_embed)"]),
    "vit_cls": (ClsViT, 16, ["param cls_token: [1, 8] = zeros",
                             "param pos_embed: [17, 8] = zeros", "concat(cls_token, "]),
    "resnet18": (lambda: ResNet18(base=8, classes=10), 64,
                 ["block layer_block(c) {", "-> repeat 2 { layer_block(8) } -> layer(16)",
                  "-> global_avgpool -> dense(10)"]),
    "vgg16": (lambda: vgg16(width=4, classes=10, size=32), 32,
              ["-> repeat 3 { conv(16, 3, pad=1) -> relu } -> maxpool(2)"]),
    "alexnet": (lambda: alexnet(classes=10), 224,
                ["conv(64, 11, stride=4, pad=2) -> relu -> maxpool(3, stride=2)"]),
    "unet": (lambda: UNet(channels=3, classes=2, base=4), 32,
             ["block double_conv(c) {", "block up(c) {\n    input x, skip",
              "return concat(skip, x -> conv_transpose(c, 2, stride=2)) -> double_conv(c)",
              "down1 = inc -> maxpool_conv(8)", "-> up(down2, 16) -> up(down1, 8) -> up(inc, 4)"]),
}


def _torch_export(model, size, path):
    torch.manual_seed(0)
    for mod in model.modules():   # running statistics that are not the identity
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, size, size)
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["image"],
                      output_names=["out"], dynamic_axes={"image": {0: "n"}, "out": {0: "n"}})
    with torch.no_grad():
        return x.numpy(), model(x).numpy()


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", sorted(TORCH))
def test_pytorch_models_import_and_match_pytorch(tmp_path, case):
    make, size, says = TORCH[case]
    torch.manual_seed(1)
    x, want = _torch_export(make(), size, tmp_path / f"{case}.onnx")
    imp = import_model(str(tmp_path / f"{case}.onnx"))
    for line in says:
        assert line in imp.source
    net = netlang.loads(imp.source)
    got = net.forward(imp.weights, {"image": x})["out"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


# -- refusals and the command ----------------------------------------------------------

class _Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.act = nn.Hardswish()
        self.side = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.act(self.stem(x)) * self.side(x).abs()
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore")
def test_unsupported_ops_are_refused_with_where_they_are_and_nothing_is_written(tmp_path,
                                                                                capsys):
    _torch_export(_Unsupported(), 8, tmp_path / "m.onnx")
    with pytest.raises(NetlangError) as exc:
        import_model(str(tmp_path / "m.onnx"))
    text = exc.value.render(None)
    assert "E074" in text and "nothing was written" in text
    assert "uses 2 thing(s) netlang cannot import" in text
    assert "HardSwish: 1 node(s), e.g. /act/HardSwish" in text
    assert "Abs: 1 node(s), e.g. /Abs" in text
    assert main(["import-onnx", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.net")]) == 1
    assert "E074" in capsys.readouterr().err
    assert not (tmp_path / "m.net").exists() and not (tmp_path / "m.safetensors").exists()


def test_not_a_model_and_no_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(NetlangError, match="E074"):
        import_model(str(bad))
    with pytest.raises(NetlangError, match="E004"):
        import_model(str(tmp_path / "none.onnx"))


def test_the_command_writes_source_and_weights_and_checks_them(tmp_path, capsys):
    net = netlang.load(EXAMPLES / "unet.net", params={"base": 2, "size": 16})
    w = net.init(3)
    model = tmp_path / "unet.onnx"
    onnx.save(export_model(net, w).model, str(model))
    out = tmp_path / "imported" / "unet.net"
    out.parent.mkdir()
    assert main(["import-onnx", str(model), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    wfile = out.with_suffix(".safetensors")
    assert f"wrote {out}: network unet" in text and f"weights {wfile}" in text
    assert "blocks: double_conv, up" in text
    assert "checked against onnxruntime on a random batch of 2: outputs agree" in text
    # the weights are a netlang checkpoint the other commands take
    ck = checkpoint.load(wfile)
    back = netlang.load(out)
    checkpoint.check_compatible(ck, back, wfile)
    x = _inputs(net)
    np.testing.assert_allclose(back.forward(ck.weights, x)["mask"], net.forward(w, x)["mask"],
                               rtol=1e-5, atol=1e-6)
    assert main(["export", str(out), "--weights", str(wfile), "-o",
                 str(tmp_path / "again.onnx")]) == 0
    assert f"the weights of ONNX model {model}" in capsys.readouterr().out
    # an existing file is not written over
    before = out.read_text()
    assert main(["import-onnx", str(model), "-o", str(out)]) == 1
    assert f"{out} exists; import-onnx does not write over files" in capsys.readouterr().err
    assert out.read_text() == before
    assert main(["import-onnx", str(model), "-o", str(out), "--force", "--name", "seg"]) == 0
    assert "network seg" in capsys.readouterr().out
