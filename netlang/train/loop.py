"""The training loop: epochs of shuffled, augmented batches; validation; schedules; early
stopping; logs, plots and checkpoints; clean stops on Ctrl-C, SIGTERM and NaN losses.

All randomness (shuffling, augmentation, dropout) is a function of (seed, epoch, step), so a
run resumed from any checkpoint sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netlang.config import TrainConfig
from netlang.diagnostics import error
from netlang.ir.types import fmt_shape
from netlang.train import augment, checkpoint
from netlang.train import data as data_mod
from netlang.train.metrics import Metrics, kind_of
from netlang.train.optim import Optimizer, Schedule

MAXIMIZE = ("accuracy", "top5", "dice", "iou")


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


class Trainer:
    def __init__(self, net, cfg: TrainConfig, out: Path, resume: Path | None = None,
                 progress: bool | None = None, log=print, stop_after_steps: int | None = None,
                 backend: str = "numpy"):
        self.net = net
        self.backend = backend
        self.cfg = cfg
        self.out = Path(out)
        self.resume = resume
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
        self.targets = list(dict.fromkeys(t.target for t in cfg.loss))
        self.kind = kind_of(net)
        ds = data_mod.from_config(cfg.data, cfg.val_split, cfg.seed)
        self.data = data_mod.bind(ds, net, self.targets)
        self._check_targets()
        monitor = cfg.early_stop.get("monitor", "val_loss") if cfg.early_stop else "val_loss"
        if not monitor.startswith("val_"):
            monitor = "val_" + monitor
        self.monitor = monitor
        self.maximize = monitor[4:] in MAXIMIZE or (cfg.early_stop is not None and
                                                    cfg.early_stop.get("mode") == "max")

    def _check_targets(self) -> None:
        prog = self.net.program_for(True, self.cfg.loss_text)
        for name, node in prog.graph.targets.items():
            arr = self.data.train.arrays[name]
            if arr.shape[1:] != node.type.shape:
                raise error("E032", f"target `{name}` is {fmt_shape(arr.shape[1:])} per sample; "
                            f"the loss needs {fmt_shape(node.type.shape)}"
                            + (" class indices" if node.type.dtype == "int64" else ""), None,
                            help="cross_entropy takes class indices; bce, dice and mse take "
                                 "targets shaped like the output")

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> Result:
        cfg, net = self.cfg, self.net
        opt = Optimizer.from_config(cfg.optimizer)
        sched = Schedule(cfg.schedule, opt.lr, cfg.epochs)
        weights = net.init(cfg.seed)
        state = {"epoch": 0, "step": 0, "loss_sum": 0.0, "loss_n": 0, "history": [],
                 "best": None, "bad_epochs": 0, "global_step": 0}
        best_weights: dict[str, np.ndarray] | None = None
        if self.resume is not None:
            weights, opt, sched, state, best_weights = self._restore(opt, sched)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(self._describe(), indent=1))
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
                for step in range(state["step"], steps):
                    batch = self.data.train.take(order[step * cfg.batch:(step + 1) * cfg.batch])
                    batch = self._augment(batch, _rng(cfg.seed, epoch, step, 1))
                    with np.errstate(over="ignore", invalid="ignore"):  # the NaN guard reports
                        loss, grads, updates = net.value_and_grad(
                            weights, batch, loss=cfg.loss_text, seed=state["global_step"],
                            return_updates=True, backend=self.backend)
                    if not math.isfinite(loss):
                        raise TrainingStopped(
                            f"the loss is {loss} at epoch {epoch + 1}, step {step + 1}: "
                            "training stopped; the last good checkpoint is "
                            f"{self.out / 'last.safetensors'}"
                            + ("" if (self.out / "last.safetensors").exists() else
                               " (none was written yet)")
                            + ". Try a lower learning rate.")
                    opt.update(weights, grads, lr)
                    weights.update(updates)
                    count = len(next(iter(batch.values())))
                    state["loss_sum"] += loss * count
                    state["loss_n"] += count
                    state["step"] = step + 1
                    state["global_step"] += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{state['loss_sum'] / state['loss_n']:.4f}")
                    if self.stop_after_steps is not None and \
                            state["global_step"] >= self.stop_after_steps:
                        flag["signal"] = "stop_after_steps"
                    if flag.get("signal"):
                        break
                if bar is not None:
                    bar.close()
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
                row.update({f"val_{k}": v for k, v in self.validate(weights).items()})
                row["seconds"] = round(time.perf_counter() - t0, 3)
                state["history"].append(row)
                self._log_epoch(row)
                sched.observe(row.get("val_loss", row["loss"]))
                value = row.get(self.monitor, row.get("val_loss", row["loss"]))
                improved = state["best"] is None or (
                    value > state["best"][self.monitor] + self._min_delta() if self.maximize
                    else value < state["best"][self.monitor] - self._min_delta())
                state.update(epoch=epoch + 1, step=0, loss_sum=0.0, loss_n=0)
                if improved:
                    state["best"] = {self.monitor: value, "epoch": epoch + 1, **row}
                    state["bad_epochs"] = 0
                    best_weights = {k: v.copy() for k, v in weights.items()}
                    self._save("best", weights, opt, sched, state)
                else:
                    state["bad_epochs"] += 1
                if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                    self._save("last", weights, opt, sched, state)
                epoch += 1
                if epoch % 5 == 0 or epoch == cfg.epochs:   # plotting costs ~0.2 s
                    self._plot(state["history"])
                patience = cfg.early_stop.get("patience", 5) if cfg.early_stop else None
                if patience is not None and state["bad_epochs"] > patience:
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
        return Result(state["epoch"], state["history"], state["best"], reason, self.out,
                      weights)

    def _min_delta(self) -> float:
        return self.cfg.early_stop.get("min_delta", 0.0) if self.cfg.early_stop else 0.0

    def _augment(self, batch, rng):
        if not self.cfg.augment:
            return batch
        images = list(self.net.inputs)
        masks = [t for t in self.targets if batch[t].ndim >= 3]
        return augment.apply(self.cfg.augment, batch, images, masks, rng)

    def validate(self, weights) -> dict[str, float]:
        m = Metrics(self.kind)
        out_name = next(iter(self.net.outputs))
        target = self.targets[0]
        for batch in self.data.batches("val", max(self.cfg.batch, 32)):
            loss, outs = self.net.evaluate(weights, batch, loss=self.cfg.loss_text,
                                           backend=self.backend)
            m.add(loss, outs[out_name], batch[target], len(batch[target]))
        return m.result()

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
                if k.count("_") == 1:   # skip per-class columns
                    ax.plot(epochs, [r[k] for r in history], label=k)
            ax.set_xlabel("epoch")
            ax.set_title("validation metrics")
            ax.legend()
        fig.tight_layout()
        fig.savefig(self.out / "curves.png", dpi=80)
        plt.close(fig)

    def _describe(self) -> dict:
        c = self.cfg
        return {"network": self.net.name, "file": self.net.file, "loss": c.loss_text,
                "data": [c.data.name, dict(c.data.args)], "optimizer": [c.optimizer.name,
                                                                       dict(c.optimizer.args)],
                "schedule": [c.schedule.name, dict(c.schedule.args)], "batch": c.batch,
                "epochs": c.epochs, "seed": c.seed,
                "augment": [[a.name, dict(a.args)] for a in c.augment]}

    # -- checkpoints ---------------------------------------------------------------------
    def _save(self, which: str, weights, opt: Optimizer, sched: Schedule, state: dict) -> None:
        st = dict(state, network=self.net.name, fingerprint=checkpoint.fingerprint(self.net),
                  source=checkpoint.source_hash(self.net), optimizer_name=opt.name,
                  optimizer_steps=opt.step_count, schedule=sched.state(),
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
        sched.load(st["schedule"])
        weights = {k: np.array(v) for k, v in ck.weights.items()}
        best = None
        best_path = (Path(self.resume) if Path(self.resume).is_dir()
                     else Path(self.resume).parent) / "best.safetensors"
        if best_path.exists():
            best = {k: np.array(v) for k, v in checkpoint.load(best_path).weights.items()}
        state = {k: st[k] for k in ("epoch", "step", "loss_sum", "loss_n", "history", "best",
                                    "bad_epochs", "global_step")}
        if Path(self.resume).resolve() != self.out.resolve():
            self.out.mkdir(parents=True, exist_ok=True)
        self.log(f"resuming {self.net.name} at epoch {state['epoch'] + 1}, step "
                 f"{state['step']}")
        return weights, opt, sched, state, best
