"""`netlang eval`: metrics of trained weights on a split of the run's data or on a file."""

from __future__ import annotations

import sys

from netlang.cli.common import (
    backend_options, load_recorded, map_option, pick_backend, train_config, weights_label,
)
from netlang.diagnostics import error


def cmd_eval(args) -> int:
    from netlang.train import data as data_mod
    from netlang.train.loop import evaluate

    net, ck = load_recorded(args, args.weights)
    # The run's data, loss and splits, unless the command line says otherwise.
    cfg = train_config(net, args, ck.state.get("config"))
    if cfg.data is None:
        raise error("E032", "no data: pass --data or set `data = ...` in the train section",
                    None)
    if not cfg.loss_text:
        raise error("E030", "no loss: pass --loss or set `loss = ...` in the train section",
                    None)
    targets = list(dict.fromkeys(t.target for t in cfg.loss))
    user_file = args.data is not None and cfg.data.name in ("npz", "folder")
    ds = data_mod.bind(data_mod.from_config(cfg.data, cfg.val_split, cfg.test_split,
                                            whole_file=user_file), net, targets)
    prog = net.program_for(True, cfg.loss_text)
    ds = data_mod.fit_targets(ds, *data_mod.target_needs(prog))
    for note in ds.notes:
        print(note, file=sys.stderr)
    split = "test" if user_file else args.split
    if not len(ds.split(split)):
        raise error("E032", f"the {split} split of `{ds.name}` is empty", None,
                    help="choose another with --split, or give a file with --data")
    backend = pick_backend(args, sys.stderr)
    m = evaluate(net, ck.weights, ds, split, cfg, backend=backend)
    what = (f"all {len(ds.test)} samples of {args.data}" if user_file else
            f"the {split} split, {len(ds.split(split))} samples")
    print(f"{ds.name}: {what}; {weights_label(ck, args.weights)}")
    for k, v in m.items():
        print(f"{k} {v:.4f}")
    return 0


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("eval", help="metrics of trained weights on a data set")
    common(sp)
    run_options(sp)
    sp.add_argument("--weights", required=True, help="a checkpoint, a run folder, or PyTorch "
                    "weights (a state_dict as .safetensors)")
    map_option(sp)
    sp.add_argument("--split", choices=["test", "val", "train"], default="test",
                    help="which split of the run's data to score (default: test); a file "
                         "given with --data is scored whole")
    backend_options(sp, "the evaluation")
    sp.set_defaults(func=cmd_eval)
