"""`netlang export-weights`: trained weights as a PyTorch state_dict (safetensors), under the
names of a PyTorch model's own state_dict (netlang/interop/torch_weights.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from netlang.cli.common import load_recorded, map_option, print_warnings, weights_label
from netlang.diagnostics import error


def cmd_export_weights(args) -> int:
    from safetensors.numpy import save_file

    from netlang.interop.torch_weights import export_state_dict, read_mapping, read_template

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise error("E073", f"the weights go to a .safetensors file, not {out}", None,
                    help=f"-o {out.with_suffix('.safetensors')}")
    for given, what in ((args.weights, "--weights"), (args.like, "--like")):
        if given and Path(given).exists() and Path(given).resolve() == out.resolve():
            raise error("E073", f"-o {out} would write over the {what} file", None,
                        help="choose another -o")
    if args.format == "torch" and not args.like:
        raise error("E073", "--format torch needs the PyTorch model's names: --like "
                    "TEMPLATE", None,
                    help='save one from the model: safetensors.torch.save_file(model.'
                         'state_dict(), "template.safetensors") (random weights will do), '
                         "or use --format netlang for netlang's own names")
    if args.format == "netlang" and (args.like or args.map):
        raise error("E073", "--like and --map name PyTorch tensors; --format netlang writes "
                    "netlang's names", None, help="leave them out, or use --format torch")
    net, ck = load_recorded(args, args.weights)
    print_warnings(net)
    where = weights_label(ck, args.weights)
    if args.format == "netlang":
        tensors = {k: ck.weights[k] for k in net.params}
        meta = {"format": "np", "netlang_network": net.name}
        how = "netlang's parameter names"
    else:
        template = read_template(args.like)
        tensors, m = export_state_dict(net, ck.weights, template, source=str(args.like),
                                       explicit=read_mapping(args.map),
                                       batches=int(ck.state.get("global_step", 0) or 0))
        print(f"{len(m.pairs)} tensors mapped from {net.name} onto the names of {args.like} "
              "by structure (netlang layer -> PyTorch module):", file=sys.stderr)
        for line in m.describe():
            ours, theirs = line.split(" <- ")
            print(f"  {ours} -> {theirs}", file=sys.stderr)
        meta = {"format": "pt", "netlang_network": net.name}
        how = f"the names of {args.like}"
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")   # a failure leaves no half-written file
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)
    print(f"wrote {out}: {len(tensors)} tensors of {net.name} under {how}; {where}")
    if args.format == "torch":
        print(f"load it: model.load_state_dict(safetensors.torch.load_file({str(out)!r}))")
    return 0


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("export-weights", help="write trained weights as a PyTorch "
                        "state_dict (.safetensors)")
    common(sp)
    sp.add_argument("--weights", required=True, help="a checkpoint or a run folder (its best "
                    "checkpoint), or PyTorch weights to rename")
    sp.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    sp.add_argument("--format", choices=["torch", "netlang"], default="torch",
                    help="torch (default): the names of the PyTorch model given by --like; "
                         "netlang: netlang's parameter names")
    sp.add_argument("--like", metavar="TEMPLATE", help="the PyTorch model's state_dict: a "
                    ".safetensors file of it (any weights) or a .json file {name: shape}")
    map_option(sp)
    sp.set_defaults(func=cmd_export_weights)
