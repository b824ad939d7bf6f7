"""Tokens and axes: reshape, permute, matmul, softmax/mean over an axis, dense and
layernorm on rows, `param` declarations; their shapes and their errors, by text."""

from __future__ import annotations

import numpy as np

import netlang
from tests.lang.test_lower import check_err

HEAD = ("network n {\n    input image: [8, 4, 4]\n"
        "    t = image -> reshape([8, -1]) -> permute([1, 0])\n")


def net(body: str):
    return netlang.loads(HEAD + body + "\n}", file="t.net")


def err(body: str) -> str:
    return check_err(HEAD + body + "\n}")


def test_image_to_tokens_and_back():
    n = net("    output y = t -> dense(5) -> layernorm -> softmax(axis=-1)\n"
            "    output z = t -> mean(0) -> dense(3)")
    assert n.outputs["y"].shape == (16, 5)
    assert n.outputs["z"].shape == (3,)
    assert n.params["y.dense0.weight"].shape == (5, 8)
    assert n.params["y.layernorm0.weight"].shape == (5,)


def test_reshape_keeps_the_element_count():
    text = err("    output y = t -> reshape([8, 15])")
    assert "error[E080]: reshape of [16, 8] (128 elements) to [8, 15] (120 elements)" in text
    assert "-1 in one place stands for the size" in text
    assert "t.net:4" in text
    assert "not a multiple of 3" in err("    output y = t -> reshape([3, -1])")
    assert "at most one -1" in err("    output y = t -> reshape([-1, -1])")


def test_axes_that_the_value_does_not_have():
    text = err("    output y = t -> softmax(axis=2)")
    assert "error[E081]: softmax: axis 2 of a [16, 8] input (it has 2 axes after the batch)" \
        in text and "give an axis from -2 to 1" in text
    assert "error[E081]" in err("    output y = t -> mean(-3)")
    text = err("    output y = t -> softmax(axis=0, causal=true)")
    assert "error[E081]: softmax(causal=true) over axis 0 of a [16, 8] input" in text
    assert "softmax(axis=-1, causal=true)" in text
    text = err("    output y = t -> permute([0, 0])")
    assert "error[E081]: permute([0, 0]) of [16, 8]: the axes must name each of the 2" in text
    assert "permute([1, 0])" in text


def test_matmul_shapes():
    n = net("    output y = matmul(t, t, trans_a=true)")
    assert n.outputs["y"].shape == (8, 8)
    text = err("    output y = matmul(t, t)")
    assert "error[E020]: matmul of [16, 8] and [16, 8]: the first has 8 columns, the " \
           "second 16 rows" in text and "trans_b=true" in text
    text = err("    h = t -> reshape([2, 8, 8])\n    output y = matmul(h, t)")
    assert "the leading (batch-like) axes differ" in text


def test_dense_refuses_an_image():
    text = check_err("network n {\n    input image: [8, 4, 4]\n"
                     "    output y = image -> dense(3)\n}")
    assert "error[E022]: dense takes [F] or tokens [T, F], got [8, 4, 4]" in text
    assert "insert `flatten` before `dense`" in text


def test_param_declarations():
    n = net("    param pos: [16, 8]\n    param gain: [16, 8] = ones\n"
            "    output y = add(t, pos) -> mul(gain)")
    assert n.params["pos"].shape == (16, 8) and n.params["gain"].shape == (16, 8)
    w = n.init(seed=3)
    assert np.all(w["gain"] == 1)
    assert 0.01 < w["pos"].std() < 0.03 and abs(w["pos"].mean()) < 0.01
    w = net("    param pos: [16, 8] = uniform(0.5)\n    output y = add(t, pos)").init()
    assert w["pos"].min() >= -0.5 and w["pos"].max() <= 0.5 and w["pos"].std() > 0.2


def test_param_declarations_in_blocks_are_named_by_the_call():
    n = netlang.loads("""
block scaled(c) {
    input x
    param g: [c] = zeros
    return mul(x, g)
}
network n {
    input v: [4]
    output y = v -> scaled(4) -> scaled(4)
}""")
    assert sorted(n.params) == ["y.scaled.g", "y.scaled_1.g"]


def test_bad_param_declarations():
    text = err("    param pos: [16, 0]\n    output y = add(t, pos)")
    assert "error[E012]: parameter dimensions must be positive integers, got `0`" in text
    text = err("    param pos: [16, 8] = gauss(0.1)\n    output y = add(t, pos)")
    assert "a parameter's initialiser is `normal(std)`, `uniform(bound)`, `zeros` or " \
           "`ones`" in text
    text = err("    param pos: [16, 8] = zeros(1)\n    output y = add(t, pos)")
    assert "`zeros` takes no arguments" in text
    text = err("    param pos: [16, 8] = normal(-1)\n    output y = add(t, pos)")
    assert "`normal` needs a non-negative number, got `-1`" in text


def test_groupnorm_groups_must_divide_the_channels():
    text = check_err("network n {\n    input image: [6, 4, 4]\n"
                     "    output y = image -> groupnorm(4)\n}")
    assert "error[E024]: groupnorm: 4 groups do not divide 6 channels" in text
    text = check_err("network n {\n    input v: [6]\n    output y = v -> instancenorm\n}")
    assert "error[E025]: instancenorm needs [C, L], [C, H, W] or [C, D, H, W], got [6]" in text
    assert "`layernorm`" in text
    text = check_err("network n {\n    input image: [6, 1, 1]\n"
                     "    output y = image -> instancenorm\n}")
    assert "error[E025]: instancenorm of [6, 1, 1] normalises one value per channel: the " \
           "output would be its bias whatever the input" in text
    text = check_err("network n {\n    input image: [6, 1]\n"
                     "    output y = image -> groupnorm(6)\n}")
    assert "groupnorm of [6, 1] normalises one value per group" in text
    n = netlang.loads("network n {\n    input image: [6, 4, 4]\n"
                      "    output y = image -> groupnorm(3) -> instancenorm\n}")
    assert n.params["y.groupnorm0.weight"].shape == (6,)
    assert not any("instancenorm" in k for k in n.params)   # affine=false by default


def test_channels_and_size_of_a_value():
    n = netlang.loads("""
block keep(k = 3) {
    input x
    return x -> conv(channels(x), k, pad=same) -> relu
}
network n {
    input image: [5, 8, 8]
    t = image -> reshape([5, -1]) -> permute([1, 0])
    output y = image -> keep -> conv(channels(image) * 2, 1)
    output z = t -> dense(size(t, 0)) -> mean(size(t, -1) - 5)
}""")
    assert n.outputs["y"].shape == (10, 8, 8)
    assert n.params["y.keep.conv0.weight"].shape == (5, 5, 3, 3)
    assert n.outputs["z"].shape == (64,)


def test_channels_errors():
    text = check_err("network n {\n    input x: [4]\n    output y = x -> dense(channels(3))\n}")
    assert "error[E013]: `channels` takes a value" in text
    text = check_err("network n {\n    input x: [4]\n    output y = x -> dense(size(x, 1))\n}")
    assert "error[E081]: `size`: `1` is not an axis of a [4] value" in text
    text = check_err("network n {\n    input x: [4, 4]\n"
                     "    y = x -> reshape([3, -1])\n    output z = y -> dense(channels(y))\n}")
    assert "error[E080]" in text and "t.net:3" in text


def test_param_declarations_are_drawn():
    dot = netlang.loads(HEAD + "    param pos: [16, 8]\n    output y = add(t, pos)\n}",
                        file="t.net").to_dot()
    assert 'label="param pos\\n[16, 8]"' in dot
    assert "weight" not in dot   # layers' own parameters are not
