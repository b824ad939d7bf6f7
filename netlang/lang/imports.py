"""Read a `.net` file and the files it imports (blocks only), detecting cycles; the
library's blocks (library.net) are visible to every program."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from netlang.diagnostics import NetlangError, SourceMap, error
from netlang.lang import ast
from netlang.lang.parser import parse


@dataclass
class SourceTree:
    """The main module, every block visible to it, and the text of every file read."""

    main: ast.Module
    blocks: dict[str, ast.BlockDef] = field(default_factory=dict)
    sources: SourceMap = field(default_factory=SourceMap)
    # The library's blocks; a program's own block of the same name takes its place.
    library: dict[str, ast.BlockDef] = field(default_factory=dict)

    def block(self, name: str) -> ast.BlockDef | None:
        return self.blocks.get(name) or self.library.get(name)

    def visible_blocks(self) -> list[str]:
        return list(self.blocks) + [b for b in self.library if b not in self.blocks]


LIBRARY_FILE = "<netlang>/library.net"


@lru_cache(maxsize=1)
def _library() -> tuple[str, tuple[ast.BlockDef, ...]]:
    text = resources.files("netlang.lang").joinpath("library.net").read_text(encoding="utf-8")
    return text, tuple(parse(text, LIBRARY_FILE).blocks)


def read_program(text: str, file: str, base_dir: Path | None = None,
                 sources: SourceMap | None = None) -> SourceTree:
    sources = sources or SourceMap()
    sources.add(file, text)
    main = parse(text, file)
    lib_text, lib_blocks = _library()
    sources.add(LIBRARY_FILE, lib_text)
    prog = SourceTree(main, {}, sources, {b.name: b for b in lib_blocks})
    _collect(prog, main, base_dir or Path("."), [str(Path(file).resolve())
                                                 if base_dir else file])
    return prog


def _collect(prog: SourceTree, module: ast.Module, base_dir: Path, stack: list[str]) -> None:
    for imp in module.imports:
        path = (base_dir / imp.path).resolve()
        if str(path) in stack:
            chain = " -> ".join(Path(s).name for s in stack[stack.index(str(path)):])
            raise error("E003", f"import cycle: {chain} -> {path.name}", imp.span,
                        help="move the shared blocks into a file that imports neither")
        if path.suffix != ".net":
            # Only network sources: a syntax error in any other file would quote its text.
            raise error("E003", f'cannot import "{imp.path}": only `.net` files can be '
                        "imported", imp.span, help="import a file of blocks, e.g. "
                        '`import "blocks.net"`')
        if not path.is_file():
            raise error("E003", f'cannot import "{imp.path}": no such file', imp.span,
                        notes=[f"looked for {path}"],
                        help="import paths are relative to the importing file")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise error("E003", f'cannot read "{imp.path}": {exc}', imp.span) from None
        shown = _display(path)
        prog.sources.add(shown, text)
        sub = parse(text, shown)
        _collect(prog, sub, path.parent, stack + [str(path)])
        for b in sub.blocks:
            _add_block(prog, b)
    for b in module.blocks:
        _add_block(prog, b)


def _add_block(prog: SourceTree, b: ast.BlockDef) -> None:
    old = prog.blocks.get(b.name)
    if old is not None and old is not b and old.span != b.span:
        raise NetlangError([error("E015", f"block `{b.name}` is defined twice", b.span,
                                  related=[(old.span, "first defined here")],
                                  help="rename one of them").diagnostics[0]])
    prog.blocks[b.name] = b


def _display(path: Path) -> str:
    """The path as diagnostics show it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
