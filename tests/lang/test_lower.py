"""Lowering: names, blocks, repeat, parameters, and the errors users make (by their text)."""

from __future__ import annotations

import pytest

import netlang
from netlang.diagnostics import NetlangError
from tests.conftest import render_error


def check_err(src: str, **kw) -> str:
    with pytest.raises(NetlangError) as ei:
        netlang.loads(src, file="t.net", **kw)
    return render_error(ei.value)


def test_hierarchical_names_and_param_layouts():
    net = netlang.loads("""
block double_conv(c) { conv(c, 3, pad=same) -> relu -> conv(c, 3, pad=same) -> relu }
network n(base = 4) {
    input image: [2, 16, 16]
    d1 = image -> double_conv(base) -> double_conv(base)
    output y = d1 -> conv(1, 1)
}""")
    names = [n.name for n in net.graph.nodes]
    assert "d1.double_conv.conv0" in names and "d1.double_conv_1.conv1" in names
    assert net.params["d1.double_conv.conv0.weight"].shape == (4, 2, 3, 3)
    assert net.params["d1.double_conv.conv0.bias"].shape == (4,)
    assert net.params["y.conv0.weight"].shape == (1, 4, 1, 1)


def test_repeat_index_and_arithmetic():
    net = netlang.loads("""
network n(base = 8) {
    input x: [3, 32, 32]
    output y = x -> repeat 3 as i { conv(base * 2 ** i, 3, pad=1) -> maxpool(2) }
}""")
    assert net.outputs["y"].shape == (32, 4, 4)
    assert "y.repeat0.2.conv0" in [n.name for n in net.graph.nodes]


def test_multi_input_block_and_forward_reference():
    net = netlang.loads("""
block gate(inter) {
    input g, x
    psi = add(g -> conv(inter, 1), x -> conv(inter, 1)) -> relu -> conv(1, 1) -> sigmoid
    return mul(x, psi)
}
network n {
    input a: [8, 16, 16]
    output y = gated -> conv(2, 1)
    gated = gate(b, a, 4)
    b = a -> conv(8, 3, pad=1)
}""")
    assert net.outputs["y"].shape == (2, 16, 16)


def test_set_overrides_parameters():
    src = "network n(c = 4) { input x: [1, 8, 8]  output y = x -> conv(c, 3) }"
    assert netlang.loads(src, params={"c": "7"}).outputs["y"].shape == (7, 6, 6)
    assert "has no parameter `d`" in check_err(src, params={"d": 1})
    assert "did you mean `c`?" in check_err(src, params={"cc": 1})


def test_import_blocks(tmp_path):
    (tmp_path / "blocks.net").write_text("block twice(c) { conv(c, 1) -> conv(c, 1) }")
    (tmp_path / "main.net").write_text(
        'import "blocks.net"\nnetwork n { input x: [1, 4, 4]  output y = x -> twice(3) }')
    assert netlang.load(tmp_path / "main.net").outputs["y"].shape == (3, 4, 4)


def test_import_errors(tmp_path):
    (tmp_path / "a.net").write_text('import "b.net"\nnetwork n { input x: [1]  output y = x }')
    (tmp_path / "b.net").write_text('import "a.net"')
    with pytest.raises(NetlangError) as ei:
        netlang.load(tmp_path / "a.net")
    assert "E003" in str(ei.value) and "import cycle" in str(ei.value)
    (tmp_path / "c.net").write_text('import "missing.net"')
    with pytest.raises(NetlangError, match="no such file"):
        netlang.load(tmp_path / "c.net")


# Each row: source, code, fragments of the rendered diagnostic.
ERRORS = [
    ("network n { input x: [1, 8, 8]  output y = x -> conv(channels, 3) }",
     "E014", ["`channels` is not defined"]),
    ("network n(base = 4) { input x: [1, 8, 8]  output y = x -> conv(bse, [k, 3]) }",
     "E014", ["`bse` is not defined", "did you mean `base`?"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(4, [k, 3]) }",
     "E014", ["`k` is not defined"]),
    ("network n { input x: [4, 8]  output y = x -> sum_to(2, 16) }",
     "E010", ["`sum_to` is not a layer", "the compiler uses inside"]),
    ("network n { input x: [4, 8]  output y = x -> bce(x) }",
     "E010", ["`bce` is not a layer", "losses belong in the `train` section"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(min(x, 3), 1) }",
     "E012", ["`min` takes numbers, got a tensor"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(max(), 1) }",
     "E013", ["`max` needs at least one number"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(max(1, b=2), 1) }",
     "E011", ["`max` has no argument `b`"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv2d(4, 3) }",
     "E010", ["unknown layer or block `conv2d`", "did you mean `conv`?"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(4, 3, strde=2) }",
     "E011", ["`conv` has no argument `strde`", "did you mean `stride`?", "signature: conv("]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(4, 3, pad=sme) }",
     "E012", ["`pad` must be `same`, `valid`", "did you mean `same`?"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(4) }",
     "E013", ["`conv` needs `kernel`", "for example `conv(64, 3, pad=same)`"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(4, 3, 1, 1, 1, 1, true, pytorch, 9) }",
     "E013", ["takes 8 arguments besides its inputs, got 9"]),
    ("network n { input x: [1, 8, 8]  output y = add(x) }",
     "E013", ["`add` needs 2 inputs, got 1"]),
    ("network n { input image: [1, 8, 8]  output y = imgae -> relu }",
     "E014", ["`imgae` is not defined", "did you mean `image`?"]),
    ("network n { input x: [1, 8, 8]  a = x -> relu  a = x -> tanh  output y = a }",
     "E015", ["`a` is defined twice", "first defined here"]),
    ("network n { input x: [1, 8, 8]  a = b -> relu  b = a -> relu  output y = b }",
     "E027", ["cycle between values: `a` -> `b` -> `a`"]),
    ("block b(c) { b(c) }  network n { input x: [1, 8, 8]  output y = x -> b(2) }",
     "E027", ["block `b` calls itself"]),
    ("network n(c = 4) { input x: [1, 8, 8]  output y = x -> conv(c / 0, 3) }",
     "E026", ["division by zero"]),
    ("network n { input x: [1, 8, 8]  output y = x -> conv(2.5, 3) }",
     "E012", ["`channels` must be an integer, got `2.5`"]),
    ("network n { input x: [1, 8, 8]  y = x -> relu }",
     "E013", ["declares no output"]),
    ("network n { input x: [1, 8, 8]  output y = x -> x }",
     "E012", ["cannot pipe into the value `x`"]),
    ("network n { input x: [1, 8, 8]  output y = x -> mse }",
     "E010", ["`mse` is not a layer", "losses belong in the `train` section"]),
    ("network n { input x  output y = x }",
     "E012", ["network input `x` needs a shape"]),
    ("block b(c) { conv(c, 1) }  network n { input x: [1, 8, 8]  output y = x -> b(2, 3) }",
     "E013", ["block `b` takes 1 parameter, got 2"]),
    ("block b(c) { conv(c, 1) }  network n { input x: [1, 8, 8]  output y = x -> b(d=2) }",
     "E011", ["block `b` has no parameter `d`"]),
]


@pytest.mark.parametrize("src,code,frags", ERRORS, ids=[f"{r[1]}-{r[2][0][:30]}" for r in ERRORS])
def test_lowering_errors(src, code, frags):
    out = check_err(src)
    assert out.startswith(f"error[{code}]"), out
    for f in frags:
        assert f in out, out
    assert "--> t.net:" in out
    assert "Traceback" not in out


def test_unused_value_warns():
    net = netlang.loads("network n { input x: [1, 8, 8]  a = x -> relu  output y = x -> tanh }")
    assert [w.code for w in net.warnings] == ["W002"]
    assert "value `a` is never used" in net.warnings[0].message


def test_several_networks_need_a_choice():
    src = ("network a { input x: [1]  output y = x -> relu }\n"
           "network b { input x: [1]  output y = x -> tanh }")
    assert "several networks" in check_err(src)
    assert netlang.loads(src, network="b").name == "b"
    assert "did you mean `b`?" in check_err(src, network="bb")


def test_min_and_max_in_arguments():
    net = netlang.loads("""
network n(base = 48) {
    input x: [1, 8, 8]
    output y = x -> conv(min(base * 2, 64), 3) -> conv(max(2, min(base, 8), 4), 1)
}""")
    assert net.outputs["y"].shape == (8, 6, 6)
    assert net.params["y.conv0.weight"].shape == (64, 1, 3, 3)


def test_a_bare_layer_name_starts_a_block_body():
    net = netlang.loads("""
block act(c) { relu }
block head(c) { tanh -> conv(c, 1) }
network n { input x: [1, 8, 8]  output y = x -> act(1) -> head(2) }""")
    assert [n.op for n in net.graph.nodes if n.op not in ("input", "param")] == \
        ["relu", "tanh", "conv"]


def test_an_unused_network_parameter_warns():
    net = netlang.loads("network n(a = 2, b = a * 2, depth = 3) { input x: [1, 8, 8]  "
                        "output y = x -> conv(b, 1) }", file="t.net")
    assert [w.code for w in net.warnings] == ["W003"]
    assert "network parameter `depth` is never used" in net.warnings[0].message
    assert net.warnings[0].span.line == 1


COND = """
block conv_bn(c, bn = true, act = relu) {
    y = conv(c, 3, pad=1, bias=false)
    if bn {
        z = y -> batchnorm
    } else {
        z = y -> scale(1.0)
    }
    if act == relu { z -> relu } else if act == gelu { z -> gelu } else { z }
}
network n(depth = 2) {
    input x: [3, 8, 8]
    a = x -> conv_bn(4) -> conv_bn(4, bn = false, act = gelu) -> conv_bn(4, act = none)
    if depth > 1 {
        output y = a -> conv(2, 1)
    } else {
        output y = a
    }
}
"""


def test_if_else_on_parameters():
    net = netlang.loads(COND)
    ops = [n.op for n in net.graph.nodes]
    assert ops.count("batchnorm") == 2 and ops.count("gelu") == 1 and ops.count("relu") == 1
    assert net.outputs["y"].shape == (2, 8, 8)
    assert netlang.loads(COND, params={"depth": 1}).outputs["y"].shape == (4, 8, 8)


def test_if_errors():
    text = check_err("network n {\n    input x: [4]\n    c = 2\n    if c > 1 { output y = x }\n}")
    assert "error[E012]: a condition reads parameters; `c` is a value of the body" in text
    assert "`if bn { ... }`" in text
    text = check_err("block b() {\n    input x\n    if x { return x }\n}\n"
                     "network n {\n    input v: [4]\n    output y = v -> b\n}")
    assert "error[E012]: a condition reads parameters, not tensors" in text
    text = check_err("network n {\n    input x: [4]\n    if flag { output y = x }\n}")
    assert "error[E014]: `flag` is not defined" in text
    text = check_err("network n(f = true) {\n    input x: [4]\n    if f < 2 { output y = x }\n}")
    assert "error[E012]: `<` compares numbers" in text
