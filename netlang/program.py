"""A compiled program: the graph after the pipeline, ready to run on a backend.

Checks what the caller feeds it (missing or unknown names, shapes, dtypes, class indices)
and reports problems as netlang errors, then runs the NumPy backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping

import numpy as np

from netlang.backends.numpy_backend import OpFailed, execute
from netlang.diagnostics import did_you_mean, error
from netlang.ir.graph import Graph, Node
from netlang.ir.types import fmt_shape
from netlang.ops.loss import resize_target
from netlang.passes.memplan import MemoryPlan, plan_memory
from netlang.passes.pipeline import CompileOptions, compile_graph


# numpy: the reference interpreter; cpu: the kernels compiled for the host; cuda: on a GPU
# through CuPy; cuda-emu: the CUDA kernels compiled for the host (how tests check them).
BACKENDS = ("numpy", "cpu", "cuda", "cuda-emu")


@dataclass
class Program:
    graph: Graph
    training: bool
    dumps: dict[str, str]
    plan_fn: Callable[[Graph, int], MemoryPlan]
    _plans: dict[tuple[int, bool], MemoryPlan] = field(default_factory=dict)
    _runners: dict[str, object] = field(default_factory=dict)

    def plan(self, batch: int, by_kernel: bool = False) -> MemoryPlan:
        key = (batch, by_kernel)
        if key not in self._plans:
            self._plans[key] = self.plan_fn(self.graph, batch, by_kernel)
        return self._plans[key]

    # -- feeding -------------------------------------------------------------------------
    def feeds(self, weights: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray],
              dtype=np.float32) -> tuple[dict[int, np.ndarray], int]:
        """Every parameter and input by node id, checked and converted, and the batch."""
        feeds = self.weight_feeds(weights, dtype)
        data_feeds, batch = self.data_feeds(data, dtype, extra=weights)
        return feeds | data_feeds, batch

    def weight_feeds(self, weights: Mapping[str, np.ndarray], dtype=np.float32
                     ) -> dict[int, np.ndarray]:
        feeds: dict[int, np.ndarray] = {}
        for p in self.graph.params:
            if p.name not in weights and p.attrs.get("role") == "loss_scale":
                feeds[p.id] = np.ones((), dtype)   # an fp16 step's loss scale: none given
                continue
            if p.name not in weights:
                raise error("E042", f"weights have no `{p.name}`", p.span,
                            help="use `net.init()` for a complete set of weights, or load a "
                                 "checkpoint of this network")
            arr = np.asarray(weights[p.name])
            if arr.shape != p.type.shape:
                raise error("E042", f"weight `{p.name}` is {fmt_shape(arr.shape)}, the network "
                            f"needs {fmt_shape(p.type.shape)}", p.span,
                            help="these weights belong to another network or another "
                                 "configuration (`--set`)")
            feeds[p.id] = _floats(arr, p.name, dtype)
        return feeds

    def data_feeds(self, data: Mapping[str, np.ndarray], dtype=np.float32,
                   extra: Collection[str] = ()) -> tuple[dict[int, np.ndarray], int]:
        """The inputs and targets of one batch by node id, checked, and the batch size
        (names in `extra`, the weights, are not unknown inputs)."""
        g = self.graph
        data = self.with_resized_targets(data)
        feeds: dict[int, np.ndarray] = {}
        wanted: dict[str, Node] = dict(g.inputs) | dict(g.targets)
        for name in data:
            if name not in wanted and name not in extra:
                raise error("E040", f"unknown input `{name}`", None,
                            notes=["inputs: " + ", ".join(wanted)],
                            help=did_you_mean(name, wanted))
        batch = None
        for name, node in wanted.items():
            if name not in data:
                kind = "target" if node.attrs.get("target") else "input"
                raise error("E040", f"missing {kind} `{name}` ({fmt_shape(node.type.shape)} "
                            f"per sample)", node.span,
                            help=did_you_mean(name, data) or f"pass `{name}` with the batch")
            arr = np.asarray(data[name])
            want = node.type.shape
            if arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want:
                raise error("E041", f"`{name}` is {fmt_shape(arr.shape)}; expected "
                            f"[N, {', '.join(map(str, want))}]".replace("[N, ]", "[N]"),
                            node.span, notes=["the first dimension is the batch"])
            if batch is None:
                batch = arr.shape[0]
            elif arr.shape[0] != batch:
                raise error("E041", f"`{name}` has batch {arr.shape[0]}, other inputs {batch}",
                            node.span)
            if node.type.dtype == "int64":
                feeds[node.id] = _class_indices(arr, name)
            else:
                feeds[node.id] = _floats(arr, name, dtype)
        if batch is None or batch < 1:
            raise error("E041", "the batch is empty", None)
        return feeds, batch

    def with_resized_targets(self, data: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """`data` with the targets that smaller heads read (`target@32x32`, see
        passes/loss.target_names) made from the data's own where it lacks them."""
        missing = [(name, node) for name, node in self.graph.targets.items()
                   if name not in data and node.attrs.get("resized_from") in data]
        if not missing:
            return data
        out = dict(data)
        for name, node in missing:
            src = np.asarray(data[node.attrs["resized_from"]])
            if tuple(src.shape[1:]) != self.graph.targets[node.attrs["resized_from"]].type.shape:
                continue   # data_feeds reports the source's shape
            out[name] = resize_target(src, node.type.shape, node.type.dtype == "int64")
        return out

    def runner(self, backend: str):
        """The CUDA or host-emulated runner of this program (compiled once, cached)."""
        from netlang.backends.cuda.runtime import Runner

        if backend not in self._runners:
            self._runners[backend] = Runner(self, backend)
        return self._runners[backend]

    def _execute(self, weights, data, seed: int, dtype=np.float32, backend: str = "numpy"):
        if backend not in BACKENDS:
            raise error("E052", f"unknown backend `{backend}`", None,
                        help="backends: " + ", ".join(BACKENDS))
        if backend != "numpy" and dtype != np.float32:
            raise error("E052", f"backend `{backend}` computes in float32 only", None)
        feeds, batch = self.feeds(weights, data, dtype)
        if backend != "numpy":
            return self.runner(backend).execute(feeds, batch, seed)
        try:
            return execute(self.graph, self.plan(batch), feeds, batch, seed)
        except OpFailed as exc:
            raise error("E043", f"`{exc.node.name}` failed: {exc.cause}", exc.node.span) \
                from None

    # -- running -------------------------------------------------------------------------
    def run(self, weights, inputs, seed: int = 0, dtype=np.float32, backend: str = "numpy"):
        roots, updates = self._execute(weights, inputs, seed, dtype, backend)
        outs = {k: roots[n.id] for k, n in self.graph.outputs.items()}
        return outs, updates

    def evaluate(self, weights, batch, seed: int = 0, dtype=np.float32, backend: str = "numpy"):
        """(loss, outputs) of a loss program built without gradients."""
        roots, _ = self._execute(weights, batch, seed, dtype, backend)
        g = self.graph
        return float(roots[g.loss.id]), {k: roots[n.id] for k, n in g.outputs.items()}

    def value_and_grad(self, weights, batch, seed: int = 0, dtype=np.float32,
                       backend: str = "numpy"):
        roots, updates = self._execute(weights, batch, seed, dtype, backend)
        g = self.graph
        value = float(roots[g.loss.id])
        grads = {k: roots[n.id] for k, n in g.grads.items()}
        return value, grads, updates


def build_program(graph: Graph, opts: CompileOptions, dump_after: tuple[str, ...] = (),
                  verify_each: bool = False) -> Program:
    """A program from a checked forward graph (copied: the network's graph stays as it
    is): the pipeline of passes for `opts`, then lazily, per batch size, the memory plan."""
    import copy

    g = copy.deepcopy(graph)
    dumps = compile_graph(g, opts, dump_after, verify_each)
    return Program(g, training=opts.training, dumps=dumps, plan_fn=plan_memory)


def _floats(arr: np.ndarray, name: str, dtype) -> np.ndarray:
    if arr.dtype.kind not in "fiub":
        raise error("E041", f"`{name}` has dtype {arr.dtype}; expected numbers", None)
    return np.ascontiguousarray(arr, dtype=dtype)


def _class_indices(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise error("E041", f"`{name}` must hold class indices (integers)", None)
    elif arr.dtype.kind not in "iub":
        raise error("E041", f"`{name}` has dtype {arr.dtype}; expected class indices", None)
    return arr.astype(np.int64)
