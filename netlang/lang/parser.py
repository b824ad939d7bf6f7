"""Parse `.net` text into the AST, turning lark's exceptions into diagnostics.

The grammar is package data (``netlang/lang/netlang.lark``) so that it works from an
installed wheel. Syntax errors are classified into a handful of human messages
(unclosed bracket, unknown keyword, missing `=`) instead of raw token dumps.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

from lark import Lark, Token, Transformer_NonRecursive, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, VisitError

from netlang.diagnostics import NetlangError, SourceSpan, did_you_mean, error
from netlang.lang import ast

KEYWORDS = ("import", "block", "network", "train", "input", "output", "return", "repeat", "as",
            "param", "if", "else", "require")
TOP_LEVEL = ("import", "block", "network", "train")
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_TOKEN_TEXT = {
    "LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]", "LBRACE": "{", "RBRACE": "}",
    "COMMA": ",", "COLON": ":", "EQUAL": "=", "PLUS": "+", "MINUS": "-", "STAR": "*",
    "SLASH": "/", "PERCENT": "%", "NAME": "a name", "NUMBER": "a number", "STRING": "a string",
    "$END": "end of file", "__ANON_0": "->", "__ANON_1": "//", "__ANON_2": "**",
}


def grammar_text() -> str:
    return resources.files("netlang.lang").joinpath("netlang.lark").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", propagate_positions=True,
                maybe_placeholders=True)


def _span(file: str, meta) -> SourceSpan:
    return SourceSpan(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _tok_span(file: str, tok: Token) -> SourceSpan:
    end_line = tok.end_line if tok.end_line is not None else tok.line
    end_col = tok.end_column if tok.end_column is not None else tok.column + len(tok)
    return SourceSpan(file, tok.line, tok.column, end_line, end_col)


class _ToAst(Transformer_NonRecursive):   # iterative: deep trees need no deep stack
    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _s(self, meta) -> SourceSpan:
        return _span(self.file, meta)

    # -- expressions ----------------------------------------------------------
    @v_args(meta=True)
    def number(self, meta, children):
        text = str(children[0])
        value: int | float
        if any(c in text for c in ".eE"):
            value = float(text)
            if not math.isfinite(value):
                raise error("E026", f"the number `{text}` is too large (no finite float)",
                            self._s(meta))
        else:
            value = int(text)
        return ast.Number(value, self._s(meta))

    @v_args(meta=True)
    def string(self, meta, children):
        return ast.String(str(children[0])[1:-1], self._s(meta))

    @v_args(meta=True)
    def name(self, meta, children):
        return ast.Name(str(children[0]), self._s(meta))

    def _bin(op):  # noqa: N805 - helper used while building the class
        @v_args(meta=True)
        def rule(self, meta, children):
            return ast.BinOp(op, children[0], children[1], self._s(meta))
        return rule

    add = _bin("+")
    sub = _bin("-")
    mul = _bin("*")
    div = _bin("/")
    floordiv = _bin("//")
    mod = _bin("%")
    pow = _bin("**")

    @v_args(meta=True)
    def neg(self, meta, children):
        return ast.Neg(children[0], self._s(meta))

    @v_args(meta=True)
    def list(self, meta, children):
        items = tuple(c for c in children if c is not None)
        return ast.ListExpr(items, self._s(meta))

    @v_args(meta=True)
    def chain(self, meta, children):
        if len(children) == 1:
            return children[0]
        return ast.Chain(tuple(children), self._s(meta))

    @v_args(meta=True)
    def kwarg(self, meta, children):
        return ast.Kwarg(str(children[0]), children[1], self._s(meta))

    def args(self, children):
        return children

    @v_args(meta=True)
    def call(self, meta, children):
        name_tok, args = children
        args = args or []
        pos = tuple(a for a in args if not isinstance(a, ast.Kwarg))
        kws = tuple(a for a in args if isinstance(a, ast.Kwarg))
        return ast.Call(str(name_tok), pos, kws, self._s(meta), _tok_span(self.file, name_tok))

    @v_args(meta=True)
    def repeat(self, meta, children):
        count, var, body = children
        return ast.Repeat(count, str(var) if var is not None else None, body, self._s(meta))

    # -- statements -----------------------------------------------------------
    def shape(self, children):
        return tuple(c for c in children if c is not None)

    def names(self, children):
        return tuple(str(c) for c in children)

    @v_args(meta=True)
    def input_decl(self, meta, children):
        return ast.InputDecl(str(children[0]), children[1], self._s(meta))

    @v_args(meta=True)
    def param_decl(self, meta, children):
        return ast.ParamDecl(str(children[0]), children[1], children[2], self._s(meta))

    def body(self, children):
        return tuple(children)

    def cond(self, children):
        left, op, right = children
        return (left, str(op) if op is not None else None, right)

    @v_args(meta=True)
    def if_stmt(self, meta, children):
        (left, op, right), then, orelse = children
        if isinstance(orelse, ast.IfStmt):
            orelse = (orelse,)
        return ast.IfStmt(left, op, right, then, orelse or (), self._s(meta))

    @v_args(meta=True)
    def require_stmt(self, meta, children):
        (left, op, right), message = children
        return ast.Require(left, op, right, str(message)[1:-1], self._s(meta))

    @v_args(meta=True)
    def block_inputs(self, meta, children):
        return ast.BlockInputs(children[0], self._s(meta))

    @v_args(meta=True)
    def output_stmt(self, meta, children):
        return ast.Output(str(children[0]), children[1], self._s(meta))

    @v_args(meta=True)
    def return_stmt(self, meta, children):
        return ast.Return(children[0], self._s(meta))

    @v_args(meta=True)
    def assign(self, meta, children):
        return ast.Assign(str(children[0]), children[1], self._s(meta))

    @v_args(meta=True)
    def multi_assign(self, meta, children):
        return ast.MultiAssign(tuple(str(c) for c in children[:-1]), children[-1],
                               self._s(meta))

    @v_args(meta=True)
    def assert_shape(self, meta, children):
        return ast.AssertShape(str(children[0]), children[1], self._s(meta))

    @v_args(meta=True)
    def expr_stmt(self, meta, children):
        return ast.ExprStmt(children[0], self._s(meta))

    # -- definitions ----------------------------------------------------------
    @v_args(meta=True)
    def param(self, meta, children):
        return ast.Param(str(children[0]), children[1], self._s(meta))

    def params(self, children):
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def block_def(self, meta, children):
        name, params, *body = children
        return ast.BlockDef(str(name), params or (), tuple(body), self._s(meta), self.file)

    @v_args(meta=True)
    def network_def(self, meta, children):
        name, params, *body = children
        return ast.NetworkDef(str(name), params or (), tuple(body), self._s(meta))

    @v_args(meta=True)
    def train_set(self, meta, children):
        return ast.TrainSet(str(children[0]), children[1], self._s(meta))

    def train_call(self, children):
        return children[0]

    @v_args(meta=True)
    def train_def(self, meta, children):
        names, *items = children
        return ast.TrainDef(tuple(names) if names is not None else (), tuple(items),
                            self._s(meta))

    @v_args(meta=True)
    def import_stmt(self, meta, children):
        return ast.Import(str(children[0])[1:-1], self._s(meta))

    def start(self, children):
        return children


# Limits that keep absurd input from exhausting time, memory or the stack. Real networks
# are far below them: the largest example is 4 KB and nests 12 levels deep.
MAX_SOURCE_BYTES = 1 << 20
MAX_DEPTH = 100


def parse(text: str, file: str = "<string>") -> ast.Module:
    """Parse one `.net` source; raises NetlangError (E001/E002) on a syntax error and E007
    on a source over the size or nesting limits."""
    text = text.removeprefix("\ufeff")   # a UTF-8 byte-order mark is not part of the text
    if len(text) > MAX_SOURCE_BYTES:
        raise error("E007", f"the source is {len(text) / 2**20:.1f} MB; netlang reads `.net` "
                    f"sources of up to {MAX_SOURCE_BYTES // 2**20} MB",
                    SourceSpan(file, 1, 1, 1, 2),
                    help="a network description is a few kilobytes: use `block` and "
                         "`repeat` instead of generated repetition")
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    _check_depth(tree, file)
    try:
        items = _ToAst(file).transform(tree)
    except VisitError as exc:   # a diagnostic raised while building the AST
        if isinstance(exc.orig_exc, NetlangError):
            raise exc.orig_exc from None
        raise
    if isinstance(items, Tree):  # pragma: no cover - defensive, start always transforms
        raise AssertionError("untransformed parse tree")
    return ast.Module(
        file=file,
        imports=tuple(i for i in items if isinstance(i, ast.Import)),
        blocks=tuple(i for i in items if isinstance(i, ast.BlockDef)),
        networks=tuple(i for i in items if isinstance(i, ast.NetworkDef)),
        trains=tuple(i for i in items if isinstance(i, ast.TrainDef)),
    )


def _check_depth(tree: Tree, file: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH (iteratively: the check itself needs no stack)."""
    todo = [(tree, 1)]
    while todo:
        node, depth = todo.pop()
        if depth > MAX_DEPTH:
            meta = node.meta
            span = SourceSpan(file, meta.line, meta.column, meta.line, meta.column + 1) \
                if not meta.empty else None
            raise error("E007", f"the source nests more than {MAX_DEPTH} levels deep here",
                        span, help="split the expression into named values, or use `repeat`")
        todo.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))


# -- syntax error classification ----------------------------------------------------

Bracket = tuple[str, int, int]  # (char, line, col)


def _bracket_scan(text: str, until: tuple[int, int] | None = None
                  ) -> tuple[list[Bracket], tuple[Bracket, Bracket | None] | None]:
    """Brackets still open (at `until`, or at the end), and the first closer that matches
    no opener: (closer, the opener it contradicts or None)."""
    stack: list[Bracket] = []
    line, col = 1, 0
    in_str = in_comment = False
    for ch in text:
        col += 1
        if until is not None and (line, col) >= until:
            return stack, None
        if ch == "\n":
            line, col = line + 1, 0
            in_comment = in_str = False
            continue
        if in_comment:
            continue
        if in_str:
            in_str = ch != '"'
            continue
        if ch == "#":
            in_comment = True
        elif ch == '"':
            in_str = True
        elif ch in _CLOSERS:
            stack.append((ch, line, col))
        elif ch in _CLOSERS.values():
            if stack and _CLOSERS[stack[-1][0]] == ch:
                stack.pop()
            else:
                # `[1, 2 }`: a `[` is still open; `relu) }`: no `(` is open at all.
                opened = any(_CLOSERS[b[0]] == ch for b in stack)
                return stack, ((ch, line, col), stack[-1] if opened else None)
    return stack, None


def _expected_text(expected) -> str:
    names = sorted({_TOKEN_TEXT.get(e, e.lower().strip('"')) for e in expected})
    shown = [f"`{n}`" if len(n) <= 2 else n for n in names][:6]
    return ", ".join(shown)


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> NetlangError:
    line = getattr(exc, "line", 1) or 1
    col = getattr(exc, "column", 1) or 1
    if line < 1:  # lark reports -1 at end of input
        lines = text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    span = SourceSpan(file, line, col, line, col + 1)
    stack, stray = _bracket_scan(text)

    if isinstance(exc, UnexpectedCharacters):
        ch = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        if ch == '"':
            return error("E002", "unterminated string", span,
                         help='close the string with `"` on the same line')
        return error("E002", f"invalid character `{ch}`", span,
                     notes=["names are letters, digits and `_`; comments start with `#`"])

    token = getattr(exc, "token", None)
    is_end = isinstance(exc, UnexpectedEOF) or (token is not None and token.type == "$END")
    if stray is not None and (is_end or (token is not None and
                                         (stray[0][1], stray[0][2]) <= (token.line, token.column))):
        (ch, sl, sc), opener = stray
        cspan = SourceSpan(file, sl, sc, sl, sc + 1)
        if opener is None:
            return error("E001", f"unmatched `{ch}`", cspan,
                         help="remove it, or add the opening bracket it closes")
        och, ol, oc = opener
        return error("E001", f"`{ch}` closes `{och}`", cspan,
                     related=[(SourceSpan(file, ol, oc, ol, oc + 1), "opened here")],
                     help=f"add `{_CLOSERS[och]}` before `{ch}`")
    if is_end:
        if stack:
            ch, sl, sc = stack[-1]
            return error("E001", f"unclosed `{ch}`", SourceSpan(file, sl, sc, sl, sc + 1),
                         notes=["the file ended before the bracket was closed"],
                         help=f"add `{_CLOSERS[ch]}`")
        return error("E001", "unexpected end of file", span)

    assert token is not None
    tspan = _tok_span(file, token)
    expected = set(getattr(exc, "expected", ()) or ())
    value = str(token)
    stack, _ = _bracket_scan(text, (token.line, token.column))
    lines = text.splitlines()
    here = lines[token.line - 1].split() if token.line <= len(lines) else []
    braces = [b for b in stack if b[0] == "{"]
    if braces and here and here[0] in TOP_LEVEL and braces[-1][1] < token.line:
        # a new item starts while an earlier `{` is open: the error is that `{`
        _, sl, sc = braces[-1]
        notes = ["a new item starts on line %d while it is open" % token.line]
        hidden = next((i + 1 for i in range(sl - 1, token.line - 1)
                       if "#" in lines[i] and "}" in lines[i].split("#", 1)[1]), None)
        if hidden is not None:
            notes.append(f"the `}}` on line {hidden} is inside a comment")
        return error("E001", "unclosed `{`", SourceSpan(file, sl, sc, sl, sc + 1),
                     notes=notes, help="add `}` before the next item")
    if token.type == "NAME":
        keywords = [k for k in TOP_LEVEL if k.upper() in expected]
        if keywords or not expected - {"IMPORT", "BLOCK", "NETWORK", "TRAIN", "$END"}:
            hint = did_you_mean(value, TOP_LEVEL)
            return error("E001", f"unknown keyword `{value}`", tspan,
                         notes=["a file holds `import`, `block`, `network` and `train` items"],
                         help=hint or "start the item with `network`, `block`, `train` or `import`")
        if expected and expected <= {"EQUAL", "COLON"}:
            return error("E001", f"expected `=` or `:` after `{value}`", tspan,
                         help="write `name = layer(...)` to define a value, or "
                              "`name: [C, H, W]` to assert its shape")
    if token.type == "COMMA" and stack and stack[-1][0] == "(":
        _, sl, sc = stack[-1]
        before = text.splitlines()[sl - 1][:sc - 1].rstrip()
        inner = text.splitlines()[sl - 1][sc:].split(")")[0]
        if before.endswith("="):   # `pad = (1, 1)`: a list in parentheses
            name = before[:-1].split()[-1] if before[:-1].split() else "name"
            return error("E001", "a list of values is written in `[ ]`, not `( )`", tspan,
                         notes=["`( )` groups one expression"],
                         help=f"write `{name} = [{inner.strip()}]`")
        if before.endswith(("(", ",", "[")):   # `pad((1, 1))`: the same, as an argument
            return error("E001", "a list of values is written in `[ ]`, not `( )`", tspan,
                         notes=["`( )` groups one expression"],
                         help=f"write `[{inner.strip()}]`")
    if token.type == "COMMA":
        return error("E001", "unexpected `,`", tspan, notes=["expected a value before it"],
                     help="remove the extra `,` or add the missing argument")
    if "RPAR" in expected and stack and stack[-1][0] == "(":
        return error("E001", f"expected `)` or `,` before {_describe(token)}", tspan,
                     notes=["arguments are separated by `,`"], help="add the missing `)` or `,`")
    if "RSQB" in expected and stack and stack[-1][0] == "[":
        return error("E001", f"expected `]` or `,` before {_describe(token)}", tspan,
                     help="add the missing `]` or `,`")
    if value in KEYWORDS:
        return error("E001", f"`{value}` is a keyword and cannot be used here", tspan,
                     help="rename the value")
    return error("E001", f"unexpected {_describe(token)}", tspan,
                 notes=[f"expected {_expected_text(expected)}"] if expected else [])


def _describe(token: Token) -> str:
    if token.type in ("NAME", "NUMBER", "STRING"):
        return f"`{token}`"
    return f"`{_TOKEN_TEXT.get(token.type, str(token))}`"
