"""Fuzzing the front end: mutated and generated sources end in a clean diagnostic or a
checked network, never an internal exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import netlang
from netlang.diagnostics import NetlangError
from tests.conftest import EXAMPLES

SEEDS = [(EXAMPLES / n).read_text() for n in ("lenet5.net", "simple_cnn.net", "unet.net",
                                              "resnet18.net", "unet_valid.net")]
TOKENS = ["(", ")", "[", "]", "{", "}", ",", "->", "=", ":", "*", "/", "-", "**", "0", "1",
          "3", "-1", "2.5", "x", "_", "conv", "relu", "repeat 2 { relu }", "input", "output",
          "block", "network", "same", "true", "pad=", "import", '"', "#", "\n", "maxpool(2)",
          "concat(", "dense(10)", "flatten", "99999", "crop(", "add(", "mul("]


def _load(text: str) -> None:
    try:
        net = netlang.loads(text, network=None, file="fuzz.net", base_dir=EXAMPLES)
    except NetlangError as exc:
        out = exc.render(getattr(exc, "sources", None))
        assert out.startswith("error[E"), out
        return
    assert net.outputs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_mutated_examples(seed, data):
    text = seed
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(text)))
        kind = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        tok = data.draw(st.sampled_from(TOKENS))
        n = data.draw(st.integers(1, 6))
        if kind == "insert":
            text = text[:pos] + tok + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + n:]
        else:
            text = text[:pos] + tok + text[pos + n:]
    _load(text)


LAYERS = st.sampled_from(["relu", "conv(4, 3)", "conv(4, 3, pad=same)", "maxpool(2)",
                          "avgpool(3, stride=2, ceil=true)", "upsample(2)", "batchnorm",
                          "dropout(0.5)", "flatten", "dense(5)", "sigmoid", "softmax",
                          "global_avgpool", "conv_transpose(2, 2, stride=2)", "tanh",
                          "leaky_relu(0.1)", "pad(1)", "crop(size=3)"])


@settings(max_examples=150, deadline=None)
@given(shape=st.lists(st.integers(1, 12), min_size=1, max_size=4),
       layers=st.lists(LAYERS, min_size=1, max_size=6))
def test_generated_chains(shape, layers):
    src = f"network g {{ input x: {shape}\n  output y = x -> {' -> '.join(layers)} }}"
    _load(src)


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_random_text(text):
    _load(text)
