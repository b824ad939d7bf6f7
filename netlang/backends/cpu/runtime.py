"""Compile the C rendering of a program with the host compiler (cached by the hash of its
source in the user's cache directory) and run a whole step as one call of its `nl_step`
through ctypes, on the Runner's buffers (the memory plan's arena, inputs, parameters and
scratch, all allocated once per batch size).

GEMMs and the convolutions' products call the sgemm that SciPy exposes to native code
(`scipy.linalg.cython_blas`, a documented capsule table: no new dependency). The cores are
split by OpenMP (`threads`, default all); that BLAS is kept on one thread while a step runs,
so the two never oversubscribe the machine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import time

import numpy as np

from netlang.backends.cuda.emu import Param, cache_dir, check_arg, compiler
from netlang.diagnostics import error

SIGNATURE = re.compile(r'extern "C" void (\w+)\(([^)]*)\)')
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]
# What the last compile_library call did: "cache" or the seconds the compiler took.
LAST_COMPILE: dict[str, object] = {}


def signatures(source: str) -> dict[str, list[Param]]:
    out = {}
    for m in SIGNATURE.finditer(source):
        params = []
        for p in m.group(2).split(","):
            if p.strip() in ("", "void"):
                continue
            ctype, name = p.replace("__restrict__", " ").strip().rsplit(" ", 1)
            params.append(Param(" ".join(ctype.split()), name))
        out[m.group(1)] = params
    return out


def compile_library(source: str, profile: bool = False) -> str:
    """The shared library of `source` (compiled, or from the cache); `profile` builds the
    variant whose nl_step times each statement."""
    cxx = compiler()
    if cxx is None:
        raise error("E060", "the cpu backend needs a C++ compiler (g++ or clang++)", None,
                    help="install one (`apt-get install g++`) or use --backend numpy")
    flags = FLAGS + (["-DNL_PROFILE"] if profile else [])
    digest = hashlib.sha256((source + " ".join(flags + cxx)).encode()).hexdigest()[:20]
    out_dir = cache_dir().parent / "cpu"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"kernels-{digest}.so"
    if lib.exists():
        LAST_COMPILE.update(source="cache", seconds=0.0)
        return str(lib)
    t0 = time.perf_counter()
    src = out_dir / f"kernels-{digest}.cpp"
    src.write_text(source)
    tmp = out_dir / f".kernels-{digest}-{os.getpid()}.so"
    base = [*cxx, *flags, str(src), "-o", str(tmp)]
    res = subprocess.run([*cxx, "-fopenmp", *base[len(cxx):]], capture_output=True, text=True)
    if res.returncode != 0:   # no OpenMP here: the same kernels, on one core
        res = subprocess.run(base, capture_output=True, text=True)
    if res.returncode != 0:
        raise error("E061", "the host compiler rejected the generated kernels", None,
                    notes=[res.stderr.strip()[:2000]], help=f"the source is kept in {src}")
    os.replace(tmp, lib)
    LAST_COMPILE.update(source="compiled", seconds=time.perf_counter() - t0)
    return str(lib)


def _sgemm_pointer() -> int:
    """The address of SciPy's BLAS sgemm (Fortran calling convention)."""
    from scipy.linalg import cython_blas

    cap = cython_blas.__pyx_capi__["sgemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get(cap, get_name(cap))


class _ScipyBlasThreads:
    """Sets the thread count of the BLAS that scipy.linalg.cython_blas calls (found through
    threadpoolctl by its file, which lies in SciPy's own folder when SciPy bundles it)."""

    def __init__(self):
        self.controllers = []
        try:
            import scipy
            from threadpoolctl import ThreadpoolController

            root = os.path.dirname(os.path.dirname(scipy.__file__))
            for c in ThreadpoolController().lib_controllers:
                if c.user_api == "blas" and os.path.basename(
                        os.path.dirname(c.filepath)).startswith("scipy"):
                    if os.path.dirname(os.path.dirname(c.filepath)) == root:
                        self.controllers.append(c)
        except Exception:   # threadpoolctl cannot read this BLAS: leave it alone
            self.controllers = []
        self.saved: list[int] = []

    def limit(self) -> None:
        self.saved = [c.num_threads for c in self.controllers]
        for c in self.controllers:
            c.set_num_threads(1)

    def restore(self) -> None:
        for c, n in zip(self.controllers, self.saved):
            c.set_num_threads(n)


_BLAS_THREADS: _ScipyBlasThreads | None = None
_THREADS: int | None = None   # set_threads; None: OpenMP's default (all cores)


def set_threads(n: int | None) -> None:
    """Cores the cpu backend's steps use (`netlang train --threads`); None for all."""
    global _THREADS
    if n is not None and n < 1:
        raise error("E052", f"--threads must be at least 1, got {n}", None)
    _THREADS = n


def _default_threads() -> int:
    """OMP_NUM_THREADS when it is set, else the cores this process may run on."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
        if n >= 1:
            return n
    except ValueError:
        pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


def threads() -> int:
    """The thread count cpu steps will use."""
    return _THREADS or _default_threads()


class CpuModule:
    """The compiled kernels of one program. `step` runs `nl_step` (the whole plan) on a
    table of buffers; `launch` runs one kernel (cuda-emu's contract, for tests)."""

    def __init__(self, source: str, threads: int | None = None, profile: bool = False):
        global _BLAS_THREADS
        self.sigs = signatures(source)
        self.lib = ctypes.CDLL(compile_library(source, profile))
        self.profiled = profile
        self.funcs = {}
        for name, params in self.sigs.items():
            f = getattr(self.lib, name)
            f.restype = None
            f.argtypes = [{"int": ctypes.c_int, "float": ctypes.c_float}.get(
                p.ctype, ctypes.c_void_p) for p in params]
            self.funcs[name] = f
        self.has_step = "nl_step" in self.sigs   # a program (not a lone kernel file)
        if self.has_step:
            self.lib.nl_set_sgemm.argtypes = [ctypes.c_void_p]
            self.lib.nl_set_sgemm(_sgemm_pointer())
            self.lib.nl_get_threads.restype = ctypes.c_int
            self.lib.nl_step.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
            self.lib.nl_step.restype = None
            vp, i32, ll = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_longlong)
            self.lib.nl_train.argtypes = [vp, i32, i32, vp, i32, vp, i32, i32, vp, ll, i32,
                                          vp, ll]
            self.lib.nl_train.restype = ctypes.c_int
        self.fixed_threads = threads   # None: follow set_threads
        self.applied = 0
        if _BLAS_THREADS is None:
            _BLAS_THREADS = _ScipyBlasThreads()
        self._table: tuple | None = None

    @property
    def threads(self) -> int:
        self._apply_threads()
        return int(self.lib.nl_get_threads())

    def _apply_threads(self) -> None:
        want = self.fixed_threads or threads()
        if want != self.applied:
            self.lib.nl_set_threads(int(want))
            self.applied = want

    def step(self, keys: list[str], bufs: dict, batch: int, seed: int) -> None:
        """One call of nl_step over `bufs` (by key, in the order of `keys`)."""
        arrays = [bufs[k] for k in keys]
        if self._table is None or self._table[0] != [id(a) for a in arrays]:
            for k, a in zip(keys, arrays):
                want = np.int64 if a.dtype == np.int64 else np.float32
                if a.dtype != want or not a.flags.c_contiguous or a.ctypes.data % 16:
                    raise AssertionError(f"nl_step: buffer {k} is not an aligned contiguous "
                                         f"{np.dtype(want)} array")
            ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])
            self._table = ([id(a) for a in arrays], ptrs, arrays)
        self._apply_threads()
        _BLAS_THREADS.limit()
        try:
            self.lib.nl_step(self._table[1], int(batch), int(seed) & 0x7FFFFFFF)
        finally:
            _BLAS_THREADS.restore()

    def train(self, B, batch: int, seed: int, loss, kind: int, h, nh: int, np_: int, P, n,
              nu: int, U, un) -> bool:
        """One call of nl_train (the step, then the update) on tables that
        netlang/backends/step.py builds once per batch size; False when the loss was not
        finite and nothing was updated."""
        self._apply_threads()
        _BLAS_THREADS.limit()
        try:
            return bool(self.lib.nl_train(B, int(batch), int(seed) & 0x7FFFFFFF, loss, kind, h,
                                          nh, np_, P, n, nu, U, un))
        finally:
            _BLAS_THREADS.restore()

    def seconds(self, count: int) -> list[float]:
        """Per statement of nl_step, the seconds summed over the steps run (profile build)."""
        if not self.profiled:
            raise AssertionError("seconds() needs a module built with profile=True")
        self.lib.nl_profile.restype = ctypes.POINTER(ctypes.c_double)
        table = self.lib.nl_profile()
        return [table[i] for i in range(count)]

    def launch(self, name: str, grid: int, block: int, args: list) -> None:
        """Run kernel `name` over all its elements (the grid is the CUDA rendering's)."""
        params = self.sigs[name]
        if len(args) != len(params):
            raise AssertionError(f"{name}: {len(args)} arguments for {len(params)} parameters")
        self.funcs[name](*[check_arg(name, p, a) for p, a in zip(params, args)])
