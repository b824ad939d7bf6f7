"""Shared test helpers: the repository's paths, and torch as an optional oracle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture
def torch_mod():
    """torch, single-threaded (its OpenMP pool and numpy's BLAS must not spin against each
    other on small machines); the test is skipped where torch is not installed."""
    torch = pytest.importorskip("torch", reason="torch is not installed (optional oracle)")
    torch.set_num_threads(1)
    return torch


def render_error(exc) -> str:
    return exc.render(getattr(exc, "sources", None))


requires_dot = pytest.mark.skipif(shutil.which("dot") is None,
                                  reason="the graphviz `dot` program is not installed")


def pytest_addoption(parser):
    parser.addoption("--run-long", action="store_true",
                     help="also run the long profiles (random architectures, fuzzing)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-long"):
        return
    skip = pytest.mark.skip(reason="long profile: run with --run-long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
