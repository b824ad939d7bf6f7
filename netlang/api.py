"""The public Python API: load -> check -> (compile) -> run / train.

    net = netlang.load("examples/unet.net", params={"base": 16})
    net.inputs, net.outputs                    # name -> TensorType
    weights = net.init(seed=0)                 # name -> float32 array, PyTorch layouts and init
    outs = net.forward(weights, {"image": x})  # name -> array
    loss, grads = net.value_and_grad(weights, batch, loss="bce(mask, target)")

Every user error is a NetlangError whose `.sources` lets `render()` quote the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from netlang.config import TrainConfig, resolve_data_paths, train_config
from netlang.diagnostics import Diagnostic, NetlangError, SourceMap, did_you_mean, error
from netlang.ir.graph import Graph, Node
from netlang.ir.types import TensorType
from netlang.lang.imports import SourceTree, read_program
from netlang.lang.lower import Value, lower, parse_override
from netlang.ops.registry import INIT_SCHEMES, scheme_init
from netlang.passes.loss import check_losses, probability_warnings
from netlang.passes.shape_infer import infer_shapes


@dataclass
class Network:
    """A checked network: its typed forward graph and everything needed to run it."""

    graph: Graph
    source: SourceTree             # the parsed file and the blocks it imports
    file: str
    train: TrainConfig | None = None
    # The network parameters given at load time (`--set`), as given: runs record them.
    overrides: dict[str, str] = field(default_factory=dict)
    # The numerics of its products: fp32, or tensor-core tf32 / bf16 / fp16 (passes/precision).
    precision: str = "fp32"
    _compiled: dict[Any, Any] = field(default_factory=dict, repr=False)

    def with_precision(self, precision: str) -> "Network":
        """This network computing its products in `precision` (fp32, tf32, bf16, fp16):
        every backend rounds their operands and results as the tensor cores would (fp16
        training steps scale the loss, as torch.amp.GradScaler)."""
        from dataclasses import replace

        check_precision(precision)
        return self if precision == self.precision else \
            replace(self, precision=precision, _compiled={})

    # -- what the network is -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def sources(self) -> SourceMap:
        return self.source.sources

    @property
    def warnings(self) -> list[Diagnostic]:
        return self.graph.warnings

    @property
    def inputs(self) -> dict[str, TensorType]:
        return {k: n.type for k, n in self.graph.inputs.items()}

    @property
    def outputs(self) -> dict[str, TensorType]:
        return {k: n.type for k, n in self.graph.outputs.items()}

    @property
    def params(self) -> dict[str, TensorType]:
        """Every parameter and buffer (batchnorm running statistics), PyTorch layouts."""
        return {n.name: n.type for n in self.graph.params}

    @property
    def trainable(self) -> list[str]:
        return [n.name for n in self.graph.params if n.attrs.get("trainable", True)]

    def param_count(self) -> int:
        return sum(n.type.size for n in self.graph.params if n.attrs.get("trainable", True))

    # -- weights -------------------------------------------------------------------------
    def init(self, seed: int = 0, scheme: str | None = None) -> dict[str, np.ndarray]:
        """Initial weights as PyTorch initialises its layers (kaiming-uniform, bound
        1/sqrt(fan_in); batchnorm ones/zeros), deterministic in `seed`. A layer's own
        `init=` takes its place; `scheme` (the train section's `init`) does for the conv,
        conv_transpose and dense layers that give none."""
        if scheme is not None and scheme not in INIT_SCHEMES:
            raise error("E030", f"unknown initialisation `{scheme}`", None,
                        notes=["schemes: " + ", ".join(INIT_SCHEMES)],
                        help=did_you_mean(scheme, INIT_SCHEMES))
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for p in self.graph.params:
            shape = p.type.shape
            init = p.attrs["init"]
            layer = p.attrs.get("scheme") or (scheme if init == "uniform" and
                                              p.attrs["role"] in ("weight", "bias") else None)
            if layer not in (None, "pytorch"):
                out[p.name] = scheme_init(layer, p.attrs["role"], shape, rng)
            elif init == "uniform":
                b = p.attrs["bound"]
                out[p.name] = rng.uniform(-b, b, size=shape).astype(np.float32)
            elif init == "normal":
                out[p.name] = (rng.standard_normal(size=shape) * p.attrs["std"]) \
                    .astype(np.float32)
            elif init == "ones":
                out[p.name] = np.ones(shape, np.float32)
            elif init == "constant":
                out[p.name] = np.full(shape, p.attrs["value"], np.float32)
            else:
                out[p.name] = np.zeros(shape, np.float32)
        return out

    # -- running -------------------------------------------------------------------------
    def compile(self, training: bool = False, loss: str | None = None, *,
                wrt_inputs: bool = False, keep_outputs: bool = False,
                differentiate: bool = True, fuse: bool = True,
                dump_after: tuple[str, ...] = (), verify_each: bool = False):
        """A compiled program (netlang.program.Program): inference, or with `loss` (the
        train-section syntax, e.g. "bce(mask, target)") a training step. `dump_after`
        keeps the IR text after those passes; `verify_each` checks the graph after every
        pass."""
        from netlang.config import parse_loss
        from netlang.passes.pipeline import CompileOptions
        from netlang.program import build_program

        terms = parse_loss(loss, list(self.graph.outputs)) if loss else ()
        opts = CompileOptions(training=training, loss=terms, wrt_inputs=wrt_inputs,
                              keep_outputs=keep_outputs, differentiate=differentiate,
                              fuse=fuse, precision=self.precision)
        return build_program(self.graph, opts, dump_after, verify_each)

    def program_for(self, training: bool, loss: str | None = None, wrt_inputs: bool = False,
                    differentiate: bool = True):
        """The compiled program (cached) for inference, for a loss and its gradients, or
        (differentiate=False) for a loss and the outputs."""
        key = (training, loss, wrt_inputs, differentiate)
        if key not in self._compiled:
            self._compiled[key] = self.compile(training, loss, wrt_inputs=wrt_inputs,
                                               keep_outputs=not differentiate,
                                               differentiate=differentiate)
        return self._compiled[key]

    def evaluate(self, weights: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray],
                 loss: str | None = None, backend: str = "numpy"
                 ) -> tuple[float, dict[str, np.ndarray]]:
        """(loss, outputs) in inference mode, without computing gradients."""
        prog = self.program_for(False, self._loss_text(loss), differentiate=False)
        return prog.evaluate(weights, batch, backend=backend)

    def forward(self, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                training: bool = False, seed: int = 0, dtype=np.float32,
                backend: str = "numpy") -> dict[str, np.ndarray]:
        """Outputs by name. In training mode, dropout is active and batchnorm uses batch
        statistics (use `run` to also get the updated running statistics). Computation is
        float32; `dtype=np.float64` exists for checking gradients and numerics (NumPy
        backend). `backend`: numpy, cuda (CuPy, a GPU) or cuda-emu (the CUDA kernels
        compiled for the host)."""
        outs, _ = self.run(weights, inputs, training=training, seed=seed, dtype=dtype,
                           backend=backend)
        return outs

    def run(self, weights: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
            training: bool = False, seed: int = 0, dtype=np.float32, backend: str = "numpy"):
        """(outputs, buffer updates): updates hold new batchnorm running statistics."""
        prog = self.program_for(training)
        return prog.run(weights, inputs, seed=seed, dtype=dtype, backend=backend)

    def value_and_grad(self, weights: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray],
                       loss: str | None = None, training: bool = True, seed: int = 0,
                       wrt_inputs: bool = False, return_updates: bool = False,
                       dtype=np.float32, backend: str = "numpy"):
        """(loss, grads): grads has the keys of the trainable weights (and of the inputs when
        `wrt_inputs`). `loss` uses the train-section syntax, e.g. "bce(mask, target)"; by
        default the file's train section's loss."""
        loss = self._loss_text(loss)
        prog = self.program_for(training, loss, wrt_inputs)
        value, grads, updates = prog.value_and_grad(weights, batch, seed=seed, dtype=dtype,
                                                    backend=backend)
        if return_updates:
            return value, grads, updates
        return value, grads

    def target_reads(self, terms) -> list[tuple[str, TensorType, str | None]]:
        """Per loss term (config.LossTerm): the input its target is read from, its type,
        and the data target it is shrunk from for a smaller head (None: the data's own);
        see passes/loss.target_names."""
        from netlang.passes.loss import target_names

        return target_names(self.outputs, terms)

    def loss_warnings(self, terms) -> list[str]:
        """What looks wrong in a loss on this network (config.LossTerm terms), as text."""
        return probability_warnings(self.graph, tuple(terms))

    def train_step(self, weights: Mapping[str, np.ndarray], optimizer, loss: str | None = None,
                   backend: str = "numpy", capturable: bool | None = False,
                   frozen: frozenset[str] = frozenset(),
                   scales: dict[str, float] | None = None, graphs: bool = True):
        """The training step of `backend` (netlang/backends/step.py): `run(batch, lr, seed)`
        does forward, loss, backward and `optimizer`'s update (a train.optim.Optimizer,
        whose state and step count it keeps) and returns the loss; `weights()` and
        `sync()` bring weights and state back to the host. Parameters in `frozen` are not
        updated; `scales` multiplies some parameters' learning rates; `graphs` (cuda,
        cuda-emu) replays each step after the first as one captured graph when the program
        allows it (`graph_note()` says whether it does)."""
        from netlang.backends.step import train_step

        return train_step(self, self._loss_text(loss), dict(weights), optimizer, backend,
                          capturable, frozen, scales, graphs)

    def probabilities(self, output: str, values: np.ndarray) -> np.ndarray:
        """A flat output's values as class probabilities: as they are when the network
        ends in softmax or sigmoid, else the softmax of the logits."""
        if self.graph.outputs[output].op in ("softmax", "sigmoid"):
            return values
        from netlang.ops.elementwise import softmax

        return softmax(values, 1)

    # -- pictures ------------------------------------------------------------------------
    def to_dot(self, rankdir: str = "TB", collapse: bool = False, fused: bool = False) -> str:
        """Graphviz DOT text of the network: blocks as clusters (or, `collapse`, as one
        node each); `fused`: the compiled inference program with each fused kernel as a
        cluster."""
        from netlang.ir.dot import to_dot
        from netlang.ops import registry

        def color(op: str) -> str:
            return registry.get(op).color

        if not fused:
            return to_dot(self.graph, rankdir=rankdir, collapse=collapse, color=color)
        g = self.compile(training=False).graph
        clusters = {f"k{i}: {grp.name}": grp.nodes for i, grp in enumerate(g.fusion.groups)
                    if grp.epilogue}
        return to_dot(g, clusters, rankdir=rankdir, color=color)

    def _loss_text(self, loss: str | None) -> str:
        if loss is not None:
            return loss
        if self.train is not None and self.train.loss_text:
            return self.train.loss_text
        raise error("E030", "no loss given and the file's train section names none", None,
                    help='pass loss="cross_entropy(logits, label)" or add `loss = ...` to the '
                         "train section")


def check_precision(precision: str) -> str:
    """`precision` if netlang computes in it, else E030 with the choices."""
    from netlang.config import named_choice
    from netlang.ops.elementwise import PRECISIONS

    return named_choice("precision", precision, PRECISIONS, "precisions")


def use_tf32(on: bool) -> None:
    """Let the CUDA backend's cuBLAS GEMMs use TF32 tensor cores (10-bit mantissa)."""
    from netlang.backends.cuda.runtime import use_tf32 as set_tf32

    set_tf32(on)


def set_threads(n: int | None) -> None:
    """Cores the cpu backend uses (None: all of them)."""
    from netlang.backends.cpu.runtime import set_threads as set_cpu_threads

    set_cpu_threads(n)


def choose_backend(name: str) -> tuple[str, str]:
    """The backend to run for a `--backend` value (`auto`: cuda with a GPU, else cpu with
    a working C++ compiler, else numpy), and one line saying which and why."""
    from netlang.backends.select import choose

    return choose(name)


def _overrides(params: Mapping[str, Any] | None) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for k, v in (params or {}).items():
        out[k] = parse_override(v) if isinstance(v, str) else v
    return out


def loads(text: str, network: str | None = None, params: Mapping[str, Any] | None = None,
          file: str = "<string>", base_dir: Path | None = None) -> Network:
    """Parse, lower and check a `.net` source text."""
    prog: SourceTree | None = None
    sources = SourceMap()
    try:
        prog = read_program(text, file, base_dir, sources)
        graph = lower(prog, network, _overrides(params))
        infer_shapes(graph)
        outputs = list(graph.outputs)
        known = [n.name for n in prog.main.networks]
        for t in prog.main.trains:
            for name in t.networks:
                if name not in known:
                    raise error("E030", f"train section for unknown network `{name}`", t.span,
                                notes=["networks: " + ", ".join(known)],
                                help=did_you_mean(name, known))
        shared = [t for t in prog.main.trains if not t.networks]
        own = [t for t in prog.main.trains if graph.name in t.networks]
        if len(shared) > 1:
            raise error("E030", "the file has two shared train sections", shared[1].span,
                        related=[(shared[0].span, "the first")],
                        help="merge them, or name the networks each is for: `train a, b { }`")
        if len(own) > 1:
            raise error("E030", f"network `{graph.name}` has two train sections", own[1].span,
                        related=[(own[0].span, "the first")])
        sections = shared + own
        cfg = train_config(sections, outputs, text) if sections else None
        if cfg is not None:
            check_losses(graph, cfg.loss)
            cfg = resolve_data_paths(cfg, base_dir or Path("."))
    except NetlangError as exc:
        exc.sources = sources  # type: ignore[attr-defined]
        raise
    return Network(graph, prog, file, cfg, {k: str(v) for k, v in (params or {}).items()})


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise error("E004", f"no such file: {path}", None) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error("E004", f"cannot read {path}: {exc}", None) from None


def load(path: str | Path, network: str | None = None,
         params: Mapping[str, Any] | None = None) -> Network:
    """Read and check a `.net` file (and the files it imports)."""
    return loads(_read(path), network, params, file=str(path), base_dir=Path(path).parent)


def read_file(path: str | Path) -> SourceTree:
    """Parse a file and its imports without lowering any network."""
    sources = SourceMap()
    try:
        return read_program(_read(path), str(path), Path(path).parent, sources)
    except NetlangError as exc:
        exc.sources = sources  # type: ignore[attr-defined]
        raise


def network_names(path: str | Path) -> list[str]:
    return [n.name for n in read_file(path).main.networks]


__all__ = ["Network", "load", "loads", "network_names", "Node"]
