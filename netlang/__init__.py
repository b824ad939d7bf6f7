"""netlang: a declarative language for convolutional networks and a graph compiler.

The public API (`load`, `loads`, `Network`) is imported on first use, so that importing
one part of the compiler (the CUDA renderer, say) does not load the parser and the rest.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Diagnostic", "Network", "NetlangError", "load", "loads", "__version__"]

_LAZY = {"Network": "netlang.api", "load": "netlang.api", "loads": "netlang.api",
         "Diagnostic": "netlang.diagnostics", "NetlangError": "netlang.diagnostics"}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    try:   # `netlang.api` and other submodules, as after `import netlang.api`
        return importlib.import_module(f"netlang.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'netlang' has no attribute {name!r}") from None
