"""The C renderer: the same kernels as the CUDA renderer (the kernel layer builds both),
in the C dialect: a kernel is a function whose loop over output elements OpenMP splits
over the cores. Strings only; compiling and running is backends/cpu/runtime.py."""

from __future__ import annotations

from importlib import resources

from netlang.ir.graph import Graph
from netlang.kernels.builder import C, CudaProgram, KernelBuilder


def prelude() -> str:
    """The C header lines, then the CUDA prelude as host code (one definition of the
    helpers both renderings use)."""
    from netlang.backends.cuda.render import prelude as cuda_prelude

    host = cuda_prelude().replace("__device__ __forceinline__", "static inline")
    return resources.files("netlang.backends.cpu").joinpath("prelude.h").read_text() + host


def render(g: Graph, gemm_conv_macs: int | None = None, capturable: bool = False
           ) -> CudaProgram:
    """C++ source and launch plan for a compiled (fused) program; GEMM steps are left to
    the runtime's BLAS."""
    if g.fusion is None:
        raise AssertionError("render needs a fused program")
    if capturable:
        raise AssertionError("the cpu backend has no CUDA graphs")
    prog = KernelBuilder(g, g.fusion, gemm_conv_macs, dialect=C).build(prelude())
    prog.outputs = {k: f"v{n.id}" for k, n in g.outputs.items()}
    return prog
