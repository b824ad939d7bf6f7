"""Bad input through the command line, table-driven: every case exits with its status and
error code, and none shows a Python traceback or reports success on nonsense.

Each row: an id, a function that prepares files and returns the argv, the exit status,
and the text the output must contain (the error code first).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from netlang.cli import main
from tests.conftest import EXAMPLES

DIGITS = str(EXAMPLES / "lenet_digits.net")
NET = "network n {{\n    input x: [1, 8]\n    output y = x -> {layer}\n}}\n"


def net(tmp: Path, layer: str, name: str = "n.net") -> str:
    f = tmp / name
    f.write_text(NET.format(layer=layer), encoding="utf-8")
    return str(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A short digits run, trained with a --set value, to evaluate and predict with."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", DIGITS, "--set", "width=2", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    return out


def _npz(path: Path, n: int, nan: bool = False) -> str:
    x = np.zeros((n, 1, 8, 8), np.float32)
    if nan:
        x[n // 2, 0, 3, 3] = np.nan
    np.savez(path, image=x, label=np.arange(n) % 10)
    return str(path)


def _truncated(tmp: Path) -> str:
    good = Path(_npz(tmp / "good.npz", 100))
    (tmp / "t.npz").write_bytes(good.read_bytes()[:1000])
    return str(tmp / "t.npz")


def _deep_blocks(tmp: Path) -> str:
    text = "\n".join(f"block b{i}(c) {{ b{i + 1}(c) }}" for i in range(500))
    text += "\nblock b500(c) { relu }\n" + NET.format(layer="b0(1)")
    (tmp / "deep.net").write_text(text)
    return str(tmp / "deep.net")


def _nan_checkpoint(tmp: Path, run: Path) -> str:
    """A copy of the run's best checkpoint whose tensors are all NaN."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    good = str(run / "best.safetensors")
    with safe_open(good, framework="numpy") as f:
        meta = f.metadata()
    bad = tmp / "nan.safetensors"
    save_file({k: np.full_like(v, np.nan) for k, v in load_file(good).items()}, str(bad),
              metadata=meta)
    return str(bad)


def _no_train_section(tmp: Path) -> str:
    return net(tmp, "flatten -> dense(3)")


def _import_passwd(tmp: Path) -> str:
    (tmp / "imp.net").write_text('import "/etc/passwd"\n' + NET.format(layer="relu"))
    return str(tmp / "imp.net")


def _killed_before_checkpoint(tmp: Path) -> str:
    (tmp / "killed").mkdir()
    (tmp / "killed" / "config.json").write_text("{}")
    return str(tmp / "killed")


CASES = [
    # (id, argv builder (tmp, run) -> argv, exit status, expected texts)
    ("dump-after-all", lambda t, r: ["compile", str(EXAMPLES / "lenet5.net"),
                                     "--dump-after", "all"], 0, ["# after fusion"]),
    ("dump-after-autodiff-without-train",
     lambda t, r: ["compile", str(EXAMPLES / "lenet5.net"), "--dump-after", "autodiff"],
     1, ["E006", "--train"]),
    ("compile-train-without-loss", lambda t, r: ["compile", _no_train_section(t), "--train"],
     1, ["E030", "--loss"]),
    ("empty-npy", lambda t, r: ["predict", DIGITS, "--weights", str(r),
                                _write(t / "e.npy", b"")], 1, ["E032", "e.npy"]),
    ("string-npy", lambda t, r: ["predict", DIGITS, "--weights", str(r),
                                 _save(t / "s.npy", np.full((1, 8, 8), "a"))],
     1, ["E032", "expected numbers"]),
    ("truncated-npz", lambda t, r: ["train", DIGITS, "--data", _truncated(t), "--out",
                                    str(t / "o")], 1, ["E032", "truncated or damaged"]),
    ("infinite-literal", lambda t, r: ["check", net(t, "conv(1e309, 3)")], 1,
     ["E026", "1e309"]),
    ("nested-parentheses", lambda t, r: ["check", net(t, "(" * 500 + "relu" + ")" * 500)], 1,
     ["E007", "100 levels"]),
    ("nested-blocks", lambda t, r: ["check", _deep_blocks(t)], 1, ["E007", "50 levels"]),
    ("huge-file", lambda t, r: ["check", net(t, "conv(" + " + ".join(["1"] * 400_000)
                                         + ", 3)")], 1, ["E007", "up to 1 MB"]),
    ("absurd-size", lambda t, r: ["check", net(t, "conv(99999999999, 3)")], 1,
     ["E029", "the limit is 2,147,483,648"]),
    ("byte-order-mark", lambda t, r: ["check", _write(t / "bom.net", b"\xef\xbb\xbf" +
                                                      NET.format(layer="relu").encode())],
     0, ["ok: network n"]),
    ("empty-data", lambda t, r: ["train", DIGITS, "--data", _npz(t / "z.npz", 0), "--out",
                                 str(t / "o")], 1, ["E032", "no samples"]),
    ("one-sample", lambda t, r: ["train", DIGITS, "--data", _npz(t / "one.npz", 1), "--out",
                                 str(t / "o")], 1, ["E032", "validation split"]),
    ("nan-in-data", lambda t, r: ["train", DIGITS, "--data", _npz(t / "nan.npz", 20, True),
                                  "--out", str(t / "o")], 1, ["E032", "NaN"]),
    ("negative-lr", lambda t, r: ["train", DIGITS, "--lr", "-1", "--out", str(t / "o")], 1,
     ["E030", "`lr` must be a positive"]),
    ("nan-lr", lambda t, r: ["train", DIGITS, "--lr", "nan", "--out", str(t / "o")], 1,
     ["E030", "`lr` must be a finite number"]),
    ("inf-lr", lambda t, r: ["train", DIGITS, "--lr", "inf", "--out", str(t / "o")], 1,
     ["E030", "`lr` must be a finite number"]),
    ("nan-checkpoint", lambda t, r: ["eval", DIGITS, "--weights", _nan_checkpoint(t, r)], 1,
     ["E050", "NaN or infinite weights"]),
    ("other-set-than-trained", lambda t, r: ["eval", DIGITS, "--weights", str(r), "--set",
                                             "width=4"], 1, ["E051", "width=2 (given 4)"]),
    ("existing-run-folder", lambda t, r: ["train", DIGITS, "--out", str(r)], 1,
     ["E055", "--overwrite"]),
    ("resume-before-first-checkpoint",
     lambda t, r: ["train", DIGITS, "--resume", _killed_before_checkpoint(t)], 1,
     ["E050", "before its first checkpoint"]),
    ("import-non-net-file", lambda t, r: ["check", _import_passwd(t)], 1,
     ["E003", "only `.net` files"]),
    ("negative-pad-in-list", lambda t, r: ["check", net(t, "conv(1, 3, pad=[-1, 2])")], 1,
     ["E012", "must not be negative"]),
    ("upsample-to-nothing", lambda t, r: ["check", net(t, "upsample(0.1)")], 1,
     ["E021", "floors to 0"]),
    ("pool-window-in-padding", lambda t, r: ["check", net(t, "maxpool(2, stride=1, pad=1, "
                                                          "dilation=9)")], 1,
     ["E021", "entirely in the padding"]),
    ("dropout-after-softmax", lambda t, r: ["check", _write(
        t / "sd.net", (NET.format(layer="flatten -> dense(3) -> softmax -> dropout(0.5)") +
                       "train { loss = cross_entropy(y, t) data = digits }").encode())], 1,
     ["E033", "through dropout"]),
]


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _save(path: Path, a: np.ndarray) -> str:
    np.save(path, a)
    return str(path)


@pytest.mark.parametrize("build,status,texts", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_diagnostic(tmp_path, run, capsys, build, status, texts):
    argv = build(tmp_path, run)
    assert main(argv) == status
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    for t in texts:
        assert t in text, text
    if status:
        assert f"error[{texts[0]}]" in out.err, out.err


def test_viz_without_dot_says_no_picture_was_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["viz", str(EXAMPLES / "lenet5.net"), "-o", str(tmp_path / "n.png")]) == 1
    err = capsys.readouterr().err
    assert "error[E005]" in err and "n.png was not written" in err
    assert (tmp_path / "n.dot").exists() and not (tmp_path / "n.png").exists()


def test_viz_collapse_and_rankdir(tmp_path, capsys):
    assert main(["viz", str(EXAMPLES / "attention_unet.net"), "-o", str(tmp_path / "a.dot"),
                 "--collapse", "--rankdir", "LR"]) == 0
    dot = (tmp_path / "a.dot").read_text()
    full = tmp_path / "b.dot"
    assert main(["viz", str(EXAMPLES / "attention_unet.net"), "-o", str(full)]) == 0
    assert "rankdir=LR" in dot and dot.count("->") < full.read_text().count("->") / 2


def test_eval_uses_the_runs_settings_and_scores_the_test_split(run, capsys):
    assert main(["eval", DIGITS, "--weights", str(run)]) == 0
    out = capsys.readouterr()
    assert "using the run's settings: --set width=2" in out.err
    assert "digits: the test split, 359 samples" in out.out and "accuracy" in out.out


def test_eval_scores_a_whole_file(tmp_path, run, capsys):
    data = _npz(tmp_path / "other.npz", 100)
    assert main(["eval", DIGITS, "--weights", str(run), "--data", data]) == 0
    assert "all 100 samples of" in capsys.readouterr().out


def test_predict_outputs_never_overwrite_each_other(tmp_path, capsys):
    from netlang.cli.predict import _unique_names

    names = _unique_names([(Path("a/x.npy"), 1), (Path("b/x.npy"), 1), (Path("c/y.npy"), 2)])
    assert names == ["a_x", "b_x", "y_0", "y_1"]
    seg = tmp_path / "seg"
    assert main(["train", str(EXAMPLES / "unet_shapes.net"), "--set", "base=2", "--set",
                 "size=16", "--data", "shapes(size = 16, count = 8)", "--epochs", "1",
                 "--out", str(seg), "--no-progress"]) == 0
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "x.npy", np.random.rand(1, 16, 16).astype(np.float32))
    assert main(["predict", str(EXAMPLES / "unet_shapes.net"), "--weights", str(seg),
                 str(tmp_path / "a" / "x.npy"), str(tmp_path / "b" / "x.npy"), "-o",
                 str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len([w for w in written if w.endswith("_overlay.png")]) == 2, written


def test_data_paths_in_a_file_are_relative_to_the_file(tmp_path, capsys, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    _npz(proj / "d.npz", 30)
    src = (EXAMPLES / "lenet_digits.net").read_text().replace("data = digits",
                                                             'data = npz(path = "d.npz")')
    (proj / "m.net").write_text(src)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "proj/m.net", "--epochs", "1", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 0
    (proj / "m.net").write_text(src.replace("d.npz", "missing.npz"))
    assert main(["train", "proj/m.net", "--epochs", "1", "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "no such data file" in err and f"looked for {proj / 'missing.npz'}" in err
