"""`netlang check`: parse and check every network of a file (exit 1 on error)."""

from __future__ import annotations

from netlang import api
from netlang.cli.common import load, print_warnings
from netlang.ir.types import fmt_shape


def cmd_check(args) -> int:
    names = [args.network] if args.network else api.network_names(args.file)
    if not names:
        prog = api.read_file(args.file)
        print(f"ok: {args.file} defines no network; blocks: {', '.join(prog.blocks) or 'none'}")
        return 0
    for name in names:
        args.network = name
        net = load(args)
        print_warnings(net)
        outs = ", ".join(f"{k} {fmt_shape(t.shape)}" for k, t in net.outputs.items())
        print(f"ok: network {net.name}: {net.param_count():,} parameters; outputs {outs}")
    return 0


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("check", help="parse and check a file; exit 1 on error")
    common(sp)
    sp.set_defaults(func=cmd_check)
