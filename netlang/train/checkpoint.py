"""Checkpoints: one self-describing safetensors file per state, written atomically.

Arrays (weights, batchnorm statistics, optimizer slots) are safetensors tensors; the rest
(epoch and step, schedule, early stopping, RNG seed and counters, the model's fingerprint,
the configuration, the metrics so far) is JSON in the safetensors metadata. Nothing is ever
pickled. A write goes to a temporary file in the same folder, is flushed to disk, then
renamed over the old file, so a crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netlang.diagnostics import error

FORMAT = "netlang-checkpoint-1"


@dataclass
class Checkpoint:
    weights: dict[str, np.ndarray]
    optimizer: dict[str, dict[str, np.ndarray]]
    state: dict


def fingerprint(net) -> str:
    """Hash of what makes weights interchangeable: parameter names and shapes, and ops."""
    h = hashlib.sha256()
    for n in net.graph.nodes:
        h.update(f"{n.op}:{n.name}:{n.type.shape if n.type else ''};".encode())
    return h.hexdigest()[:16]


def source_hash(net) -> str:
    h = hashlib.sha256()
    for name in sorted(net.sources.texts):
        h.update(net.sources.texts[name].encode())
    return h.hexdigest()[:16]


def save(path: Path, ckpt: Checkpoint) -> None:
    from safetensors.numpy import save_file

    tensors = {f"w/{k}": np.ascontiguousarray(v) for k, v in ckpt.weights.items()}
    for slot, arrays in ckpt.optimizer.items():
        for k, v in arrays.items():
            tensors[f"opt/{slot}/{k}"] = np.ascontiguousarray(v)
    meta = {"format": FORMAT, "state": json.dumps(ckpt.state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of writes that a killed process never finished (each
    as large as a checkpoint); called when a run starts, before it writes anything."""
    stale = sorted(Path(folder).glob(".*.safetensors.tmp-*"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def is_checkpoint(path: str | Path) -> bool:
    """A safetensors file that netlang wrote (not, say, a PyTorch state_dict)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def load(path: str | Path, prefer: str = "last") -> Checkpoint:
    """A checkpoint file, or a run folder's `last` (to resume) or `best` (to use)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.is_dir():
        if not any(p.glob("*.safetensors")) and (p / "config.json").exists():
            raise error("E050", f"the run in {path} stopped before its first checkpoint was "
                        "written, so it has no weights to resume or use", None,
                        help=f"start it again: `--out {path} --overwrite`")
        p = p / f"{prefer}.safetensors"
    if not p.is_file():
        raise error("E050", f"no checkpoint at {path}", None,
                    help="give a run folder (it holds last.safetensors and best.safetensors) "
                         "or a .safetensors file")
    try:
        with safe_open(str(p), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise error("E050", f"{p} is not a netlang checkpoint", None,
                            notes=[f"format: {meta.get('format', 'none')}"])
            weights, opt = {}, {}
            for key in f.keys():
                arr = f.get_tensor(key)
                if key.startswith("w/"):
                    weights[key[2:]] = arr
                elif key.startswith("opt/"):
                    _, slot, name = key.split("/", 2)
                    opt.setdefault(slot, {})[name] = arr
            state = json.loads(meta["state"])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise error("E050", f"{p} is damaged or not a checkpoint: {exc}", None) from None
    bad = [k for k, v in weights.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        raise error("E050", f"{p} holds NaN or infinite weights ({len(bad)} of {len(weights)} "
                    "tensors, e.g. " + ", ".join(bad[:3]) + ")", None,
                    help="use an earlier checkpoint; training keeps the last good one")
    return Checkpoint(weights, opt, state)


def check_compatible(ckpt: Checkpoint, net, path) -> None:
    """Refuse weights of another model, saying how it differs."""
    want = net.params
    have = {k: tuple(v.shape) for k, v in ckpt.weights.items()}
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    wrong = [f"{k} {list(have[k])} vs {list(want[k].shape)}" for k in want
             if k in have and have[k] != want[k].shape]
    if missing or extra or wrong:
        notes = []
        if missing:
            notes.append(f"{len(missing)} parameter(s) of network `{net.name}` missing, e.g. "
                         + ", ".join(missing[:3]))
        if extra:
            notes.append(f"{len(extra)} unknown parameter(s), e.g. " + ", ".join(extra[:3]))
        if wrong:
            notes.append("different shapes: " + "; ".join(wrong[:3]))
        model = ckpt.state.get("network", "?")
        raise error("E051", f"checkpoint {path} belongs to another model (`{model}`)", None,
                    notes=notes, help="use the .net file and --set values it was trained with")
