"""Initialisation schemes: a layer's `init=` and the train section's `init`, with the fans
PyTorch computes and the statistics of torch.nn.init's functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

import netlang
from netlang.config import TrainConfig, apply_overrides
from netlang.diagnostics import NetlangError
from netlang.ops.registry import fans

SRC = """
network n {
  input x: [16, 12, 12]
  output y = x -> conv(64, 3, init = INIT) -> conv_transpose(32, 2, stride = 2, init = INIT)
               -> global_avgpool -> dense(48, init = INIT) -> dense(10)
}
"""


def _weights(scheme: str, seed: int = 0):
    net = netlang.loads(SRC.replace("INIT", scheme))
    return net, net.init(seed)


@pytest.mark.torch
def test_fans_are_pytorchs(torch_mod):
    torch = torch_mod
    net, w = _weights("kaiming_normal")
    for k, v in w.items():
        if k.endswith("weight"):
            want = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(v.shape))
            assert fans(v.shape) == want, k


@pytest.mark.parametrize("scheme", ["kaiming_normal", "kaiming_normal_fan_out",
                                    "kaiming_uniform", "xavier_normal", "xavier_uniform",
                                    "normal", "zeros"])
def test_schemes_have_torch_nn_init_statistics(scheme, torch_mod):
    """Each weight's standard deviation is torch.nn.init's (sampled there on the same
    shape) within sampling error; biases are zero; the last dense keeps PyTorch's
    default."""
    torch = torch_mod
    torch.manual_seed(0)
    fn = {"kaiming_normal": lambda t: torch.nn.init.kaiming_normal_(t, nonlinearity="relu"),
          "kaiming_normal_fan_out": lambda t: torch.nn.init.kaiming_normal_(
              t, mode="fan_out", nonlinearity="relu"),
          "kaiming_uniform": lambda t: torch.nn.init.kaiming_uniform_(t, nonlinearity="relu"),
          "xavier_normal": torch.nn.init.xavier_normal_,
          "xavier_uniform": torch.nn.init.xavier_uniform_,
          "normal": lambda t: torch.nn.init.normal_(t, std=0.02),
          "zeros": torch.nn.init.zeros_}[scheme]
    net, w = _weights(scheme)
    layers = [k for k in w if k.endswith("weight")]
    for k in layers[:3]:
        ref = fn(torch.empty(w[k].shape)).numpy()
        if scheme == "zeros":
            assert not w[k].any(), k
        else:
            assert abs(w[k].std() / ref.std() - 1) < 0.1, (k, w[k].std(), ref.std())
            assert abs(np.abs(w[k]).max() <= np.abs(ref).max() * 1.5), k
        assert not w[k[:-len("weight")] + "bias"].any(), k
    last = layers[3]   # dense(10): no init given, PyTorch's kaiming-uniform
    assert np.abs(w[last]).max() <= 1 / math.sqrt(48) and w[last].std() > 0
    assert w[last[:-len("weight")] + "bias"].any()


def test_the_train_section_sets_the_default_of_the_other_layers(tmp_path):
    net = netlang.loads(SRC.replace("INIT", "xavier_uniform"))
    default = net.init(0)
    cfg = apply_overrides(TrainConfig(), [("init", "kaiming_normal_fan_out")], list(net.outputs))
    assert cfg.init == "kaiming_normal_fan_out"
    w = net.init(0, cfg.init)
    keys = [k for k in w if k.endswith("weight")]
    for k in keys[:3]:   # their own scheme stays
        np.testing.assert_array_equal(w[k], default[k])
    std = math.sqrt(2 / fans(w[keys[3]].shape)[1])
    assert abs(w[keys[3]].std() / std - 1) < 0.35 and not w[keys[3][:-6] + "bias"].any()


def test_unknown_schemes_are_refused():
    with pytest.raises(NetlangError) as err:
        netlang.loads(SRC.replace("INIT", "kaiming_norml"))
    assert "`init` must be one of `pytorch`, `kaiming_normal`" in str(err.value)
    net = netlang.loads(SRC.replace("INIT", "pytorch"))
    with pytest.raises(NetlangError) as err:
        apply_overrides(TrainConfig(), [("init", "he")], list(net.outputs))
    assert "E030: unknown initialisation `he`" in str(err.value)
