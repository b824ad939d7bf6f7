"""Shape rules against their documented formulas and against PyTorch; shape diagnostics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import netlang
from netlang.diagnostics import NetlangError
from tests.conftest import render_error


def out_shape(layer: str, shape=(3, 17, 17)) -> tuple[int, ...]:
    src = f"network n {{ input x: {list(shape)}  output y = x -> {layer} }}"
    return netlang.loads(src).outputs["y"].shape


def check_err(src: str) -> str:
    with pytest.raises(NetlangError) as ei:
        netlang.loads(src, file="t.net")
    return render_error(ei.value)


CONV_CASES = list(itertools.product([15, 16], [1, 3, 4], [1, 2, 3], [0, 1, 2], [1, 2]))


@pytest.mark.parametrize("h,k,s,p,d", CONV_CASES)
def test_conv_formula(h, k, s, p, d):
    keff = d * (k - 1) + 1
    if h + 2 * p < keff:
        return
    got = out_shape(f"conv(4, {k}, stride={s}, pad={p}, dilation={d})", (2, h, h))
    want = (h - keff + 2 * p) // s + 1
    assert got == (4, want, want)


@pytest.mark.parametrize("h,s,k", list(itertools.product([7, 8, 9, 16, 17], [1, 2, 3], [1, 3, 4])))
def test_same_padding_is_ceil_of_h_over_s(h, s, k):
    got = out_shape(f"conv(2, {k}, stride={s}, pad=same)", (1, h, h))
    assert got[1:] == (math.ceil(h / s),) * 2


@pytest.mark.parametrize("h,k,s,p,op", [(5, 2, 2, 0, 0), (5, 3, 2, 1, 1), (7, 4, 3, 1, 2),
                                        (8, 3, 1, 0, 0)])
def test_conv_transpose_formula(h, k, s, p, op):
    got = out_shape(f"conv_transpose(3, {k}, stride={s}, pad={p}, output_padding={op})",
                    (2, h, h))
    assert got[1] == (h - 1) * s - 2 * p + (k - 1) + op + 1


def test_ranks_1d_3d():
    assert out_shape("conv(4, 3)", (2, 10)) == (4, 8)
    assert out_shape("conv(4, 3, pad=1) -> maxpool(2)", (2, 8, 8, 8)) == (4, 4, 4, 4)
    assert out_shape("conv(4, [3, 1], pad=[1, 0])", (2, 8, 8)) == (4, 8, 8)


def test_pool_ceil_mode_drops_window_starting_in_padding():
    # Values as PyTorch gives them (the random cases below compare many more).
    assert out_shape("maxpool(2, stride=2, pad=1, ceil=true)", (1, 6, 6))[1] == 4
    assert out_shape("maxpool(3, stride=2, ceil=true)", (1, 6, 6))[1] == 3
    assert out_shape("maxpool(3, stride=2)", (1, 6, 6))[1] == 2


def test_misc_layer_shapes():
    assert out_shape("global_avgpool") == (3,)
    assert out_shape("flatten") == (3 * 17 * 17,)
    assert out_shape("upsample(2)") == (3, 34, 34)
    assert out_shape("upsample(1.5, mode=bilinear)") == (3, 25, 25)
    assert out_shape("crop(size=[9, 9])") == (3, 9, 9)
    assert out_shape("pad(2)") == (3, 21, 21)
    assert out_shape("pad([1, 0, 2, 3])") == (3, 18, 22)


@pytest.mark.parametrize("case", range(40))
def test_shapes_match_pytorch(case, torch_mod):
    torch = torch_mod
    F = torch.nn.functional
    rng = np.random.default_rng(case)
    h = int(rng.integers(6, 20))
    k = int(rng.integers(1, 5))
    s = int(rng.integers(1, 4))
    d = int(rng.integers(1, 3))
    p = int(rng.integers(0, 3))
    x = torch.zeros(1, 2, h, h)
    if h + 2 * p >= d * (k - 1) + 1:
        y = F.conv2d(x, torch.zeros(3, 2, k, k), stride=s, padding=p, dilation=d)
        assert out_shape(f"conv(3, {k}, stride={s}, pad={p}, dilation={d})", (2, h, h)) \
            == tuple(y.shape[1:])
    pp = min(p, k // 2)
    for ceil in (False, True):
        if h + 2 * pp >= k:
            y = F.max_pool2d(x, k, s, pp, ceil_mode=ceil)
            assert out_shape(f"maxpool({k}, stride={s}, pad={pp}, ceil={str(ceil).lower()})",
                             (2, h, h)) == tuple(y.shape[1:])
            y = F.avg_pool2d(x, k, s, pp, ceil_mode=ceil)
            assert out_shape(f"avgpool({k}, stride={s}, pad={pp}, ceil={str(ceil).lower()})",
                             (2, h, h)) == tuple(y.shape[1:])
    op = int(rng.integers(0, max(s, d)))
    y = F.conv_transpose2d(x, torch.zeros(2, 3, k, k), stride=s, padding=p, output_padding=op,
                           dilation=d)
    if min(y.shape[2:]) > 0:
        assert out_shape(f"conv_transpose(3, {k}, stride={s}, pad={p}, output_padding={op}, "
                         f"dilation={d})", (2, h, h)) == tuple(y.shape[1:])
    if s > 1 and k <= h:
        # `same` with stride: PyTorch refuses; compare with TensorFlow's rule out = ceil(h / s).
        assert out_shape(f"conv(3, {k}, stride={s}, pad=same)", (2, h, h))[1] == -(-h // s)


UNET_ODD = """
block double_conv(c) { conv(c, 3, pad=same) -> relu -> conv(c, 3, pad=same) -> relu }
network unet(base = 8) {
    input image: [1, 250, 250]
    e1  = image -> double_conv(base)
    e2  = e1 -> maxpool(2) -> double_conv(base * 2)
    mid = e2 -> maxpool(2) -> double_conv(base * 4)
    d2  = concat(e2, mid -> upsample(2) -> conv(base * 2, 3, pad=same)) -> double_conv(base * 2)
    d1  = concat(e1, d2  -> upsample(2) -> conv(base, 3, pad=same))     -> double_conv(base)
    output mask = d1 -> conv(1, 1) -> sigmoid
}
"""


def test_concat_mismatch_is_traced_to_the_pool_and_valid_sizes_are_given():
    out = check_err(UNET_ODD)
    assert out.startswith("error[E020]: concat inputs differ in size: [16, 125, 125] and "
                          "[16, 124, 124]")
    assert "--> t.net:8:11" in out
    assert "maxpool floors H and W = 125 to 62, dropping 1 pixel" in out
    assert "`e2` is [16, 125, 125]" in out
    assert "help: H and W must be multiples of 4; nearest valid: 248, 252" in out
    assert "crop(x, like)" in out


def test_add_mismatch_names_both_shapes():
    out = check_err("network n { input x: [4, 8, 8]\n"
                    "  output y = add(x, x -> conv(4, 3)) }")
    assert "error[E020]: add of [4, 8, 8] and [4, 6, 6]: shapes differ" in out


def test_mul_broadcasts_a_one_channel_gate():
    net = netlang.loads("network n { input x: [4, 8, 8]\n"
                        "  output y = mul(x, x -> conv(1, 1) -> sigmoid) }")
    assert net.outputs["y"].shape == (4, 8, 8)


SHAPE_ERRORS = [
    ("network n { input x: [1, 4, 4]  output y = x -> conv(2, 7) }",
     "E021", ["kernel 7 is larger than the padded input (H = 4)"]),
    ("network n { input x: [1, 8, 8]  output y = x -> dense(10) }",
     "E022", ["dense takes [F] or tokens [T, F], got [1, 8, 8]",
              "insert `flatten` before `dense`"]),
    ("network n { input x: [1, 8, 8]  y = x -> conv(2, 3)  y: [2, 8, 8]  output z = y }",
     "E023", ["shape assertion failed: `y` is [2, 6, 6], not [2, 8, 8]"]),
    ("network n { input x: [6, 8, 8]  output y = x -> conv(4, 3, groups=4) }",
     "E024", ["groups = 4 must divide both the input channels (6)"]),
    ("network n { input x: [64]  output y = x -> conv(4, 3) }",
     "E025", ["conv needs a [C, L], [C, H, W] or [C, D, H, W] input, got [64]"]),
    ("network n { input x: [1, 8, 8]  output y = x -> crop(size=[9, 9]) }",
     "E021", ["crop: H = 8 is smaller than the target 9", "use `pad`"]),
    ("network n { input x: [1, 8, 8]  output y = x -> maxpool(2, pad=2) }",
     "E012", ["padding 2 is more than half the kernel"]),
    ("network n { input x: [1, 8, 8]  output y = x -> upsample(2, mode=trilinear) }",
     "E012", ["mode `trilinear` needs a different input rank", "use `nearest` or `bilinear`"]),
]


@pytest.mark.parametrize("src,code,frags", SHAPE_ERRORS, ids=[r[1] + "-" + r[2][0][:25]
                                                             for r in SHAPE_ERRORS])
def test_shape_errors(src, code, frags):
    out = check_err(src)
    assert out.startswith(f"error[{code}]"), out
    for f in frags:
        assert f in out, out


def test_assertion_wildcard_passes():
    netlang.loads("network n { input x: [1, 8, 8]  y = x -> conv(2, 3)  y: [2, _, _]  "
                  "output z = y }")


def test_pool_dropping_pixels_warns():
    net = netlang.loads("network n { input x: [1, 9, 9]  output y = x -> maxpool(2) }",
                        file="t.net")
    assert [w.code for w in net.warnings] == ["W001"]
    assert "maxpool drops 1 pixel of H and W = 9" in net.warnings[0].message
    # Strided 3x3 convs with padding 1 on even sizes drop nothing: no warning.
    net = netlang.loads("network n { input x: [1, 8, 8]  output y = x -> conv(2, 3, stride=2, "
                        "pad=1) }")
    assert net.warnings == []
