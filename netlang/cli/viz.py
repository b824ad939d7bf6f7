"""`netlang viz`: the network as a Graphviz diagram."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from netlang.cli.common import load
from netlang.diagnostics import error


def cmd_viz(args) -> int:
    net = load(args)
    out = Path(args.output or f"{Path(args.file).stem}.svg")
    dot_path = out.with_suffix(".dot")
    out.parent.mkdir(parents=True, exist_ok=True)
    dot_path.write_text(net.to_dot(rankdir=args.rankdir, collapse=args.collapse,
                                   fused=args.after == "fusion"), encoding="utf-8")
    print(f"wrote {dot_path}")
    if out.suffix == ".dot":
        return 0
    fmt = out.suffix.lstrip(".")
    if fmt not in ("svg", "png", "pdf"):
        raise error("E005", f"cannot render `.{fmt}`", None, help="use .svg, .png, .pdf or .dot")
    dot = shutil.which("dot")
    if dot is None:
        raise error("E005", f"{out} was not written: the Graphviz `dot` program is not "
                    "installed", None, notes=[f"the diagram is in {dot_path}"],
                    help="install Graphviz (`apt-get install graphviz`, `brew install "
                         "graphviz`), or render the .dot file elsewhere")
    res = subprocess.run([dot, f"-T{fmt}", str(dot_path), "-o", str(out)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise error("E005", f"dot failed to render {out}: {res.stderr.strip()}", None)
    print(f"wrote {out}")
    return 0


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("viz", help="draw the network with graphviz")
    common(sp)
    sp.add_argument("-o", "--output", help="out.svg, out.png, out.pdf or out.dot "
                    "(a .dot file is always written)")
    sp.add_argument("--after", choices=["fusion"], help="draw the compiled inference program "
                    "with each fused kernel as a cluster")
    sp.add_argument("--rankdir", choices=["TB", "LR", "BT", "RL"], default="TB",
                    help="direction of the diagram: TB top to bottom (default), LR left to "
                         "right (for tall networks)")
    sp.add_argument("--collapse", action="store_true",
                    help="draw each block instance as one node")
    sp.set_defaults(func=cmd_viz)
