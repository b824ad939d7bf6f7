"""Which lowering each op has: a loop-level lowering (a function of the kernel builder and
a fusion group anchored at the op) or an elementwise expression (one line of C that the
builder fuses into any kernel's epilogue).

The lowerings live in files that mirror `ops/` (kernels/nn.py lowers the ops of ops/nn.py,
and so on); importing them fills these tables, lazily, as `ops.registry` does for ops.
"""

from __future__ import annotations

from typing import Any, Callable

LOWERINGS: dict[str, Callable[..., None]] = {}
# op -> "C expression" with {v}, {1}.., {attr}; or a function (node, v, loads) -> text.
EXPRESSIONS: dict[str, Any] = {}


def lowers(*ops: str) -> Callable:
    """Decorator: the function is the loop-level lowering of `ops`."""
    def register(fn: Callable) -> Callable:
        for op in ops:
            if op in LOWERINGS:
                raise AssertionError(f"op {op} lowered twice")
            LOWERINGS[op] = fn
        return fn
    return register


def expression(op: str, text: Any) -> None:
    """Register an elementwise op's expression (see kernels/elementwise.py). An op may
    have both: its loop lowering when it anchors a kernel, its expression in epilogues
    (batchnorm in inference)."""
    if op in EXPRESSIONS:
        raise AssertionError(f"op {op} has two expressions")
    EXPRESSIONS[op] = text


def lowering(op: str) -> Callable[..., None] | None:
    _load_all()
    return LOWERINGS.get(op)


def expression_of(op: str) -> Any:
    _load_all()
    return EXPRESSIONS.get(op)


def has_lowering(op: str) -> bool:
    """Whether the kernel backends can run `op` (a loop lowering or an expression)."""
    _load_all()
    return op in LOWERINGS or op in EXPRESSIONS


def _load_all() -> None:
    from netlang.kernels import _conv, elementwise, loss, nn, pool, shape  # noqa: F401
