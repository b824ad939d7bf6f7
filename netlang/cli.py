"""The `netlang` command: thin argument parsing over the Python API."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from netlang import api
from netlang.diagnostics import NetlangError, SourceMap, did_you_mean, error, render
from netlang.ir.types import fmt_shape


def _sets(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        if "=" not in item:
            raise error("E016", f"`--set {item}` needs the form name=value", None,
                        help="for example `--set base=32`")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _load(args) -> api.Network:
    return api.load(args.file, network=args.network, params=_sets(args.set))


def _print_warnings(net: api.Network) -> None:
    for w in net.warnings:
        print(render(w, net.sources), file=sys.stderr)


def cmd_check(args) -> int:
    names = [args.network] if args.network else api.network_names(args.file)
    if not names:
        prog = api.read_file(args.file)
        print(f"ok: {args.file} defines no network; blocks: {', '.join(prog.blocks) or 'none'}")
        return 0
    for name in names:
        args.network = name
        net = _load(args)
        _print_warnings(net)
        outs = ", ".join(f"{k} {fmt_shape(t.shape)}" for k, t in net.outputs.items())
        print(f"ok: network {net.name}: {net.param_count():,} parameters; outputs {outs}")
    return 0


def cmd_summary(args) -> int:
    from netlang.summary import format_table, summarize

    net = _load(args)
    s = summarize(net, args.batch)
    if args.json:
        print(json.dumps(s.to_json() | {"inputs": {k: list(t.shape) for k, t in
                                                    net.inputs.items()}}, indent=2))
    else:
        _print_warnings(net)
        print(format_table(s))
    return 0


def cmd_viz(args) -> int:
    from netlang.ir.dot import to_dot

    net = _load(args)
    out = Path(args.output or f"{Path(args.file).stem}.svg")
    dot_path = out.with_suffix(".dot")
    out.parent.mkdir(parents=True, exist_ok=True)
    dot_path.write_text(to_dot(net.graph), encoding="utf-8")
    print(f"wrote {dot_path}")
    if out.suffix == ".dot":
        return 0
    fmt = out.suffix.lstrip(".")
    if fmt not in ("svg", "png", "pdf"):
        raise error("E005", f"cannot render `.{fmt}`", None, help="use .svg, .png, .pdf or .dot")
    dot = shutil.which("dot")
    if dot is None:
        print("note: the `dot` program is not installed, so only the .dot file was written; "
              "install Graphviz (`apt-get install graphviz`, `brew install graphviz`) to render "
              f"{out.name}", file=sys.stderr)
        return 0
    res = subprocess.run([dot, f"-T{fmt}", str(dot_path), "-o", str(out)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise error("E005", f"dot failed to render {out}: {res.stderr.strip()}", None)
    print(f"wrote {out}")
    return 0


def cmd_compile(args) -> int:
    from netlang.passes.pipeline import PASS_NAMES, build_program
    from netlang.summary import human_bytes

    net = _load(args)
    dumps = tuple(PASS_NAMES) if "all" in args.dump_after else tuple(args.dump_after)
    for d in dumps:
        if d not in PASS_NAMES:
            raise error("E006", f"unknown pass `{d}`", None,
                        notes=["passes: " + ", ".join(PASS_NAMES)],
                        help=did_you_mean(d, PASS_NAMES))
    loss = net._loss_text(args.loss) if args.train else None
    prog = build_program(net, training=args.train, loss=loss, dump_after=dumps)
    plan = prog.plan(args.batch)
    counts: dict[str, int] = {}
    for n in prog.graph.nodes:
        counts[n.op] = counts.get(n.op, 0) + 1
    report = [f"network {net.name} ({'training step, loss ' + loss if loss else 'inference'})",
              f"nodes: {len(prog.graph.nodes)} ("
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")",
              f"memory plan at batch {args.batch}: arena {human_bytes(plan.arena_bytes)}, "
              f"all values {human_bytes(plan.total_bytes)} "
              f"({plan.arena_bytes / max(plan.total_bytes, 1):.0%} after buffer reuse)"]
    if args.output is None:
        for name in [p for p in PASS_NAMES if p in prog.dumps]:
            print(f"# after {name}")
            print(prog.dumps[name])
        print("\n".join(report))
        return 0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in prog.dumps.items():
        (out / f"ir.after-{name}.txt").write_text(text + "\n", encoding="utf-8")
    from netlang.ir.printer import format_graph

    (out / "ir.final.txt").write_text(format_graph(prog.graph) + "\n", encoding="utf-8")
    (out / "plan.json").write_text(json.dumps(plan.to_json(), indent=1), encoding="utf-8")
    (out / "report.txt").write_text("\n".join(report) + "\n", encoding="utf-8")
    print("\n".join(report))
    print(f"wrote {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netlang", description="Declarative neural networks: "
                                "check, summarize, draw, compile and train `.net` files.")
    from netlang import __version__

    p.add_argument("--version", action="version", version=f"netlang {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("file", help="the .net file")
        sp.add_argument("--network", help="which network, when the file has several")
        sp.add_argument("--set", action="append", metavar="NAME=VALUE",
                        help="override a network parameter, e.g. --set base=32 (repeatable)")

    sp = sub.add_parser("check", help="parse and check a file; exit 1 on error")
    common(sp)
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("summary", help="layer table: shapes, parameters, MACs, memory")
    common(sp)
    sp.add_argument("--batch", type=int, default=1, help="batch size for memory and MACs")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=cmd_summary)

    sp = sub.add_parser("viz", help="draw the network with graphviz")
    common(sp)
    sp.add_argument("-o", "--output", help="out.svg, out.png, out.pdf or out.dot "
                    "(a .dot file is always written)")
    sp.set_defaults(func=cmd_viz)

    sp = sub.add_parser("compile", help="run the compiler passes; dump IR and the memory plan")
    common(sp)
    sp.add_argument("-o", "--output", help="directory for IR dumps, plan.json and report.txt")
    sp.add_argument("--train", action="store_true", help="compile the training step "
                    "(forward, loss, backward) instead of inference")
    sp.add_argument("--loss", help='loss for --train, e.g. "bce(mask, target)" (default: the '
                    "file's train section)")
    sp.add_argument("--batch", type=int, default=1, help="batch size for the memory plan")
    sp.add_argument("--dump-after", action="append", default=[], metavar="PASS",
                    help="print the IR after PASS (repeatable; `all` for every pass)")
    sp.set_defaults(func=cmd_compile)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except NetlangError as exc:
        sources: SourceMap | None = getattr(exc, "sources", None)
        print(exc.render(sources), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
