"""`cuda-emu`: the generated CUDA source, compiled for the host with g++ against emu.h, and
launched through ctypes on NumPy buffers.

All kernels of a program form one translation unit; the shared library is cached by the
hash of its source (and of emu.h) under ~/.cache/netlang (or $XDG_CACHE_HOME/netlang).
Each kernel gets an `extern "C" launch_<name>(grid, block, args...)` wrapper; a launch
checks the arguments against the kernel's signature (32-bit ints in range, float32 or
int64 C-contiguous buffers, 16-byte aligned) before calling it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from netlang.diagnostics import error

SIGNATURE = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')


@dataclass(frozen=True)
class Param:
    ctype: str   # "float*", "const float*", "const long long*", "int"
    name: str


def kernel_signatures(source: str) -> dict[str, list[Param]]:
    out = {}
    for m in SIGNATURE.finditer(source):
        params = []
        for p in m.group(2).split(","):
            p = p.replace("__restrict__", " ").strip()
            ctype, name = p.rsplit(" ", 1)
            params.append(Param(" ".join(ctype.split()), name))
        out[m.group(1)] = params
    return out


def emu_header() -> str:
    return resources.files("netlang.backends.cuda").joinpath("emu.h").read_text()


def translation_unit(source: str) -> str:
    sigs = kernel_signatures(source)
    parts = [emu_header(), source]
    for name, params in sigs.items():
        body_src = source[source.index(f"void {name}("):]
        body_src = body_src[:body_src.index("\n}\n") if "\n}\n" in body_src else None]
        sync = "__syncthreads" in body_src
        fields = "; ".join(f"{p.ctype} {p.name}" for p in params)
        call = ", ".join(f"nl_a->{p.name}" for p in params)
        plist = ", ".join(f"{p.ctype} {p.name}" for p in params)
        init = ", ".join(p.name for p in params)
        parts.append(
            f"struct args_{name} {{ {fields}; }};\n"
            f"static void body_{name}(void* nl_p) {{ args_{name}* nl_a = (args_{name}*)nl_p; "
            f"{name}({call}); }}\n"
            f'extern "C" void launch_{name}(int nl_grid, int nl_block, {plist}) {{\n'
            f"    args_{name} nl_args = {{ {init} }};\n"
            f"    nl_launch(nl_grid, nl_block, body_{name}, &nl_args, "
            f"{'true' if sync else 'false'});\n"
            "}\n")
    return "\n".join(parts)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "netlang" / "emu"


def compiler() -> list[str] | None:
    """The host C++ compiler (cuda-emu and the cpu backend) as a command: $CXX when its
    program exists (it may carry arguments: CXX="python -m ziglang c++" uses the compiler
    that `pip install ziglang` brings), else g++, c++ or clang++; None when there is none."""
    cxx = shlex.split(os.environ.get("CXX", ""))
    if cxx and shutil.which(cxx[0]):
        return [shutil.which(cxx[0]), *cxx[1:]]
    found = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    return [found] if found else None


def compile_host(source: str) -> Path:
    """Compile (or reuse) the host library for a program's kernels."""
    cxx = compiler()
    if cxx is None:
        raise error("E060", "cuda-emu needs a C++ compiler (g++ or clang++)", None,
                    help="install one (`apt-get install g++`) or use --backend numpy")
    unit = translation_unit(source)
    digest = hashlib.sha256((unit + " ".join(cxx)).encode()).hexdigest()[:20]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"kernels-{digest}.so"
    if lib.exists():
        return lib
    src = out_dir / f"kernels-{digest}.cpp"
    src.write_text(unit)
    tmp = out_dir / f".kernels-{digest}-{os.getpid()}.so"
    # -O1: compiles a large U-Net training program twice as fast as -O2, runs about as fast.
    res = subprocess.run([*cxx, "-O1", "-std=c++17", "-shared", "-fPIC", "-U_FORTIFY_SOURCE",
                          "-w", str(src), "-o", str(tmp)], capture_output=True, text=True)
    if res.returncode != 0:
        raise error("E061", "the host compiler rejected the generated kernels", None,
                    notes=[res.stderr.strip()[:2000]],
                    help=f"the source is kept in {src}")
    os.replace(tmp, lib)
    return lib


class EmuModule:
    def __init__(self, source: str):
        self.sigs = kernel_signatures(source)
        self.lib = ctypes.CDLL(str(compile_host(source)))
        self.funcs = {}
        for name, params in self.sigs.items():
            f = getattr(self.lib, f"launch_{name}")
            f.restype = None
            f.argtypes = [ctypes.c_int, ctypes.c_int] + [
                {"int": ctypes.c_int, "float": ctypes.c_float}.get(p.ctype, ctypes.c_void_p)
                for p in params]
            self.funcs[name] = f

    def launch(self, name: str, grid: int, block: int, args: list) -> None:
        params = self.sigs[name]
        if len(args) != len(params):
            raise AssertionError(f"{name}: {len(args)} arguments for {len(params)} parameters")
        cargs = []
        for p, a in zip(params, args):
            cargs.append(check_arg(name, p, a))
        self.funcs[name](grid, block, *cargs)


def check_arg(kernel: str, p: Param, a):
    """What a kernel parameter accepts; mistakes here would be silent memory corruption."""
    if p.ctype == "int":
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
            raise AssertionError(f"{kernel}.{p.name}: int parameter got {type(a).__name__}")
        if not -2**31 <= int(a) < 2**31:
            raise AssertionError(f"{kernel}.{p.name}: {a} does not fit a 32-bit int")
        return int(a)
    if p.ctype == "float":
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, float, np.floating)):
            raise AssertionError(f"{kernel}.{p.name}: float parameter got {type(a).__name__}")
        return float(a)
    want = np.int64 if "long long" in p.ctype else np.float32
    if not isinstance(a, np.ndarray):
        raise AssertionError(f"{kernel}.{p.name}: pointer parameter got {type(a).__name__}")
    if a.dtype != want or not a.flags.c_contiguous:
        raise AssertionError(f"{kernel}.{p.name}: needs a C-contiguous {np.dtype(want)} "
                             f"buffer, got {a.dtype} (contiguous: {a.flags.c_contiguous})")
    if a.ctypes.data % 16:
        raise AssertionError(f"{kernel}.{p.name}: buffer not 16-byte aligned")
    return a.ctypes.data
