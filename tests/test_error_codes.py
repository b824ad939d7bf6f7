"""Every error and warning code the source can raise has its entry in docs/errors.md."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def test_every_code_is_documented():
    used = set()
    for path in (ROOT / "netlang").rglob("*.py"):
        used |= set(re.findall(r'"([EW]0\d\d)"', path.read_text(encoding="utf-8")))
    doc = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^### ([EW]0\d\d) ", doc, re.M))
    assert used, "no codes found: the pattern is out of date"
    assert sorted(used - documented) == []
