"""The training step on each backend: forward, loss, backward and the optimizer's update.

`TrainStep` (compiled backends: cpu, cuda, cuda-emu) keeps the weights, the batchnorm
statistics and the optimizer state in the backend's own buffers for the whole run; a step
copies the batch into fixed input buffers, runs the program, and updates every trained
parameter with the optimizer table's fused element (netlang/optimizers.py):

- cpu: the whole step, update included, is one native call (`nl_train`);
- cuda and cuda-emu: the launch plan, then one update kernel per parameter; the kernels read
  the loss on the device and skip the update when it is not finite, so nothing waits for the
  host. Every kernel argument is fixed for the run: what changes from step to step is in
  device buffers the host writes before the step (the batch, the dropout seed, a table of
  the update's scalars: learning rate, Adam's bias corrections, SGD's first step). So after
  the first step, a step is replayed as one captured graph (`capture`): a CUDA graph on a
  GPU, and on cuda-emu the same recorded call list, so CI runs the path a GPU runs. A
  program whose GEMMs go to cuBLAS is not captured (CuPy refuses cuBLAS during capture),
  and `graph_note()` says so.

`NumpyStep` is the reference: the NumPy backend's gradients and the NumPy update rules.
Both leave weights and state untouched when the loss is not finite, and keep the
`Optimizer`'s step count, so checkpoints are the same whichever backend wrote them.
Weights and state reach the host only when asked (`weights()`, `sync()`): at the end of an
epoch, and when a checkpoint is saved. The training loop gets a step through the public
API (`Network.train_step`).
"""

from __future__ import annotations

import ctypes
import math
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from netlang.optimizers import KERNELS, OPTIMIZERS

if TYPE_CHECKING:   # the training loop's optimizer state (netlang/train/optim.py)
    from netlang.train.optim import Optimizer

_KIND = {"nl_sgd_update": 0, "nl_adam_update": 1}   # nl_update's `kind` (routines.h)

# fp16 loss scaling, torch.amp.GradScaler's schedule: the first scale, how many finite steps
# in a row double it; a step whose gradients overflow is skipped and halves it.
INITIAL_SCALE, GROWTH_INTERVAL = 2.0 ** 16, 2000


def _scaled(prog, opt) -> bool:
    """Whether `prog` is an fp16 step with a loss scale (passes/precision.scale_loss); the
    schedule's state lives on the Optimizer (`loss_scale`, `scale_good`), so checkpoints
    keep it."""
    if not any(p.attrs.get("role") == "loss_scale" for p in prog.graph.params):
        return False
    if opt.loss_scale is None:
        opt.loss_scale, opt.scale_good = INITIAL_SCALE, 0
    return True


# the loss scale's parameters (passes/precision.py LOSS_SCALE, INVERSE_SCALE): no weights
SCALE_PARAMS = ("loss_scale", "loss_scale.inverse")


def _scale_values(opt) -> dict[str, np.ndarray]:
    s = np.float32(opt.loss_scale)
    return dict(zip(SCALE_PARAMS, (s, np.float32(1.0) / s)))


def _after_scaled_step(opt, finite: bool) -> bool:
    """Advance the loss-scale schedule; True when the step was skipped for an overflow (a
    non-finite loss while the scale still amplifies: above 1). At a scale of 1 or less a
    non-finite loss is the loss's own, and is reported as such."""
    if finite:
        opt.scale_good += 1
        if opt.scale_good >= GROWTH_INTERVAL:
            opt.loss_scale, opt.scale_good = opt.loss_scale * 2.0, 0
        return False
    if opt.loss_scale <= 1.0:
        return False
    opt.loss_scale, opt.scale_good = opt.loss_scale * 0.5, 0
    opt.skipped_steps += 1
    return True


def train_step(net, loss: str, weights: dict[str, np.ndarray], opt: Optimizer,
               backend: str = "numpy", capturable: bool | None = False,
               frozen: frozenset[str] = frozenset(), scales: dict[str, float] | None = None,
               graphs: bool = True):
    """The step object for `backend` (weights: every parameter, as net.init gives them;
    `frozen`: parameters the update leaves as they are; `scales`: learning-rate factors of
    some parameters; `graphs`: on cuda and cuda-emu, replay each step after the first as
    one captured graph where the program allows it; `capturable`: GEMMs as generated
    kernels instead of cuBLAS, None to choose by `_small_gemms`)."""
    if backend == "numpy":
        return NumpyStep(net, loss, weights, opt, frozen, scales)
    return TrainStep(net, loss, weights, opt, backend, capturable, frozen, scales, graphs)


class NumpyStep:
    def __init__(self, net, loss: str, weights: dict[str, np.ndarray], opt: Optimizer,
                 frozen: frozenset[str] = frozenset(), scales: dict[str, float] | None = None):
        self.net, self.loss_text, self.opt, self.frozen = net, loss, opt, frozen
        self.scales = dict(scales or {})
        self.w = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        self.sums = LossSums()
        self.deferred = False
        self.scaled = _scaled(net.program_for(True, loss), opt)

    def run(self, batch: dict, lr: float, seed: int, read: bool = True) -> float:
        w = self.w | _scale_values(self.opt) if self.scaled else self.w
        with np.errstate(over="ignore", invalid="ignore"):   # the NaN guard reports
            loss, grads, updates = self.net.value_and_grad(
                w, batch, loss=self.loss_text, seed=seed, return_updates=True)
        finite = math.isfinite(loss)
        if finite:
            self.opt.update(self.w, {k: g for k, g in grads.items() if k not in self.frozen},
                            lr, self.scales)
            self.w.update(updates)
        if not (self.scaled and _after_scaled_step(self.opt, finite)):
            self.sums.add(loss, len(next(iter(batch.values()))))
        return loss

    def take_losses(self) -> tuple[float, int, int, float]:
        return self.sums.take()

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.w.items()}

    def sync(self) -> None:
        """The optimizer's state is already the NumPy update's own."""


class TrainStep:
    """The step of a compiled backend; see the module docstring."""

    def __init__(self, net, loss: str, weights: dict[str, np.ndarray], opt: Optimizer,
                 backend: str, capturable: bool | None = False,
                 frozen: frozenset[str] = frozenset(), scales: dict[str, float] | None = None,
                 graphs: bool = True):
        self.opt = opt
        self.scales = dict(scales or {})
        self.odef = OPTIMIZERS[opt.name]
        self.prog = net.program_for(True, loss)
        from netlang.backends.cuda.runtime import Device, Runner

        if capturable is None:   # auto: GEMMs as kernels where that lets the step be a graph
            capturable = graphs and _small_gemms(self.prog, backend)
        self.runner = Runner(self.prog, backend, capturable)
        self.dev = self.runner.device
        self.backend = backend
        xp = self.dev.xp
        g = self.prog.graph
        host = self.prog.weight_feeds(weights)   # checked: names, shapes, numbers
        self.names = {p.id: p.name for p in g.params}
        self.shapes = {p.name: p.type.shape for p in g.params}
        self.w = {self.names[i]: _aligned(xp, a) for i, a in host.items()}
        self.trained = [p.name for p in g.params if p.name in g.grads and p.name not in frozen]
        self.grad_keys = {k: f"v{node.id}" for k, node in g.grads.items()}
        self.copies = [(key, pname) for key, pname in self.runner.cprog.updates.items()]
        self.loss_key = f"v{g.loss.id}"
        self.state = self._load_state(xp)
        self.inputs = {node.id: node for node in [*g.inputs.values(), *g.targets.values()]}
        self._per_batch: dict[int, dict] = {}
        self.upd = Device(backend, KERNELS) if backend != "cpu" else None
        # the update's scalars: a row a trained parameter (padded to 16 bytes), written by
        # the host before each step, read by the update kernels on the device
        self.width = -(-len(self._scalars(0.0)) // 4) * 4
        self.h = xp.zeros(max(len(self.trained), 1) * self.width, np.float32) \
            if backend != "cpu" else None
        # the epoch's loss sums: on the device for the cuda backends (read with
        # take_losses), on the host for cpu, whose step returns its loss anyway
        self.acc = xp.zeros(4, np.float32) if backend != "cpu" else None
        self.deferred = backend != "cpu"   # the loop reads losses now and then, not a step
        # fp16: the host chooses each step's loss scale from the last step's loss, so it
        # reads every loss and keeps the sums (a skipped step is not a non-finite loss)
        self.scaled = _scaled(self.prog, opt)
        if self.scaled:
            self.acc, self.deferred = None, False
        self.sums = LossSums()
        self.graphs: dict[int, object] = {}   # batch size -> captured step
        self.graph_refusal = _graph_refusal(backend, self.runner.cprog)
        self.auto_graphs = graphs and self.graph_refusal is None

    # -- state ---------------------------------------------------------------------------
    def _load_state(self, xp) -> list[dict[str, object]]:
        """The optimizer's slots on the backend: the Optimizer's arrays (a resumed run), or
        zeros; SGD without momentum keeps none."""
        slots = self.odef.slots
        if self.opt.name == "sgd" and not self.opt.args.get("momentum"):
            slots = ()
        out = []
        for slot in slots:
            given = self.opt.state.get(slot, {})
            out.append({k: _aligned(xp, np.asarray(given[k], np.float32)) if k in given
                        else xp.zeros(self.shapes[k], np.float32) for k in self.trained})
        return out

    def weights(self) -> dict[str, np.ndarray]:
        """Host copies of every parameter (and batchnorm statistic)."""
        return {k: self.dev.to_host(v).reshape(self.shapes[k]) for k, v in self.w.items()
                if k not in SCALE_PARAMS}

    def sync(self) -> None:
        """Write the optimizer state into the Optimizer (as its NumPy update keeps it), for
        a checkpoint."""
        if self.opt.step_count == 0:
            self.opt.state = {}
            return
        state: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.odef.slots}
        for slot, arrays in zip(self.odef.slots, self.state):
            state[slot] = {k: self.dev.to_host(a).reshape(self.shapes[k])
                           for k, a in arrays.items()}
        self.opt.state = state

    # -- the step ------------------------------------------------------------------------
    def _buffers(self, batch: int) -> dict:
        """Per batch size: the program's buffers, with fixed input buffers, and (cpu) the
        native call's tables."""
        if batch in self._per_batch:
            return self._per_batch[batch]
        xp = self.dev.xp
        feeds = {pid: self.w[name] for pid, name in self.names.items()}
        for nid, node in self.inputs.items():
            dtype = np.int64 if node.type.dtype == "int64" else np.float32
            feeds[nid] = xp.zeros((batch, *node.type.shape), dtype)
        bufs = self.runner.buffers(feeds, batch)
        entry = {"bufs": bufs, "inputs": {nid: bufs[f"v{nid}"] for nid in self.inputs}}
        if self.backend == "cpu":
            entry["table"] = self._native_tables(bufs)
        self._per_batch[batch] = entry
        return entry

    def _native_tables(self, bufs: dict):
        keys = self.runner.cprog.buffer_keys
        arrays = [bufs[k] for k in keys]
        for k, a in zip(keys, arrays):
            want = np.int64 if a.dtype == np.int64 else np.float32
            if a.dtype != want or not a.flags.c_contiguous or a.ctypes.data % 16:
                raise AssertionError(f"nl_train: buffer {k} is not an aligned contiguous "
                                     f"{np.dtype(want)} array")
        ptr = ctypes.c_void_p
        params = []
        for k in self.trained:
            slots = [s[k] for s in self.state] + [None] * (2 - len(self.state))
            params += [self.w[k], bufs[self.grad_keys[k]], *slots]
        copies = []
        for key, pname in self.copies:
            copies += [bufs[key], self.w[pname]]
        keep = arrays + [a for a in params + copies if a is not None]   # alive while used
        return {
            "B": (ptr * max(len(arrays), 1))(*[a.ctypes.data for a in arrays]),
            "P": (ptr * max(len(params), 1))(*[None if a is None else a.ctypes.data
                                              for a in params]),
            "n": (ctypes.c_longlong * max(len(self.trained), 1))(
                *[self.w[k].size for k in self.trained]),
            "U": (ptr * max(len(copies), 1))(*[a.ctypes.data for a in copies]),
            "un": (ctypes.c_longlong * max(len(self.copies), 1))(
                *[self.w[p].size for _, p in self.copies]),
            "loss": ptr(bufs[self.loss_key].ctypes.data),
            "keep": keep,
        }

    def _scalars(self, lr: float) -> list:
        return self.odef.kernel_scalars({**self.opt.args, "lr": lr}, lr,
                                        self.opt.step_count + 1)

    def _table(self, lr: float) -> np.ndarray:
        """The update's scalars of every trained parameter, a row each (its learning rate
        scaled by its group's factor)."""
        rows = {s: self._scalars(lr * s) for s in {self.scales.get(k, 1.0)
                                                    for k in self.trained}}
        table = [rows[self.scales.get(k, 1.0)] for k in self.trained] or [self._scalars(lr)]
        return np.ascontiguousarray(table, dtype=np.float32)

    def run(self, batch: dict, lr: float, seed: int, read: bool = True) -> float | None:
        """One step on `batch` (host arrays); returns the loss. Weights and state stay as
        they were when the loss is not finite. On a GPU, `read=False` does not wait for the
        step to finish (and returns None): the update kernels skip a non-finite loss on the
        device, which `loss()` reads later."""
        with np.errstate(over="ignore", invalid="ignore"):   # cuda-emu's NumPy GEMMs: the
            return self._run(batch, lr, seed, read)          # non-finite loss reports

    def _run(self, batch: dict, lr: float, seed: int, read: bool) -> float | None:
        feeds, n = self.prog.data_feeds(batch)
        if self.scaled:   # this step's scale, where the program reads it
            for name, value in _scale_values(self.opt).items():
                self.w[name][...] = value
        entry = self._buffers(n)
        for nid, buf in entry["inputs"].items():
            buf[...] = self.dev.xp.asarray(feeds[nid]).ravel()
        bufs = entry["bufs"]
        if self.backend == "cpu":
            t = entry["table"]
            h = self._table(lr)
            updated = self.dev.module.train(
                t["B"], n, seed, t["loss"], _KIND[self.odef.kernel], h.ctypes.data,
                h.shape[1], len(self.trained), t["P"], t["n"], len(self.copies), t["U"],
                t["un"])
            if updated:
                self.opt.step_count += 1
            loss = float(bufs[self.loss_key][0])
            if not (self.scaled and _after_scaled_step(self.opt, bool(updated))):
                self.sums.add(loss, n)
            return loss
        self._write_table(lr)
        graph = self.graphs.get(n)
        if graph is None and self.auto_graphs and self.opt.step_count >= 1:
            graph = self.capture(n)   # after one step uncaptured: everything is warm
        if graph is not None:
            self.runner.set_seed(seed)
            graph.launch()
        else:
            self.runner.run_steps(bufs, n, seed)
            for call in self._update_calls(bufs, n):
                call()
        if not read and not self.scaled:
            self.opt.step_count += 1
            return None
        loss = float(self.dev.to_host(bufs[self.loss_key]).reshape(()))
        if math.isfinite(loss):
            self.opt.step_count += 1
        if self.scaled and not _after_scaled_step(self.opt, math.isfinite(loss)):
            self.sums.add(loss, n)
        return loss

    def _write_table(self, lr: float) -> None:
        """This step's update scalars into the device table the update kernels read."""
        h = self._table(lr)
        rows = np.zeros((max(len(self.trained), 1), self.width), np.float32)
        rows[:h.shape[0], :h.shape[1]] = h
        self.h[...] = self.dev.xp.asarray(rows.ravel())

    def take_losses(self) -> tuple[float, int, int, float]:
        """(sum of loss x batch size, samples, non-finite steps, the first non-finite loss)
        since the last call; on a GPU the one read that waits for the steps so far."""
        if self.acc is None:
            return self.sums.take()
        a = self.dev.to_host(self.acc).astype(np.float64)
        self.acc[...] = 0
        return float(a[0]), int(a[1]), int(a[2]), float(a[3])

    def _update_calls(self, bufs: dict, batch: int) -> list:
        """Batchnorm statistics into their parameters, one fused update kernel per
        parameter, and the loss into the epoch's sums, as calls with fixed arguments; on
        the device, the first two skip when the loss is not finite."""
        loss = bufs[self.loss_key]
        block = 256
        calls = []
        for key, pname in self.copies:
            w = self.w[pname]
            calls.append(partial(self.upd.launch, "nl_copy_if_finite",
                                 math.ceil(w.size / block), block, [w, bufs[key], loss, w.size]))
        for i, k in enumerate(self.trained):
            w = self.w[k]
            slots = [s[k] for s in self.state] or [w]   # SGD without momentum: unused
            row = self.h[i * self.width:(i + 1) * self.width]
            calls.append(partial(self.upd.launch, self.odef.kernel, math.ceil(w.size / block),
                                 block, [w, bufs[self.grad_keys[k]], *slots, loss, row,
                                         w.size]))
        if self.acc is not None:   # (an fp16 step's sums are the host's)
            calls.append(partial(self.upd.launch, "nl_accumulate_loss", 1, 1,
                                 [self.acc, loss, batch]))
        return calls

    def capture(self, batch: int):
        """The whole step at batch size `batch` (the program's kernels and GEMMs, the
        batchnorm copies and the update kernels) recorded once with fixed arguments: a CUDA
        graph on a GPU, the same call list on cuda-emu. What changes from step to step lives
        in device buffers the host writes before each replay: the batch, the dropout seed,
        the update's scalar table (learning rate, bias corrections). Returns the graph, or
        None with the reason in `graph_refusal`."""
        if self.graph_refusal is not None:
            return None
        bufs = self._buffers(batch)["bufs"]
        calls = self.runner.calls(bufs, batch) + self._update_calls(bufs, batch)
        if self.backend == "cuda-emu":
            graph = HostGraph(calls)
        else:
            cp = self.dev.xp
            stream = cp.cuda.Stream(non_blocking=True)
            try:
                with stream:
                    stream.begin_capture()
                    for call in calls:
                        call()
                    graph = stream.end_capture()
            except Exception as exc:   # a library call that cannot be captured
                self.graph_refusal = f"capture failed: {type(exc).__name__}: {exc}"
                self.auto_graphs = False
                return None
        self.graphs[batch] = graph
        return graph

    def graph_note(self) -> str | None:
        """One line on how steps run (compiled device backends), for the training log."""
        if self.backend == "cpu":
            return None
        if self.graph_refusal is not None:
            return f"step graph: not used ({self.graph_refusal}); kernels launched one by one"
        if not self.auto_graphs:
            return "step graph: off (graphs=False); kernels launched one by one"
        what = "a CUDA graph" if self.backend == "cuda" else "one recorded call list (as " \
            "the CUDA graph on a GPU)"
        n = len(self.runner.cprog.steps) + len(self.copies) + len(self.trained)
        return f"step graph: after the first step, each step is replayed as {what} of {n} " \
            "launches"

    def loss(self, batch: int) -> float:
        """The last step's loss at batch size `batch`."""
        bufs = self._buffers(batch)["bufs"]
        return float(self.dev.to_host(bufs[self.loss_key]).reshape(()))


class LossSums:
    """The host's epoch loss sums (numpy and cpu steps), as the device keeps them."""

    def __init__(self):
        self.take()

    def add(self, loss: float, count: int) -> None:
        if math.isfinite(loss):
            self.total += loss * count
            self.count += count
        else:
            self.first_bad = loss if not self.bad else self.first_bad
            self.bad += 1

    def take(self) -> tuple[float, int, int, float]:
        out = (getattr(self, "total", 0.0), getattr(self, "count", 0),
               getattr(self, "bad", 0), getattr(self, "first_bad", 0.0))
        self.total, self.count, self.bad, self.first_bad = 0.0, 0, 0, 0.0
        return out


class HostGraph:
    """cuda-emu's captured step: the calls, with their arguments fixed, replayed in order."""

    def __init__(self, calls: list):
        self.calls = calls

    def launch(self) -> None:
        for call in self.calls:
            call()


# A step whose GEMMs (dense layers, convolutions above GEMM_CONV_MACS) add up to fewer
# multiply-adds a sample than this is launch-bound: its GEMMs become generated tiled kernels
# so that the whole step can be one CUDA graph. Above it, cuBLAS's GEMMs win over the
# graph (on an H100, U-Net and ResNet-18 steps took 26 ms captured with tiled GEMMs and
# 11.9 ms uncaptured with cuBLAS). A heuristic until GEMMs are captured through cuBLASLt.
GRAPH_GEMM_MACS = 1 << 22


def _small_gemms(prog, backend: str) -> bool:
    from netlang.backends.cuda.render import Gemm, render

    if backend not in ("cuda", "cuda-emu"):
        return False
    macs = _macs([st for st in render(prog.graph).steps if isinstance(st, Gemm)])
    return 0 < macs < GRAPH_GEMM_MACS


def _graph_refusal(backend: str, cprog) -> str | None:
    """Why a step of this program cannot be replayed as a graph, or None."""
    from netlang.backends.cuda.render import Gemm

    if backend not in ("cuda", "cuda-emu"):
        return "graphs are for the cuda backends"
    gemms = [st for st in cprog.steps if isinstance(st, Gemm)]
    if not gemms:
        return None
    why = f"{len(gemms)} GEMM(s) go to cuBLAS through CuPy, which refuses stream capture " \
          "(cupy/cupy#6290)"
    macs = _macs(gemms)
    if macs >= GRAPH_GEMM_MACS:
        why += f"; at {macs:.2g} multiply-adds a sample they run faster there than as " \
               "tiled kernels in a graph"
    return why


def _macs(gemms) -> int:
    """Multiply-adds a sample of GEMM steps (a batch dimension counts once)."""
    total = 0
    for st in gemms:
        k = st.a_view[-2] if st.trans_a else st.a_view[-1]
        total += math.prod(abs(d) for d in st.out_view) * abs(k)
    return total


def _aligned(xp, a) -> object:
    """A contiguous float32 copy on the backend (host: 64-byte aligned, as the native code
    needs 16)."""
    if xp is not np:
        return xp.ascontiguousarray(xp.asarray(a, dtype=np.float32))
    a = np.asarray(a, dtype=np.float32)
    raw = np.empty(a.size + 16, np.float32)
    start = (-raw.ctypes.data % 64) // 4
    out = raw[start:start + a.size].reshape(a.shape)
    out[...] = a
    return out

