"""`netlang import-onnx`: an ONNX model as readable `.net` source plus its weights
(netlang/interop/onnx_import.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from netlang.diagnostics import error


def cmd_import_onnx(args) -> int:
    from netlang import api
    from netlang.interop.onnx_import import import_model
    from netlang.train import checkpoint

    out = Path(args.output)
    wout = Path(args.weights_out) if args.weights_out else out.with_suffix(".safetensors")
    if out.suffix != ".net":
        raise error("E074", f"the source goes to a .net file, not {out}", None,
                    help=f"-o {out.with_suffix('.net')}")
    if out.resolve() == wout.resolve():
        raise error("E074", f"the source and the weights would both be written to {out}", None,
                    help="give --weights-out another name")
    existing = [p for p in (out, wout) if p.exists()]
    if existing and not args.force:
        raise error("E074", f"{existing[0]} exists; import-onnx does not write over files",
                    None, help="remove it, choose another -o, or pass --force")
    imp = import_model(args.model, network=args.name)
    net = api.loads(imp.source, file=str(out))
    # both files are complete before either is in place: a failure leaves no half import
    checkpoint.save(wout, checkpoint.Checkpoint(
        imp.weights, {}, {"weights_from": f"the weights of ONNX model {args.model}",
                          "network": net.name}))
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(imp.source)
    tmp.replace(out)
    print(f"wrote {out}: network {net.name}, {len(net.graph.nodes)} layers, "
          f"{net.param_count():,} parameters; weights {wout}")
    print("blocks: " + (", ".join(imp.blocks) if imp.blocks else
                        "none (no structure repeats)"))
    for note in imp.notes:
        print(f"note: {note}")
    diff = _check_against_onnxruntime(args.model, net, imp)
    if diff is not None:
        print(diff)
    print(f"use it: netlang summary {out}; netlang eval {out} --weights {wout} --data ...")
    return 0


def _check_against_onnxruntime(model: str, net, imp) -> str | None:
    """onnxruntime's and netlang's outputs on one random batch, when onnxruntime is here."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "not checked against onnxruntime (not installed: pip install onnxruntime)"
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((2, *shape)).astype(np.float32)
             for k, shape in imp.inputs.items()}
    try:
        sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        theirs = sess.run(None, feeds)
    except Exception as exc:   # a model onnxruntime cannot run: say so, the import stands
        print(f"note: onnxruntime could not run {model} ({str(exc).splitlines()[0]}); "
              "outputs not compared", file=sys.stderr)
        return None
    ours = net.forward(imp.weights, dict(zip(net.inputs, feeds.values())))
    worst = 0.0
    for name, t in zip(net.outputs, theirs):
        scale = max(1.0, float(np.abs(t).max()))
        worst = max(worst, float(np.abs(ours[name] - t).max()) / scale)
    verdict = "agree" if worst < 1e-4 else "DIFFER"
    return (f"checked against onnxruntime on a random batch of 2: outputs {verdict} "
            f"(largest difference {worst:.1e}, relative to the output's scale)")


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("import-onnx", help="write an ONNX model as .net source and weights")
    sp.add_argument("model", help="the .onnx file")
    sp.add_argument("-o", "--output", required=True, help="the .net file to write")
    sp.add_argument("--weights-out", metavar="FILE", help="where the weights go (default: "
                    "the .net file's name with .safetensors)")
    sp.add_argument("--name", help="the network's name (default: the model's graph name "
                    "or file name)")
    sp.add_argument("--force", action="store_true", help="write over existing files")
    sp.set_defaults(func=cmd_import_onnx)
