"""The CUDA renderer: a fused program as CUDA C source and a launch plan.

The kernels themselves come from the kernel layer (netlang/kernels: the builder and each op
family's lowerings); this module adds what is CUDA's own, the prelude of device helpers,
and the entry point. It makes strings only; it never imports CuPy (backends/cuda/runtime.py
does), so `netlang compile` writes `kernels.cu` on any machine.
"""

from __future__ import annotations

from importlib import resources

from netlang.ir.graph import Graph
from netlang.kernels.builder import (
    BLOCK, GEMM_CONV_MACS, Arg, CudaProgram, Gemm, KernelBuilder, KernelInfo, Launch,
    Unsupported,
)


def prelude() -> str:
    return resources.files("netlang.backends.cuda").joinpath("prelude.cuh").read_text()


def render(g: Graph, gemm_conv_macs: int | None = None, capturable: bool = False
           ) -> CudaProgram:
    """CUDA source and launch plan for a compiled program (its graph must be fused).
    `capturable`: no cuBLAS calls (GEMMs as generated kernels), for CUDA graphs."""
    if g.fusion is None:
        raise AssertionError("render needs a fused program")
    prog = KernelBuilder(g, g.fusion, gemm_conv_macs, capturable).build(prelude())
    prog.outputs = {k: f"v{n.id}" for k, n in g.outputs.items()}
    return prog


__all__ = ["BLOCK", "GEMM_CONV_MACS", "Arg", "CudaProgram", "Gemm", "KernelInfo", "Launch",
           "Unsupported", "render"]
