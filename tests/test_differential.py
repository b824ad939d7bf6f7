"""Random architectures against PyTorch (float64, inference and training mode).

`tests/archgen.py` draws networks over every layer and attribute, with shapes tracked by
its own rules, and builds the PyTorch twin from its own description. For a legal draw,
netlang must agree with PyTorch on shapes, parameter layouts, outputs, the loss, every
gradient (parameters and input) and the new batchnorm statistics; for an illegal draw it
must refuse the source with a diagnostic (a code), never run it and never raise anything
else. The fast profile runs in every test run; `--run-long` adds the long one.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import netlang
from netlang.diagnostics import NetlangError
from tests.backends.test_cuda import HAVE_CXX
from tests.archgen import Arch, archs, torch_forward

pytestmark = pytest.mark.torch
FAST = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
LONG = settings(max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck))
CPU = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
BATCH = 3


def _close(ours, theirs, what: str, rtol: float = 1e-9) -> None:
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    if not ours.size:
        return
    err = float(np.abs(ours - theirs).max())
    scale = float(np.abs(theirs).max())
    assert err <= rtol * max(scale, 1.0), f"{what}: max error {err:.3g} (scale {scale:.3g})"


def _weights(arch: Arch, net, rng) -> dict[str, np.ndarray]:
    """netlang's parameters by the description's (layer, role), with shapes checked
    against the PyTorch layouts the description expects."""
    have = net.params
    want = {f"v{i}.{layer.op}0.{role}": shape
            for i, layer in enumerate(arch.layers, start=1) for role, shape in layer.params}
    assert {k: tuple(t.shape) for k, t in have.items()} == want
    out = {}
    for name, shape in want.items():
        if name.endswith("running_var"):
            out[name] = rng.uniform(0.5, 2.0, shape)
        else:
            out[name] = rng.standard_normal(shape) * 0.5
    return out


def check(arch: Arch, torch, backend: str = "numpy") -> None:
    """`backend` numpy runs netlang in float64 (to 1e-9); cpu runs the compiled program in
    float32 (to 3e-4 of the larger of the scale and 1) against the same float64 twin."""
    src = arch.source()
    dtype = np.float64 if backend == "numpy" else np.float32
    rtol = 1e-9 if backend == "numpy" else 3e-4

    def close(ours, theirs, what):
        _close(ours, theirs, what, rtol)

    def cast(a):
        a = np.asarray(a)
        return a.astype(dtype) if a.dtype.kind == "f" else a

    if arch.illegal is not None:
        with pytest.raises(NetlangError) as info:
            netlang.loads(src)
        assert info.value.diagnostics[0].code.startswith("E"), src
        return
    try:
        net = netlang.loads(src)
    except NetlangError as exc:
        raise AssertionError(f"refused a legal network:\n{src}\n{exc.render()}") from None
    assert net.outputs["y"].shape == arch.out_shape, src
    rng = np.random.default_rng(0)
    weights = _weights(arch, net, rng)
    x = rng.standard_normal((BATCH,) + arch.in_shape)
    tparams = {}
    for i, layer in enumerate(arch.layers, start=1):
        for role, _ in layer.params:
            t = torch.tensor(weights[f"v{i}.{layer.op}0.{role}"], dtype=torch.float64,
                             requires_grad=not role.startswith("running"))
            tparams[(i, role)] = t

    # Inference.
    with torch.no_grad():
        want, _ = torch_forward(arch, torch.tensor(x), tparams, False, torch)
    if backend == "numpy":
        got = net.forward(weights, {"x": x}, dtype=dtype)["y"]
    else:
        got = net.forward({k: cast(v) for k, v in weights.items()}, {"x": cast(x)},
                          backend=backend)["y"]
    close(got, want.numpy(), f"inference output of\n{src}")

    if arch.has_dropout:   # random masks differ between frameworks
        return
    # Training: outputs, loss, gradients of every parameter and of the input, new
    # batchnorm statistics.
    xt = torch.tensor(x, requires_grad=True)
    y, updates = torch_forward(arch, xt, tparams, True, torch)
    if arch.loss == "cross_entropy":
        target = rng.integers(0, arch.out_shape[0], size=(BATCH,))
        # netlang's cross_entropy reads logits, or the probabilities of a softmax output.
        probs = arch.activation == "softmax"   # looked through dropout(0)
        loss_t = (torch.nn.functional.nll_loss(torch.log(y), torch.tensor(target)) if probs
                  else torch.nn.functional.cross_entropy(y, torch.tensor(target)))
        loss = "cross_entropy(y, t)"
    elif arch.loss == "bce":
        target = rng.uniform(0, 1, (BATCH,) + arch.out_shape)
        if arch.activation == "sigmoid":
            # netlang reads a sigmoid output's logits (bce_logits): so does the twin, else
            # a saturated sigmoid's 1 - p loses the digits the comparison asks for
            last = max(i for i, layer in enumerate(arch.layers) if layer.op == "sigmoid")
            logits_arch = dataclasses.replace(arch, layers=arch.layers[:last],
                                              shapes=arch.shapes[:last + 1])
            z, _ = torch_forward(logits_arch, xt, tparams, True, torch)
            loss_t = torch.nn.functional.binary_cross_entropy_with_logits(
                z, torch.tensor(target))
        else:
            loss_t = torch.nn.functional.binary_cross_entropy(y, torch.tensor(target))
        loss = "bce(y, t)"
    else:
        target = rng.standard_normal((BATCH,) + arch.out_shape)
        loss_t = torch.nn.functional.mse_loss(y, torch.tensor(target))
        loss = "mse(y, t)"
    loss_t.backward()
    value, grads, new = net.value_and_grad({k: cast(v) for k, v in weights.items()},
                                           {"x": cast(x), "t": cast(target)}, loss=loss,
                                           wrt_inputs=True, return_updates=True,
                                           dtype=dtype, backend=backend)
    close(value, loss_t.item(), f"training loss of\n{src}")
    close(grads["x"], xt.grad.numpy(), f"input gradient of\n{src}")
    for (i, role), t in tparams.items():
        name = f"v{i}.{arch.layers[i - 1].op}0.{role}"
        if role.startswith("running"):
            close(new[name], updates[(i, role)].numpy(), f"{name} after a step of\n{src}")
        else:
            close(grads[name], t.grad.numpy(), f"gradient of {name} in\n{src}")


@FAST
@given(archs())
def test_random_architectures(torch_mod, arch):
    check(arch, torch_mod)


@pytest.mark.slow
@pytest.mark.emu
@pytest.mark.skipif(not HAVE_CXX, reason="the cpu backend needs a C++ compiler")
@CPU
@given(archs(max_layers=4, illegal=False))
def test_random_architectures_on_cpu(torch_mod, arch):
    """The compiled cpu backend (float32) on its own draws: each compiles two programs."""
    check(arch, torch_mod, backend="cpu")


@pytest.mark.long
@LONG
@given(archs(max_layers=7))
def test_random_architectures_long(torch_mod, arch):
    check(arch, torch_mod)


def test_the_generator_draws_every_user_op():
    """PyTorch parity for every op a user writes: each is in the generator's vocabulary
    (so the random architectures above compare it, forward and backward, in float64)."""
    from netlang.ops import registry
    from tests.archgen import _flat_choices, _spatial_choices

    drawn = set(_flat_choices(())) | set(_spatial_choices(()))
    assert sorted(set(registry.user_ops()) - drawn) == []
