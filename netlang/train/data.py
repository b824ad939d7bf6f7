"""Data sets: the built-in `digits` and `shapes`, `.npz` files, and image folders.

A data set is a train split and a validation split, each a dict of equal-length arrays
named by role: `input` and `target` for the built-ins and folders, or the network's own
input and target names for `.npz` files. `bind` maps roles to the network's names and
checks shapes and dtypes before training starts.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np

from netlang.config import Call
from netlang.diagnostics import error
from netlang.ir.types import fmt_shape

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class Split:
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.arrays.items()}


@dataclass
class DataSet:
    name: str
    train: Split
    val: Split
    kind: str  # classification | segmentation | other

    def batches(self, split: str, batch: int, order: np.ndarray | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
        s = self.train if split == "train" else self.val
        idx = np.arange(len(s)) if order is None else order
        for i in range(0, len(idx), batch):
            yield s.take(idx[i:i + batch])


# -- built-in sets -----------------------------------------------------------------------

def digits(test_fraction: float = 0.2, seed: int = 0) -> DataSet:
    """scikit-learn's 8x8 digits (bundled): pixels / 16, a fixed shuffled split."""
    raw = resources.files("netlang.train").joinpath("data/digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",")
    images = (table[:, :64] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(len(labels) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return DataSet("digits", Split({"input": images[train], "target": labels[train]}),
                   Split({"input": images[test], "target": labels[test]}), "classification")


def shapes(size: int = 64, count: int = 512, classes: int = 1, noise: float = 0.15,
           seed: int = 0, val_fraction: float = 0.2) -> DataSet:
    """A generated segmentation set: ellipses, blobs and cell-like textured discs on a noisy,
    textured background; the mask marks the objects. Deterministic in `seed`."""
    n_val = max(1, int(round(count * val_fraction)))
    tr = _make_shapes(size, count, noise, np.random.default_rng(seed))
    va = _make_shapes(size, n_val, noise, np.random.default_rng(seed + 100_003))
    if classes != 1:
        raise error("E032", "`shapes` generates one class (a binary mask)", None,
                    help="use `classes = 1` with a sigmoid output")
    return DataSet("shapes", Split(tr), Split(va), "segmentation")


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bilinearly."""
    from scipy import ndimage

    coarse = rng.standard_normal((scale, scale))
    return ndimage.zoom(coarse, size / scale, order=1)[:size, :size]


def _make_shapes(size: int, count: int, noise: float, rng: np.random.Generator):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((count, 1, size, size), np.float32)
    masks = np.empty((count, 1, size, size), np.float32)
    for i in range(count):
        mask = np.zeros((size, size), bool)
        inside = np.zeros((size, size), np.float32)
        for _ in range(rng.integers(1, 5)):
            kind = rng.integers(0, 3)
            cy, cx = rng.uniform(0.15, 0.85, 2) * size
            ry, rx = rng.uniform(0.06, 0.2, 2) * size
            th = rng.uniform(0, np.pi)
            dy, dx = yy - cy, xx - cx
            u = (dx * np.cos(th) + dy * np.sin(th)) / rx
            v = (-dx * np.sin(th) + dy * np.cos(th)) / ry
            r = np.sqrt(u * u + v * v)
            if kind == 1:   # blob: a wobbly boundary
                ang = np.arctan2(v, u)
                r = r * (1 + 0.25 * np.sin(rng.integers(2, 6) * ang + rng.uniform(0, 6.28)))
            shape = r < 1
            if kind == 2:   # cell: a bright nucleus and a textured body
                inside += (r < 0.4) * 0.4
            mask |= shape
        texture = 0.15 * _smooth_noise(rng, size, 8)
        image = 0.25 + texture + mask * (0.45 + 0.1 * _smooth_noise(rng, size, 6)) + inside
        image += noise * rng.standard_normal((size, size))
        images[i, 0] = image
        masks[i, 0] = mask
    return {"input": images, "target": masks}


# -- user data ---------------------------------------------------------------------------

def _load_npz(path: str) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise error("E032", f"no such data file: {path}", None)
    with open(p, "rb") as f:
        if f.read(4) != b"PK\x03\x04":   # every .npz is a zip archive
            raise error("E032", f"{path} is not a readable .npz file (not a zip archive)", None,
                        help="write it with numpy.savez or numpy.savez_compressed")
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as exc:
        raise error("E032", f"{path} holds Python objects, which netlang never unpickles",
                    None, notes=[str(exc)],
                    help="save plain numeric arrays with np.savez") from None
    except (OSError, EOFError) as exc:
        raise error("E032", f"{path} is not a readable .npz file: {exc}", None) from None


def npz(path: str, val: str | None = None, val_fraction: float = 0.2, seed: int = 0) -> DataSet:
    """Arrays named after the network's inputs and targets; validation from `val` or a
    shuffled fraction."""
    arrays = _load_npz(path)
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise error("E032", f"arrays in {path} have different lengths: {lengths}", None)
    if val is not None:
        return DataSet(Path(path).stem, Split(arrays), Split(_load_npz(val)), "other")
    n = next(iter(lengths.values()))
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return DataSet(Path(path).stem, Split({a: v[order[k:]] for a, v in arrays.items()}),
                   Split({a: v[order[:k]] for a, v in arrays.items()}), "other")


def _read_image(path: Path, gray: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if gray else "RGB")
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise error("E032", f"cannot read image {path}: {exc}", None) from None
    return arr[None] if gray else arr.transpose(2, 0, 1)


def _image_files(folder: str) -> list[Path]:
    p = Path(folder)
    if not p.is_dir():
        raise error("E032", f"no such folder: {folder}", None)
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise error("E032", f"no images in {folder}", None,
                    notes=["looked for " + ", ".join(IMAGE_SUFFIXES)])
    return files


def _pairs(images: str, masks: str, gray: bool) -> dict[str, np.ndarray]:
    imgs, msks = _image_files(images), {f.stem: f for f in _image_files(masks)}
    missing = [f.name for f in imgs if f.stem not in msks]
    if missing:
        raise error("E032", f"{len(missing)} image(s) have no mask in {masks}: "
                    + ", ".join(missing[:3]), None,
                    help="masks are matched to images by file name (without extension)")
    xs = [_read_image(f, gray) for f in imgs]
    ys = [(_read_image(msks[f.stem], True) > 0.5).astype(np.float32) for f in imgs]
    shapes_ = {x.shape for x in xs}
    if len(shapes_) > 1:
        raise error("E032", f"images in {images} have different sizes: "
                    + ", ".join(fmt_shape(s) for s in sorted(shapes_)[:3]), None,
                    help="resize them to one size first")
    return {"input": np.stack(xs), "target": np.stack(ys)}


def folder(images: str, masks: str, val_images: str | None = None,
           val_masks: str | None = None, gray: bool = True, val_fraction: float = 0.2,
           seed: int = 0) -> DataSet:
    train = _pairs(images, masks, gray)
    if val_images is not None:
        return DataSet(Path(images).name, Split(train),
                       Split(_pairs(val_images, val_masks or masks, gray)), "segmentation")
    n = len(train["input"])
    order = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return DataSet(Path(images).name, Split({a: v[order[k:]] for a, v in train.items()}),
                   Split({a: v[order[:k]] for a, v in train.items()}), "segmentation")


def from_config(call: Call, val_split: float, seed: int) -> DataSet:
    args = dict(call.args)
    if call.name == "digits":
        return digits(args.get("test_fraction", 0.2))
    if call.name == "shapes":
        return shapes(args.get("size", 64), args.get("count", 512), args.get("classes", 1),
                      args.get("noise", 0.15), args.get("seed", seed), val_split or 0.2)
    if call.name == "npz":
        return npz(args["path"], args.get("val"), val_split, seed)
    if call.name == "folder":
        return folder(args["images"], args["masks"], args.get("val_images"),
                      args.get("val_masks"), args.get("gray", True), val_split, seed)
    raise AssertionError(call.name)


def bind(ds: DataSet, net, targets: list[str]) -> DataSet:
    """Rename roles to the network's input and target names, and check every array."""
    inputs = dict(net.inputs)
    names = list(inputs) + targets

    def rename(split: Split) -> Split:
        arr = dict(split.arrays)
        if "input" in arr and len(inputs) == 1 and "input" not in names:
            arr[next(iter(inputs))] = arr.pop("input")
        if "target" in arr and len(targets) == 1 and "target" not in names:
            arr[targets[0]] = arr.pop("target")
        return Split(arr)

    out = DataSet(ds.name, rename(ds.train), rename(ds.val), ds.kind)
    for split_name, split in (("training", out.train), ("validation", out.val)):
        for name in names:
            if name not in split.arrays:
                raise error("E032", f"the {split_name} data has no `{name}`", None,
                            notes=["it has: " + ", ".join(split.arrays)],
                            help="name the arrays after the network's inputs and the loss's "
                                 "targets")
        for name, t in inputs.items():
            arr = split.arrays[name]
            if arr.shape[1:] != t.shape:
                raise error("E032", f"{split_name} `{name}` is {fmt_shape(arr.shape[1:])} per "
                            f"sample; network `{net.name}` takes {fmt_shape(t.shape)}", None,
                            help="change the input declaration or resize the data")
            if arr.dtype.kind not in "fiub":
                raise error("E032", f"{split_name} `{name}` has dtype {arr.dtype}", None)
    return out
