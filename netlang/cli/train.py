"""`netlang train`: the training loop over the public API, with the run folder."""

from __future__ import annotations

import sys
from pathlib import Path

from netlang import api
from netlang.cli.common import (
    backend_options, load, load_recorded, map_option, pick_backend, print_warnings,
    torch_checkpoint, train_config,
)
from netlang.diagnostics import error
from netlang.train.metrics import per_class


def _run_dir(net: api.Network, out: str | None, resume: str | None) -> Path:
    if out:
        return Path(out)
    if resume:
        p = Path(resume)
        return p if p.is_dir() else p.parent
    base = Path("runs") / net.name
    path, k = base, 1
    while path.exists() and any(path.iterdir()):
        k += 1
        path = Path(f"{base}-{k}")
    return path


def cmd_train(args) -> int:
    from netlang.train.loop import Trainer, TrainingStopped

    recorded = None
    if args.resume:   # the run's network settings and training settings continue
        net, ck = load_recorded(args, args.resume, prefer="last")
        recorded = ck.state.get("config")
    else:
        net = load(args)
    print_warnings(net)
    cfg = train_config(net, args, recorded)
    out = _run_dir(net, args.out, args.resume)
    if args.tf32:
        api.use_tf32(True)
    backend = pick_backend(args)
    init = None
    if args.init_only and not args.init_from:
        raise error("E030", "--init-only selects parameters of --init-from, which is not "
                    "given", None, help="add --init-from WEIGHTS")
    if args.init_from and not args.resume:
        init = _initial_weights(args, net)
    trainer = Trainer(net, cfg, out, resume=Path(args.resume) if args.resume else None,
                      progress=None if not args.no_progress else False, backend=backend,
                      overwrite=args.overwrite, init=init)
    d = trainer.data
    print(f"training {net.name} ({net.param_count():,} parameters) on {cfg.data.name}: "
          f"{len(d.train)} training, {len(d.val)} validation and {len(d.test)} test "
          f"samples, batch {cfg.batch}, {cfg.epochs} epochs"
          + (f", {cfg.precision} products" if cfg.precision != "fp32" else "")
          + f"; run folder {out}")
    try:
        result = trainer.run()
    except TrainingStopped as exc:
        print(f"error[E053]: {exc}", file=sys.stderr)
        return 2
    best = result.best or {}
    shown = {k: v for k, v in best.items() if k.startswith("val_") and not per_class(k)}
    print(f"{result.reason}; best epoch {best.get('epoch', '-')}: "
          + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if result.test is not None:
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in result.test.items()
                                   if not per_class(k))
              + f"  ({len(d.test)} samples never used in training)")
    print(f"checkpoints: {out / 'best.safetensors'}, {out / 'last.safetensors'}; "
          f"log {out / 'metrics.jsonl'}; curves {out / 'curves.png'}")
    return 130 if result.reason.startswith("interrupted") else 0


def _initial_weights(args, net) -> tuple[str, dict]:
    """--init-from: a netlang checkpoint or run folder of the same network, or PyTorch
    weights mapped by structure; every parameter must be given."""
    from netlang.train import checkpoint

    from netlang.interop.torch_weights import select

    path = args.init_from
    if Path(path).is_file() and not checkpoint.is_checkpoint(path):
        ck = torch_checkpoint(args, path, net)
        weights = ck.weights
    elif args.init_only:   # the selected parameters, from a checkpoint of any network
        ck = checkpoint.load(path, prefer="best")
        chosen = select(net, args.init_only)
        missing = sorted(k for k in chosen if k not in ck.weights)
        wrong = [f"{k} {list(ck.weights[k].shape)} vs {list(net.params[k].shape)}"
                 for k in sorted(chosen) if k in ck.weights and
                 tuple(ck.weights[k].shape) != net.params[k].shape]
        if missing or wrong:
            raise error("E051", f"checkpoint {path} lacks {len(missing)} and has "
                        f"{len(wrong)} differently shaped parameter(s) of the ones "
                        f"--init-only selects", None,
                        notes=(["missing, e.g. " + ", ".join(missing[:3])] if missing else [])
                        + (["different shapes: " + "; ".join(wrong[:3])] if wrong else []),
                        help="for weights of another network's names, export them as PyTorch "
                             "names or pair them with --map")
        weights = {k: ck.weights[k] for k in chosen}
    else:
        ck = checkpoint.load(path, prefer="best")
        checkpoint.check_compatible(ck, net, path)
        weights = ck.weights
    source = ck.state.get("weights_from") or f"{path}"
    if args.init_only:
        source += (f" ({len(weights)} of {len(net.params)} parameters: "
                   f"{', '.join(args.init_only)}; the rest initialised)")
    return (source, weights)


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("train", help="train the network on the data of its train section")
    common(sp)
    run_options(sp)
    sp.add_argument("--epochs", type=int)
    sp.add_argument("--batch", type=int)
    sp.add_argument("--lr", type=float, help="learning rate of the optimizer")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--out", help="run folder (default runs/NETWORK, or runs/NETWORK-2, ... "
                    "when that holds a run)")
    sp.add_argument("--overwrite", action="store_true",
                    help="start over in a run folder that holds a run")
    sp.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    sp.add_argument("--init-from", metavar="WEIGHTS", help="start from these weights instead "
                    "of the initialisation: a checkpoint or run folder of this network, or "
                    "PyTorch weights (a state_dict as .safetensors, mapped by structure)")
    sp.add_argument("--init-only", metavar="PATTERN", action="append",
                    help="with --init-from: take only the parameters these name patterns "
                    'select (e.g. "enc*"; repeatable); the others start from the '
                    "initialisation, and PyTorch tensors may be left over")
    map_option(sp)
    backend_options(sp, "training")
    sp.add_argument("--tf32", action="store_true", help="with --backend cuda: let cuBLAS GEMMs "
                    "use TF32 tensor cores (faster, 10-bit mantissa); off by default")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_train)
