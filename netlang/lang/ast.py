"""AST of a `.net` file: frozen dataclasses, each carrying the SourceSpan it was parsed from."""

from __future__ import annotations

from dataclasses import dataclass

from netlang.diagnostics import SourceSpan


@dataclass(frozen=True)
class Number:
    value: int | float
    span: SourceSpan


@dataclass(frozen=True)
class String:
    value: str
    span: SourceSpan


@dataclass(frozen=True)
class Name:
    id: str
    span: SourceSpan


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: "Expr"
    span: SourceSpan


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple["Expr", ...]
    kwargs: tuple[Kwarg, ...]
    span: SourceSpan
    name_span: SourceSpan


@dataclass(frozen=True)
class Repeat:
    count: "Expr"
    var: str | None
    body: "Expr"
    span: SourceSpan


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: SourceSpan


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / // % **
    left: "Expr"
    right: "Expr"
    span: SourceSpan


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    span: SourceSpan


@dataclass(frozen=True)
class Chain:
    """`a -> f -> g`: the value of `a` is piped as the first input of `f`, and so on."""

    items: tuple["Expr", ...]
    span: SourceSpan


Expr = Number | String | Name | Call | Repeat | ListExpr | BinOp | Neg | Chain


@dataclass(frozen=True)
class InputDecl:
    name: str
    shape: tuple[Expr, ...]
    span: SourceSpan


@dataclass(frozen=True)
class ParamDecl:
    """`param pos: [T, D] = normal(0.02)`: a learned tensor (no batch axis)."""
    name: str
    shape: tuple[Expr, ...]
    init: Expr | None
    span: SourceSpan


@dataclass(frozen=True)
class IfStmt:
    """`if cond { ... } else { ... }`: `op` is None for a bare condition (`if bn`)."""
    left: Expr
    op: str | None
    right: Expr | None
    then: tuple["Stmt", ...]
    orelse: tuple["Stmt", ...]
    span: SourceSpan


@dataclass(frozen=True)
class Require:
    """`require cond, "message"`: E082 with the message when the condition is false."""
    left: Expr
    op: str | None
    right: Expr | None
    message: str
    span: SourceSpan


@dataclass(frozen=True)
class BlockInputs:
    names: tuple[str, ...]
    span: SourceSpan


@dataclass(frozen=True)
class Output:
    name: str
    value: Expr | None
    span: SourceSpan


@dataclass(frozen=True)
class Return:
    value: Expr
    span: SourceSpan


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    span: SourceSpan


@dataclass(frozen=True)
class MultiAssign:
    """`q, k, v = x -> chunk(3, axis = -1)`: the values of a split, one name each."""

    names: tuple[str, ...]
    value: Expr
    span: SourceSpan


@dataclass(frozen=True)
class AssertShape:
    name: str
    shape: tuple[Expr, ...]
    span: SourceSpan


@dataclass(frozen=True)
class ExprStmt:
    value: Expr
    span: SourceSpan


Stmt = (InputDecl | ParamDecl | IfStmt | Require | BlockInputs | Output | Return | Assign
        | MultiAssign | AssertShape | ExprStmt)


@dataclass(frozen=True)
class Param:
    name: str
    default: Expr | None
    span: SourceSpan


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: SourceSpan
    file: str


@dataclass(frozen=True)
class NetworkDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Stmt, ...]
    span: SourceSpan


@dataclass(frozen=True)
class TrainSet:
    key: str
    value: Expr
    span: SourceSpan


@dataclass(frozen=True)
class TrainDef:
    """`train { ... }` (every network of the file: the shared settings), or
    `train a, b { ... }` (those networks; its keys replace the shared ones)."""

    networks: tuple[str, ...]
    items: tuple[TrainSet | Call, ...]
    span: SourceSpan


@dataclass(frozen=True)
class Import:
    path: str
    span: SourceSpan


@dataclass(frozen=True)
class Module:
    file: str
    imports: tuple[Import, ...]
    blocks: tuple[BlockDef, ...]
    networks: tuple[NetworkDef, ...]
    trains: tuple[TrainDef, ...]
