"""`netlang compile`: IR dumps, fusion report, kernels and plans (netlang/artifacts.py)."""

from __future__ import annotations

from pathlib import Path

from netlang.cli.common import load


def cmd_compile(args) -> int:
    from netlang.artifacts import compile_artifacts

    net = load(args)
    art = compile_artifacts(net, args.train, args.loss, args.batch, tuple(args.dump_after),
                            fuse=not args.no_fuse, backend=args.backend)
    if args.explain == "fusion":
        print(art.explain)
    if args.output is None:
        for name, text in art.dumps.items():
            print(f"# after {name}")
            print(text)
        print("\n".join(art.report))
        return 0
    art.write(Path(args.output))
    print("\n".join(art.report))
    print(f"wrote {args.output}/")
    return 0


def add_parser(sub, common, run_options) -> None:
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
    sp.add_argument("--explain", choices=["fusion"], help="why pairs of ops were not fused")
    sp.add_argument("--no-fuse", action="store_true", help="one kernel per op (for bisecting)")
    sp.add_argument("--precision", help="fp32 (default), tf32, bf16 or fp16: the products' "
                    "operands and results rounded as tensor cores round them (round_to nodes)")
    sp.add_argument("--backend", choices=["all", "cuda", "cpu"], default="all",
                    help="whose source to write with -o: kernels.cu (cuda), kernels.cpp (cpu, "
                         "its nl_step included) or both (default)")
    sp.set_defaults(func=cmd_compile)
