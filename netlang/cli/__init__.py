"""The `netlang` command: one module per command, thin over the public API.

    check    cli/check.py      summary  cli/summary.py    viz      cli/viz.py
    compile  cli/compiler.py   train    cli/train.py      eval     cli/evaluate.py
    predict  cli/predict.py    export   cli/export.py     import-onnx  cli/import_onnx.py
    export-weights  cli/export_weights.py
    (what they share: cli/common.py)
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from netlang.cli import (check, compiler, evaluate, export, export_weights, import_onnx,
                         predict, summary, train, viz)
from netlang.diagnostics import NetlangError, SourceMap


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

    def run_options(sp):
        sp.add_argument("--data", help="data set: `digits`, `shapes(size = 64)`, a .npz file, "
                        "`folder(images = \"...\", masks = \"...\")`")
        sp.add_argument("--loss", help='loss, e.g. "cross_entropy(logits, label)"')
        sp.add_argument("--opt", action="append", metavar="KEY=VALUE",
                        help="any train-section setting, e.g. --opt 'schedule=cosine' "
                             "(repeatable; the command line wins over the file)")

    for module in (check, summary, viz, compiler, train, evaluate, predict, export,
                   export_weights, import_onnx):
        module.add_parser(sub, common, run_options)
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
