"""Passes as before/expected pairs of IR text (TVM Relax's style): the `before` graph is
read with `parse_graph`, the pass runs, and the result must print as `expected` does,
structurally (ids, ops, operands, attributes, types, names, outputs, loss). The verifier
runs on both sides."""

from __future__ import annotations

import pytest

from netlang.ir.printer import format_graph, parse_graph
from netlang.passes import loss as loss_pass
from netlang.passes import mode, simplify
from netlang.passes.verify import verify

CASES = {
    "cse merges equal computations": (simplify.cse, """
graph t {
  %0 = input() {shape=[3, 4]} : [N, 3, 4]  # x
  %1 = relu(%0) : [N, 3, 4]  # a
  %2 = relu(%0) : [N, 3, 4]  # b
  %3 = add(%1, %2) : [N, 3, 4]  # c
  output y = %3
}""", """
graph t {
  %0 = input() {shape=[3, 4]} : [N, 3, 4]  # x
  %1 = relu(%0) : [N, 3, 4]  # a
  %3 = add(%1, %1) : [N, 3, 4]  # c
  output y = %3
}"""),
    "cse keeps random masks apart": (simplify.cse, """
graph t {
  %0 = input() {shape=[3]} : [N, 3]  # x
  %1 = dropout_mask(%0) {p=0.5} : [N, 3]  # m1
  %2 = dropout_mask(%0) {p=0.5} : [N, 3]  # m2
  %3 = add(%1, %2) : [N, 3]  # s
  output y = %3
}""", None),
    "dce drops what nothing reads": (simplify.dce, """
graph t {
  %0 = input() {shape=[3]} : [N, 3]  # x
  %1 = tanh(%0) : [N, 3]  # unused
  %2 = relu(%0) : [N, 3]  # r
  output y = %2
}""", """
graph t {
  %0 = input() {shape=[3]} : [N, 3]  # x
  %2 = relu(%0) : [N, 3]  # r
  output y = %2
}"""),
    "bce of a sigmoid becomes bce_logits": (loss_pass.stable_losses, """
graph t {
  %0 = input() {shape=[1, 4]} : [N, 1, 4]  # z
  %1 = sigmoid(%0) : [N, 1, 4]  # p
  %2 = input() {shape=[1, 4], target=true} : [N, 1, 4]  # t
  %3 = bce(%1, %2) : []  # loss
  loss = %3
}""", """
graph t {
  %0 = input() {shape=[1, 4]} : [N, 1, 4]  # z
  %1 = sigmoid(%0) : [N, 1, 4]  # p
  %2 = input() {shape=[1, 4], target=true} : [N, 1, 4]  # t
  %3 = bce_logits(%0, %2) : []  # loss
  loss = %3
}"""),
    "cross_entropy looks through dropout(0) to the softmax": (loss_pass.stable_losses, """
graph t {
  %0 = input() {shape=[5]} : [N, 5]  # z
  %1 = softmax(%0) {axis=0} : [N, 5]  # p
  %2 = dropout(%1) {p=0.0} : [N, 5]  # d
  %3 = input() {shape=[], target=true} : [N] int64  # label
  %4 = cross_entropy(%2, %3) : []  # loss
  loss = %4
}""", """
graph t {
  %0 = input() {shape=[5]} : [N, 5]  # z
  %1 = softmax(%0) {axis=0} : [N, 5]  # p
  %2 = dropout(%1) {p=0.0} : [N, 5]  # d
  %3 = input() {shape=[], target=true} : [N] int64  # label
  %4 = cross_entropy(%0, %3) : []  # loss
  loss = %4
}"""),
    "inference removes dropout": (lambda g: mode.specialize(g, False), """
graph t {
  %0 = input() {shape=[4]} : [N, 4]  # x
  %1 = dropout(%0) {p=0.5} : [N, 4]  # d
  %2 = relu(%1) : [N, 4]  # r
  output y = %2
}""", """
graph t {
  %0 = input() {shape=[4]} : [N, 4]  # x
  %2 = relu(%0) : [N, 4]  # r
  output y = %2
}"""),
    "training draws a dropout mask": (lambda g: mode.specialize(g, True), """
graph t {
  %0 = input() {shape=[4]} : [N, 4]  # x
  %1 = dropout(%0) {p=0.5} : [N, 4]  # d
  output y = %1
}""", """
graph t {
  %0 = input() {shape=[4]} : [N, 4]  # x
  %2 = dropout_mask(%0) {p=0.5} : [N, 4]  # d.mask
  %3 = mul(%0, %2) : [N, 4]  # d
  output y = %3
}"""),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pass(name):
    run, before, expected = CASES[name]
    g = parse_graph(before)
    verify(g)
    run(g)
    verify(g)
    want = parse_graph(expected if expected is not None else before)
    assert format_graph(g) == format_graph(want)


def test_the_reader_inverts_the_printer():
    import netlang
    from tests.conftest import EXAMPLES

    net = netlang.load(EXAMPLES / "unet_shapes.net")
    g = net.compile(training=True, loss="bce(mask, target) + dice(mask, target)").graph
    g.fusion = None   # the reader does not read kernel annotations
    text = format_graph(g)
    assert format_graph(parse_graph(text)) == text
