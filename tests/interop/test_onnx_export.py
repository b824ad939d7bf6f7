"""ONNX export: every example network exports, passes ONNX's full checker and strict shape
inference (inside export_model), and onnxruntime's outputs equal netlang's forward pass
at two batch sizes; the ops no example uses are exported by a network of their own; the
command writes the file, names what it did, and refuses what it cannot express."""

from __future__ import annotations

import re

import numpy as np
import pytest

import netlang
from netlang.cli import main
from netlang.diagnostics import NetlangError
from tests.conftest import EXAMPLES

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from netlang.interop.onnx_export import export_model  # noqa: E402

# Every network of every example, at a size that runs in a moment.
SIZES = {
    ("alexnet.net", "alexnet"): {"classes": 10},
    ("attention_unet.net", "attention_unet"): {"base": 2, "size": 16},
    ("lenet5.net", "lenet5"): {},
    ("lenet_digits.net", "lenet_digits"): {},
    ("mlp_digits.net", "mlp_digits"): {},
    ("resnet18.net", "resnet18"): {"base": 4, "size": 64, "classes": 10},
    ("resnet18.net", "resnet18_cifar"): {"base": 4},
    ("simple_cnn.net", "simple_cnn"): {},
    ("unet.net", "unet"): {"base": 2, "size": 16},
    ("unet3d.net", "unet3d"): {"base": 2, "size": 8},
    ("unet_plus_plus.net", "unet_plus_plus"): {"base": 2, "size": 16},
    ("unet_shapes.net", "unet_shapes"): {"base": 2, "size": 16},
    ("unet_valid.net", "unet_valid"): {"base": 2, "size": 188},
    ("unet_resnet18.net", "unet_resnet18"): {"base": 4, "size": 32},
    ("vgg16.net", "vgg16"): {"width": 2, "size": 32, "classes": 10},
    ("vit_tiny.net", "vit_tiny"): {"dim": 16, "heads": 2, "depth": 1},
}

# The ops and attributes no example uses.
COVERAGE = """
network coverage {
    input x: [4, 12, 12]
    input s: [3, 20]
    a = x -> conv(8, 3, stride = 2, pad = 1, dilation = 1, groups = 2, bias = false)
    b = a -> batchnorm(affine = false) -> leaky_relu(0.2) -> dropout(0.3)
    c = b -> conv_transpose(4, 3, stride = 2, pad = 1, output_padding = 1)
    d = c -> tanh -> pad(2) -> avgpool(3, stride = 2, pad = 1, count_include_pad = false)
    e = d -> upsample(2, mode = bilinear) -> crop(x)
    f = maxpool(e, 3, stride = 2, pad = 1, ceil = true) -> upsample(2) -> crop(x)
    g = mul(f, sigmoid(f -> conv(1, 1)))
    output img = concat(g, x -> conv(2, 3, pad = same, dilation = 2)) -> softmax
    t = s -> conv(5, 3, pad = same) -> gelu -> conv(5, 1) -> gelu(approximate = tanh) -> silu
    output seq = t -> elu(0.5) -> softplus -> softplus(beta = 2.0) -> scale(0.5) -> global_avgpool
                   -> dense(3, bias = false)
    output tok = s -> permute([1, 0]) -> layernorm(affine = false) -> dense(4, bias = false)
                   -> log_softmax(axis = -1) -> mean(1)
    output gram = matmul(s, s, trans_a = true) -> softmax(axis = -1) -> reshape([4, -1])
    output causal = matmul(s, s, trans_b = true) -> softmax(axis = -1, causal = true)
    output joined = concat(s -> permute([1, 0]), s -> permute([1, 0]) -> scale(2.0), axis = 0)
    output flat1 = x -> flatten(1) -> permute([1, 0]) -> sum(1)
    output peak = x -> relu -> global_maxpool
    output clamp = x -> hardtanh -> prelu -> conv(2, 1) -> hardtanh(0, 6)
                     -> prelu(per_channel = true, init = 0.1) -> flatten
                     -> prelu(per_channel = true)
    output norms = x -> groupnorm(2) -> instancenorm -> groupnorm(4, affine = false)
                     -> instancenorm(affine = true)
    output resized = x -> upsample(size = [7, 9], mode = bilinear)
                       -> upsample(x, mode = bicubic, align_corners = true)
                       -> upsample(size = 5) -> upsample(1.5, mode = bilinear, align_corners = true)
    output borders = x -> pad(1, mode = reflect) -> pad([1, 2, 0, 1], mode = replicate)
                       -> pad(1, value = 0.5) -> conv(2, 3)
}
"""


def _ort_outputs(model, inputs: dict) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def _check(net, weights, batches=(1, 3), fold=False):
    model = export_model(net, weights, fold_batchnorm=fold).model
    for n in batches:
        rng = np.random.default_rng(n)
        x = {k: rng.standard_normal((n, *t.shape)).astype(np.float32)
             for k, t in net.inputs.items()}
        want = net.forward(weights, x)
        got = _ort_outputs(model, x)
        assert [o.name for o in model.graph.output] == list(net.outputs)
        for k, g in zip(net.outputs, got):
            assert g.shape == want[k].shape, k
            np.testing.assert_allclose(g, want[k], rtol=1e-4, atol=1e-5, err_msg=k)
    return model


def test_the_table_covers_every_example():
    have = {(p.name, n) for p in EXAMPLES.glob("*.net") for n in netlang.api.network_names(p)}
    assert have == set(SIZES)


def _weights(net):
    w = net.init(1)
    for k in w:   # running statistics that are not the identity
        if "running_var" in k:
            w[k] = np.linspace(0.5, 2.0, w[k].size, dtype=np.float32)
        elif "running_mean" in k:
            w[k] = np.linspace(-0.2, 0.2, w[k].size, dtype=np.float32)
    return w


@pytest.mark.parametrize("file,network", sorted(SIZES), ids=[n for _, n in sorted(SIZES)])
def test_every_example_exports_and_matches_onnxruntime(file, network):
    net = netlang.load(EXAMPLES / file, network=network, params=SIZES[(file, network)])
    w = _weights(net)
    model = _check(net, w)
    names = {i.name for i in model.graph.initializer}
    assert set(w) <= names   # parameters under their netlang names
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "N" for i in model.graph.input)
    lines = [n.doc_string for n in model.graph.node if n.op_type != "Identity"]
    # the .net line of each node (blocks may come from an imported file)
    assert all(re.fullmatch(r"\w+\.net:\d+", d) for d in lines), lines[:5]
    assert any(d.startswith(file + ":") for d in lines)


FOLD = """
network folds(c = 4) {
    input x: [3, 12, 12]
    a = x -> conv(c, 3, pad=same, bias=false) -> batchnorm -> relu
    b = a -> conv(c, 3, pad=same) -> batchnorm(affine=false)
    t = b -> conv_transpose(c, 2, stride=2) -> batchnorm
    j = concat(a, b) -> batchnorm -> relu
    output y = concat(t -> maxpool(2), j) -> conv(2, 1)
    output v = j -> global_avgpool -> dense(5) -> batchnorm
}
"""


@pytest.mark.parametrize("case", ["resnet18_cifar", "unet_resnet18", "folds"])
def test_batchnorm_folds_into_the_layer_before_it(case, capsys):
    """--fold-batchnorm: PyTorch's fuse_conv_bn_eval; outputs unchanged, a batchnorm kept
    only where no single layer feeds it (after a concat)."""
    if case == "folds":
        net = netlang.loads(FOLD)
    else:
        file = f"{case.split('_cifar')[0]}.net"
        net = netlang.load(EXAMPLES / file, network=case, params=SIZES[(file, case)])
    w = _weights(net)
    model = _check(net, w, fold=True)
    n_bn = sum(n.op == "batchnorm" for n in net.graph.nodes)
    kept = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert n_bn > 0 and len(kept) == (1 if case == "folds" else 0)
    if case == "folds":   # a conv without bias gains one; the batchnorm's tensors are gone
        names = {i.name for i in model.graph.initializer}
        assert "a.conv0.bias" in names and not any(k.startswith("a.batchnorm") for k in names)
        assert kept[0].name.startswith("j.batchnorm")
        assert "1 batchnorm(s) kept as BatchNormalization" in export_model(
            net, w, fold_batchnorm=True).notes[0]


def test_the_ops_no_example_uses_export_too():
    net = netlang.loads(COVERAGE)
    model = _check(net, net.init(0))
    types = {n.op_type for n in model.graph.node}
    assert {"ConvTranspose", "LeakyRelu", "Tanh", "Pad", "AveragePool", "Resize", "Slice",
            "MaxPool", "Mul", "Softmax", "GlobalAveragePool", "Gemm"} <= types
    assert "Dropout" not in types   # inference graph


@pytest.mark.parametrize("size,kind", [(1, "GlobalAveragePool"), ("[2, 4]", "AveragePool"),
                                       ("[3, 5]", "MatMul"), ("[4, 2]", "MatMul")])
def test_adaptive_avgpool_exports_exactly(size, kind):
    net = netlang.loads("network n {\n input x: [2, 6, 8]\n"
                        f" output y = x -> adaptive_avgpool({size})\n}}")
    model = _check(net, {})
    assert kind in {n.op_type for n in model.graph.node}


def test_split_parts_export_as_slices():
    net = netlang.loads("network n {\n input x: [6, 4]\n q, k = x -> chunk(2, axis = -1)\n"
                        " a, b, c = x -> split([1, 2, 3])\n"
                        " output y = matmul(q, k, trans_b = true)\n"
                        " output z = concat(c, b, a, axis = 0)\n}")
    model = _check(net, {})
    assert "Slice" in {n.op_type for n in model.graph.node}


def test_circular_padding_exports_from_opset_19():
    net = netlang.loads("network n {\n input x: [2, 5, 5]\n"
                        " output y = x -> pad([2, 1, 0, 3], mode = circular)\n}")
    with pytest.raises(NetlangError) as err:
        export_model(net, {})
    assert "E071" in str(err.value) and "circular padding needs opset 19" in str(err.value)
    model = export_model(net, {}, opset=19).model
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_ort_outputs(model, {"x": x})[0], net.forward({}, {"x": x})["y"])


@pytest.mark.parametrize("include", ["true", "false"])
def test_dilated_avgpool_exports_from_opset_19_and_imports_back(include, tmp_path):
    """onnxruntime's AveragePool with dilations is the oracle for the divisor rule (PyTorch
    has no dilated average pool); the model imports back to the same avgpool."""
    from netlang.interop.onnx_import import import_model

    net = netlang.loads("network n {\n input x: [2, 9, 8]\n output y = x -> avgpool(3, "
                        f"stride = 2, pad = 1, dilation = [2, 1], count_include_pad = {include})"
                        "\n}")
    with pytest.raises(NetlangError) as err:
        export_model(net, {})
    assert "E071" in str(err.value) and "AveragePool takes dilations from opset 19" in \
        str(err.value)
    model = export_model(net, {}, opset=19).model
    x = np.random.default_rng(0).standard_normal((2, 2, 9, 8)).astype(np.float32)
    want = net.forward({}, {"x": x})["y"]
    np.testing.assert_allclose(_ort_outputs(model, {"x": x})[0], want, rtol=1e-6, atol=1e-6)
    path = tmp_path / "pool.onnx"
    path.write_bytes(model.SerializeToString())
    back = netlang.loads(import_model(str(path)).source)
    np.testing.assert_allclose(back.forward({}, {"x": x})["y"], want, rtol=1e-6, atol=1e-6)


def test_the_command_writes_the_model_and_says_which_weights(tmp_path, capsys):
    out = tmp_path / "m" / "lenet.onnx"
    assert main(["export", str(EXAMPLES / "lenet5.net"), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "initial weights (init seed 0: no --weights given)" in text
    assert "inputs: image [N, 1, 28, 28]; outputs: logits [N, 10]" in text
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)


def test_trained_weights_export(tmp_path, capsys):
    net_file = EXAMPLES / "lenet_digits.net"
    run = tmp_path / "run"
    assert main(["train", str(net_file), "--set", "width=4", "--epochs", "1", "--out",
                 str(run), "--no-progress", "--backend", "numpy"]) == 0
    out = tmp_path / "d.onnx"
    assert main(["export", str(net_file), "--weights", str(run), "-o", str(out)]) == 0
    assert f"the weights of {run}" in capsys.readouterr().out
    from netlang.train import checkpoint

    ck = checkpoint.load(run)
    net = netlang.load(net_file, params={"width": 4})
    x = np.random.default_rng(0).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    got = _ort_outputs(onnx.load(str(out)), {"image": x})[0]
    np.testing.assert_allclose(got, net.forward(ck.weights, {"image": x})["logits"],
                               rtol=1e-4, atol=1e-5)


def test_refusals_are_clear(capsys, monkeypatch):
    assert main(["export", str(EXAMPLES / "lenet5.net"), "-o", "/tmp/x.onnx", "--opset",
                 "11"]) == 1
    assert "error[E071]: opset 11 is too old" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)
    with pytest.raises(NetlangError, match="E072"):
        export_model(netlang.load(EXAMPLES / "lenet5.net"), {})


def test_the_command_folds_batchnorm_on_request(tmp_path, capsys):
    src = tmp_path / "folds.net"
    src.write_text(FOLD)
    out = tmp_path / "folds.onnx"
    assert main(["export", str(src), "--fold-batchnorm", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "note: 1 batchnorm(s) kept as BatchNormalization (not right after a convolution " \
           "or dense layer whose only reader they are): j.batchnorm0" in text
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("BatchNormalization") == 1


def test_a_class_token_exports():
    """A `param` joined to every sample (ViT's class token) is expanded over the batch."""
    net = netlang.loads("""
network cls_token {
    input s: [3, 5]
    param cls: [1, 3]
    t = s -> permute([1, 0])
    output y = concat(cls, t, axis = 0) -> layernorm -> mean(0)
}""")
    model = _check(net, net.init(2))
    assert "Expand" in {node.op_type for node in model.graph.node}
