"""Augmentation on the CPU, applied identically to an image and its mask.

Each transform draws its parameters from a generator seeded by (seed, epoch, step), so a
run, and a resumed run, see the same augmented batches. Masks are resampled with nearest
neighbours (order 0), images with linear interpolation, both with scipy.ndimage.
"""

from __future__ import annotations

import numpy as np

from netlang.config import Call


def apply(calls: tuple[Call, ...], batch: dict[str, np.ndarray], image_keys: list[str],
          mask_keys: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Augment a batch: every sample gets its own random transform, shared by its image
    and mask arrays. Classification targets (no spatial axes) pass through."""
    if not calls:
        return batch
    from scipy import ndimage

    out = {k: v.copy() for k, v in batch.items()}
    n = len(next(iter(batch.values())))
    for i in range(n):
        for call in calls:
            a = dict(call.args)
            keys = [(k, 1) for k in image_keys] + [(k, 0) for k in mask_keys
                                                   if out[k].ndim >= 3]
            if call.name == "flip":
                axes = []
                if a.get("horizontal", True) and rng.random() < 0.5:
                    axes.append(-1)
                if a.get("vertical", True) and rng.random() < 0.5:
                    axes.append(-2)
                for k, _ in keys:
                    for ax in axes:
                        out[k][i] = np.flip(out[k][i], axis=ax)
            elif call.name == "rotate":
                angle = rng.uniform(-a.get("degrees", 15.0), a.get("degrees", 15.0))
                for k, order in keys:
                    out[k][i] = ndimage.rotate(out[k][i], angle, axes=(-1, -2), reshape=False,
                                               order=order, mode="reflect")
            elif call.name in ("scale", "translate", "elastic"):
                size = out[image_keys[0]][i].shape[-2:]
                coords = _coords(call.name, a, size, rng)
                for k, order in keys:
                    arr = out[k][i]
                    planes = arr[None] if arr.ndim == 2 else arr   # class-index masks [H, W]
                    for c in range(planes.shape[0]):
                        planes[c] = ndimage.map_coordinates(planes[c], coords, order=order,
                                                            mode="reflect")
    return out


def _coords(name: str, a: dict, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    h, w = size
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                         indexing="ij")
    if name == "scale":
        s = rng.uniform(a.get("min", 0.9), a.get("max", 1.1))
        cy, cx = (h - 1) / 2, (w - 1) / 2
        return np.stack([(yy - cy) / s + cy, (xx - cx) / s + cx])
    if name == "translate":
        f = a.get("fraction", 0.1)
        return np.stack([yy + rng.uniform(-f, f) * h, xx + rng.uniform(-f, f) * w])
    # Elastic deformation (Simard et al., 2003): smoothed random displacement fields.
    alpha, sigma = a.get("alpha", 34.0), a.get("sigma", 4.0)
    dy = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
    dx = ndimage.gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma) * alpha
    return np.stack([yy + dy, xx + dx])
