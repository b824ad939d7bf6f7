"""`netlang summary`: the layer table (shapes, parameters, MACs, activation memory)."""

from __future__ import annotations

import json

from netlang.cli.common import load, print_warnings


def cmd_summary(args) -> int:
    from netlang.summary import format_table, summarize

    net = load(args)
    s = summarize(net, args.batch)
    if args.json:
        print(json.dumps(s.to_json() | {"inputs": {k: list(t.shape) for k, t in
                                                    net.inputs.items()}}, indent=2))
    else:
        print_warnings(net)
        print(format_table(s))
    return 0


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("summary", help="layer table: shapes, parameters, MACs, memory")
    common(sp)
    sp.add_argument("--batch", type=int, default=1, help="batch size for memory and MACs")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_summary)
