"""The direction of imports, enforced (docs/layout.md): each package of netlang may import
only the packages below it in the compiler, nothing imports the command line, renderers
never import CuPy, and there are no import cycles.

Imports are read from the source with `ast` (module level and inside functions alike, but
not `if TYPE_CHECKING:` blocks, which never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

from tests.conftest import ROOT

PACKAGE = ROOT / "netlang"
PUBLIC = ("netlang", "netlang.api", "netlang.config", "netlang.diagnostics",
          "netlang.ir.types", "netlang.train", "netlang.summary", "netlang.artifacts",
          "netlang.optimizers", "netlang.interop")
# Who may import whom, by prefix; `netlang.x` covers netlang.x and netlang.x.*.
ALLOWED = {
    "netlang.diagnostics": (),
    "netlang.optimizers": (),          # the optimizer table: a leaf
    "netlang.ir": ("netlang.diagnostics",),
    "netlang.ops": ("netlang.ir", "netlang.diagnostics"),
    # Lowering checks each layer's attributes against its op's schema.
    "netlang.lang": ("netlang.ir", "netlang.ops", "netlang.diagnostics"),
    "netlang.passes": ("netlang.ir", "netlang.ops", "netlang.diagnostics"),
    "netlang.kernels": ("netlang.ir", "netlang.ops", "netlang.diagnostics"),
    # A backend executes the memory plan (passes/memplan.py makes it).
    "netlang.backends": ("netlang.ir", "netlang.ops", "netlang.kernels", "netlang.diagnostics",
                         "netlang.passes.memplan", "netlang.optimizers"),
    "netlang.program": ("netlang.ir", "netlang.ops", "netlang.passes", "netlang.backends",
                        "netlang.diagnostics"),
    "netlang.config": ("netlang.lang", "netlang.ops", "netlang.passes.loss",
                       "netlang.optimizers", "netlang.diagnostics"),
    # ONNX export reads the checked graph and specialises it for inference; ONNX import
    # checks the source it writes with the front end.
    "netlang.interop": ("netlang.ir", "netlang.ops", "netlang.lang", "netlang.passes",
                        "netlang.diagnostics"),
    "netlang.train": PUBLIC,
    "netlang.cli": PUBLIC,
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import of netlang or cupy."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            names += [f"{node.module}.{a.name}" for a in node.names
                      if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).exists()
                      or (PACKAGE.parent / (f"{node.module}.{a.name}".replace(".", "/")
                                            + ".py")).exists()]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out += [(n, id(node) in top) for n in names if n.split(".")[0] in ("netlang", "cupy")]
    return out


def _graph() -> dict[str, list[tuple[str, bool]]]:
    return {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _covered(name: str, prefixes) -> bool:
    """`name` is one of `prefixes` or inside one; the bare package `netlang` covers only
    itself (its __init__), not every module under it."""
    return any(name == p or (p != "netlang" and name.startswith(p + ".")) for p in prefixes)


def test_imports_run_one_way():
    bad = []
    for mod, imports in _graph().items():
        rule = next((k for k in sorted(ALLOWED, key=len, reverse=True) if _covered(mod, [k])),
                    None)
        if rule is None:
            continue
        for name, _ in imports:
            if _covered(name, [rule]) or name.startswith("cupy"):
                continue
            if not _covered(name, ALLOWED[rule]):
                bad.append(f"{mod} imports {name}")
    assert bad == [], "\n".join(bad)


def test_nothing_imports_the_command_line():
    users = [mod for mod, imports in _graph().items() for name, _ in imports
             if _covered(name, ["netlang.cli"]) and mod not in ("netlang.__main__",)
             and not mod.startswith("netlang.cli")]
    assert users == []


def test_renderers_import_no_cupy():
    for mod, imports in _graph().items():
        if mod.startswith("netlang.kernels") or mod == "netlang.backends.cuda.render":
            assert not [n for n, _ in imports if n.startswith("cupy")], mod


def test_no_import_cycles():
    g = nx.DiGraph()
    for mod, imports in _graph().items():
        for name, top in imports:
            if top and name.startswith("netlang") and name != mod:
                g.add_edge(mod, name)
    cycles = list(nx.simple_cycles(g))
    assert cycles == [], cycles[:3]


def test_importing_a_renderer_loads_no_parser():
    code = ("import sys, netlang.backends.cuda.render, netlang.kernels.registry as k; "
            "k._load_all(); print('lark' in sys.modules, 'netlang.lang.parser' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert res.stdout.split() == ["False", "False"], res.stdout + res.stderr
