"""The grammar and the classification of syntax errors into human messages."""

from __future__ import annotations

import pytest

from netlang.diagnostics import NetlangError, SourceMap
from netlang.lang import ast
from netlang.lang.parser import parse
from tests.conftest import EXAMPLES


def render(src: str) -> str:
    try:
        parse(src, "t.net")
    except NetlangError as exc:
        sm = SourceMap()
        sm.add("t.net", src)
        return exc.render(sm)
    raise AssertionError("expected a syntax error")


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.net")), ids=lambda p: p.name)
def test_examples_parse(path):
    mod = parse(path.read_text(), str(path))
    assert mod.networks or mod.blocks


def test_ast_shapes_and_spans():
    mod = parse("network n(a = 2) {\n  input x: [1, 8, 8]\n  output y = x -> conv(a * 2, 3)\n}")
    net = mod.networks[0]
    assert net.name == "n" and net.params[0].name == "a"
    inp, out = net.body
    assert isinstance(inp, ast.InputDecl) and [d.value for d in inp.shape] == [1, 8, 8]
    assert isinstance(out, ast.Output) and isinstance(out.value, ast.Chain)
    call = out.value.items[1]
    assert isinstance(call, ast.Call) and call.func == "conv"
    assert isinstance(call.args[0], ast.BinOp) and call.args[0].op == "*"
    assert (call.span.line, call.span.col) == (3, 19)


def test_statements_need_no_separators():
    mod = parse("train { batch = 8   epochs = 20   early_stop(patience = 3) }")
    items = mod.trains[0].items
    assert [type(i).__name__ for i in items] == ["TrainSet", "TrainSet", "Call"]


def test_comments_and_repeat():
    mod = parse("# top\nblock b(c) { repeat 2 as i { conv(c * 2 ** i, 3) } }  # end")
    body = mod.blocks[0].body[0]
    assert isinstance(body.value, ast.Repeat) and body.value.var == "i"


# Each row: source, expected code, text that must appear in the rendered message.
SYNTAX_ERRORS = [
    ("network a { x = conv(3 ", "E001", "unclosed `(`"),
    ("netwrok a {}", "E001", "did you mean `network`?"),
    ("network a { x = conv(3 4) }", "E001", "expected `)` or `,` before `4`"),
    ("network a { x = conv(3, 3, pad = (1, 2)) }", "E001", "write `pad = [1, 2]`"),
    ("network a { x = y -> pad((1, 2)) }", "E001", "help: write `[1, 2]`"),
    ("block b(c) { conv(c, 3)  # the end }\nnetwork n { input x: [1, 8, 8] }", "E001",
     "the `}` on line 1 is inside a comment"),
    ("network a { input x: [1, 8, 8]\n  output y = x -> relu\nnetwork b { }", "E001",
     "unclosed `{`\n --> t.net:1:11"),
    ("network a { x = conv(3, , 4) }", "E001", "unexpected `,`"),
    ("network a { x $ }", "E002", "invalid character `$`"),
    ('network a { x = npz("abc) }', "E002", "unterminated string"),
    ("network a { x = [1, 2 }", "E001", "`}` closes `[`"),
    ("network a { x = relu) }", "E001", "unmatched `)`"),
    ("network a { x = conv(3,, 3) }", "E001", "unexpected `,`"),
    ("network a { output = 3 }", "E001", "unexpected `=`"),
]


@pytest.mark.parametrize("src,code,text", SYNTAX_ERRORS, ids=[r[2] for r in SYNTAX_ERRORS])
def test_syntax_errors_are_classified(src, code, text):
    out = render(src)
    assert out.startswith(f"error[{code}]")
    assert text in out
    assert "--> t.net:1:" in out and "^" in out  # location and caret


def test_syntax_error_is_not_a_lark_dump():
    out = render("network a { x = conv(3 4) }")
    assert "Token(" not in out and "Expected one of" not in out


SHARED = """
network small { input x: [1, 8, 8]  output y = x -> conv(2, 3) -> flatten -> dense(10) }
network wide { input x: [1, 8, 8]  output y = x -> conv(8, 3) -> flatten -> dense(10) }
network seg { input x: [1, 8, 8]  output mask = x -> conv(1, 1) -> sigmoid }
train { data = digits  loss = cross_entropy(y, label)  epochs = 3  optimizer = sgd(lr = 0.1) }
train wide, small { batch = 16 }
train seg { loss = bce(mask, target)  data = shapes(size = 8) }
"""


def test_a_shared_train_section_and_the_networks_own():
    import netlang

    for name in ("small", "wide"):
        c = netlang.loads(SHARED, network=name).train
        assert (c.data.name, c.loss_text, c.epochs, c.batch) == \
            ("digits", "cross_entropy(y, label)", 3, 16)
    c = netlang.loads(SHARED, network="seg").train   # its own keys replace the shared ones
    assert (c.data.name, c.loss_text, c.epochs, c.batch, c.optimizer.name) == \
        ("shapes", "bce(mask, target)", 3, 32, "sgd")


@pytest.mark.parametrize("extra,message", [
    ("train { epochs = 2 }", "E030: the file has two shared train sections"),
    ("train smal { epochs = 2 }", "E030: train section for unknown network `smal`"),
    ("train seg { epochs = 2 }", "E030: network `seg` has two train sections"),
])
def test_train_sections_that_clash(extra, message):
    import netlang
    from netlang.diagnostics import NetlangError

    with pytest.raises(NetlangError) as err:
        netlang.loads(SHARED + extra, network="seg")
    assert message in str(err.value)
