"""`netlang predict`: outputs for new inputs (.npy files or images)."""

from __future__ import annotations

import sys
from pathlib import Path

from netlang.cli.common import backend_options, load_recorded, map_option, pick_backend
from netlang.diagnostics import error
from netlang.ir.types import fmt_shape


def _read_inputs(paths: list[str], shape: tuple[int, ...]):
    import numpy as np

    from netlang.train.data import IMAGE_SUFFIXES, read_image

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
            a = read_image(path, gray=shape[0] == 1)
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

    net, ck = load_recorded(args, args.weights)
    weights = ck.weights
    if len(net.inputs) != 1:
        raise error("E040", "predict feeds networks with one input", None)
    in_name, in_type = next(iter(net.inputs.items()))
    x, names = _read_inputs(args.inputs, in_type.shape)
    backend = pick_backend(args, sys.stderr)
    outs = net.forward(weights, {in_name: x}, backend=backend)
    out_name, y = next(iter(outs.items()))
    if y.ndim == 2:
        probs = net.probabilities(out_name, y)
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


def add_parser(sub, common, run_options) -> None:
    sp = sub.add_parser("predict", help="outputs for new inputs (.npy or images)")
    common(sp)
    sp.add_argument("--weights", required=True, help="a checkpoint, a run folder, or PyTorch "
                    "weights (a state_dict as .safetensors)")
    map_option(sp)
    sp.add_argument("inputs", nargs="+", help=".npy files or images")
    sp.add_argument("-o", "--output", help="folder for mask overlays (segmentation)")
    backend_options(sp, "the network")
    sp.set_defaults(func=cmd_predict)
