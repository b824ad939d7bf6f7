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
    if args.after == "fusion":
        from netlang.passes.pipeline import build_program

        g = build_program(net, training=False).graph
        clusters = {f"k{i}: {grp.name}": grp.nodes for i, grp in enumerate(g.fusion.groups)
                    if grp.epilogue}
        dot_path.write_text(to_dot(g, clusters, rankdir=args.rankdir), encoding="utf-8")
    else:
        dot_path.write_text(to_dot(net.graph, rankdir=args.rankdir, collapse=args.collapse),
                            encoding="utf-8")
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


def cmd_compile(args) -> int:
    from netlang.backends.cuda import render as R
    from netlang.ir.printer import format_graph
    from netlang.passes.pipeline import PASS_NAMES, build_program, pass_names
    from netlang.summary import human_bytes, human_count, summarize

    net = _load(args)
    loss = None
    if args.train:
        loss = args.loss or (net.train.loss_text if net.train else None)
        if not loss:
            raise error("E030", "`compile --train` needs a loss, and the file's train section "
                        "names none", None,
                        help='pass one, e.g. --loss "cross_entropy(logits, label)", or add '
                             "`loss = ...` to a train section")
    names = pass_names(args.train, args.train)
    dumps = tuple(names) if "all" in args.dump_after else tuple(args.dump_after)
    for d in dumps:
        if d in PASS_NAMES and d not in names:
            raise error("E006", f"pass `{d}` runs only when compiling the training step", None,
                        help="add --train")
        if d not in names:
            raise error("E006", f"unknown pass `{d}`", None,
                        notes=["passes: " + ", ".join(names) + ", all"],
                        help=did_you_mean(d, names + ["all"]))
    prog = build_program(net, training=args.train, loss=loss, dump_after=dumps,
                         fuse=not args.no_fuse)
    unfused = build_program(net, training=args.train, loss=loss, fuse=False)
    plan = prog.plan(args.batch, by_kernel=True)
    fusion = prog.graph.fusion
    try:
        cuda = R.render(prog.graph)
        cuda_unfused = R.render(unfused.graph)
        no_cuda = None
    except R.Unsupported as exc:
        cuda = cuda_unfused = None
        no_cuda = str(exc)
    macs = summarize(net, args.batch).total_macs
    report = [f"network {net.name} ({'training step, loss ' + loss if loss else 'inference'})",
              f"ops: {sum(1 for n in prog.graph.nodes if n.op not in ('input', 'param'))}; "
              f"kernels after fusion: {fusion.kernel_count} (without fusion: "
              f"{unfused.graph.fusion.kernel_count})",
              f"memory plan at batch {args.batch}: arena {human_bytes(plan.arena_bytes)}, "
              f"all values {human_bytes(plan.total_bytes)} "
              f"({plan.arena_bytes / max(plan.total_bytes, 1):.0%} after buffer reuse)",
              f"forward MACs at batch {args.batch}: {human_count(macs)}"]
    if cuda is not None:
        launches = sum(1 for s in cuda.steps if isinstance(s, R.Launch))
        gemms = len(cuda.steps) - launches
        u_launches = sum(1 for s in cuda_unfused.steps if isinstance(s, R.Launch))
        report.append(f"CUDA: {launches} kernel launches + {gemms} cuBLAS GEMMs per step "
                      f"(without fusion: {u_launches} launches)")
    else:
        report.append(f"CUDA: not available for this network ({no_cuda})")
    if args.explain == "fusion":
        print(fusion.explain())
    if args.output is None:
        for name in [p for p in names if p in prog.dumps]:
            print(f"# after {name}")
            print(prog.dumps[name])
        print("\n".join(report))
        return 0
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in prog.dumps.items():
        (out / f"ir.after-{name}.txt").write_text(text + "\n", encoding="utf-8")
    (out / "ir.final.txt").write_text(format_graph(prog.graph) + "\n", encoding="utf-8")
    (out / "fusion.txt").write_text(fusion.explain() + "\n", encoding="utf-8")
    plan_json = {"batch": args.batch, "memory": plan.to_json(), "steps": []}
    if cuda is not None:
        header = "// Generated by netlang from " + net.file + f" (network {net.name}).\n"
        infos = {i.name: i for i in cuda.kernels}
        text = cuda.source
        for info in cuda.kernels:   # name the .net lines each kernel implements
            text = text.replace(f'extern "C" __global__ void {info.name}(',
                                f"// implements {', '.join(info.lines)}\n"
                                f'extern "C" __global__ void {info.name}(', 1)
        (out / "kernels.cu").write_text(header + text, encoding="utf-8")
        for st in cuda.steps:
            if isinstance(st, R.Gemm):
                plan_json["steps"].append({"gemm": [st.a, st.b, st.out], "a": st.a_view,
                                           "b": st.b_view, "trans_a": st.trans_a,
                                           "trans_b": st.trans_b})
                continue
            total = st.count * (args.batch if st.batched else 1)
            plan_json["steps"].append({
                "kernel": st.kernel, "grid": total if st.reduce else -(-total // R.BLOCK),
                "block": R.BLOCK, "args": [a.key for a in st.args],
                "lines": list(infos[st.kernel].lines)})
        plan_json["scratch"] = {k: {"elements": v[0], "batched": v[1]}
                                for k, v in cuda.scratch.items()}
    (out / "plan.json").write_text(json.dumps(plan_json, indent=1), encoding="utf-8")
    (out / "report.txt").write_text("\n".join(report) + "\n", encoding="utf-8")
    print("\n".join(report))
    print(f"wrote {out}/")
    return 0


def _train_config(net: api.Network, args, recorded: dict | None = None):
    """The file's train section (or, resuming, the run's recorded settings), then the
    command line's values, all validated alike."""
    from netlang.config import TrainConfig, apply_overrides, from_record, with_lr

    cfg = net.train or TrainConfig()
    if recorded:
        cfg = from_record(recorded, cfg, list(net.outputs))
    items: list[tuple[str, str]] = []
    for key in ("data", "loss", "epochs", "batch", "seed"):
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
    return cfg


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
        net, ck = _load_recorded(args, args.resume, prefer="last")
        recorded = ck.state.get("config")
    else:
        net = _load(args)
    _print_warnings(net)
    cfg = _train_config(net, args, recorded)
    out = _run_dir(net, args.out, args.resume)
    if args.tf32:
        from netlang.backends.cuda.runtime import use_tf32

        use_tf32(True)
    trainer = Trainer(net, cfg, out, resume=Path(args.resume) if args.resume else None,
                      progress=None if not args.no_progress else False, backend=args.backend,
                      overwrite=args.overwrite)
    d = trainer.data
    print(f"training {net.name} ({net.param_count():,} parameters) on {cfg.data.name}: "
          f"{len(d.train)} training, {len(d.val)} validation and {len(d.test)} test "
          f"samples, batch {cfg.batch}, {cfg.epochs} epochs; run folder {out}")
    try:
        result = trainer.run()
    except TrainingStopped as exc:
        print(f"error[E053]: {exc}", file=sys.stderr)
        return 2
    best = result.best or {}
    shown = {k: v for k, v in best.items() if k.startswith("val_") and k.count("_") == 1}
    print(f"{result.reason}; best epoch {best.get('epoch', '-')}: "
          + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if result.test is not None:
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in result.test.items()
                                   if k.count("_") == 0)
              + f"  ({len(d.test)} samples never used in training)")
    print(f"checkpoints: {out / 'best.safetensors'}, {out / 'last.safetensors'}; "
          f"log {out / 'metrics.jsonl'}; curves {out / 'curves.png'}")
    return 130 if result.reason.startswith("interrupted") else 0


def _load_recorded(args, weights: str, prefer: str = "best"):
    """The network as the run that made `weights` was configured: its recorded `--set`
    values (given ones must agree), and its checkpoint, checked against the network."""
    from netlang.train import checkpoint

    ck = checkpoint.load(weights, prefer=prefer)
    rec = ck.state.get("config", {}) or {}
    recorded = {k: str(v) for k, v in (rec.get("set") or {}).items()}
    given = _sets(args.set)
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
    return net, ck


def cmd_eval(args) -> int:
    from dataclasses import replace

    from netlang.config import Call, apply_overrides
    from netlang.train import data as data_mod
    from netlang.train.loop import evaluate
    from netlang.train.metrics import kind_of

    net, ck = _load_recorded(args, args.weights)
    rec = ck.state.get("config", {}) or {}
    cfg = _train_config(net, args)
    if args.data is None and rec.get("data"):   # the run's data, unless told otherwise
        name, kw = rec["data"]
        cfg = replace(cfg, data=Call(name, tuple(kw.items())),
                      val_split=rec.get("val_split", cfg.val_split),
                      test_split=rec.get("test_split", cfg.test_split))
    if args.loss is None and rec.get("loss") and rec["loss"] != cfg.loss_text:
        cfg = apply_overrides(cfg, [("loss", rec["loss"])], list(net.outputs))
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
    for note in ds.notes:
        print(note, file=sys.stderr)
    split = "test" if user_file else args.split
    if not len(ds.split(split)):
        raise error("E032", f"the {split} split of `{ds.name}` is empty", None,
                    help="choose another with --split, or give a file with --data")
    m = evaluate(net, ck.weights, ds, split, cfg, kind_of(net, cfg.loss))
    what = (f"all {len(ds.test)} samples of {args.data}" if user_file else
            f"the {split} split, {len(ds.split(split))} samples")
    print(f"{ds.name}: {what}; weights of epoch {ck.state.get('epoch', '?')}")
    for k, v in m.items():
        print(f"{k} {v:.4f}")
    return 0


def _read_inputs(paths: list[str], shape: tuple[int, ...]):
    import numpy as np

    from netlang.train.data import IMAGE_SUFFIXES, _read_image

    arrays, files = [], []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise error("E032", f"no such input file: {p}", None)
        if path.suffix == ".npy":
            try:
                a = np.load(path, allow_pickle=False)
            except (ValueError, EOFError, OSError) as exc:
                raise error("E032", f"{p} is not a readable .npy file of numbers: "
                            f"{exc or 'empty file'}", None,
                            help="write it with numpy.save from a numeric array") from None
            if a.dtype.kind not in "fiub":
                raise error("E032", f"{p} holds {a.dtype} values; expected numbers", None)
            if not a.size:
                raise error("E032", f"{p} holds no values (shape {list(a.shape)})", None)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            a = _read_image(path, gray=shape[0] == 1)
        else:
            raise error("E032", f"cannot read {p}: expected .npy or an image file", None)
        a = a.astype(np.float32)
        if a.shape == shape:
            a = a[None]
        if a.shape[1:] != shape:
            raise error("E032", f"{p} is {fmt_shape(a.shape)}; the network takes "
                        f"{fmt_shape(shape)} per sample", None)
        if not np.isfinite(a).all():
            raise error("E032", f"{p} holds NaN or infinite values", None)
        arrays.append(a)
        files.append((path, len(a)))
    return np.concatenate(arrays), _unique_names(files)


def _unique_names(files: list[tuple[Path, int]]) -> list[str]:
    """One output name per sample: the file's stem, qualified by its folders when two
    inputs share a stem (a/x.npy, b/x.npy -> a_x, b_x), numbered within a file."""
    stems = [f.stem for f, _ in files]
    names: list[str] = []
    for f, count in files:
        base = f.stem
        if stems.count(base) > 1:
            base = "_".join(p for p in f.with_suffix("").parts[-3:] if p not in ("/", ".."))
        names += [base] if count == 1 else [f"{base}_{i}" for i in range(count)]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):   # anything still equal gets a counter
        if n in seen:
            seen[n] += 1
            names[i] = f"{n}-{seen[n]}"
        else:
            seen[n] = 1
    return names


def cmd_predict(args) -> int:
    import numpy as np

    from netlang.ops.elementwise import softmax

    net, ck = _load_recorded(args, args.weights)
    weights = ck.weights
    if len(net.inputs) != 1:
        raise error("E040", "predict feeds networks with one input", None)
    in_name, in_type = next(iter(net.inputs.items()))
    x, names = _read_inputs(args.inputs, in_type.shape)
    outs = net.forward(weights, {in_name: x})
    out_name, y = next(iter(outs.items()))
    last = net.graph.outputs[out_name].op
    if y.ndim == 2:
        probs = y if last in ("softmax", "sigmoid") else softmax(y, 1)
        for name, p in zip(names, probs):
            top = np.argsort(-p)[:3]
            print(f"{name}: class {top[0]} ({p[top[0]]:.3f}); "
                  + ", ".join(f"{c}: {p[c]:.3f}" for c in top[1:]))
        return 0
    out_dir = Path(args.output or "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    for name, img, pred in zip(names, x, y):
        mask = pred[0] >= 0.5 if pred.shape[0] == 1 else np.argmax(pred, axis=0) > 0
        gray = img.mean(axis=0)
        gray = (gray - gray.min()) / max(float(np.ptp(gray)), 1e-6)
        rgb = np.stack([gray] * 3, axis=-1)
        rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([1.0, 0.1, 0.1])
        Image.fromarray((rgb * 255).astype(np.uint8)).save(out_dir / f"{name}_overlay.png")
        np.save(out_dir / f"{name}_{out_name}.npy", pred)
        print(f"{name}: {int(mask.sum())} of {mask.size} pixels in the mask -> "
              f"{out_dir / (name + '_overlay.png')}")
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
    sp.add_argument("--after", choices=["fusion"], help="draw the compiled inference program "
                    "with each fused kernel as a cluster")
    sp.add_argument("--rankdir", choices=["TB", "LR", "BT", "RL"], default="TB",
                    help="direction of the diagram: TB top to bottom (default), LR left to "
                         "right (for tall networks)")
    sp.add_argument("--collapse", action="store_true",
                    help="draw each block instance as one node")
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
    sp.add_argument("--explain", choices=["fusion"], help="why pairs of ops were not fused")
    sp.add_argument("--no-fuse", action="store_true", help="one kernel per op (for bisecting)")
    sp.set_defaults(func=cmd_compile)

    def run_options(sp):
        sp.add_argument("--data", help="data set: `digits`, `shapes(size = 64)`, a .npz file, "
                        "`folder(images = \"...\", masks = \"...\")`")
        sp.add_argument("--loss", help='loss, e.g. "cross_entropy(logits, label)"')
        sp.add_argument("--opt", action="append", metavar="KEY=VALUE",
                        help="any train-section setting, e.g. --opt 'schedule=cosine' "
                             "(repeatable; the command line wins over the file)")

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
    sp.add_argument("--backend", default="numpy", choices=["numpy", "cuda", "cuda-emu"])
    sp.add_argument("--tf32", action="store_true", help="with --backend cuda: let cuBLAS GEMMs "
                    "use TF32 tensor cores (faster, 10-bit mantissa); off by default")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("eval", help="metrics of trained weights on a data set")
    common(sp)
    run_options(sp)
    sp.add_argument("--weights", required=True, help="a checkpoint or run folder")
    sp.add_argument("--split", choices=["test", "val", "train"], default="test",
                    help="which split of the run's data to score (default: test); a file "
                         "given with --data is scored whole")
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("predict", help="outputs for new inputs (.npy or images)")
    common(sp)
    sp.add_argument("--weights", required=True, help="a checkpoint or run folder")
    sp.add_argument("inputs", nargs="+", help=".npy files or images")
    sp.add_argument("-o", "--output", help="folder for mask overlays (segmentation)")
    sp.set_defaults(func=cmd_predict)
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
