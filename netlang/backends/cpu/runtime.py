"""Compile the C rendering of a program with the host compiler (cached by the hash of its
source, beside cuda-emu's libraries) and call its kernels through ctypes on NumPy buffers.

GEMM steps run through NumPy's BLAS between kernels. OpenMP's idle threads are told to
sleep, not spin (OMP_WAIT_POLICY=passive), so that they leave the cores to BLAS.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess

import numpy as np

from netlang.backends.cuda.emu import Param, cache_dir, check_arg
from netlang.diagnostics import error

SIGNATURE = re.compile(r'extern "C" void (\w+)\(([^)]*)\)')


def signatures(source: str) -> dict[str, list[Param]]:
    out = {}
    for m in SIGNATURE.finditer(source):
        params = []
        for p in m.group(2).split(","):
            ctype, name = p.replace("__restrict__", " ").strip().rsplit(" ", 1)
            params.append(Param(" ".join(ctype.split()), name))
        out[m.group(1)] = params
    return out


def compile_library(source: str) -> str:
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        raise error("E060", "the cpu backend needs a C++ compiler (g++ or clang++)", None,
                    help="install one (`apt-get install g++`) or use --backend numpy")
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    out_dir = cache_dir().parent / "cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"kernels-{digest}.so"
    if lib.exists():
        return str(lib)
    src = out_dir / f"kernels-{digest}.cpp"
    src.write_text(source)
    tmp = out_dir / f".kernels-{digest}-{os.getpid()}.so"
    base = [cxx, "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", str(src),
            "-o", str(tmp)]
    res = subprocess.run(base[:1] + ["-fopenmp"] + base[1:], capture_output=True, text=True)
    if res.returncode != 0:   # no OpenMP here: the same kernels, on one core
        res = subprocess.run(base, capture_output=True, text=True)
    if res.returncode != 0:
        raise error("E061", "the host compiler rejected the generated kernels", None,
                    notes=[res.stderr.strip()[:2000]], help=f"the source is kept in {src}")
    os.replace(tmp, lib)
    return str(lib)


class CpuModule:
    """The compiled kernels of one program; `launch` has cuda-emu's contract."""

    def __init__(self, source: str):
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        self.sigs = signatures(source)
        self.lib = ctypes.CDLL(compile_library(source))
        self.funcs = {}
        for name, params in self.sigs.items():
            f = getattr(self.lib, name)
            f.restype = None
            f.argtypes = [{"int": ctypes.c_int, "float": ctypes.c_float}.get(
                p.ctype, ctypes.c_void_p) for p in params]
            self.funcs[name] = f

    def launch(self, name: str, grid: int, block: int, args: list) -> None:
        """Run kernel `name` over all its elements (the grid is the CUDA rendering's)."""
        params = self.sigs[name]
        if len(args) != len(params):
            raise AssertionError(f"{name}: {len(args)} arguments for {len(params)} parameters")
        self.funcs[name](*[check_arg(name, p, a) for p, a in zip(params, args)])


__all__ = ["CpuModule", "np"]
