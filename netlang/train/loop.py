"""The training loop: epochs of shuffled, augmented batches; validation; schedules; early
stopping; logs, plots and checkpoints; clean stops on Ctrl-C, SIGTERM and NaN losses.

All randomness (shuffling, augmentation, dropout) is a function of (seed, epoch, step), so a
run resumed from any checkpoint sees exactly the batches the uninterrupted run would have.

(Longer than our ~400-line guide: the loop, its checks before the first step, the run
folder and resume are one state machine; split, each part would need the others' state.)
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netlang.config import TrainConfig
from netlang.diagnostics import did_you_mean, error
from netlang.ir.types import fmt_shape
from netlang.train import augment, checkpoint
from netlang.train import data as data_mod
from netlang.train.metrics import (
    Metrics, head_inputs, head_names, heads, ignored, maximized, metric_names, per_class, task_of,
)
from netlang.train.optim import Optimizer, Schedule


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class TrainingStopped(Exception):
    """Training ended early for a reason the user must see (NaN loss)."""


@dataclass
class Result:
    epochs_run: int
    history: list[dict]
    best: dict | None
    reason: str
    out: Path
    weights: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    test: dict | None = None       # metrics of the selected weights on the test split


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([k & 0xFFFFFFFF for k in keys])


@contextmanager
def _stop_on_signals(flag: dict):
    """Ctrl-C and SIGTERM set a flag that the loop checks between steps."""
    def handler(signum, frame):
        if flag.get("signal"):          # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name
        print(f"\n{flag['signal']}: finishing this step and saving a checkpoint "
              "(again to abort)", file=sys.stderr)

    old = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
    except ValueError:   # not the main thread: no signal handling
        old = {}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# What a run folder holds; a new run refuses a folder with any of them (E055).
RUN_FILES = ("metrics.jsonl", "last.safetensors", "best.safetensors", "config.json",
             "test.json", "curves.png")


def evaluate(net, weights, data, split: str, cfg: TrainConfig, batch: int = 64,
             backend: str = "numpy") -> dict[str, float]:
    """Loss and task metrics of `weights` on one split (inference mode): the metrics of
    each output the loss reads, named `OUTPUT_metric` when it reads several."""
    hs = heads(net, cfg.loss)
    reads = head_inputs(net, cfg.loss)   # a smaller head's target: the shrunk copy
    ms = [Metrics(task, net.outputs[p].shape[0] if net.outputs[p].shape else 0,
                  ignored(cfg.loss, p, tg))
          for p, tg, task in hs]
    prog = net.program_for(False, cfg.loss_text, differentiate=False)
    for b in data.batches(split, batch):
        b = prog.with_resized_targets(b)
        loss, outs = net.evaluate(weights, b, loss=cfg.loss_text, backend=backend)
        for i, ((p, _, _), m, key) in enumerate(zip(hs, ms, reads)):
            m.add(loss if i == 0 else 0.0, outs[p], b[key], len(b[key]))
    out = ms[0].result()
    if len(hs) > 1:
        names = head_names(hs)
        out = {"loss": out["loss"]} | {f"{names[i]}_{k}": v for i, m in enumerate(ms)
                                       for k, v in m.result().items() if k != "loss"}
    return out


class Trainer:
    def __init__(self, net, cfg: TrainConfig, out: Path, resume: Path | None = None,
                 progress: bool | None = None, log=print, stop_after_steps: int | None = None,
                 backend: str = "numpy", overwrite: bool = False,
                 init: tuple[str, dict[str, np.ndarray]] | None = None):
        net = net.with_precision(cfg.precision)   # the products' numerics (passes/precision)
        self.net = net
        self.init = init   # (where from, weights): a start other than net.init(seed)
        self.backend = backend
        self.cfg = cfg
        self.out = Path(out)
        self.resume = resume
        self.overwrite = overwrite
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.log = log
        self.stop_after_steps = stop_after_steps   # tests: simulate an interruption
        if not cfg.loss_text:
            raise error("E030", "the train section has no loss", cfg.span,
                        help="add `loss = ...`, e.g. `loss = cross_entropy(logits, label)`")
        if cfg.data is None:
            raise error("E032", "no training data: set `data = ...` in the train section or "
                        "pass --data", cfg.span,
                        help="built-in sets: `digits`, `shapes(size = 64, count = 512)`")
        self.frozen = self._frozen()
        self.scales = self._scales()
        self.targets = list(dict.fromkeys(t.target for t in cfg.loss))
        self.task = task_of(net, cfg.loss)
        ds = data_mod.from_config(cfg.data, cfg.val_split, cfg.test_split)
        self.data = data_mod.bind(ds, net, self.targets)
        self._check_splits()
        self._check_targets()
        monitor = cfg.early_stop.get("monitor", "val_loss") if cfg.early_stop else "val_loss"
        if not monitor.startswith("val_"):
            monitor = "val_" + monitor
        allowed = ("loss", *metric_names(net, cfg.loss))
        if monitor[4:] not in allowed:
            who = "this network" if len(heads(net, cfg.loss)) > 1 else f"a {self.task} network"
            raise error("E030", f"early stopping monitors `{monitor[4:]}`, which {who} does "
                        "not report", cfg.span,
                        notes=["metrics: " + ", ".join(allowed)],
                        help=did_you_mean(monitor[4:], allowed) or "monitor `loss`")
        if not len(self.data.val):   # val_split = 0: select on the training loss
            monitor = "loss"
        self.monitor = monitor
        self.maximize = maximized(monitor.removeprefix("val_")) or (
            cfg.early_stop is not None and cfg.early_stop.get("mode") == "max")
        self._check_memory()

    def _frozen(self) -> frozenset[str]:
        """The trainable parameters that `freeze` patterns name (each must name one)."""
        from fnmatch import fnmatchcase

        names = self.net.trainable
        frozen: set[str] = set()
        for pat in self.cfg.freeze:
            hit = [n for n in names if fnmatchcase(n, pat)]
            if not hit:
                layers = sorted({n.rsplit(".", 2)[0] for n in names})
                raise error("E030", f"`freeze` pattern \"{pat}\" matches no trainable "
                            "parameter", self.cfg.span,
                            notes=["layers: " + ", ".join(layers[:8])
                                   + (", ..." if len(layers) > 8 else "")],
                            help="patterns are globs over parameter names, e.g. \"stem.*\" "
                                 "(`netlang summary` lists the layers)")
            frozen.update(hit)
        return frozenset(frozen)

    def _scales(self) -> dict[str, float]:
        """Learning-rate factors by parameter: the first `lr_groups` pattern that names it
        (each pattern must name one)."""
        from fnmatch import fnmatchcase

        scales: dict[str, float] = {}
        self.group_sizes: list[int] = []
        for pat, factor in self.cfg.lr_groups:
            hit = [n for n in self.net.trainable if fnmatchcase(n, pat)]
            if not hit:
                raise error("E030", f"`lr_groups` pattern \"{pat}\" matches no trainable "
                            "parameter", self.cfg.span,
                            help="patterns are globs over parameter names, e.g. \"stem.*\"")
            new = [n for n in hit if n not in scales]
            scales.update({n: factor for n in new})
            self.group_sizes.append(len(new))
        return scales

    def _check_splits(self) -> None:
        d, cfg = self.data, self.cfg
        n = len(d.train) + len(d.val) + len(d.test)
        if not len(d.train):
            raise error("E032", f"the data set `{d.name}` leaves no training samples "
                        f"({n} in all)", cfg.span, help="use more data")
        if not len(d.val) and cfg.val_split > 0:
            raise error("E032", f"the validation split of `{d.name}` is empty ({n} samples "
                        f"in all, val_split {cfg.val_split:g})", cfg.span,
                        help="use more data, give validation data (`val = ...`), or set "
                             "`val_split = 0` to train without validation")

    def _check_targets(self) -> None:
        prog = self.net.program_for(True, self.cfg.loss_text)
        self.data = data_mod.fit_targets(self.data, *data_mod.target_needs(prog))
        for name, node in prog.graph.targets.items():
            if node.attrs.get("resized_from"):   # made from its source, which is checked
                continue
            arr = self.data.train.arrays[name]
            if name in self.data.crops:
                arr = self.data.crop({name: arr[:1]})[name]
            if arr.shape[1:] != node.type.shape:
                raise error("E032", f"target `{name}` is {fmt_shape(arr.shape[1:])} per sample; "
                            f"the loss needs {fmt_shape(node.type.shape)}"
                            + (" class indices" if node.type.dtype == "int64" else ""), None,
                            help="cross_entropy takes class indices; bce, dice and mse take "
                                 "targets shaped like the output")
        self._check_classes(prog.graph)

    def _check_classes(self, g) -> None:
        """Class-index targets name a class of the output they are read against (or the
        loss's `ignore_index`): a wrong label would index past the logits."""
        targets = {t.id for t in g.targets.values() if t.type.dtype == "int64"}
        for n in g.nodes:   # the losses that read class indices (cross_entropy, nll)
            if len(n.inputs) != 2 or n.inputs[1].id not in targets:
                continue
            name, c = n.inputs[1].name, n.inputs[0].type.shape[0]
            ignore = n.attrs.get("ignore_index")
            for split in (self.data.train, self.data.val, self.data.test):
                arr = split.arrays.get(name)
                if arr is None or not arr.size or (arr.min() >= 0 and arr.max() < c):
                    continue
                vals = np.unique(arr)
                bad = vals[((vals < 0) | (vals >= c)) & (vals != ignore)]
                if bad.size:
                    raise error("E032", f"target `{name}` holds class {bad[0]:g}; the loss "
                                f"`{n.op}` reads {c} classes (0 to {c - 1})", None,
                                notes=["values outside that range: "
                                       + ", ".join(f"{v:g}" for v in bad[:8])
                                       + (" ..." if bad.size > 8 else "")],
                                help=f"give the output {int(bad.max()) + 1} classes, or skip "
                                     f"a label with `{n.op}(..., ignore_index={bad[0]:g})`")

    def _check_memory(self) -> None:
        """Refuse, before the first step, a step that cannot fit in this machine's memory."""
        avail = available_memory()
        if avail is None or self.backend == "cuda":   # host backends' memory
            return
        prog = self.net.program_for(True, self.cfg.loss_text)
        plan = prog.plan(self.cfg.batch)
        weights = sum(t.nbytes for t in self.net.params.values())
        slots = {"sgd": 1, "adam": 2, "adamw": 2}.get(self.cfg.optimizer.name, 2)
        # Weights, gradients, optimizer slots and the best-weights copy, plus the step's
        # values (the arena of the memory plan).
        need = plan.arena_bytes + weights * (3 + slots)
        if need > avail:
            raise error("E054", f"a training step at batch {self.cfg.batch} needs about "
                        f"{need / 2**30:.1f} GiB; this machine has {avail / 2**30:.1f} GiB "
                        "available", self.cfg.span,
                        notes=[f"weights {weights / 2**30:.2f} GiB (x{3 + slots} with "
                               f"gradients and optimizer state), values of one step "
                               f"{plan.arena_bytes / 2**30:.2f} GiB"],
                        help="lower the batch (--batch) or the network's size (--set)")

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> Result:
        cfg, net = self.cfg, self.net
        opt = Optimizer.from_config(cfg.optimizer)
        sched = Schedule(cfg.schedule, opt.lr, cfg.epochs)
        weights = net.init(cfg.seed, cfg.init)
        if self.init is not None and self.resume is None:
            source, given = self.init
            weights = {k: np.array(given[k], dtype=np.float32) if k in given else v
                       for k, v in weights.items()}
            self.log(f"initial weights from {source}")
        state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "loss_n": 0, "history": [],
                 "best": None, "bad_epochs": 0, "global_step": 0}
        best_weights: dict[str, np.ndarray] | None = None
        if self.resume is not None:
            weights, opt, sched, state, best_weights = self._restore(opt, sched)
        else:
            self._prepare_out()
        self.out.mkdir(parents=True, exist_ok=True)
        checkpoint.remove_stale_temporaries(self.out)
        for note in self.data.notes:
            self.log(note)
        for text in net.loss_warnings(cfg.loss):
            self.log(f"warning: {text}")
        if self.frozen:
            self.log(f"frozen: {len(self.frozen)} of {len(net.trainable)} trainable parameters "
                     f"({', '.join(cfg.freeze)}); batchnorm statistics still update")
        if self.scales:
            self.log("learning-rate groups: " + "; ".join(
                f"{pat} x{f:g} ({size} parameters)"
                for (pat, f), size in zip(cfg.lr_groups, self.group_sizes)))
        self._write_config()
        stepper = net.train_step(weights, opt, cfg.loss_text, self.backend, capturable=None,
                                 frozen=self.frozen, scales=self.scales)
        note = getattr(stepper, "graph_note", lambda: None)()
        if note:
            self.log(note)
        flag: dict = {}
        n_train = len(self.data.train)
        steps = math.ceil(n_train / cfg.batch)
        reason = "completed"
        with _stop_on_signals(flag):
            epoch = state["epoch"]
            while epoch < cfg.epochs:
                t0 = time.perf_counter()
                lr = sched.lr(epoch)
                order = _rng(cfg.seed, epoch).permutation(n_train)
                bar = self._bar(epoch, steps, state["step"])
                unread, last_read = state["step"], time.perf_counter()
                for step in range(state["step"], steps):
                    batch = self.data.train.take(order[step * cfg.batch:(step + 1) * cfg.batch])
                    batch = self.data.crop(self._augment(batch, _rng(cfg.seed, epoch, step,
                                                                     1)))
                    # forward, loss, backward and update; nothing changes on a NaN loss
                    stepper.run(batch, lr, state["global_step"], read=not stepper.deferred)
                    state["step"] = step + 1
                    state["global_step"] += 1
                    if self.stop_after_steps is not None and \
                            state["global_step"] >= self.stop_after_steps:
                        flag["signal"] = "stop_after_steps"
                    # The loss sums: every step on the host; from a device, twice a second
                    # (its one wait for the GPU) and at the end of the epoch or a stop.
                    if not stepper.deferred or step + 1 == steps or flag.get("signal") or \
                            time.perf_counter() - last_read >= 0.5:
                        self._read_losses(stepper, state, epoch, unread, step)
                        unread, last_read = step + 1, time.perf_counter()
                        if bar is not None:
                            bar.set_postfix(loss=f"{state['loss_sum'] / state['loss_n']:.4f}")
                    if bar is not None:
                        bar.update(1)
                    if flag.get("signal"):
                        break
                if bar is not None:
                    bar.close()
                weights = stepper.weights()   # the host's copy, once an epoch
                stepper.sync()
                if flag.get("signal") and state["step"] < steps:
                    state["epoch"] = epoch
                    self._save("last", weights, opt, sched, state)
                    reason = f"interrupted ({flag['signal']})"
                    self.log(f"stopped by {flag['signal']} at epoch {epoch + 1}, step "
                             f"{state['step']}; resume with --resume {self.out}")
                    break
                # End of epoch: validation, logs, schedule, early stopping, checkpoints.
                row = {"epoch": epoch + 1, "lr": lr,
                       "loss": state["loss_sum"] / max(state["loss_n"], 1)}
                if len(self.data.val):
                    row.update({f"val_{k}": v for k, v in self.validate(weights).items()})
                row["seconds"] = round(time.perf_counter() - t0, 3)
                state["history"].append(row)
                self._log_epoch(row)
                if opt.loss_scale is not None and opt.skipped_steps:
                    self.log(f"fp16: {opt.skipped_steps} step(s) skipped this epoch for an "
                             f"overflowing gradient; loss scale now {opt.loss_scale:g}")
                    opt.skipped_steps = 0
                sched.observe(row.get("val_loss", row["loss"]))
                value = row.get(self.monitor, row.get("val_loss", row["loss"]))
                improved = state["best"] is None or (
                    value > state["best"][self.monitor] + self._min_delta() if self.maximize
                    else value < state["best"][self.monitor] - self._min_delta())
                state.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_n=0)
                if improved:
                    state["best"] = {self.monitor: value, "epoch": epoch + 1, **row}
                    state["bad_epochs"] = 0
                    best_weights = weights   # a copy of this epoch's, not changed later
                    self._save("best", weights, opt, sched, state)
                else:
                    state["bad_epochs"] += 1
                if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                    self._save("last", weights, opt, sched, state)
                epoch += 1
                if epoch % 5 == 0 or epoch == cfg.epochs:   # plotting costs ~0.2 s
                    self._plot(state["history"])
                patience = cfg.early_stop.get("patience", 5) if cfg.early_stop else None
                # As Keras: stop after `patience` epochs in a row without improvement.
                if patience is not None and state["bad_epochs"] >= max(patience, 1):
                    reason = f"early stop: no better {self.monitor} for {patience} epochs"
                    break
                if flag.get("signal"):
                    reason = f"interrupted ({flag['signal']})"
                    self.log(f"stopped by {flag['signal']} after epoch {epoch}; resume with "
                             f"--resume {self.out}")
                    break
        if state["history"]:
            self._plot(state["history"])
        if cfg.early_stop is not None and best_weights is not None:
            weights = best_weights   # early stopping restores the best weights
        test = None
        if len(self.data.test) and state["history"] and not reason.startswith("interrupted"):
            # The weights `netlang eval RUN` uses: the best checkpoint, selected on the
            # validation split; the test split has played no part in training.
            test = self.validate(best_weights if best_weights is not None else weights,
                                 "test")
            best_epoch = state["best"]["epoch"] if state["best"] else state["epoch"]
            (self.out / "test.json").write_text(json.dumps(
                {"epoch": best_epoch, "samples": len(self.data.test), **test}, indent=1))
            self.log(f"test ({len(self.data.test)} samples, weights of epoch {best_epoch}): "
                     + "  ".join(f"{k} {v:.4f}" for k, v in test.items() if not per_class(k)))
        return Result(state["epoch"], state["history"], state["best"], reason, self.out,
                      weights, test)

    def _read_losses(self, stepper, state: dict, epoch: int, first: int, last: int) -> None:
        """Add the loss sums of steps first..last (0-based) of this epoch to `state`; a
        non-finite loss among them stops training (E053)."""
        total, count, bad, value = stepper.take_losses()
        if bad:
            where = f"step {last + 1}" if first == last else f"one of steps {first + 1}-{last + 1}"
            raise TrainingStopped(
                f"the loss is {value} at epoch {epoch + 1}, {where}: "
                "training stopped; the last good checkpoint is "
                f"{self.out / 'last.safetensors'}"
                + ("" if (self.out / "last.safetensors").exists() else
                   " (none was written yet)")
                + ". Try a lower learning rate.")
        state["loss_sum"] += total
        state["loss_n"] += count

    def _min_delta(self) -> float:
        return self.cfg.early_stop.get("min_delta", 0.0) if self.cfg.early_stop else 0.0

    def _augment(self, batch, rng):
        if not self.cfg.augment:
            return batch
        images = list(self.net.inputs)
        masks = [t for t in self.targets if batch[t].ndim >= 3]
        return augment.apply(self.cfg.augment, batch, images, masks, rng)

    def validate(self, weights, split: str = "val") -> dict[str, float]:
        return evaluate(self.net, weights, self.data, split, self.cfg,
                        max(self.cfg.batch, 32), self.backend)

    # -- output --------------------------------------------------------------------------
    def _bar(self, epoch: int, steps: int, start: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                    leave=False, file=sys.stderr, dynamic_ncols=True)

    def _log_epoch(self, row: dict) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        parts = [f"epoch {row['epoch']}/{self.cfg.epochs}", f"loss {row['loss']:.4f}"]
        parts += [f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_")]
        parts += [f"lr {row['lr']:.2e}", f"{row['seconds']:.1f}s"]
        self.log("  ".join(parts))

    def _plot(self, history: list[dict]) -> None:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:   # plots are optional
            return
        epochs = [r["epoch"] for r in history]
        metrics = [k for k in history[-1] if k.startswith("val_") and k != "val_loss"]
        fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(10 if metrics else 5, 3.5),
                                 squeeze=False)
        ax = axes[0][0]
        ax.plot(epochs, [r["loss"] for r in history], label="train loss")
        if "val_loss" in history[-1]:
            ax.plot(epochs, [r["val_loss"] for r in history], label="validation loss")
        ax.set_xlabel("epoch")
        ax.set_title(f"{self.net.name}: loss")
        ax.legend()
        if metrics:
            ax = axes[0][1]
            for k in metrics:
                if not per_class(k):   # skip per-class columns
                    ax.plot(epochs, [r[k] for r in history], label=k)
            ax.set_xlabel("epoch")
            ax.set_title("validation metrics")
            ax.legend()
        fig.tight_layout()
        fig.savefig(self.out / "curves.png", dpi=80)
        plt.close(fig)

    def _prepare_out(self) -> None:
        """A new run never mixes with an old one in the same folder."""
        old = [f for f in RUN_FILES if (self.out / f).exists()]
        if not old:
            return
        if not self.overwrite:
            raise error("E055", f"the run folder {self.out} already holds a run "
                        f"({', '.join(old)})", None,
                        help=f"continue it with `--resume {self.out}`, start over with "
                             "`--overwrite`, or choose another `--out`")
        for f in old:
            (self.out / f).unlink()

    def _write_config(self) -> None:
        """config.json: the effective settings, and each deliberate change on resume."""
        path = self.out / "config.json"
        now = self._describe()
        changes: list = []
        if self.resume is not None and path.exists():
            try:
                before = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                before = {}
            changes = before.get("changes", [])
            diff = {k: [before.get(k), v] for k, v in now.items()
                    if k not in ("changes",) and before.get(k) not in (None, v)}
            if diff:
                changes.append({"at_epoch": self._resumed_at, "changed": diff})
                self.log("resuming with changed settings (recorded in config.json): "
                         + "; ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items()))
        path.write_text(json.dumps(now | {"changes": changes}, indent=1), encoding="utf-8")

    def _describe(self) -> dict:
        c = self.cfg
        return {"network": self.net.name, "file": self.net.file, "set": self.net.overrides,
                "loss": c.loss_text, "val_split": c.val_split, "test_split": c.test_split,
                "data": [c.data.name, dict(c.data.args)], "optimizer": [c.optimizer.name,
                                                                       dict(c.optimizer.args)],
                "schedule": [c.schedule.name, dict(c.schedule.args)], "batch": c.batch,
                "epochs": c.epochs, "seed": c.seed,
                "augment": [[a.name, dict(a.args)] for a in c.augment],
                "early_stop": dict(c.early_stop.args) if c.early_stop else None,
                "checkpoint_every": c.checkpoint_every,
                "init_from": self.init[0] if self.init is not None else None,
                "freeze": list(c.freeze), "lr_groups": [list(g) for g in c.lr_groups],
                "init": c.init, "precision": c.precision}

    # -- checkpoints ---------------------------------------------------------------------
    def _save(self, which: str, weights, opt: Optimizer, sched: Schedule, state: dict) -> None:
        st = dict(state, network=self.net.name, fingerprint=checkpoint.fingerprint(self.net),
                  source=checkpoint.source_hash(self.net), optimizer_name=opt.name,
                  optimizer_steps=opt.step_count, schedule=sched.state(),
                  loss_scale=None if opt.loss_scale is None else [opt.loss_scale,
                                                                  opt.scale_good],
                  rng={"seed": self.cfg.seed, "global_step": state["global_step"]},
                  config=self._describe())
        checkpoint.save(self.out / f"{which}.safetensors",
                        checkpoint.Checkpoint(weights, opt.state, st))

    def _restore(self, opt: Optimizer, sched: Schedule):
        ck = checkpoint.load(self.resume)
        checkpoint.check_compatible(ck, self.net, self.resume)
        st = ck.state
        if st.get("fingerprint") != checkpoint.fingerprint(self.net):
            raise error("E051", f"checkpoint {self.resume} was made by a different model "
                        "(same parameters, other layers)", None,
                        help="resume with the .net file and --set values it was trained with")
        if st.get("optimizer_name") != opt.name:
            raise error("E051", f"checkpoint {self.resume} used optimizer "
                        f"`{st.get('optimizer_name')}`, this run `{opt.name}`", None,
                        help="resume with the same optimizer")
        opt.state = ck.optimizer
        opt.step_count = st["optimizer_steps"]
        if st.get("loss_scale"):   # fp16: the loss scale's schedule continues
            opt.loss_scale, opt.scale_good = float(st["loss_scale"][0]), int(st["loss_scale"][1])
        sched.load(st["schedule"])
        weights = {k: np.array(v) for k, v in ck.weights.items()}
        best = None
        best_path = (Path(self.resume) if Path(self.resume).is_dir()
                     else Path(self.resume).parent) / "best.safetensors"
        if best_path.exists():
            best = {k: np.array(v) for k, v in checkpoint.load(best_path).weights.items()}
        state = {k: st[k] for k in ("epoch", "step", "loss_sum", "loss_n", "history", "best",
                                    "bad_epochs", "global_step")}
        was = st.get("config", {})
        if state["step"] and was.get("batch") not in (None, self.cfg.batch):
            raise error("E051", f"checkpoint {self.resume} stopped in the middle of an epoch "
                        f"at batch {was['batch']}; this run asks for batch {self.cfg.batch}",
                        None, help="resume with the same --batch; change it when a run "
                                   "resumes from the end of an epoch")
        self._resumed_at = state["epoch"] + 1
        if Path(self.resume).resolve() != self.out.resolve():
            self.out.mkdir(parents=True, exist_ok=True)
        self.log(f"resuming {self.net.name} at epoch {state['epoch'] + 1}, step "
                 f"{state['step']}")
        return weights, opt, sched, state, best
