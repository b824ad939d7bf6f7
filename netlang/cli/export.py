"""`netlang export`: the inference graph as an ONNX model (netlang/interop/onnx_export.py)."""

from __future__ import annotations

from pathlib import Path

from netlang.cli.common import load, load_recorded, map_option, print_warnings, weights_label


def cmd_export(args) -> int:
    from netlang.interop.onnx_export import OPSET, export_model

    if args.weights:
        net, ck = load_recorded(args, args.weights)
        weights = ck.weights
        where = weights_label(ck, args.weights)
    else:
        net = load(args)
        weights = net.init(0)
        where = "the network's initial weights (init seed 0: no --weights given)"
    print_warnings(net)
    ex = export_model(net, weights, opset=args.opset or OPSET,
                      fold_batchnorm=args.fold_batchnorm)
    out = Path(args.output)
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(ex.model.SerializeToString())
    g = ex.model.graph
    print(f"wrote {out}: {net.name}, opset {ex.model.opset_import[0].version}, "
          f"{len(g.node)} nodes, {len(g.initializer)} initializers; {where}")
    def dims(v) -> str:
        return ", ".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)

    for note in ex.notes:
        print(f"note: {note}")
    print("inputs: " + ", ".join(f"{i.name} [{dims(i)}]" for i in g.input) + "; outputs: "
          + ", ".join(f"{o.name} [{dims(o)}]" for o in g.output))
    return 0


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("export", help="write the inference graph as an ONNX model")
    common(sp)
    sp.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    sp.add_argument("--weights", help="a checkpoint, a run folder, or PyTorch weights (a "
                    "state_dict as .safetensors) (default: the initial weights, init seed 0)")
    map_option(sp)
    sp.add_argument("--opset", type=int, help="ONNX opset (default 17; 13 or newer)")
    sp.add_argument("--fold-batchnorm", action="store_true", help="fold each batchnorm into "
                    "the convolution or dense layer before it (default: BatchNormalization "
                    "nodes)")
    sp.set_defaults(func=cmd_export)
