"""What the commands share: `--set` values, loading a network, the train settings from
the file, a run's record and the command line."""

from __future__ import annotations

import sys
from typing import Sequence

from netlang import api
from netlang.diagnostics import error, render


def sets(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        if "=" not in item:
            raise error("E016", f"`--set {item}` needs the form name=value", None,
                        help="for example `--set base=32`")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def load(args) -> api.Network:
    net = api.load(args.file, network=args.network, params=sets(args.set))
    precision = getattr(args, "precision", None)   # compile's --precision (train's: cfg)
    return net.with_precision(precision) if precision else net


def print_warnings(net: api.Network) -> None:
    for w in net.warnings:
        print(render(w, net.sources), file=sys.stderr)


def train_config(net: api.Network, args, recorded: dict | None = None):
    """The file's train section (or, resuming, the run's recorded settings), then the
    command line's values, all validated alike."""
    from netlang.config import (
        TrainConfig, apply_overrides, from_record, resolve_data_paths, with_lr,
    )

    cfg = net.train or TrainConfig()
    if recorded:
        cfg = from_record(recorded, cfg, list(net.outputs))
    items: list[tuple[str, str]] = []
    for key in ("data", "loss", "epochs", "batch", "seed", "precision"):
        value = getattr(args, key, None)
        if value is not None:
            items.append((key, str(value)))
    for item in getattr(args, "opt", None) or ():
        if "=" not in item:
            raise error("E030", f"`--opt {item}` needs the form key=value", None,
                        help="for example `--opt 'schedule=cosine'`")
        k, v = item.split("=", 1)
        items.append((k.strip(), v.strip()))
    cfg = apply_overrides(cfg, items, list(net.outputs))
    if getattr(args, "lr", None) is not None:
        cfg = with_lr(cfg, args.lr)
    # Paths given on the command line are relative to the working directory (the file's
    # are already absolute): recorded absolute, a run's data is found from anywhere.
    return resolve_data_paths(cfg, ".")


def load_recorded(args, weights: str, prefer: str = "best"):
    """The network as the run that made `weights` was configured: its recorded `--set`
    values (given ones must agree), and its checkpoint, checked against the network."""
    from pathlib import Path

    from netlang.train import checkpoint

    if Path(weights).is_file() and not checkpoint.is_checkpoint(weights):
        net = load(args)
        return net, torch_checkpoint(args, weights, net)
    ck = checkpoint.load(weights, prefer=prefer)
    rec = ck.state.get("config", {}) or {}
    recorded = {k: str(v) for k, v in (rec.get("set") or {}).items()}
    given = sets(args.set)
    differ = [f"{k}={recorded[k]} (given {v})" for k, v in given.items()
              if k in recorded and recorded[k] != v]
    if differ:
        raise error("E051", f"{weights} was trained with --set " + ", ".join(differ), None,
                    help="leave out --set: the run's own values are used")
    if recorded and not given:
        print("using the run's settings: " + " ".join(f"--set {k}={v}"
                                                       for k, v in recorded.items()),
              file=sys.stderr)
    network = args.network
    if network is None and rec.get("network") in api.network_names(args.file):
        network = rec["network"]
    net = api.load(args.file, network=network, params=recorded | given)
    checkpoint.check_compatible(ck, net, weights)
    precision = getattr(args, "precision", None) or rec.get("precision") or "fp32"
    return net.with_precision(precision), ck


def weights_label(ck, path) -> str:
    """How a command names the weights it uses."""
    return ck.state.get("weights_from") or \
        f"the weights of {path} (epoch {ck.state.get('epoch', '?')})"


def torch_checkpoint(args, path, net=None):
    """PyTorch weights (a state_dict as safetensors) for the network of `args`, mapped by
    structure (and `--map`), the mapping printed to stderr; as a Checkpoint."""
    from netlang.interop.torch_weights import load_torch_weights
    from netlang.train import checkpoint

    net = net or load(args)
    only = getattr(args, "init_only", None)
    m = load_torch_weights(path, net, getattr(args, "map", None), only=only)
    print(f"PyTorch weights {path}: {len(m.pairs)} tensors mapped onto {net.name} by "
          "structure (netlang layer <- PyTorch module):", file=sys.stderr)
    for line in m.describe():
        print("  " + line, file=sys.stderr)
    if m.unused:
        print(f"  not used: {len(m.unused)} PyTorch tensor(s) ({', '.join(m.unused[:6])}"
              f"{', ...' if len(m.unused) > 6 else ''})", file=sys.stderr)
    return checkpoint.Checkpoint(m.weights, {}, {"weights_from": f"PyTorch weights {path}"})


def map_option(sp) -> None:
    sp.add_argument("--map", metavar="FILE", help="with PyTorch weights: a JSON file "
                    '{"netlang parameter": "PyTorch tensor"} for pairs the structure cannot '
                    "settle (docs/interop.md)")


BACKENDS = ["auto", "numpy", "cpu", "cuda", "cuda-emu"]


def backend_options(sp, what: str) -> None:
    """--backend and --threads, as train, eval and predict take them."""
    sp.add_argument("--backend", default="auto", choices=BACKENDS,
                    help=f"where {what} runs. auto (default): cuda with a GPU, else cpu with "
                         "a C++ compiler, else numpy (a line says which, and why); numpy: the "
                         "reference interpreter; cpu: the fused program compiled for this "
                         "machine; cuda: a GPU; cuda-emu: the CUDA kernels on the host (slow, "
                         "for checking)")
    sp.add_argument("--threads", type=int, help="cores the cpu backend uses (default: "
                    "OMP_NUM_THREADS, else all)")
    sp.add_argument("--precision", help="numerics of the convolutions, dense layers and "
                    "matmuls: fp32 (default), tf32, bf16 or fp16 (with loss scaling), as "
                    "tensor cores compute them (emulated exactly on every backend); eval and "
                    "predict default to the run's")


def pick_backend(args, out=None) -> str:
    """The backend for --backend (and --threads), with its line printed to `out` (the
    standard output when None)."""
    if args.threads is not None:
        api.set_threads(args.threads)
    backend, line = api.choose_backend(args.backend)
    print(line, file=out or sys.stdout)
    return backend
