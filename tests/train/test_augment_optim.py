"""Augmentation keeps image and mask aligned; optimizers and schedules match PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from netlang.config import Call
from netlang.train import augment
from netlang.train.optim import Optimizer, Schedule


@pytest.mark.parametrize("call", [Call("flip"), Call("rotate", (("degrees", 30.0),)),
                                  Call("scale", (("min", 0.8), ("max", 1.2))),
                                  Call("translate", (("fraction", 0.2),)),
                                  Call("elastic", (("alpha", 20.0), ("sigma", 4.0)))],
                         ids=lambda c: c.name)
def test_image_and_mask_move_together(call):
    rng = np.random.default_rng(0)
    mask = np.zeros((4, 1, 32, 32), np.float32)
    mask[:, :, 8:20, 5:14] = 1
    batch = {"image": mask.copy(), "target": mask.copy()}
    out = augment.apply((call,), batch, ["image"], ["target"], np.random.default_rng(1))
    img, msk = out["image"] > 0.5, out["target"] > 0.5
    assert (img != msk).mean() < 0.01
    assert set(np.unique(out["target"])) <= {0.0, 1.0}          # masks stay binary
    same = augment.apply((call,), batch, ["image"], ["target"], np.random.default_rng(1))
    assert np.array_equal(same["image"], out["image"])          # deterministic in the seed
    assert np.array_equal(batch["image"], mask)                 # inputs untouched
    del rng


OPTIMIZERS = [
    (Call("sgd", (("lr", 0.1),)), "SGD", dict(lr=0.1)),
    (Call("sgd", (("lr", 0.1), ("momentum", 0.9), ("weight_decay", 0.01))), "SGD",
     dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    (Call("sgd", (("lr", 0.1), ("momentum", 0.9), ("nesterov", True))), "SGD",
     dict(lr=0.1, momentum=0.9, nesterov=True)),
    (Call("adam", (("lr", 0.01), ("weight_decay", 0.1))), "Adam", dict(lr=0.01, weight_decay=0.1)),
    (Call("adamw", (("lr", 0.01), ("weight_decay", 0.1))), "AdamW",
     dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("call,tname,kw", OPTIMIZERS, ids=[f"{c[1]}-{len(c[2])}"
                                                          for c in OPTIMIZERS])
def test_optimizers_match_pytorch(call, tname, kw, torch_mod):
    torch = torch_mod
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((5, 3)).astype(np.float32)
    grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(6)]
    ours = {"w": w0.copy()}
    opt = Optimizer.from_config(call)
    tw = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    topt = getattr(torch.optim, tname)([tw], **kw)
    for g in grads:
        opt.update(ours, {"w": g}, opt.lr)
        tw.grad = torch.from_numpy(g.copy())
        topt.step()
    np.testing.assert_allclose(ours["w"], tw.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_schedules():
    s = Schedule(Call("step", (("step_size", 2), ("gamma", 0.5))), 1.0, 10)
    assert [s.lr(e) for e in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    c = Schedule(Call("cosine"), 1.0, 10)
    assert c.lr(0) == 1.0 and abs(c.lr(5) - 0.5) < 1e-12 and abs(c.lr(10)) < 1e-12
    w = Schedule(Call("warmup", (("epochs", 4),)), 1.0, 10)
    assert [w.lr(e) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    e = Schedule(Call("exponential", (("gamma", 0.5),)), 2.0, 10)
    assert e.lr(3) == 0.25
    p = Schedule(Call("plateau", (("patience", 1), ("factor", 0.5))), 1.0, 10)
    for value in (1.0, 0.9, 0.95, 0.95, 0.95):
        p.observe(value)
    assert p.lr(5) == 0.5
