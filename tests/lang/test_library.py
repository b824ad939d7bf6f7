"""The library's blocks (netlang/lang/library.net), visible to every program: the
`attention` block against PyTorch's own scaled_dot_product_attention, a program's own
block in place of the library's, `require`, and diagnostics that show the user's call."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.diagnostics import NetlangError
from tests.backends.test_cuda import emu
from tests.lang.test_lower import check_err

torch = pytest.importorskip("torch")
F = torch.nn.functional

T, DIM, HEADS = 6, 8, 2

NET = """
network n(causal = false, dropout = 0.0) {{
    input x: [{t}, {dim}]
    output y = x -> attention({dim}, {heads}, causal=causal, dropout=dropout)
}}
"""


def _net(**params):
    return netlang.loads(NET.format(t=T, dim=DIM, heads=HEADS), params=params)


def _error(text: str) -> str:
    return check_err(text)


def _twin(w: dict, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Multi-head attention from PyTorch's primitives: four linear maps and F.scaled_dot_
    product_attention (its own softmax and causal mask), batch first."""
    b, t, d = x.shape
    hd = d // HEADS

    def lin(y, name):
        return F.linear(y, w[f"y.attention.{name}.weight"], w[f"y.attention.{name}.bias"])

    def split(y):
        return y.reshape(b, t, HEADS, hd).transpose(1, 2)

    q, k, v = (split(lin(x, f"{s}.dense0")) for s in "qkv")
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return lin(o.transpose(1, 2).reshape(b, t, d), "dense0")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["numpy", pytest.param("cpu", marks=emu),
                                     pytest.param("cuda-emu", marks=emu)])
def test_attention_matches_pytorch_sdpa(causal, backend):
    net = _net(causal=causal)
    rng = np.random.default_rng(3)
    weights = {k: v.astype(np.float64) for k, v in net.init(1).items()}
    x = rng.standard_normal((3, T, DIM))
    target = rng.standard_normal((3, T, DIM))
    tw = {k: torch.tensor(v, requires_grad=True) for k, v in weights.items()}
    want = _twin(tw, torch.tensor(x), causal)
    loss = F.mse_loss(want, torch.tensor(target))
    loss.backward()
    f64 = backend == "numpy"
    dtype = np.float64 if f64 else np.float32
    rtol, atol = (1e-9, 1e-12) if f64 else (2e-4, 2e-5)
    cast = {k: v.astype(dtype) for k, v in weights.items()}
    got = net.forward(cast, {"x": x.astype(dtype)}, dtype=dtype, backend=backend)["y"]
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=rtol, atol=atol)
    value, grads = net.value_and_grad(cast, {"x": x.astype(dtype), "target": target.astype(dtype)},
                                      loss="mse(y, target)", dtype=dtype, backend=backend)
    assert abs(value - loss.item()) <= 10 * (rtol * abs(loss.item()) + atol)
    assert set(grads) == set(tw)
    for k, t in tw.items():
        np.testing.assert_allclose(grads[k], t.grad.numpy(), rtol=10 * rtol, atol=10 * atol,
                                   err_msg=k)


def test_causal_attention_ignores_later_tokens():
    """Changing the last token changes no earlier output."""
    net = _net(causal=True)
    w = net.init(0)
    x = np.random.default_rng(0).standard_normal((1, T, DIM)).astype(np.float32)
    y = x.copy()
    y[0, -1] += 1.0
    a, b = net.forward(w, {"x": x})["y"], net.forward(w, {"x": y})["y"]
    np.testing.assert_allclose(a[0, :-1], b[0, :-1], rtol=1e-6, atol=1e-7)
    assert np.abs(a[0, -1] - b[0, -1]).max() > 1e-3


def test_attention_dropout_acts_while_training_only():
    net, plain = _net(dropout=0.5), _net()
    assert [n.op for n in net.graph.nodes].count("dropout") == 1
    assert "dropout" not in [n.op for n in plain.graph.nodes]
    w = net.init(0)
    x = np.random.default_rng(0).standard_normal((2, T, DIM)).astype(np.float32)
    target = np.zeros_like(x)
    np.testing.assert_allclose(net.forward(w, {"x": x})["y"], plain.forward(w, {"x": x})["y"])
    on, _ = net.value_and_grad(w, {"x": x, "target": target}, loss="mse(y, target)")
    off, _ = plain.value_and_grad(w, {"x": x, "target": target}, loss="mse(y, target)")
    assert on != pytest.approx(off)


def test_a_block_of_the_program_takes_the_place_of_the_librarys():
    net = netlang.loads("""
block attention(dim, heads) {
    input x
    return x -> dense(dim)
}
network n() {
    input x: [4, 6]
    output y = x -> attention(6, 4)
}
""")
    assert [n.op for n in net.graph.nodes if n.op not in ("input", "param")] == ["dense"]


def test_bad_arguments_show_the_callers_line():
    text = _error(NET.format(t=T, dim=10, heads=4))
    assert "error[E082]: attention: `dim` must be a multiple of `heads`" in text
    assert "<netlang>/library.net" in text
    assert "t.net:4:21" in text and "in `attention`, called here" in text
    assert "the condition is false: `dim % heads == 0` is `2 == 0`" in text
    assert "error[E082]: attention: `heads` must be positive" in _error(
        NET.format(t=T, dim=8, heads=0))


def test_a_shape_error_inside_an_imported_block_shows_the_callers_line(tmp_path):
    (tmp_path / "blocks.net").write_text("block tokens(d) {\n    input x\n"
                                         "    return x -> reshape([d, -1])\n}\n")
    (tmp_path / "main.net").write_text('import "blocks.net"\nnetwork n() {\n'
                                       "    input x: [3, 5]\n    output y = x -> tokens(4)\n}\n")
    with pytest.raises(NetlangError) as exc:
        netlang.load(tmp_path / "main.net")
    d = exc.value.diagnostics[0]
    assert d.code == "E080" and d.span.file.endswith("blocks.net")
    assert [(sp.file.endswith("main.net"), sp.line, label) for sp, label in d.related] == \
        [(True, 4, "in `tokens`, called here")]


def test_require():
    text = _error("""
block b(c) {
    require c >= 1, "b: `c` must be at least 1"
    input x
    return x -> conv(c, 1)
}
network n() {
    input x: [3, 8, 8]
    output y = x -> b(0)
}
""")
    assert "error[E082]: b: `c` must be at least 1" in text
    assert "t.net:3:5" in text and "t.net:9:21" in text
    assert "`c >= 1` is `0 >= 1`" in text and "help: check the arguments of the call" in text
    text = _error('network n(k = 2) {\n    require k < 2, "k must be below 2"\n'
                  "    input x: [3, 8, 8]\n    output y = x -> conv(4, k)\n}\n")
    assert "error[E082]: k must be below 2" in text
    assert "help: check the network's parameters (and `--set`)" in text
    assert "error[E012]: a condition reads parameters" in _error(
        'network n() {\n    input x: [3, 8, 8]\n    require x, "no"\n'
        "    output y = x -> relu\n}\n")
    ok = netlang.loads('network n(k = 1) {\n    require k < 2, "k must be below 2"\n'
                       "    input x: [3, 8, 8]\n    output y = x -> conv(4, k)\n}\n")
    assert ok.param_count() == 16
