"""The Vision Transformer example against a PyTorch ViT written from the architecture
(not from netlang's graph): same weights, same batch; logits, loss and every gradient
agree on every backend. And the example trains to its accuracy (slow)."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from tests.backends.test_cuda import emu
from tests.conftest import ROOT

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

DIM, HEADS, DEPTH, PATCH = 16, 2, 2, 2


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):                      # [B, T, D]
        b, t, d = x.shape
        hd = d // self.heads

        def split(y):
            return y.reshape(b, t, self.heads, hd).transpose(1, 2)   # [B, H, T, hd]

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        w = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5, dim=-1)
        return self.out((w @ v).transpose(1, 2).reshape(b, t, d))


class Encoder(nn.Module):
    def __init__(self, dim, heads, mlp):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x):
        h = x + self.attn(self.norm1(x))
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))


class ViT(nn.Module):
    def __init__(self, classes=10, dim=DIM, depth=DEPTH, heads=HEADS, patch=PATCH):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn((8 // patch) ** 2, dim) * 0.02)
        self.layers = nn.ModuleList(Encoder(dim, heads, 2 * dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, image):
        x = self.embed(image).flatten(2).transpose(1, 2) + self.pos   # [B, T, D]
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x).mean(dim=1))


def _names(depth: int) -> dict[str, str]:
    """netlang parameter name -> PyTorch parameter name."""
    out = {"pos": "pos", "tokens.conv0.weight": "embed.weight",
           "tokens.conv0.bias": "embed.bias", "x.layernorm0.weight": "norm.weight",
           "x.layernorm0.bias": "norm.bias", "logits.dense0.weight": "head.weight",
           "logits.dense0.bias": "head.bias"}
    for i in range(depth):
        p, t = f"x.repeat0.{i}.encoder", f"layers.{i}"
        roles = {f"{p}.h.layernorm0": f"{t}.norm1", f"{p}.layernorm0": f"{t}.norm2",
                 f"{p}.dense0": f"{t}.fc1", f"{p}.dense1": f"{t}.fc2",
                 f"{p}.h.attention.dense0": f"{t}.attn.out"}
        for s in "qkv":
            roles[f"{p}.h.attention.{s}.dense0"] = f"{t}.attn.{s}"
        for a, b in roles.items():
            out[f"{a}.weight"], out[f"{a}.bias"] = f"{b}.weight", f"{b}.bias"
    return out


@pytest.fixture(scope="module")
def vit():
    net = netlang.load(ROOT / "examples" / "vit_tiny.net",
                       params={"dim": DIM, "heads": HEADS, "depth": DEPTH})
    torch.manual_seed(0)
    twin = ViT().double()
    names = _names(DEPTH)
    assert set(names) == set(net.params), set(net.params) ^ set(names)
    tparams = dict(twin.named_parameters())
    weights = {k: tparams[v].detach().numpy().copy() for k, v in names.items()}
    return net, twin, names, weights


@pytest.mark.parametrize("backend", ["numpy", pytest.param("cpu", marks=emu),
                                     pytest.param("cuda-emu", marks=emu)])
def test_vit_matches_pytorch(vit, backend):
    net, twin, names, weights = vit
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 1, 8, 8))
    label = rng.integers(0, 10, 5)
    xt = torch.tensor(x)
    twin.zero_grad()
    logits = twin(xt)
    loss = F.cross_entropy(logits, torch.tensor(label))
    loss.backward()
    f64 = backend == "numpy"
    cast = (lambda a: a) if f64 else (lambda a: np.asarray(a, np.float32))
    rtol, atol = (1e-9, 1e-11) if f64 else (2e-4, 2e-5)
    got = net.forward({k: cast(v) for k, v in weights.items()}, {"image": cast(x)},
                      dtype=np.float64 if f64 else np.float32, backend=backend)["logits"]
    np.testing.assert_allclose(got, logits.detach().numpy(), rtol=rtol, atol=atol)
    value, grads = net.value_and_grad({k: cast(v) for k, v in weights.items()},
                                      {"image": cast(x), "label": label},
                                      dtype=np.float64 if f64 else np.float32, backend=backend)
    assert abs(value - loss.item()) <= rtol * 10 + atol
    tparams = dict(twin.named_parameters())
    for k, v in names.items():
        np.testing.assert_allclose(grads[k], tparams[v].grad.numpy(), rtol=rtol * 10,
                                   atol=atol * 10, err_msg=k)


@pytest.mark.long
def test_vit_example_meets_its_accuracy_through_the_cli(tmp_path, capsys):
    """`netlang train examples/vit_tiny.net` with its train section's settings: at least
    95% on the test split (about two minutes on two cores)."""
    from netlang.cli import main

    assert main(["train", str(ROOT / "examples" / "vit_tiny.net"), "--out",
                 str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("test: "))
    accuracy = float(line.split("accuracy ")[1].split()[0])
    assert accuracy >= 0.95, line


CLS = """
network cls_token {
    input s: [3, 5]
    param cls: [1, 3]
    t = s -> permute([1, 0])
    output y = concat(cls, t, axis = 0) -> layernorm -> mean(0) -> dense(2)
}
"""


@pytest.mark.parametrize("backend", ["numpy", pytest.param("cpu", marks=emu),
                                     pytest.param("cuda-emu", marks=emu)])
def test_a_class_token_is_shared_by_every_sample(backend):
    """concat of a `param` [1, D] before the tokens: one row for every sample; its
    gradient sums over the batch."""
    net = netlang.loads(CLS)
    assert net.outputs["y"].shape == (2,)
    w = net.init(3)
    rng = np.random.default_rng(0)
    s = rng.standard_normal((4, 3, 5))
    t = rng.standard_normal((4, 2))
    cls = torch.tensor(w["cls"].astype(np.float64), requires_grad=True)
    ln_w = torch.tensor(w["y.layernorm0.weight"].astype(np.float64), requires_grad=True)
    ln_b = torch.tensor(w["y.layernorm0.bias"].astype(np.float64), requires_grad=True)
    dw = torch.tensor(w["y.dense0.weight"].astype(np.float64), requires_grad=True)
    db = torch.tensor(w["y.dense0.bias"].astype(np.float64), requires_grad=True)
    x = torch.cat([cls.expand(4, 1, 3), torch.tensor(s).transpose(1, 2)], dim=1)
    y = F.linear(F.layer_norm(x, (3,), ln_w, ln_b).mean(dim=1), dw, db)
    F.mse_loss(y, torch.tensor(t)).backward()
    f64 = backend == "numpy"
    dtype = np.float64 if f64 else np.float32
    value, grads = net.value_and_grad({k: v.astype(dtype) for k, v in w.items()},
                                      {"s": s.astype(dtype), "t": t.astype(dtype)},
                                      loss="mse(y, t)", dtype=dtype, backend=backend)
    tol = 1e-9 if f64 else 1e-4
    np.testing.assert_allclose(grads["cls"], cls.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["y.dense0.weight"], dw.grad.numpy(), rtol=tol, atol=tol)
