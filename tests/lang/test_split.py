"""`split` and `chunk` with `a, b = ...`: PyTorch's torch.split / torch.chunk parts, their
gradients (each part's gradient placed back, zeros elsewhere) against PyTorch in float64
and on the compiled backends, ordering with the other statements, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.diagnostics import NetlangError
from tests.backends.test_cuda import HAVE_CXX

# nn.MultiheadAttention's packed in-projection: one dense makes q, k and v.
SRC = """
network n {
  input x: [5, 4]
  output y = attn
  attn = matmul(q, k, trans_b = true) -> softmax(axis = -1) -> matmul(v)
  q, k, v = x -> permute([1, 0]) -> dense(9) -> chunk(3, axis = -1)
  a, b, c = x -> split([2, 2, 1])
  output z = concat(mul(a, b -> sigmoid), c, axis = 0)
}
"""


def _torch(torch, weights, x):
    F = torch.nn.functional
    w = {k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()}
    dense = [k for k in w if "dense" in k and k.endswith("weight")][0]
    t = x.permute(0, 2, 1)
    q, k, v = torch.chunk(F.linear(t, w[dense], w[dense[:-6] + "bias"]), 3, dim=-1)
    attn = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
    a, b, c = torch.split(x, [2, 2, 1], dim=1)
    return attn, torch.cat([a * torch.sigmoid(b), c], dim=1)


@pytest.mark.torch
def test_parts_and_their_gradients_match_pytorch(torch_mod):
    torch = torch_mod
    net = netlang.loads(SRC)
    assert net.outputs["y"].shape == (4, 3) and net.outputs["z"].shape == (3, 4)
    weights = {k: v.astype(np.float64) for k, v in net.init(0).items()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4))
    ty, tz = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 3, 4))
    xt = torch.tensor(x, requires_grad=True)
    y, z = _torch(torch, weights, xt)
    loss = torch.nn.functional.mse_loss(y, torch.tensor(ty)) + \
        torch.nn.functional.mse_loss(z, torch.tensor(tz))
    loss.backward()
    value, grads = net.value_and_grad(weights, {"x": x, "ty": ty, "tz": tz},
                                      loss="mse(y, ty) + mse(z, tz)", wrt_inputs=True,
                                      dtype=np.float64)
    assert abs(value - loss.item()) < 1e-12
    np.testing.assert_allclose(grads["x"], xt.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.emu
@pytest.mark.skipif(not HAVE_CXX, reason="the compiled backends need a C++ compiler")
@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_the_compiled_backends_equal_numpy(backend):
    net = netlang.loads(SRC)
    weights = net.init(0)
    rng = np.random.default_rng(1)
    batch = {"x": rng.standard_normal((3, 5, 4)).astype(np.float32),
             "ty": rng.standard_normal((3, 4, 3)).astype(np.float32),
             "tz": rng.standard_normal((3, 3, 4)).astype(np.float32)}
    loss = "mse(y, ty) + mse(z, tz)"
    want, want_g = net.value_and_grad(weights, batch, loss=loss, wrt_inputs=True)
    got, got_g = net.value_and_grad(weights, batch, loss=loss, wrt_inputs=True,
                                    backend=backend)
    assert abs(got - want) <= 1e-5 * abs(want)
    for k in want_g:
        np.testing.assert_allclose(got_g[k], want_g[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("expr,func,arg,sizes", [
    ("chunk(3)", "chunk", 3, [3, 3, 1]),          # torch.chunk: parts of ceil(7 / 3)
    ("chunk(4)", "chunk", 4, [2, 2, 2, 1]),
    ("split(3)", "split", 3, [3, 3, 1]),
    ("split([1, 6])", "split", [1, 6], [1, 6]),
])
def test_part_sizes_follow_torch(expr, func, arg, sizes, torch_mod):
    names = ", ".join(f"p{i}" for i in range(len(sizes)))
    outs = "\n".join(f"  output o{i} = p{i}" for i in range(len(sizes)))
    net = netlang.loads(f"network n {{\n  input x: [7, 2]\n  {names} = x -> {expr}\n{outs}\n}}")
    assert [net.outputs[f"o{i}"].shape[0] for i in range(len(sizes))] == sizes
    torch = torch_mod
    want = [p.shape[0] for p in getattr(torch, func)(torch.zeros(7, 2), arg, 0)]
    assert want == sizes


def test_a_block_can_return_the_parts():
    net = netlang.loads("""
block halves(c) {
    input x
    return x -> conv(2 * c, 1) -> chunk(2)
}
network n {
  input x: [3, 8]
  g, h = x -> halves(4)
  output y = mul(g, h -> sigmoid)
}
""")
    assert net.outputs["y"].shape == (4, 8)


@pytest.mark.parametrize("stmt,message", [
    ("a, b = x -> chunk(3)", "E013: `chunk` makes 3 values here; 2 names take them"),
    ("a = x -> chunk(2)", "E012: `chunk` makes 2 values; name each"),
    ("a, b = x -> relu", "2 names take the parts of a `split` or `chunk`; this is a tensor"),
    ("a, b = x -> split([2, 3])", "the sizes [2, 3] add up to 5; axis 0 of the [6, 4] value "
                                  "has 6"),
    ("a, b = x -> chunk(2, axis = 2)", "E081: `chunk`: `2` is not an axis of a [6, 4] value"),
    ("a, b = x -> chunk(2) -> relu", "cannot pipe 2 values (the parts of `chunk`) into a "
                                     "layer"),
    ("a, b = x -> chunk(0)", "`chunk` needs positive integers, got `0`"),
    ("a, b = x -> chunk(2, dim = 1)", "`chunk` has no argument `dim`"),
    ("a, a = x -> chunk(2)", "E015: `a` is defined twice"),
])
def test_errors(stmt, message):
    with pytest.raises(NetlangError) as err:
        netlang.loads("network n {\n input x: [6, 4]\n " + stmt + "\n output y = a\n}")
    assert message in str(err.value)
