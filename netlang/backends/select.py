"""`--backend auto`: the fastest backend this machine can run, and why.

    cuda   CuPy imports and sees a GPU;
    cpu    a C++ compiler builds and loads a probe library (cached, so this costs a
           compile once per machine), and SciPy's BLAS is there;
    numpy  otherwise, with the reason and what to install.
"""

from __future__ import annotations

NAMES = ("auto", "numpy", "cpu", "cuda", "cuda-emu")

_PROBE = 'extern "C" int nl_probe(void) { return 42; }\n'


def _cuda_ok() -> bool:
    try:
        import cupy
    except ImportError:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:   # CUDARuntimeError: no driver, no device
        return False


def cpu_unavailable() -> str | None:
    """Why the cpu backend cannot run here (None when it can)."""
    import ctypes

    from netlang.backends.cpu.runtime import compile_library, compiler
    from netlang.diagnostics import NetlangError

    if compiler() is None:
        return "no C++ compiler found (install g++ or clang++, e.g. `apt-get install g++`)"
    try:
        from scipy.linalg import cython_blas   # noqa: F401
    except ImportError:
        return "SciPy's BLAS is missing (pip install scipy)"
    try:
        lib = ctypes.CDLL(compile_library(_PROBE))
        if lib.nl_probe() != 42:
            return "the compiled probe library returned a wrong value"
    except NetlangError as exc:
        return f"the C++ compiler failed on a probe ({exc.diagnostics[0].message})"
    except OSError as exc:
        return f"the compiled probe library does not load ({exc})"
    return None


def choose(name: str) -> tuple[str, str]:
    """(backend, one line saying which and why) for a --backend value."""
    if name != "auto":
        return name, f"backend: {name}"
    if _cuda_ok():
        return "cuda", "backend: cuda (auto: a GPU was found)"
    why = cpu_unavailable()
    if why is None:
        from netlang.backends.cpu.runtime import threads

        return "cpu", f"backend: cpu (auto: compiled kernels, {threads()} threads)"
    return "numpy", f"backend: numpy (auto: the cpu backend is unavailable: {why})"
