"""User-facing diagnostics: error codes, source spans and rustc-style rendering.

Every user error in netlang is a :class:`NetlangError` carrying one or more
:class:`Diagnostic` records. Internal bugs stay ordinary exceptions. The CLI
prints diagnostics with :func:`render` and exits with status 1; it never shows
a Python traceback for a user error.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Sequence


@dataclass(frozen=True)
class SourceSpan:
    """A region of a source file; lines and columns are 1-based, end exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Severity(Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: SourceSpan | None = None
    notes: tuple[str, ...] = ()
    help: str | None = None
    severity: Severity = Severity.ERROR
    # Secondary locations, each with a short label ("this pool floors 35 to 17").
    related: tuple[tuple[SourceSpan, str], ...] = ()

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


class NetlangError(Exception):
    """A user error: carries diagnostics that the CLI renders."""

    def __init__(self, diagnostics: Diagnostic | Sequence[Diagnostic]):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        first = self.diagnostics[0]
        where = f"{first.span}: " if first.span else ""
        super().__init__(f"{where}{first.code}: {first.message}")

    def render(self, sources: "SourceMap | None" = None) -> str:
        return "\n".join(render(d, sources) for d in self.diagnostics)


def error(code: str, message: str, span: SourceSpan | None = None, *,
          notes: Iterable[str] = (), help: str | None = None,
          related: Iterable[tuple[SourceSpan, str]] = ()) -> NetlangError:
    """Build (not raise) a NetlangError with a single diagnostic."""
    return NetlangError(Diagnostic(code, message, span, tuple(notes), help,
                                   Severity.ERROR, tuple(related)))


def warning(code: str, message: str, span: SourceSpan | None = None, *,
            notes: Iterable[str] = (), help: str | None = None) -> Diagnostic:
    return Diagnostic(code, message, span, tuple(notes), help, Severity.WARNING)


@dataclass
class SourceMap:
    """File name -> text, so that diagnostics can quote the offending line."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, text: str) -> None:
        self.texts[name] = text

    def line(self, name: str, line: int) -> str | None:
        text = self.texts.get(name)
        if text is None:
            return None
        lines = text.splitlines()
        if 1 <= line <= len(lines):
            return lines[line - 1]
        return None


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate, phrased as a help line, or None."""
    cands = sorted(set(candidates))
    match = difflib.get_close_matches(name, cands, n=1, cutoff=0.6)
    if not match:
        # Prefix matches catch abbreviations such as `conv_t` for `conv_transpose`.
        match = [c for c in cands if c.startswith(name) and len(name) >= 3][:1]
    return f"did you mean `{match[0]}`?" if match else None


def _quote(span: SourceSpan, sources: SourceMap | None, gutter: int,
           label: str = "") -> list[str]:
    text = sources.line(span.file, span.line) if sources else None
    if text is None:
        return []
    pad = " " * gutter
    start = max(span.col - 1, 0)
    if span.end_line == span.line:
        width = max(span.end_col - span.col, 1)
    else:
        width = max(len(text.rstrip()) - start, 1)
    caret = " " * start + "^" * width + (f" {label}" if label else "")
    return [f"{pad} |", f"{span.line:>{gutter}} | {text.rstrip()}", f"{pad} | {caret}"]


def render(d: Diagnostic, sources: SourceMap | None = None) -> str:
    """Render a diagnostic the way rustc does: header, location, quote, notes, help."""
    out = [f"{d.severity.value}[{d.code}]: {d.message}"]
    spans = [d.span] if d.span else []
    spans += [s for s, _ in d.related]
    gutter = max([len(str(s.line)) for s in spans] or [1])
    if d.span:
        out.append(f"{' ' * gutter}--> {d.span}")
        out += _quote(d.span, sources, gutter)
    for span, label in d.related:
        out.append(f"{' ' * gutter}::: {span}")
        quoted = _quote(span, sources, gutter, label)
        out += quoted if quoted else [f"{' ' * gutter} = {label}"]
    for note in d.notes:
        out.append(f"{' ' * gutter} = note: {note}")
    if d.help:
        out.append(f"{' ' * gutter} = help: {d.help}")
    return "\n".join(out)
