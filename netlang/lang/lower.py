"""Lowering: evaluate a network's AST into a flat IR graph.

Parameters and arithmetic are evaluated here; blocks are inlined and `repeat` unrolled,
so the graph has one node per layer, named hierarchically (`d1.double_conv.conv0`) and
carrying the span of the `.net` text it comes from. Shapes are not computed here (the
shape-inference pass does that), which keeps lowering independent of input sizes and lets
diagnostics re-run shape inference at other sizes.

Statements of a network or block may come in any order: they are evaluated in the order
of their dependencies, and a dependency cycle is an error (E027).

(Longer than our ~400-line guide: it is the one evaluator of the language, and its scope
rules, call checks and diagnostics for blocks, layers and `repeat` read each other.)
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Union

from netlang.diagnostics import NetlangError, SourceSpan, did_you_mean, error, warning
from netlang.ir.graph import Graph, Node, ShapeAssertion
from netlang.ir.types import TensorType, fmt_shape
from netlang.lang import ast
from netlang.lang.imports import SourceTree
from netlang.ops import registry
from netlang.ops.loss import LOSS_OPS, LOSSES as USER_LOSSES
from netlang.ops.registry import AttrError, Symbol


@dataclass(frozen=True)
class Tensor:
    node: Node


@dataclass(frozen=True)
class Tensors:
    """The parts of a `split` or `chunk`: only a `a, b = ...` assignment takes them."""

    items: tuple[Tensor, ...]
    func: str


Value = Union[Tensor, Tensors, int, float, bool, str, Symbol, list]
MAX_NODES = 100_000
# The names a call may have that are not layers: arithmetic on numbers, and the losses
# (which belong in the train section).
NUMBER_FUNCTIONS = {"min": min, "max": max}
SHAPE_FUNCTIONS = ("channels", "size")   # sizes of a value, while the network is built
SPLIT_FUNCTIONS = ("split", "chunk")     # several values, for `a, b = ...`
LOSSES = tuple(USER_LOSSES) + tuple(LOSS_OPS)   # names that belong in the train section
NUMERIC_KINDS = ("int", "float", "ints", "size", "floats")
MAX_BLOCK_DEPTH = 50   # blocks calling blocks; each level costs Python stack


def _kind(v: Value) -> str:
    if isinstance(v, Tensor):
        return "a tensor"
    if isinstance(v, Tensors):
        return f"{len(v.items)} values (the parts of `{v.func}`)"
    if isinstance(v, Symbol):
        return f"the name `{v.name}`"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    return "a list"


@dataclass
class Scope:
    """Names visible in a network or a block instance, and how to name new nodes."""

    values: dict[str, Value]
    prefix: str
    implicit_input: Tensor | None = None
    used: set[str] = field(default_factory=set)
    counters: dict[str, Counter] = field(default_factory=dict)

    def fresh(self, prefix: str, base: str, always_index: bool = True) -> str:
        c = self.counters.setdefault(prefix, Counter())
        k = c[base]
        c[base] += 1
        name = f"{base}{k}" if always_index else (base if k == 0 else f"{base}_{k}")
        return f"{prefix}.{name}" if prefix else name


def parse_override(text: str) -> Value:
    """A `--set name=value` value: a number, `true`/`false`, or a bare name."""
    t = text.strip()
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    if t in ("true", "false"):
        return t == "true"
    return Symbol(t)


class Lowerer:
    def __init__(self, prog: SourceTree):
        self.prog = prog
        self.graph = Graph()
        self.block_stack: list[str] = []
        self._types: dict[int, TensorType] = {}   # node id -> type, for `channels(x)`

    # -- entry point ---------------------------------------------------------------------
    def lower_network(self, net: ast.NetworkDef, overrides: dict[str, Value]) -> Graph:
        self.graph.name = net.name
        scope = Scope({}, "")
        self._bind_params(net.params, scope, overrides, net.span, f"network `{net.name}`",
                          mark_used=False)
        self._run_body(net.body, scope, is_block=False)
        if not self.graph.outputs:
            raise error("E013", f"network `{net.name}` declares no output", net.span,
                        help="mark the result with `output name = ...`")
        for name, value in scope.values.items():
            if isinstance(value, Tensor) and name not in scope.used and \
                    not name.startswith("_") and \
                    name not in self.graph.outputs and name not in self.graph.inputs:
                self.graph.warnings.append(warning(
                    "W002", f"value `{name}` is never used", value.node.span,
                    help=f"use it, mark it with `output {name}`, or remove it (a name "
                         "starting with `_` is a value kept unused on purpose)"))
        for p in net.params:
            if p.name not in scope.used:
                self.graph.warnings.append(warning(
                    "W003", f"network parameter `{p.name}` is never used", p.span,
                    help=f"use it or remove it: `--set {p.name}=...` changes nothing"))
        return self.graph

    def _bind_params(self, params: tuple[ast.Param, ...], scope: Scope,
                     given: dict[str, Value], span: SourceSpan, what: str,
                     mark_used: bool = True) -> None:
        names = [p.name for p in params]
        for key in given:
            if key not in names:
                hint = did_you_mean(key, names)
                raise error("E016", f"{what} has no parameter `{key}`", span,
                            notes=[f"its parameters: {', '.join(names) or 'none'}"], help=hint)
        for p in params:
            if p.name in given:
                scope.values[p.name] = given[p.name]
            elif p.default is not None:
                scope.values[p.name] = self.eval(p.default, scope)
            else:
                raise error("E013", f"{what} needs a value for parameter `{p.name}`", span,
                            help=f"pass `{p.name}=...`")
        if mark_used:
            scope.used.update(names)

    # -- statements ----------------------------------------------------------------------
    def _run_body(self, body: tuple[ast.Stmt, ...], scope: Scope, is_block: bool) -> Value | None:
        body = self._choose_branches(body, scope)
        for stmt in body:
            if isinstance(stmt, ast.InputDecl):
                if is_block:
                    raise error("E012", "a block's inputs take their shape from the caller",
                                stmt.span, help=f"write `input {stmt.name}` without a shape")
                self._declare_input(stmt, scope)
            elif isinstance(stmt, ast.BlockInputs) and not is_block:
                raise error("E012", f"network input `{stmt.names[0]}` needs a shape", stmt.span,
                            help=f"write `input {stmt.names[0]}: [C, H, W]` (the batch is "
                                 "implicit)")
        defined: dict[str, ast.Stmt] = {}
        for stmt in body:
            for name in _defines(stmt):
                if name in defined or name in scope.values:
                    first = defined.get(name)
                    related = [(first.span, "first defined here")] if first is not None else []
                    raise error("E015", f"`{name}` is defined twice", stmt.span,
                                related=related, help="give each value its own name")
                defined[name] = stmt
        result: Value | None = None
        for stmt in self._order(body, defined, scope):
            result = self._exec(stmt, scope, is_block) if not isinstance(
                stmt, (ast.InputDecl, ast.BlockInputs)) else result
            if isinstance(stmt, ast.Return):
                result = self.eval(stmt.value, scope)
        return result

    def _order(self, body, defined: dict[str, ast.Stmt], scope: Scope) -> list[ast.Stmt]:
        """Statements in dependency order (stable), or E027 naming the cycle."""
        deps: dict[int, set[str]] = {}
        for i, stmt in enumerate(body):
            deps[i] = {n for n in _uses(stmt) if n in defined and n not in _defines(stmt)}
            for self_ref in _defines(stmt):
                if self_ref in _uses(stmt) and self_ref not in scope.values:
                    raise error("E027", f"`{self_ref}` is defined in terms of itself",
                                stmt.span, help="a network is acyclic: use another name for "
                                                "the new value")
        index = {name: i for i, s in enumerate(body) for name in _defines(s)}
        order: list[ast.Stmt] = []
        state: dict[int, int] = {}

        def visit(i: int, path: list[int]) -> None:
            if state.get(i) == 2:
                return
            if state.get(i) == 1:
                cyc = path[path.index(i):] + [i]
                names = " -> ".join(f"`{', '.join(_defines(body[j]))}`" for j in cyc)
                raise error("E027", f"cycle between values: {names}", body[i].span,
                            notes=["values may be defined in any order, but not in terms of "
                                   "each other"],
                            help="a network is a directed acyclic graph; break the cycle")
            state[i] = 1
            for name in sorted(deps[i], key=lambda n: index[n]):
                visit(index[name], path + [i])
            state[i] = 2
            order.append(body[i])

        for i in range(len(body)):
            visit(i, [])
        return order

    def _declare_input(self, stmt: ast.InputDecl, scope: Scope) -> None:
        dims = []
        for d in stmt.shape:
            v = self.eval(d, scope)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
                raise error("E012", f"input dimensions must be positive integers, got {_show(v)}",
                            d.span)
            dims.append(int(v))
        if not 1 <= len(dims) <= 4:
            raise error("E012", f"input `{stmt.name}` has {len(dims)} dimensions", stmt.span,
                        notes=["the batch is implicit: give [F], [C, L], [C, H, W] or "
                               "[C, D, H, W]"])
        node = self.graph.add("input", [], {"shape": tuple(dims)}, name=stmt.name,
                              span=stmt.span, type=TensorType(tuple(dims)))
        self.graph.inputs[stmt.name] = node
        scope.values[stmt.name] = Tensor(node)

    def _choose_branches(self, body: tuple[ast.Stmt, ...], scope: Scope) -> tuple[ast.Stmt, ...]:
        """The body with each `if` replaced by the statements of the branch its condition
        picks. Conditions read parameters only (they are decided before any value of the
        body exists), so the chosen statements take part in ordering like any others."""
        out: list[ast.Stmt] = []
        local = {n for x in body for n in _defines(x) or (getattr(x, "name", None),)}
        for stmt in body:
            if isinstance(stmt, ast.IfStmt):
                branch = stmt.then if self._condition(stmt, scope, local) else stmt.orelse
                out += self._choose_branches(branch, scope)
            elif isinstance(stmt, ast.Require):
                if not self._condition(stmt, scope, local):
                    raise error("E082", stmt.message, stmt.span,
                                notes=[f"the condition is false: {self._shown(stmt, scope)}"],
                                help="check the arguments of the call" if self.block_stack
                                else "check the network's parameters (and `--set`)")
            else:
                out.append(stmt)
        return tuple(out)

    def _shown(self, stmt: ast.Require, scope: Scope) -> str:
        """The condition as written, then with its sides' values: `dim % heads == 0`
        is `2 == 0`."""
        def side(e):
            v = self.eval(e, scope)
            return v.name if isinstance(v, Symbol) else _show(v).strip("`")
        last = stmt.right if stmt.op is not None else stmt.left
        a, b = stmt.left.span, last.span
        line = self.prog.sources.line(a.file, a.line)
        text = line[a.col - 1:b.end_col - 1] if line is not None and a.line == b.end_line \
            else None
        value = side(stmt.left) if stmt.op is None else \
            f"{side(stmt.left)} {stmt.op} {side(stmt.right)}"
        return f"`{text}` is `{value}`" if text else f"`{value}`"

    def _condition(self, stmt: ast.IfStmt | ast.Require, scope: Scope, local: set) -> bool:
        def value(e: ast.Expr):
            if isinstance(e, ast.Name) and e.id in local and e.id not in scope.values:
                raise error("E012", f"a condition reads parameters; `{e.id}` is a value of "
                            "the body", e.span,
                            help="pass a flag to the block: `block b(c, bn = true)` and "
                                 "`if bn { ... }`")
            v = self.eval(e, scope)
            if isinstance(v, Symbol) and v.name in ("true", "false"):
                return v.name == "true"
            if isinstance(v, Symbol):
                if isinstance(e, ast.Name) and stmt.op in ("==", "!="):
                    return v   # a bare word compared with a parameter: `mode == bilinear`
                raise self._undefined(v.name, e.span, scope)
            if isinstance(v, Tensor):   # a block's input
                raise error("E012", "a condition reads parameters, not tensors", e.span,
                            help="pass a flag to the block: `block b(c, bn = true)` and "
                                 "`if bn { ... }`")
            if isinstance(v, list) or isinstance(v, str):
                raise error("E012", f"a condition is a number or `true`/`false`, got "
                            f"{_show(v)}", e.span)
            return v

        left = value(stmt.left)
        if stmt.op is None:
            if isinstance(left, Symbol):
                raise self._undefined(left.name, stmt.left.span, scope)
            return bool(left)
        right = value(stmt.right)
        if stmt.op in ("==", "!="):
            same = (left.name if isinstance(left, Symbol) else left) == \
                (right.name if isinstance(right, Symbol) else right)
            return same if stmt.op == "==" else not same
        if isinstance(left, (bool, Symbol)) or isinstance(right, (bool, Symbol)):
            raise error("E012", f"`{stmt.op}` compares numbers", stmt.span)
        return {"<": left < right, ">": left > right, "<=": left <= right,
                ">=": left >= right}[stmt.op]

    def _declare_param(self, stmt: ast.ParamDecl, scope: Scope) -> Tensor:
        """A learned tensor of the given shape (no batch axis), initialised by
        `normal(std)` (default std 0.02, as ViT's position embeddings), `uniform(bound)`,
        `zeros` or `ones`."""
        dims = []
        for d in stmt.shape:
            v = self.eval(d, scope)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
                raise error("E012", f"parameter dimensions must be positive integers, got "
                            f"{_show(v)}", d.span)
            dims.append(int(v))
        if not 1 <= len(dims) <= 4:
            raise error("E012", f"parameter `{stmt.name}` has {len(dims)} dimensions", stmt.span,
                        help="give 1 to 4 dimensions: `param pos: [tokens, dim]`")
        init, value = "normal", 0.02
        e = stmt.init
        if e is not None:
            name = e.func if isinstance(e, ast.Call) else e.id if isinstance(e, ast.Name) \
                else None
            if name not in PARAM_INITS:
                raise error("E012", "a parameter's initialiser is `normal(std)`, "
                            "`uniform(bound)`, `zeros` or `ones`", e.span,
                            help=did_you_mean(name, list(PARAM_INITS)) if name else None)
            init = name
            value = PARAM_INITS[name]
            if isinstance(e, ast.Call):
                if name in ("zeros", "ones") and (e.args or e.kwargs):
                    raise error("E013", f"`{name}` takes no arguments", e.span,
                                help=f"write `= {name}`")
                if e.kwargs or len(e.args) > 1:
                    raise error("E013", f"`{name}` takes one number", e.span,
                                help=f"for example `= {name}(0.02)`")
                if e.args:
                    v = self.eval(e.args[0], scope)
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                        raise error("E012", f"`{name}` needs a non-negative number, got "
                                    f"{_show(v)}", e.args[0].span)
                    value = float(v)
        qual = self._qual(scope, stmt.name)
        attrs = {"role": "value", "init": init, "bound": value if init == "uniform" else 0.0,
                 "trainable": True}
        if init == "normal":
            attrs["std"] = value
        node = self.graph.add("param", [], attrs, name=qual, span=stmt.span,
                              type=TensorType(tuple(dims), batched=False))
        self.graph.values.setdefault(qual, node)
        return Tensor(node)

    def _exec(self, stmt: ast.Stmt, scope: Scope, is_block: bool) -> Value | None:
        if isinstance(stmt, ast.MultiAssign):
            v = self._eval_named(stmt.value, scope, "_".join(stmt.names))
            if not isinstance(v, Tensors):
                raise error("E012", f"{len(stmt.names)} names take the parts of a `split` or "
                            f"`chunk`; this is {_kind(v)}", stmt.value.span,
                            help=f"for example `{', '.join(stmt.names)} = x -> "
                                 f"chunk({len(stmt.names)})`")
            if len(v.items) != len(stmt.names):
                raise error("E013", f"`{v.func}` makes {len(v.items)} values here; "
                            f"{len(stmt.names)} names take them", stmt.span,
                            help="name every part")
            for name, t in zip(stmt.names, v.items):
                scope.values[name] = t
                self.graph.values.setdefault(self._qual(scope, name), t.node)
            return None
        if isinstance(stmt, ast.Assign):
            v = self._eval_named(stmt.value, scope, stmt.name)
            if isinstance(v, Tensors):
                names = ", ".join(f"{stmt.name}{i}" for i in range(len(v.items)))
                raise error("E012", f"`{v.func}` makes {len(v.items)} values; name each",
                            stmt.value.span, help=f"write `{names} = ...`")
            scope.values[stmt.name] = v
            if isinstance(v, Tensor):
                self.graph.values.setdefault(self._qual(scope, stmt.name), v.node)
            return None
        if isinstance(stmt, ast.Output):
            if is_block:
                raise error("E012", "`output` belongs in a network; a block ends with `return`",
                            stmt.span, help="write `return ...`")
            if stmt.value is not None:
                v = self._eval_named(stmt.value, scope, stmt.name)
                scope.values[stmt.name] = v
            else:
                v = self._lookup(stmt.name, stmt.span, scope)
            if not isinstance(v, Tensor):
                raise error("E012", f"output `{stmt.name}` is {_kind(v)}, not a tensor",
                            stmt.span)
            self.graph.outputs[stmt.name] = v.node
            self.graph.values.setdefault(stmt.name, v.node)
            return None
        if isinstance(stmt, ast.ParamDecl):
            scope.values[stmt.name] = self._declare_param(stmt, scope)
            return None
        if isinstance(stmt, ast.AssertShape):
            v = self._lookup(stmt.name, stmt.span, scope)
            if not isinstance(v, Tensor):
                raise error("E012", f"`{stmt.name}` is {_kind(v)}, not a tensor", stmt.span)
            dims: list[int | None] = []
            for d in stmt.shape:
                if isinstance(d, ast.Name) and d.id == "_":
                    dims.append(None)
                    continue
                dv = self.eval(d, scope)
                if isinstance(dv, bool) or not isinstance(dv, (int, float)):
                    raise error("E012", f"shape dimensions must be numbers or `_`, got "
                                f"{_show(dv)}", d.span)
                # A fractional size cannot match; shape inference reports it (E023).
                dims.append(int(dv) if int(dv) == dv else dv)
            self.graph.assertions.append(ShapeAssertion(stmt.name, v.node, tuple(dims), stmt.span))
            return None
        if isinstance(stmt, ast.ExprStmt):
            if not is_block:
                raise error("E012", "this value has no name", stmt.span,
                            help="write `name = ...`, or `output name = ...` for a result")
            return self._eval_named(stmt.value, scope, None)
        return None

    def _qual(self, scope: Scope, name: str) -> str:
        return f"{scope.prefix}.{name}" if scope.prefix else name

    def _eval_named(self, expr: ast.Expr, scope: Scope, name: str | None) -> Value:
        saved = scope.prefix
        if name is not None:
            scope.prefix = self._qual(scope, name)
        try:
            v = self.eval(expr, scope)
        finally:
            scope.prefix = saved
        if isinstance(v, Symbol):
            v = self._implicit_call(v, expr, scope)
        return v

    def _implicit_call(self, v: Symbol, e: ast.Expr, scope: Scope) -> Value:
        """A bare layer or block name that starts a block's body, `block b(c) { relu }`:
        applied to the block's input, as `relu()` would be; any other bare name is E014."""
        if isinstance(e, ast.Name) and scope.implicit_input is not None and \
                (v.name in registry.user_ops() or self.prog.block(v.name)):
            return self._apply(e, scope.implicit_input, scope)
        raise self._undefined(v.name, e.span, scope)

    # -- expressions ---------------------------------------------------------------------
    def _lookup(self, name: str, span: SourceSpan, scope: Scope) -> Value:
        if name in scope.values:
            scope.used.add(name)
            return scope.values[name]
        raise self._undefined(name, span, scope)

    def _undefined(self, name: str, span: SourceSpan, scope: Scope) -> NetlangError:
        hint = did_you_mean(name, list(scope.values))
        if hint is None and (name in registry.user_ops() or self.prog.block(name)):
            hint = f"`{name}` is a layer: pipe a value into it, `x -> {name}`"
        return error("E014", f"`{name}` is not defined", span, help=hint)

    def eval(self, e: ast.Expr, scope: Scope) -> Value:
        if isinstance(e, ast.Number):
            return e.value
        if isinstance(e, ast.String):
            return e.value
        if isinstance(e, ast.Name):
            if e.id in scope.values:
                scope.used.add(e.id)
                return scope.values[e.id]
            return Symbol(e.id)
        if isinstance(e, ast.ListExpr):
            return [self.eval(i, scope) for i in e.items]
        if isinstance(e, ast.Neg):
            v = self.eval(e.operand, scope)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise error("E012", f"cannot negate {_kind(v)}", e.span)
            return -v
        if isinstance(e, ast.BinOp):
            return self._binop(e, scope)
        if isinstance(e, ast.Chain):
            v = self.eval(e.items[0], scope)
            if isinstance(v, Symbol):
                v = self._implicit_call(v, e.items[0], scope)
            for item in e.items[1:]:
                v = self._apply(item, v, scope)
            return v
        if isinstance(e, ast.Call):
            return self._call(e, None, scope)
        if isinstance(e, ast.Repeat):
            if scope.implicit_input is not None:
                return self._apply(e, scope.implicit_input, scope)
            raise error("E013", "`repeat` needs a value to start from", e.span,
                        help="pipe a value into it: `x -> repeat 3 { ... }`")
        raise AssertionError(f"unknown expression {e!r}")

    def _binop(self, e: ast.BinOp, scope: Scope) -> Value:
        a, b = self.eval(e.left, scope), self.eval(e.right, scope)
        for v, sub in ((a, e.left), (b, e.right)):
            if isinstance(v, Tensor):
                raise error("E012", f"arithmetic `{e.op}` on a tensor", sub.span,
                            help="combine tensors with `add(a, b)` or `mul(a, b)`")
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise error("E012", f"arithmetic `{e.op}` on {_kind(v)}", sub.span,
                            help=did_you_mean(v.name, scope.values)
                            if isinstance(v, Symbol) else None)
        try:
            if e.op == "+":
                return a + b
            if e.op == "-":
                return a - b
            if e.op == "*":
                return a * b
            if e.op == "/":
                r = a / b
                return int(r) if isinstance(a, int) and isinstance(b, int) and r == int(r) else r
            if e.op == "//":
                return a // b
            if e.op == "%":
                return a % b
            if e.op == "**":
                if abs(b) > 64 or abs(a) > 2 ** 32:
                    raise ArithmeticError
                r = a ** b
                if isinstance(r, complex) or (isinstance(r, float) and not math.isfinite(r)):
                    raise ArithmeticError
                return r
        except ZeroDivisionError:
            raise error("E026", "division by zero", e.span) from None
        except (ArithmeticError, OverflowError):
            raise error("E026", f"`{e.op}` gives no finite number here", e.span) from None
        raise AssertionError(e.op)

    def _apply(self, item: ast.Expr, piped: Value, scope: Scope) -> Value:
        if isinstance(piped, Tensors):
            raise error("E012", f"cannot pipe {_kind(piped)} into a layer", item.span,
                        help=f"name the parts first: `a, b = x -> {piped.func}(...)`")
        if not isinstance(piped, Tensor):
            raise error("E012", f"cannot pipe {_kind(piped)} into a layer", item.span,
                        help="the first element of a chain must be a tensor")
        if isinstance(item, ast.Name):
            if item.id in scope.values and isinstance(scope.values[item.id], Tensor):
                raise error("E012", f"cannot pipe into the value `{item.id}`", item.span,
                            help=f"to combine them, write `add(..., {item.id})` or "
                                 f"`concat(..., {item.id})`")
            call = ast.Call(item.id, (), (), item.span, item.span)
            return self._call(call, piped, scope)
        if isinstance(item, ast.Call):
            return self._call(item, piped, scope)
        if isinstance(item, ast.Repeat):
            n = self.eval(item.count, scope)
            if isinstance(n, bool) or not isinstance(n, (int, float)) or int(n) != n or n < 0:
                raise error("E012", f"`repeat` needs a count >= 0, got {_show(n)}", item.count.span)
            base = scope.fresh(scope.prefix, "repeat")
            v: Value = piped
            for i in range(int(n)):
                saved_prefix = scope.prefix
                saved_var = scope.values.get(item.var) if item.var else None
                scope.prefix = f"{base}.{i}"
                if item.var:
                    scope.values[item.var] = i
                    scope.used.add(item.var)
                try:
                    v = self._apply(item.body, v, scope)
                finally:
                    scope.prefix = saved_prefix
                    if item.var:
                        if saved_var is None:
                            scope.values.pop(item.var, None)
                        else:
                            scope.values[item.var] = saved_var
            return v
        if isinstance(item, ast.Chain):
            v = piped
            for sub in item.items:
                v = self._apply(sub, v, scope)
            return v
        raise error("E012", "only layers and blocks can follow `->`", item.span,
                    help="write `x -> relu`, `x -> conv(16, 3)` or `x -> my_block(...)`")

    def _call(self, call: ast.Call, piped: Tensor | None, scope: Scope) -> Value:
        args = [self.eval(a, scope) for a in call.args]
        if piped is not None:
            args = [piped] + args
            arg_spans = [call.span] + [a.span for a in call.args]
        else:
            arg_spans = [a.span for a in call.args]
        kwargs = {}
        for kw in call.kwargs:
            if kw.name in kwargs:
                raise error("E011", f"argument `{kw.name}` is given twice", kw.span)
            kwargs[kw.name] = (self.eval(kw.value, scope), kw.span)
        if self.prog.block(call.func):
            return self._call_block(call, args, arg_spans, kwargs, scope)
        ops = registry.user_ops()
        if call.func in ops:
            return self._call_op(ops[call.func], call, args, arg_spans, kwargs, scope)
        if call.func in NUMBER_FUNCTIONS and piped is None:
            return self._number_function(call, args, arg_spans, kwargs, scope)
        if call.func in SHAPE_FUNCTIONS and piped is None:
            return self._shape_function(call, args, arg_spans, kwargs, scope)
        if call.func in SPLIT_FUNCTIONS:
            return self._parts(call, args, arg_spans, kwargs, scope)
        hint = did_you_mean(call.func, list(ops) + self.prog.visible_blocks())
        if call.func in LOSSES:
            raise error("E010", f"`{call.func}` is not a layer", call.name_span,
                        notes=["losses belong in the `train` section"], help=hint)
        if call.func in registry.all_ops():
            raise error("E010", f"`{call.func}` is not a layer", call.name_span,
                        notes=[f"`{call.func}` is an operation the compiler uses inside; "
                               "the language has no layer of that name"],
                        help=hint)
        raise error("E010", f"unknown layer or block `{call.func}`", call.name_span, help=hint)

    def _number_function(self, call: ast.Call, args: list[Value], spans: list[SourceSpan],
                         kwargs: dict, scope: Scope) -> Value:
        """`min(a, b, ...)` and `max(a, b, ...)` of numbers, in arguments and repeat counts."""
        if kwargs:
            name, (_, sp) = next(iter(kwargs.items()))
            raise error("E011", f"`{call.func}` has no argument `{name}`", sp,
                        help=f"write `{call.func}(a, b)`")
        if not args:
            raise error("E013", f"`{call.func}` needs at least one number", call.span,
                        help=f"for example `{call.func}(base * 8, 512)`")
        for v, sp in zip(args, spans):
            if isinstance(v, Symbol):
                raise self._undefined(v.name, sp, scope)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise error("E012", f"`{call.func}` takes numbers, got {_kind(v)}", sp,
                            help="combine tensors with layers, e.g. `add(a, b)`"
                            if isinstance(v, Tensor) else None)
        return NUMBER_FUNCTIONS[call.func](args)

    def _shape_function(self, call: ast.Call, args: list[Value], spans: list[SourceSpan],
                        kwargs: dict, scope: Scope) -> int:
        """`channels(x)` (axis 0 of a value, per sample) and `size(x, axis)`: sizes known
        while the network is built, so a block can keep its input's channels."""
        want = 1 if call.func == "channels" else 2
        if kwargs or len(args) != want or not isinstance(args[0], Tensor):
            for v, sp in zip(args, spans):
                if isinstance(v, Symbol):
                    raise self._undefined(v.name, sp, scope)
            form = "channels(x)" if want == 1 else "size(x, 0)"
            raise error("E013", f"`{call.func}` takes a value" +
                        (" and an axis" if want == 2 else ""), call.span,
                        help=f"for example `{form}` with `x` an input or a named value")
        t = self._type_now(args[0].node)
        axis = 0 if want == 1 else args[1]
        if isinstance(axis, bool) or not isinstance(axis, int) or not -t.rank <= axis < t.rank:
            raise error("E081", f"`{call.func}`: {_show(axis)} is not an axis of a "
                        f"{fmt_shape(t.shape)} value", spans[-1],
                        notes=["axes count from 0 after the batch; -1 is the last"])
        return t.shape[axis]

    def _parts(self, call: ast.Call, args: list[Value], spans: list[SourceSpan],
               kwargs: dict, scope: Scope) -> Tensors:
        """`chunk(x, n, axis=0)` (torch.chunk: parts of ceil(L / n), so possibly fewer than
        n) and `split(x, size or [sizes], axis=0)` (torch.split): one `slice_axis` a part."""
        f = call.func
        form = f"{f}(x, 2, axis = -1)" if f == "chunk" else f"{f}(x, [64, 64], axis = 0)"
        for key, (_, sp) in kwargs.items():
            if key != "axis":
                raise error("E011", f"`{f}` has no argument `{key}`", sp,
                            help=f"`{f}` takes a value, a {'count' if f == 'chunk' else 'size'}"
                                 " and `axis`")
        if len(args) != 2 or not isinstance(args[0], Tensor):
            for v, sp in zip(args, spans):
                if isinstance(v, Symbol):
                    raise self._undefined(v.name, sp, scope)
            raise error("E013", f"`{f}` takes a value and a "
                        f"{'count' if f == 'chunk' else 'part size or a list of sizes'}",
                        call.span, help=f"for example `{form}`")
        x, how = args
        t = self._type_now(x.node)
        axis, axis_span = kwargs.get("axis", (0, call.span))
        if isinstance(axis, bool) or not isinstance(axis, int) or not -t.rank <= axis < t.rank:
            raise error("E081", f"`{f}`: {_show(axis)} is not an axis of a "
                        f"{fmt_shape(t.shape)} value", axis_span,
                        notes=["axes count from 0 after the batch; -1 is the last"])
        axis %= t.rank
        length = t.shape[axis]

        def positive(v, sp):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 1:
                raise error("E012", f"`{f}` needs positive integers, got {_show(v)}", sp)
            return int(v)
        if f == "chunk":
            n = positive(how, spans[1])
            step = -(-length // n)
            sizes = [min(step, length - s) for s in range(0, length, step)]
        elif isinstance(how, list):
            sizes = [positive(v, spans[1]) for v in how]
            if sum(sizes) != length:
                raise error("E012", f"`split`: the sizes [{', '.join(map(str, sizes))}] add up "
                            f"to {sum(sizes)}; "
                            f"axis {axis} of the {fmt_shape(t.shape)} value has {length}",
                            spans[1], help="the parts must cover the axis")
        else:
            step = positive(how, spans[1])
            sizes = [min(step, length - s) for s in range(0, length, step)]
        parts, start = [], 0
        base = scope.prefix or f
        for i, size in enumerate(sizes):
            node = self.graph.add("slice_axis", [x.node],
                                  {"axis": axis, "start": start, "stop": start + size},
                                  name=f"{base}.{f}{i}", span=call.span)
            parts.append(Tensor(node))
            start += size
        return Tensors(tuple(parts), f)

    def _type_now(self, node: Node) -> TensorType:
        """The per-sample type of a value while the graph is still being built: the shape
        rules of its ancestors, run on copies of their attributes (shape inference proper
        runs after lowering, with its fuller diagnostics)."""
        types = self._types
        for n in self.graph.nodes:
            if n.id not in types:
                if n.type is not None:
                    types[n.id] = n.type
                elif n.op != "param":
                    op = registry.get(n.op)
                    k = len(op.roles(n.attrs))
                    data = n.inputs[:len(n.inputs) - k] if k else n.inputs
                    ctx = registry.ShapeCtx(n.op, [types[i.id] for i in data], dict(n.attrs))
                    try:
                        types[n.id] = op.shape(ctx)
                    except registry.ShapeError as exc:
                        raise error(exc.code, exc.message, n.span, notes=list(exc.notes),
                                    help=exc.help) from None
            if n is node:
                return types[n.id]
        raise AssertionError(f"{node!r} is not in the graph")

    def _split(self, call: ast.Call, args: list[Value], spans: list[SourceSpan], scope: Scope,
               what: str) -> tuple[list[Tensor], list[tuple[Value, SourceSpan]]]:
        tensors: list[Tensor] = []
        rest: list[tuple[Value, SourceSpan]] = []
        for v, sp in zip(args, spans):
            if isinstance(v, Tensor):
                if rest:
                    raise error("E012", f"{what}: tensor inputs come before other arguments",
                                sp, help="move the value to the front of the argument list")
                tensors.append(v)
            else:
                rest.append((v, sp))
        if not tensors and scope.implicit_input is not None:
            tensors = [scope.implicit_input]
        return tensors, rest

    def _call_op(self, op: registry.OpDef, call: ast.Call, args: list[Value],
                 spans: list[SourceSpan], kwargs: dict[str, tuple[Value, SourceSpan]],
                 scope: Scope) -> Tensor:
        tensors, rest = self._split(call, args, spans, scope, f"`{op.name}`")
        signature = _signature(op)
        if len(tensors) < op.min_inputs:
            for v, sp in rest:
                if isinstance(v, Symbol):
                    raise self._undefined(v.name, sp, scope)
            need = "an input" if op.min_inputs == 1 else f"{op.min_inputs} inputs"
            raise error("E013", f"`{op.name}` needs {need}, got {len(tensors)}", call.span,
                        notes=[f"signature: {signature}"],
                        help="pipe a value into it (`x -> " + op.name + "(...)`)"
                        if op.min_inputs == 1 else "pass the values first: "
                        f"`{op.name}(a, b)`")
        if op.max_inputs is not None and len(tensors) > op.max_inputs:
            raise error("E013", f"`{op.name}` takes at most {op.max_inputs} input"
                        f"{'s' if op.max_inputs > 1 else ''}, got {len(tensors)}", call.span,
                        notes=[f"signature: {signature}"],
                        help="a value piped with `->` is the first input")
        attrs: dict[str, Any] = {}
        if len(rest) > len(op.attrs):
            extra, extra_span = rest[len(op.attrs)]
            if isinstance(extra, Symbol):
                raise self._undefined(extra.name, extra_span, scope)
            raise error("E013", f"`{op.name}` takes {len(op.attrs)} argument"
                        f"{'s' if len(op.attrs) != 1 else ''} besides its inputs, got "
                        f"{len(rest)}", rest[len(op.attrs)][1], notes=[f"signature: {signature}"])
        given: dict[str, tuple[Value, SourceSpan]] = {}
        for attr, (v, sp) in zip(op.attrs, rest):
            given[attr.name] = (v, sp)
        for name, (v, sp) in kwargs.items():
            attr = op.attr(name)
            if attr is None:
                raise error("E011", f"`{op.name}` has no argument `{name}`", sp,
                            notes=[f"signature: {signature}"],
                            help=did_you_mean(name, [a.name for a in op.attrs]))
            if name in given:
                raise error("E011", f"argument `{name}` is given twice", sp)
            given[name] = (v, sp)
        for attr in op.attrs:
            if attr.name in given:
                v, sp = given[attr.name]
                if isinstance(v, Tensor):
                    raise error("E012", f"`{attr.name}` must not be a tensor", sp)
                if attr.kind in NUMERIC_KINDS:   # a bare name here is a missing value
                    for item in (v if isinstance(v, list) else [v]):
                        if isinstance(item, Symbol):
                            raise self._undefined(item.name, sp, scope)
                try:
                    attrs[attr.name] = registry.coerce_attr(attr, v)
                except AttrError as exc:
                    hint = None
                    if isinstance(v, Symbol):
                        hint = did_you_mean(v.name, list(attr.choices) + list(scope.values)
                                            + (["same", "valid"] if attr.kind == "pad" else [])
                                            + (["true", "false"] if attr.kind == "bool" else []))
                    raise error("E012", str(exc), sp, notes=[f"signature: {signature}"],
                                help=hint) from None
            elif attr.required:
                raise error("E013", f"`{op.name}` needs `{attr.name}`", call.span,
                            notes=[f"signature: {signature}"],
                            help=f"for example `{_example(op)}`")
            elif attr.default is not None:
                attrs[attr.name] = attr.default
        if len(self.graph.nodes) > MAX_NODES:
            raise error("E028", f"the network has more than {MAX_NODES:,} layers", call.span,
                        help="check the `repeat` counts")
        name = scope.fresh(scope.prefix, op.name)
        params = [self.graph.add("param", [], {"role": role}, name=f"{name}.{role}",
                                 span=call.span) for role in op.roles(attrs)]
        node = self.graph.add(op.name, [t.node for t in tensors] + params, attrs,
                              name=name, span=call.span)
        return Tensor(node)

    def _call_block(self, call: ast.Call, args: list[Value], spans: list[SourceSpan],
                    kwargs: dict[str, tuple[Value, SourceSpan]], scope: Scope) -> Value:
        block = self.prog.block(call.func)
        if block.name in self.block_stack:
            chain = " -> ".join(self.block_stack[self.block_stack.index(block.name):] +
                                [block.name])
            raise error("E027", f"block `{block.name}` calls itself ({chain})", call.span,
                        help="blocks are inlined; use `repeat` for repetition")
        declared = [n for s in block.body if isinstance(s, ast.BlockInputs) for n in s.names]
        tensors, rest = self._split(call, args, spans, scope, f"block `{block.name}`")
        n_in = len(declared) if declared else 1
        sig_args = (declared or ["<input>"]) + [p.name for p in block.params]
        sig = f"{block.name}({', '.join(sig_args)})"
        if len(tensors) != n_in:
            raise error("E013", f"block `{block.name}` takes {n_in} input"
                        f"{'s' if n_in > 1 else ''}, got {len(tensors)}", call.span,
                        notes=[f"signature: {sig}"],
                        help="a value piped with `->` is the first input")
        pnames = [p.name for p in block.params]
        if len(rest) > len(pnames):
            raise error("E013", f"block `{block.name}` takes {len(pnames)} parameter"
                        f"{'s' if len(pnames) != 1 else ''}, got {len(rest)}",
                        rest[len(pnames)][1], notes=[f"signature: {sig}"])
        given: dict[str, Value] = {}
        for p, (v, _) in zip(pnames, rest):
            given[p] = v
        for name, (v, sp) in kwargs.items():
            if name not in pnames:
                raise error("E011", f"block `{block.name}` has no parameter `{name}`", sp,
                            notes=[f"signature: {sig}"], help=did_you_mean(name, pnames))
            if name in given:
                raise error("E011", f"parameter `{name}` is given twice", sp)
            given[name] = v
        for p in block.params:
            if p.name not in given and p.default is None:
                raise error("E013", f"block `{block.name}` needs parameter `{p.name}`",
                            call.span, notes=[f"signature: {sig}"])
        prefix = scope.fresh(scope.prefix, block.name, always_index=False)
        inner = Scope({}, prefix)
        for p in block.params:
            if p.name in given:
                inner.values[p.name] = given[p.name]
            else:
                inner.values[p.name] = self.eval(p.default, inner)
        inner.used.update(pnames)
        if declared:
            for n, t in zip(declared, tensors):
                inner.values[n] = t
        else:
            inner.implicit_input = tensors[0]
        if len(self.block_stack) >= MAX_BLOCK_DEPTH:
            raise error("E007", f"blocks call each other more than {MAX_BLOCK_DEPTH} levels "
                        "deep", call.span,
                        notes=["calls: " + " -> ".join(self.block_stack[:4] + ["..."] +
                                                      self.block_stack[-2:] + [block.name])],
                        help="flatten the chain of blocks, or use `repeat`")
        self.block_stack.append(block.name)
        first = len(self.graph.nodes)
        try:
            result = self._run_body(block.body, inner, is_block=True)
        except NetlangError as exc:
            raise _called_from(exc, block.name, call.span) from None
        finally:
            self.block_stack.pop()
        site = (call.span, f"in `{block.name}`, called here")
        for n in self.graph.nodes[first:]:
            if n.span is not None and n.span.file != call.span.file:
                self.graph.called_at.setdefault(n.id, []).append(site)
        if result is None:
            raise error("E013", f"block `{block.name}` returns nothing", block.span,
                        help="end the block with `return value` or a bare chain")
        return result


def _called_from(exc: NetlangError, block: str, call: SourceSpan) -> NetlangError:
    """An error inside a block of another file (an imported one, the library) also shows
    where this file calls it: the message alone would point at text the user did not
    write here. A failed `require` always shows its call: the arguments are the cause."""
    out = []
    for d in exc.diagnostics:
        if d.span is not None and (d.span.file != call.file or d.code == "E082") and \
                all(sp.file != call.file for sp, _ in d.related):
            d = replace(d, related=d.related + ((call, f"in `{block}`, called here"),))
        out.append(d)
    return NetlangError(out)


# A parameter declaration's initialisers and their default argument.
PARAM_INITS = {"normal": 0.02, "uniform": 0.02, "zeros": 0.0, "ones": 0.0}


def _defines(stmt: ast.Stmt) -> tuple[str, ...]:
    if isinstance(stmt, (ast.Assign, ast.ParamDecl)):
        return (stmt.name,)
    if isinstance(stmt, ast.MultiAssign):
        return stmt.names
    if isinstance(stmt, ast.Output) and stmt.value is not None:
        return (stmt.name,)
    return ()


def _uses(stmt: ast.Stmt) -> set[str]:
    if isinstance(stmt, (ast.Assign, ast.MultiAssign, ast.ExprStmt, ast.Return)):
        return _free(stmt.value)
    if isinstance(stmt, ast.Output):
        return _free(stmt.value) if stmt.value is not None else {stmt.name}
    if isinstance(stmt, ast.AssertShape):
        out = {stmt.name}
        for d in stmt.shape:
            out |= _free(d)
        return out
    if isinstance(stmt, ast.ParamDecl):
        out = _free(stmt.init) if stmt.init is not None else set()
        for d in stmt.shape:
            out |= _free(d)
        return out
    return set()


def _free(e: ast.Expr, bound: frozenset[str] = frozenset()) -> set[str]:
    """Names an expression reads as values (layer names after `->` are not values)."""
    if isinstance(e, ast.Name):
        return set() if e.id in bound else {e.id}
    if isinstance(e, ast.Chain):
        out = _free(e.items[0], bound)
        for item in e.items[1:]:
            if not isinstance(item, ast.Name):
                out |= _free(item, bound)
        return out
    if isinstance(e, ast.Call):
        out: set[str] = set()
        for a in e.args:
            out |= _free(a, bound)
        for kw in e.kwargs:
            out |= _free(kw.value, bound)
        return out
    if isinstance(e, ast.Repeat):
        inner = bound | ({e.var} if e.var else set())
        body = e.body
        items = body.items if isinstance(body, ast.Chain) else (body,)
        out = _free(e.count, bound)
        for item in items:
            if not isinstance(item, ast.Name):
                out |= _free(item, frozenset(inner))
        return out
    if isinstance(e, ast.ListExpr):
        out = set()
        for i in e.items:
            out |= _free(i, bound)
        return out
    if isinstance(e, ast.BinOp):
        return _free(e.left, bound) | _free(e.right, bound)
    if isinstance(e, ast.Neg):
        return _free(e.operand, bound)
    return set()


def _show(v: Value) -> str:
    return registry._show(v)


def _signature(op: registry.OpDef) -> str:
    ins = ["x"] if op.max_inputs == 1 else (
        ["a", "b"] if op.max_inputs == 2 and op.min_inputs == 2 else
        ["x", "like?"] if op.max_inputs == 2 else ["a", "b", "..."])
    parts = []
    for a in op.attrs:
        if a.required:
            parts.append(a.name)
        elif a.default is not None:
            d = a.default
            d = ("true" if d else "false") if isinstance(d, bool) else d
            parts.append(f"{a.name}={d}")
        else:
            parts.append(f"{a.name}=?")
    return f"{op.name}({', '.join(ins + parts)})"


def _example(op: registry.OpDef) -> str:
    return op.example or _signature(op)


def lower(prog: SourceTree, network: str | None = None,
          overrides: dict[str, Value] | None = None) -> Graph:
    nets = prog.main.networks
    if not nets:
        raise error("E016", "the file defines no network",
                    SourceSpan(prog.main.file, 1, 1, 1, 2),
                    help="add `network name { input x: [C, H, W] ... output y = ... }`")
    if network is None:
        if len(nets) > 1:
            raise error("E016", "the file defines several networks: "
                        + ", ".join(f"`{n.name}`" for n in nets), nets[1].span,
                        help="choose one with `--network NAME`")
        net = nets[0]
    else:
        matches = [n for n in nets if n.name == network]
        if not matches:
            raise error("E016", f"no network `{network}` in {prog.main.file}", None,
                        notes=["networks here: " + ", ".join(n.name for n in nets)],
                        help=did_you_mean(network, [n.name for n in nets]))
        net = matches[0]
    seen: dict[str, ast.NetworkDef] = {}
    for n in nets:
        if n.name in seen:
            raise NetlangError(error("E015", f"network `{n.name}` is defined twice", n.span,
                                     related=[(seen[n.name].span, "first defined here")])
                               .diagnostics)
        seen[n.name] = n
    return Lowerer(prog).lower_network(net, dict(overrides or {}))
