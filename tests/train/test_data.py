"""Data sets: built-ins, .npz files, image folders, and the checks against a network."""

from __future__ import annotations

import numpy as np
import pytest

import netlang
from netlang.diagnostics import NetlangError
from netlang.train import data
from netlang.config import Call
from tests.conftest import EXAMPLES


def test_digits_is_bundled_and_split_three_ways_deterministically():
    a, b = data.digits(), data.digits()
    assert (len(a.train), len(a.val), len(a.test)) == (1150, 288, 359)
    x = a.train.arrays["input"]
    assert x.shape[1:] == (1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    for split in data.SPLITS:
        assert np.array_equal(a.split(split).arrays["target"], b.split(split).arrays["target"])
    assert set(np.unique(a.train.arrays["target"])) == set(range(10))
    # The splits are disjoint: no test image is also a training or validation image.
    rows = {split: {r.tobytes() for r in a.split(split).arrays["input"]}
            for split in data.SPLITS}
    assert not rows["test"] & (rows["train"] | rows["val"])
    # The test split does not move with the validation fraction.
    c = data.digits(val_fraction=0.1)
    assert np.array_equal(c.test.arrays["input"], a.test.arrays["input"])
    assert (len(c.train), len(c.val)) == (1294, 144)


def test_shapes_is_deterministic_and_learnable_looking():
    a, b = data.shapes(32, 20, seed=3), data.shapes(32, 20, seed=3)
    assert np.array_equal(a.train.arrays["input"], b.train.arrays["input"])
    m = a.train.arrays["target"]
    assert set(np.unique(m)) == {0.0, 1.0} and 0.02 < m.mean() < 0.6
    img = a.train.arrays["input"]
    assert img[m == 1].mean() > img[m == 0].mean() + 0.3   # objects are brighter
    assert not np.array_equal(a.train.arrays["input"][0], data.shapes(32, 20, seed=4)
                              .train.arrays["input"][0])


def test_npz_roundtrip_and_binding(tmp_path):
    net = netlang.load(EXAMPLES / "lenet_digits.net")
    p = tmp_path / "d.npz"
    np.savez(p, image=np.zeros((10, 1, 8, 8), np.float32), label=np.arange(10) % 10)
    ds = data.bind(data.npz(str(p)), net, ["label"])
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 2)
    whole = data.from_config(Call("npz", (("path", str(p)),)), 0.2, 0.2, whole_file=True)
    assert len(whole.test) == 10 and len(whole.train) == 0


@pytest.mark.parametrize("arrays,text", [
    ({"image": np.zeros((4, 1, 8, 8)), "label": np.zeros(3)}, "different lengths"),
    ({"image": np.zeros((4, 1, 9, 9)), "label": np.zeros(4)}, "takes [1, 8, 8]"),
    ({"picture": np.zeros((4, 1, 8, 8)), "label": np.zeros(4)}, "has no `image`"),
    ({"image": np.array([None] * 4, dtype=object), "label": np.zeros(4)}, "unpickles"),
    ({"image": np.zeros((0, 1, 8, 8)), "label": np.zeros(0)}, "holds no samples"),
    ({"image": np.full((4, 1, 8, 8), np.nan), "label": np.zeros(4)}, "NaN or infinite"),
    ({"image": np.full((4, 1, 8, 8), "a"), "label": np.zeros(4)}, "expected numbers"),
])
def test_bad_npz_files_are_clear_errors(tmp_path, arrays, text):
    net = netlang.load(EXAMPLES / "lenet_digits.net")
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(NetlangError) as ei:
        data.bind(data.npz(str(p)), net, ["label"])
    assert ei.value.diagnostics[0].code == "E032" and text in str(ei.value)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(NetlangError, match="no such data file"):
        data.npz(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(NetlangError, match="not a readable .npz"):
        data.npz(str(tmp_path / "junk.npz"))
    good = tmp_path / "good.npz"
    np.savez(good, image=np.zeros((100, 1, 8, 8)), label=np.zeros(100))
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:1000])
    with pytest.raises(NetlangError, match="truncated or damaged"):
        data.npz(str(tmp_path / "cut.npz"))


def _folder(tmp_path, mask_values, n=5):
    from PIL import Image

    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "msk").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(
            tmp_path / "img" / f"{i}.png")
        m = rng.choice(mask_values, size=(16, 16)).astype(np.uint8)
        Image.fromarray(m).save(tmp_path / "msk" / f"{i}.png")
    return str(tmp_path / "img"), str(tmp_path / "msk")


@pytest.mark.parametrize("values,detected", [
    ([0, 1], "0/1 binary masks"),
    ([0, 255], "0/255 binary masks"),
    ([0, 1, 2], "class indices 0..2"),
    ([0, 100, 200], "grey-level masks"),
])
def test_mask_encodings_are_detected_and_said(tmp_path, values, detected):
    ds = data.folder(*_folder(tmp_path, values))
    assert any(detected in n for n in ds.notes), ds.notes
    t = ds.train.arrays["target"]
    if "class indices" in detected:
        assert t.dtype == np.int64 and t.shape[1:] == (16, 16) and t.max() == 2
    else:   # binary: the foreground survives (0/1 masks used to become all zero)
        assert t.shape[1:] == (1, 16, 16) and set(np.unique(t)) == {0.0, 1.0}


def test_empty_mask_set_is_an_error(tmp_path):
    with pytest.raises(NetlangError, match="every mask in .* is empty"):
        data.folder(*_folder(tmp_path, [0]))


def test_image_folders(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).save(
            tmp_path / "img" / f"{i}.png")
        Image.fromarray(((rng.random((16, 16)) > 0.5) * 255).astype(np.uint8)).save(
            tmp_path / "msk" / f"{i}.png")
    ds = data.folder(str(tmp_path / "img"), str(tmp_path / "msk"))
    assert ds.train.arrays["input"].shape == (3, 1, 16, 16)
    assert set(np.unique(ds.train.arrays["target"])) <= {0.0, 1.0}
    (tmp_path / "msk" / "4.png").unlink()
    with pytest.raises(NetlangError, match="1 image\\(s\\) have no mask"):
        data.folder(str(tmp_path / "img"), str(tmp_path / "msk"))
