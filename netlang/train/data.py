"""Data sets: the built-in `digits` and `shapes`, `.npz` files, and image folders.

A data set has three splits, each a dict of equal-length arrays named by role: `input`
and `target` for the built-ins and folders, or the network's own input and target names
for `.npz` files. Training selects on the validation split (early stopping, the best
checkpoint); the test split is scored once at the end of training and by `netlang eval`,
and never influences training. Splits are fixed: a shuffle with seed 0 (SPLIT_SEED) that
does not depend on the training `seed`, so runs with different seeds are compared on the
same samples. `bind` maps roles to the network's names and checks shapes, dtypes and
values before training starts.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np

from netlang.config import Call
from netlang.diagnostics import error
from netlang.ir.types import fmt_shape

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
SPLIT_SEED = 0
SPLITS = ("train", "val", "test")


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
    test: Split
    notes: list[str] = field(default_factory=list)   # what loading detected, for the log
    # targets fitted to the loss, per name, applied to each batch (after augmentation,
    # which sees the whole mask): (centre crop, read a 0/1 mask's channel as class indices)
    crops: dict[str, tuple[tuple[slice, ...], bool]] = field(default_factory=dict)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def crop(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.crops:
            return batch
        out = dict(batch)
        for k, (box, indices) in self.crops.items():
            v = out[k][(slice(None),) + box]
            out[k] = v[:, 0].astype(np.int64) if indices else np.ascontiguousarray(v)
        return out

    def batches(self, split: str, batch: int, order: np.ndarray | None = None
                ) -> Iterator[dict[str, np.ndarray]]:
        s = self.split(split)
        idx = np.arange(len(s)) if order is None else order
        for i in range(0, len(idx), batch):
            yield self.crop(s.take(idx[i:i + batch]))


def target_needs(prog) -> tuple[dict, dict]:
    """What a compiled program's loss reads, for `fit_targets`: (name -> type, and for the
    targets shrunk for smaller heads, name -> source)."""
    targets = prog.graph.targets
    return ({k: n.type for k, n in targets.items()},
            {k: n.attrs["resized_from"] for k, n in targets.items()
             if n.attrs.get("resized_from")})


def fit_targets(ds: DataSet, needs: dict, resized: dict | None = None) -> DataSet:
    """Centre-crop targets that are larger than the loss needs (`needs`: target name ->
    its TensorType), as for a valid-padding U-Net whose output is smaller than its input:
    the crop the network's own `crop` layer makes (the odd pixel off the far side). And a
    one-channel mask of 0s and 1s where the loss takes class indices (`cross_entropy` of a
    two-class output) is read as those indices. Only spatial axes shrink (a float target's
    first axis is its channels); anything else is left for the caller's shape check.
    `resized` (name -> source): the targets smaller heads read, which the program makes
    from their source per batch; the log says so once."""
    crops = dict(ds.crops)
    notes = list(ds.notes)
    for name, source in (resized or {}).items():
        how = "first pixel of each block" if needs[name].dtype == "int64" else "block means"
        note = (f"targets `{source}` shrunk to {fmt_shape(needs[name].shape)} for a smaller "
                f"head ({how})")
        if note not in notes:
            notes.append(note)
    for name, t in needs.items():
        if name in (resized or {}):
            continue
        arr = ds.train.arrays.get(name)
        if arr is None or name in crops:
            continue
        have, want = arr.shape[1:], tuple(t.shape)
        indices = (t.dtype == "int64" and arr.dtype.kind == "f" and len(have) == len(want) + 1
                   and have[0] == 1 and _binary(ds, name))
        if indices:
            have = have[1:]
        if len(have) != len(want) or (have == want and not indices):
            continue
        lead = 0 if t.dtype == "int64" else 1   # class-index targets are all spatial
        if have[:lead] != want[:lead] or any(h < w for h, w in zip(have, want)):
            continue
        box = tuple(slice(None) for _ in range(lead)) + tuple(
            slice((h - w) // 2, (h - w) // 2 + w) for h, w in zip(have[lead:], want[lead:]))
        if indices:
            box = (slice(None),) + box
        crops[name] = (box, indices)
        if indices:
            notes.append(f"targets `{name}`: one-channel 0/1 masks read as class indices")
        if have != want:
            notes.append(f"targets `{name}` cropped from {fmt_shape(have)} to "
                         f"{fmt_shape(want)} (centred) to fit the output")
    return DataSet(ds.name, ds.train, ds.val, ds.test, notes, crops)


def _binary(ds: DataSet, name: str) -> bool:
    """Whether every split's `name` holds only 0s and 1s."""
    for split in (ds.train, ds.val, ds.test):
        arr = split.arrays.get(name)
        if arr is not None and arr.size and not np.isin(arr, (0.0, 1.0)).all():
            return False
    return True


def split_arrays(arrays: dict[str, np.ndarray], val_fraction: float, test_fraction: float
                 ) -> tuple[Split, Split, Split]:
    """Shuffle once (SPLIT_SEED) and cut: test first, then validation from the rest.
    A positive fraction keeps at least one sample while two remain for training."""
    n = len(next(iter(arrays.values())))
    order = np.random.default_rng(SPLIT_SEED).permutation(n)

    def count(frac: float, of: int) -> int:
        if frac <= 0 or of < 2:
            return 0
        return min(max(1, int(round(of * frac))), of - 1)

    n_test = count(test_fraction, n)
    n_val = count(val_fraction, n - n_test)
    cuts = (order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:])

    def take(idx):
        return Split({k: v[idx] for k, v in arrays.items()})

    test, val, train = (take(c) for c in cuts)
    return train, val, test


def whole(name: str, arrays: dict[str, np.ndarray]) -> DataSet:
    """Every sample in the test split (what `netlang eval --data FILE` scores)."""
    empty = Split({k: v[:0] for k, v in arrays.items()})
    return DataSet(name, empty, empty, Split(arrays))


# -- built-in sets -----------------------------------------------------------------------

def digits(test_fraction: float = 0.2, val_fraction: float = 0.2) -> DataSet:
    """scikit-learn's 8x8 digits (bundled): pixels / 16, split train / validation / test."""
    raw = resources.files("netlang.train").joinpath("data/digits.csv.gz").read_bytes()
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",")
    images = (table[:, :64] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    train, val, test = split_arrays({"input": images, "target": labels}, val_fraction,
                                    test_fraction)
    return DataSet("digits", train, val, test)


def shapes(size: int = 64, count: int = 512, classes: int = 1, noise: float = 0.15,
           seed: int = 0, val_fraction: float = 0.2, test_fraction: float = 0.2,
           channels: int = 1) -> DataSet:
    """A generated segmentation set: ellipses, blobs and cell-like textured discs on a noisy,
    textured background; the mask marks the objects. `count` training samples; the
    validation and test sets (count * fraction samples each) are generated with other
    seeds. Deterministic in `seed`. `channels`: the grey image repeated (3 for an encoder
    pretrained on RGB images)."""
    if classes != 1:
        raise error("E032", "`shapes` generates one class (a binary mask)", None,
                    help="use `classes = 1` with a sigmoid output")
    if count < 1 or size < 1 or channels < 1:
        raise error("E032", f"`shapes` needs count, size and channels >= 1 (got count = "
                    f"{count}, size = {size}, channels = {channels})", None)

    def make(n: int, offset: int) -> Split:
        arrays = _make_shapes(size, n, noise, np.random.default_rng(seed + offset))
        if channels > 1:
            arrays["input"] = np.repeat(arrays["input"], channels, axis=1)
        return Split(arrays)

    n_val = max(1, int(round(count * val_fraction))) if val_fraction > 0 else 0
    n_test = max(1, int(round(count * test_fraction))) if test_fraction > 0 else 0
    return DataSet("shapes", make(count, 0), make(n_val, 100_003), make(n_test, 200_003))


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
        raise error("E032", f"no such data file: {path}", None,
                    notes=[f"looked for {p.resolve()}"])
    with open(p, "rb") as f:
        if f.read(4) != b"PK\x03\x04":   # every .npz is a zip archive
            raise error("E032", f"{path} is not a readable .npz file (not a zip archive)", None,
                        help="write it with numpy.savez or numpy.savez_compressed")
    try:
        with np.load(p, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as exc:
        if "pickle" not in str(exc).lower():
            raise error("E032", f"{path} is not a readable .npz file: {exc}", None) from None
        raise error("E032", f"{path} holds Python objects, which netlang never unpickles",
                    None, notes=[str(exc)],
                    help="save plain numeric arrays with np.savez") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise error("E032", f"{path} is not a readable .npz file (truncated or damaged: "
                    f"{exc})", None, help="write the file again with numpy.savez") from None
    if not arrays:
        raise error("E032", f"{path} holds no arrays", None,
                    help="name the arrays after the network's inputs and the loss's targets")
    for k, v in arrays.items():
        if v.ndim == 0:
            raise error("E032", f"`{k}` in {path} is a single number, not one value per "
                        "sample", None)
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise error("E032", f"arrays in {path} have different lengths: {lengths}", None)
    if next(iter(lengths.values())) == 0:
        raise error("E032", f"{path} holds no samples (its arrays are empty)", None)
    return arrays


def npz(path: str, val: str | None = None, test: str | None = None,
        val_fraction: float = 0.2, test_fraction: float = 0.2) -> DataSet:
    """Arrays named after the network's inputs and targets; validation and test data from
    the `val` and `test` files, or split off the training file."""
    arrays = _load_npz(path)
    train, val_s, test_s = split_arrays(arrays, 0 if val else val_fraction,
                                        0 if test else test_fraction)
    if val:
        val_s = Split(_load_npz(val))
    if test:
        test_s = Split(_load_npz(test))
    return DataSet(Path(path).stem, train, val_s, test_s)


def read_image(path: Path, gray: bool) -> np.ndarray:
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
        raise error("E032", f"no such folder: {folder}", None,
                    notes=[f"looked for {p.resolve()}"])
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise error("E032", f"no images in {folder}", None,
                    notes=["looked for " + ", ".join(IMAGE_SUFFIXES)])
    return files


def _read_mask(path: Path) -> tuple[np.ndarray, str]:
    """A mask's integer labels [H, W] and its mode ("P" for palette images)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("P", "L", "1", "I", "I;16"):
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError) as exc:
        raise error("E032", f"cannot read mask {path}: {exc}", None) from None
    return arr.astype(np.int64), mode


def _mask_targets(masks: list[np.ndarray], modes: set[str], folder: str
                  ) -> tuple[np.ndarray, str]:
    """Decode masks by their encoding: 0/1 or 0/255 binary masks become float [1, H, W]
    targets; palette images and small integer labels (0, 1, 2, ...) become class indices
    [H, W]. Returns the targets and a sentence saying what was detected."""
    values = np.unique(np.concatenate([np.unique(m) for m in masks]))
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    if values.max() == 0:
        raise error("E032", f"every mask in {folder} is empty (all pixels 0)", None,
                    help="masks mark objects with 1 or 255 (or class indices 1, 2, ...)")
    if "P" in modes or (values.max() < 32 and len(values) > 2):
        classes = int(values.max()) + 1
        return (np.stack(masks).astype(np.int64),
                f"masks in {folder}: class indices 0..{classes - 1} (values {shown})")
    if values.max() == 1:
        how = "0/1 binary masks"
        t = [m == 1 for m in masks]
    elif set(values.tolist()) <= {0, 255}:
        how = "0/255 binary masks"
        t = [m == 255 for m in masks]
    else:
        how = f"grey-level masks (values {shown}), thresholded at half the maximum"
        t = [m * 2 >= values.max() for m in masks]
    return np.stack(t)[:, None].astype(np.float32), f"masks in {folder}: {how}"


def _pairs(images: str, masks: str, gray: bool) -> tuple[dict[str, np.ndarray], str]:
    imgs, msks = _image_files(images), {f.stem: f for f in _image_files(masks)}
    missing = [f.name for f in imgs if f.stem not in msks]
    if missing:
        raise error("E032", f"{len(missing)} image(s) have no mask in {masks}: "
                    + ", ".join(missing[:3]), None,
                    help="masks are matched to images by file name (without extension)")
    xs = [read_image(f, gray) for f in imgs]
    read = [_read_mask(msks[f.stem]) for f in imgs]
    shapes_ = {x.shape for x in xs}
    if len(shapes_) > 1:
        raise error("E032", f"images in {images} have different sizes: "
                    + ", ".join(fmt_shape(s) for s in sorted(shapes_)[:3]), None,
                    help="resize them to one size first")
    for f, x, (m, _) in zip(imgs, xs, read):
        if m.shape != x.shape[1:]:
            raise error("E032", f"mask of {f.name} is {fmt_shape(m.shape)}, the image "
                        f"{fmt_shape(x.shape[1:])}", None)
    targets, note = _mask_targets([m for m, _ in read], {mode for _, mode in read}, masks)
    return {"input": np.stack(xs), "target": targets}, note


def folder(images: str, masks: str, val_images: str | None = None,
           val_masks: str | None = None, test_images: str | None = None,
           test_masks: str | None = None, gray: bool = True, val_fraction: float = 0.2,
           test_fraction: float = 0.2) -> DataSet:
    arrays, note = _pairs(images, masks, gray)
    notes = [note]
    train, val, test = split_arrays(arrays, 0 if val_images else val_fraction,
                                    0 if test_images else test_fraction)
    if val_images is not None:
        val_arrays, note = _pairs(val_images, val_masks or masks, gray)
        val, notes = Split(val_arrays), notes + [note]
    if test_images is not None:
        test_arrays, note = _pairs(test_images, test_masks or masks, gray)
        test, notes = Split(test_arrays), notes + [note]
    return DataSet(Path(images).name, train, val, test, notes)


def from_config(call: Call, val_split: float, test_split: float,
                whole_file: bool = False) -> DataSet:
    """The data set a `data = ...` setting names. `whole_file`: every sample of a user's
    file goes to the test split (`netlang eval --data FILE` scores all of it)."""
    args = dict(call.args)
    if call.name == "digits":
        return digits(args.get("test_fraction", test_split), val_split)
    if call.name == "shapes":
        return shapes(args.get("size", 64), args.get("count", 512), args.get("classes", 1),
                      args.get("noise", 0.15), args.get("seed", 0), val_split, test_split,
                      args.get("channels", 1))
    if call.name == "npz":
        if whole_file:
            return whole(Path(args["path"]).stem, _load_npz(args["path"]))
        return npz(args["path"], args.get("val"), args.get("test"), val_split, test_split)
    if call.name == "folder":
        if whole_file:
            arrays, note = _pairs(args["images"], args["masks"], args.get("gray", True))
            ds = whole(Path(args["images"]).name, arrays)
            ds.notes.append(note)
            return ds
        return folder(args["images"], args["masks"], args.get("val_images"),
                      args.get("val_masks"), args.get("test_images"), args.get("test_masks"),
                      args.get("gray", True), val_split, test_split)
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

    out = DataSet(ds.name, rename(ds.train), rename(ds.val), rename(ds.test), ds.notes)
    names_of = {"train": "training", "val": "validation", "test": "test"}
    for split_name in SPLITS:
        split, label = out.split(split_name), names_of[split_name]
        if not len(split) and not split.arrays:
            continue
        for name in names:
            if name not in split.arrays:
                raise error("E032", f"the {label} data has no `{name}`", None,
                            notes=["it has: " + ", ".join(split.arrays)],
                            help="name the arrays after the network's inputs and the loss's "
                                 "targets")
        for name, t in inputs.items():
            arr = split.arrays[name]
            if arr.shape[1:] != t.shape:
                raise error("E032", f"{label} `{name}` is {fmt_shape(arr.shape[1:])} per "
                            f"sample; network `{net.name}` takes {fmt_shape(t.shape)}", None,
                            help="change the input declaration or resize the data")
        for name in names:
            arr = split.arrays[name]
            if arr.dtype.kind not in "fiub":
                raise error("E032", f"{label} `{name}` has dtype {arr.dtype}; expected numbers",
                            None)
            if arr.dtype.kind == "f" and arr.size:
                bad = ~np.isfinite(arr)
                if bad.any():
                    first = int(np.argmax(bad.reshape(len(arr), -1).any(axis=1)))
                    raise error("E032", f"{label} `{name}` holds {int(bad.sum()):,} NaN or "
                                f"infinite values (the first in sample {first})", None,
                                help="clean the data (np.nan_to_num, or drop those samples) "
                                     "before training")
    return out
