"""Run a rendered program: on a GPU through CuPy (`cuda`), or on the host (`cuda-emu`).

Both walk the same launch plan over the same buffers: one arena for the program's values
(offsets from the memory plan), inputs and parameters as given, scratch buffers for the
reductions some ops need. GEMMs go to `cupy.matmul` (cuBLAS) on the device and to NumPy in
emulation. Only this module imports CuPy, and only when the `cuda` backend is asked for.

A training step with the optimizer's update on the device (and its CUDA graph) is
netlang/backends/step.py's `TrainStep`, built on this Runner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from netlang.backends.cuda import render as R
from netlang.diagnostics import error

BLOCK = R.BLOCK

# cuBLAS GEMMs (dense layers, large convolutions) in float32 by default; `use_tf32(True)`
# (`netlang train --tf32`) lets them use TF32 tensor cores. Generated kernels are float32.
_TF32 = False


def use_tf32(flag: bool) -> None:
    global _TF32
    _TF32 = bool(flag)
    import sys

    if "cupy" in sys.modules:
        _apply_tf32(sys.modules["cupy"])


def _apply_tf32(cp) -> None:
    """CuPy keeps one compute type per dtype for its GEMMs; set float32's explicitly so an
    inherited CUPY_TF32 environment variable cannot change netlang's numerics."""
    try:
        from cupy._core import _routines_linalg as linalg

        mode = linalg.COMPUTE_TYPE_TF32 if _TF32 else linalg.COMPUTE_TYPE_DEFAULT
        linalg.set_compute_type(np.float32, mode)
    except (ImportError, AttributeError):   # another CuPy layout: the documented variable
        import os

        os.environ["CUPY_TF32"] = "1" if _TF32 else "0"


class Device:
    """The array module and kernel launcher of one backend."""

    def __init__(self, backend: str, source: str):
        self.backend = backend
        self.source = source
        if backend == "cuda-emu":
            from netlang.backends.cuda.emu import EmuModule

            self.xp = np
            self.module = EmuModule(source)
        elif backend == "cpu":
            from netlang.backends.cpu.runtime import CpuModule

            self.xp = np
            self.module = CpuModule(source)
        else:
            cp = _cupy()
            _apply_tf32(cp)
            self.xp = cp
            self.module = _compile_cupy(cp, source)
            self.functions: dict = {}

    def launch(self, name: str, grid: int, block: int, args: list) -> None:
        if grid <= 0:
            return
        if self.backend in ("cuda-emu", "cpu"):
            self.module.launch(name, grid, block, args)
            return
        f = self.functions.get(name)
        if f is None:
            f = self.functions[name] = self.module.get_function(name)
        cp = self.xp
        conv = []
        for a in args:
            if isinstance(a, (int, np.integer)) and not isinstance(a, bool):
                if not -2**31 <= int(a) < 2**31:
                    raise AssertionError(f"{name}: {a} does not fit a 32-bit int")
                conv.append(np.int32(a))   # a Python int would be passed as 64 bits
            elif isinstance(a, float):
                conv.append(np.float32(a))
            else:
                if a.data.ptr % 16:
                    raise AssertionError(f"{name}: buffer not 16-byte aligned")
                conv.append(a)
        f((grid,), (block,), tuple(conv))
        del cp

    def to_host(self, a) -> np.ndarray:
        """A host copy (host backends' buffers are the arena, which the next step reuses)."""
        return np.array(a) if self.xp is np else self.xp.asnumpy(a)


def _cupy():
    try:
        import cupy
    except ImportError:
        raise error("E062", "--backend cuda needs CuPy, which is not installed", None,
                    help="pip install 'netlang[cuda]' (cupy-cuda12x; or cupy-cuda13x), or use "
                         "--backend numpy / --backend cuda-emu") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, no device
        raise error("E063", f"--backend cuda found no usable GPU ({type(exc).__name__}: {exc})",
                    None, help="use --backend numpy or --backend cuda-emu") from None
    if count == 0:
        raise error("E063", "--backend cuda found no GPU", None,
                    help="use --backend numpy or --backend cuda-emu")
    return cupy


def _compile_cupy(cp, source: str):
    import hashlib
    import tempfile
    from pathlib import Path

    try:
        mod = cp.RawModule(code=source, options=("-std=c++17",))
        mod.compile()
        return mod
    except Exception as exc:   # cupy.cuda.compiler.CompileException
        keep = Path(tempfile.gettempdir()) / \
            f"netlang-kernels-{hashlib.sha256(source.encode()).hexdigest()[:12]}.cu"
        keep.write_text(source)
        raise error("E061", "NVRTC rejected the generated kernels", None,
                    notes=[str(exc)[:2000]], help=f"the source is kept in {keep}") from None


@dataclass
class Runner:
    """Executes a compiled Program's launch plan on a Device."""

    program: object            # netlang.program.Program
    backend: str               # cuda | cuda-emu | cpu
    capturable: bool = False   # no cuBLAS calls: GEMMs as kernels, for CUDA graphs
    cprog: R.CudaProgram = field(init=False)
    device: Device = field(init=False)

    def __post_init__(self):
        g = self.program.graph
        try:
            if self.backend == "cpu":
                from netlang.backends.cpu.render import render as render_c

                self.cprog = render_c(g)
            else:
                self.cprog = R.render(g, capturable=self.capturable)
        except R.Unsupported as exc:
            raise error("E064", f"no CUDA kernel for {exc}", None,
                        help="use --backend numpy for this network") from None
        self.device = Device(self.backend, self.cprog.source)
        self._arena: dict[int, object] = {}
        self._scratch: dict[int, dict[str, object]] = {}
        self._seed = None

    def buffers(self, feeds: dict[int, np.ndarray], batch: int) -> dict[str, object]:
        xp = self.device.xp
        g = self.program.graph
        plan = self.program.plan(batch, by_kernel=True)
        if batch not in self._arena:
            self._arena[batch] = xp.zeros(max(plan.arena_bytes // 4, 1), dtype=np.float32)
        arena = self._arena[batch]
        bufs: dict[str, object] = {}
        for n in g.nodes:
            if n.id in feeds:
                arr = feeds[n.id]
                dtype = np.int64 if n.type.dtype == "int64" else np.float32
                bufs[f"v{n.id}"] = xp.ascontiguousarray(xp.asarray(arr, dtype=dtype)).ravel()
            elif n.id in plan.offsets:
                size = n.type.size * (batch if n.type.batched else 1)
                off = plan.offsets[n.id] // 4
                bufs[f"v{n.id}"] = arena[off:off + size]
        if batch not in self._scratch:   # kept between steps: every kernel writes before reading
            self._scratch[batch] = {
                key: xp.zeros(max(size * (batch if batched else 1), 1), dtype=np.float32)
                for key, (size, batched) in self.cprog.scratch.items()}
        bufs.update(self._scratch[batch])
        return bufs

    def seed_buffer(self):
        """The one-element buffer the dropout kernels read their seed from (a kernel argument
        would be frozen into a captured step)."""
        if self._seed is None:
            self._seed = self.device.xp.zeros(2, dtype=np.int64)   # 16 bytes: aligned
        return self._seed

    def set_seed(self, seed: int) -> None:
        self.seed_buffer()[0] = seed & 0x7FFFFFFF

    def calls(self, bufs: dict, batch: int) -> list:
        """The launch plan at batch size `batch` on `bufs` as calls with every argument
        fixed: run in order, they are one step; recorded once, replayed as a graph."""
        xp = self.device.xp
        out = []
        for st in self.cprog.steps:
            if isinstance(st, R.Gemm):
                a = bufs[st.a].reshape(_view(st.a_view, batch))
                b = bufs[st.b].reshape(_view(st.b_view, batch))
                o = bufs[st.out].reshape(_view(st.out_view, batch))
                out.append(partial(xp.matmul, xp.swapaxes(a, -1, -2) if st.trans_a else a,
                                   xp.swapaxes(b, -1, -2) if st.trans_b else b, out=o))
                continue
            args = [batch if a.key == "N" else self.seed_buffer() if a.key == "seed"
                    else bufs[a.key] for a in st.args]
            out.append(partial(self.device.launch, st.kernel, st.grid(batch), BLOCK, args))
        return out

    def run_steps(self, bufs: dict, batch: int, seed: int) -> None:
        if self.backend == "cpu":   # the whole plan is one native call
            self.device.module.step(self.cprog.buffer_keys, bufs, batch, seed)
            return
        self.set_seed(seed)
        for call in self.calls(bufs, batch):
            call()

    def execute(self, feeds: dict[int, np.ndarray], batch: int, seed: int = 0):
        """Same contract as the NumPy backend's execute: (roots by node id, updates)."""
        bufs = self.buffers(feeds, batch)
        self.run_steps(bufs, batch, seed)
        g = self.program.graph
        roots = {}
        for n in g.roots():
            arr = self.device.to_host(bufs[f"v{n.id}"])
            roots[n.id] = arr.reshape(n.type.full_shape(batch)) if n.type.shape or \
                n.type.batched else arr.reshape(())
        updates = {}
        params = {p.name: p for p in g.params}
        for key, pname in self.cprog.updates.items():
            updates[pname] = self.device.to_host(bufs[key]).reshape(params[pname].type.shape)
        return roots, updates


def _view(v: tuple[int, ...], batch: int) -> tuple[int, ...]:
    """A GEMM operand's view at this batch size: -k stands for k * N."""
    return tuple(-d * batch if d < 0 else d for d in v)
