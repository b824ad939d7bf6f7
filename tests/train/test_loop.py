"""The training loop: acceptance on the built-in sets, resume equality, checkpoints that
survive crashes, the NaN guard, early stopping, signals, and parity with PyTorch."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import netlang
from netlang.config import Call, apply_overrides
from netlang.diagnostics import NetlangError
from netlang.train import checkpoint
from netlang.train.loop import Trainer, TrainingStopped
from tests.conftest import EXAMPLES, ROOT


def digits_net():
    return netlang.load(EXAMPLES / "lenet_digits.net", params={"width": 4})


def quiet(*a, **k):
    pass


def small_cfg(net, **changes):
    cfg = apply_overrides(net.train, [("epochs", "2"), ("batch", "64")], list(net.outputs))
    return dataclasses.replace(cfg, **changes)


def test_digits_reaches_97_percent_on_the_test_split(tmp_path):
    net = netlang.load(EXAMPLES / "lenet_digits.net")
    result = Trainer(net, net.train, tmp_path, progress=False, log=quiet).run()
    assert result.test["accuracy"] >= 0.97, result.test
    saved = json.loads((tmp_path / "test.json").read_text())
    assert saved["samples"] == 359 and saved["accuracy"] == result.test["accuracy"]


@pytest.mark.slow
def test_unet_learns_shapes(tmp_path):
    net = netlang.load(EXAMPLES / "unet_shapes.net")
    cfg = apply_overrides(net.train, [("data", "shapes(size = 64, count = 256)"),
                                      ("epochs", "6")], list(net.outputs))
    result = Trainer(net, cfg, tmp_path, progress=False, log=quiet).run()
    assert result.best["val_dice"] >= 0.90, result.best
    assert result.test["dice"] >= 0.88, result.test


def test_resume_continues_exactly(tmp_path):
    net = digits_net()
    cfg = small_cfg(net, augment=())
    full = Trainer(net, cfg, tmp_path / "full", progress=False, log=quiet).run()
    # Interrupted in the middle of epoch 1 (after 7 of 23 steps), then resumed.
    part = Trainer(net, cfg, tmp_path / "part", progress=False, log=quiet,
                   stop_after_steps=7).run()
    assert part.reason.startswith("interrupted") and part.history == []
    resumed = Trainer(net, cfg, tmp_path / "part", resume=tmp_path / "part", progress=False,
                      log=quiet).run()
    assert len(resumed.history) == len(full.history) == 2
    for a, b in zip(resumed.history, full.history):
        for k in a:
            if k != "seconds":
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    for k in full.weights:
        np.testing.assert_allclose(resumed.weights[k], full.weights[k], rtol=1e-5, atol=1e-7)


def test_resume_refuses_another_model(tmp_path):
    net = digits_net()
    Trainer(net, small_cfg(net, epochs=1), tmp_path, progress=False, log=quiet).run()
    other = netlang.load(EXAMPLES / "lenet_digits.net", params={"width": 8})
    with pytest.raises(NetlangError) as ei:
        Trainer(other, small_cfg(other), tmp_path / "b", resume=tmp_path, progress=False,
                log=quiet).run()
    text = ei.value.render()
    assert "E051" in text and "belongs to another model" in text and "different shapes" in text


def test_checkpoint_survives_a_crash_while_saving(tmp_path, monkeypatch):
    net = digits_net()
    Trainer(net, small_cfg(net, epochs=1), tmp_path, progress=False, log=quiet).run()
    before = checkpoint.load(tmp_path)
    import safetensors.numpy as stn

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial write")
        raise OSError("disk on fire")

    monkeypatch.setattr(stn, "save_file", crash)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "last.safetensors",
                        checkpoint.Checkpoint(before.weights, {}, {"x": 1}))
    after = checkpoint.load(tmp_path)
    assert after.state == before.state
    assert all(np.array_equal(after.weights[k], before.weights[k]) for k in before.weights)
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"garbage")
    with pytest.raises(NetlangError, match="damaged or not a checkpoint"):
        checkpoint.load(tmp_path / "x.safetensors")
    with pytest.raises(NetlangError, match="no checkpoint at"):
        checkpoint.load(tmp_path / "missing")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    net = digits_net()
    # A learning rate that blows up stops training with the step where it happened.
    cfg = small_cfg(net, epochs=3, optimizer=Call("sgd", (("lr", 1e6),)))
    with pytest.raises(TrainingStopped) as ei:
        Trainer(net, cfg, tmp_path / "fresh", progress=False, log=quiet).run()
    assert "the loss is nan" in str(ei.value) or "the loss is inf" in str(ei.value)
    assert "step" in str(ei.value)
    # Two good epochs, then a NaN loss in epoch 3: the checkpoint of epoch 2 stays as it was.
    Trainer(net, small_cfg(net, epochs=2), tmp_path, progress=False, log=quiet).run()
    good = checkpoint.load(tmp_path)
    assert good.state["epoch"] == 2
    real = net.value_and_grad
    calls = []

    def nan_on_step_5(*args, **kwargs):
        calls.append(1)
        loss, *rest = real(*args, **kwargs)
        return (float("nan") if len(calls) == 5 else loss, *rest)

    monkeypatch.setattr(net, "value_and_grad", nan_on_step_5)
    with pytest.raises(TrainingStopped) as ei:
        Trainer(net, small_cfg(net, epochs=4), tmp_path, resume=tmp_path, progress=False,
                log=quiet).run()
    assert "the loss is nan at epoch 3, step 5" in str(ei.value)
    assert str(tmp_path / "last.safetensors") in str(ei.value)
    kept = checkpoint.load(tmp_path)
    assert kept.state == good.state
    assert all(np.array_equal(kept.weights[k], good.weights[k]) for k in good.weights)


def test_patience_counts_epochs_without_improvement_as_keras(tmp_path):
    net = digits_net()
    # A learning rate of ~0 never improves after epoch 1: patience 2 stops after epoch 3.
    cfg = small_cfg(net, epochs=10, optimizer=Call("sgd", (("lr", 1e-12),)),
                    early_stop=Call("early_stop", (("patience", 2),)))
    result = Trainer(net, cfg, tmp_path, progress=False, log=quiet).run()
    assert result.epochs_run == 3 and result.reason.startswith("early stop"), result.reason


def test_one_sample_is_refused_before_training(tmp_path):
    net = digits_net()
    p = tmp_path / "one.npz"
    np.savez(p, image=np.zeros((1, 1, 8, 8), np.float32), label=np.zeros(1, np.int64))
    cfg = small_cfg(net, data=Call("npz", (("path", str(p)),)))
    with pytest.raises(NetlangError) as ei:
        Trainer(net, cfg, tmp_path / "run", progress=False, log=quiet)
    assert ei.value.diagnostics[0].code == "E032" and "validation split" in str(ei.value)


def test_regression_reports_mae_and_r2(tmp_path):
    net = netlang.loads("network reg { input x: [3]\n output y = x -> dense(8) -> relu "
                        "-> dense(1) }\ntrain { loss = mse(y, t) }")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    np.savez(tmp_path / "r.npz", x=x, t=x[:, :1] * 2 + 1)
    cfg = dataclasses.replace(net.train, data=Call("npz", (("path", str(tmp_path / "r.npz")),)),
                              epochs=3, optimizer=Call("adam", (("lr", 0.05),)))
    result = Trainer(net, cfg, tmp_path / "run", progress=False, log=quiet).run()
    row = result.history[-1]
    assert "val_mae" in row and "val_r2" in row and "val_accuracy" not in row
    assert "mae" in result.test and row["val_r2"] > 0.5
    with pytest.raises(NetlangError, match="does not report"):
        Trainer(net, dataclasses.replace(cfg, early_stop=Call("early_stop",
                                                              (("monitor", "accuracy"),))),
                tmp_path / "run2", progress=False, log=quiet)


def test_a_run_folder_is_never_mixed(tmp_path):
    net = digits_net()
    Trainer(net, small_cfg(net, epochs=1), tmp_path, progress=False, log=quiet).run()
    with pytest.raises(NetlangError) as ei:
        Trainer(net, small_cfg(net, epochs=1), tmp_path, progress=False, log=quiet).run()
    assert ei.value.diagnostics[0].code == "E055" and "--overwrite" in ei.value.render()
    Trainer(net, small_cfg(net, epochs=1), tmp_path, progress=False, log=quiet,
            overwrite=True).run()
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1]


def test_stale_temporary_files_are_removed(tmp_path):
    net = digits_net()
    tmp_path.mkdir(exist_ok=True)
    stale = tmp_path / ".last.safetensors.tmp-99999"
    stale.write_bytes(b"x" * 1000)
    Trainer(net, small_cfg(net, epochs=1), tmp_path, progress=False, log=quiet).run()
    assert not stale.exists()


def test_resume_before_the_first_checkpoint_says_so(tmp_path):
    net = digits_net()
    (tmp_path / "config.json").write_text("{}")   # what a run killed before step 1 leaves
    with pytest.raises(NetlangError, match="stopped before its first checkpoint"):
        Trainer(net, small_cfg(net), tmp_path, resume=tmp_path, progress=False,
                log=quiet).run()


def test_a_step_that_cannot_fit_in_memory_is_refused(tmp_path, monkeypatch):
    from netlang.train import loop

    net = digits_net()
    monkeypatch.setattr(loop, "available_memory", lambda: 100_000)
    with pytest.raises(NetlangError) as ei:
        Trainer(net, small_cfg(net), tmp_path, progress=False, log=quiet)
    text = ei.value.render()
    assert "E054" in text and "at batch 64 needs about" in text and "--batch" in text


def test_nan_checkpoint_is_refused(tmp_path):
    net = digits_net()
    w = {k: np.full(v.shape, np.nan, np.float32) for k, v in net.init(0).items()}
    checkpoint.save(tmp_path / "bad.safetensors", checkpoint.Checkpoint(w, {}, {}))
    with pytest.raises(NetlangError, match="NaN or infinite weights"):
        checkpoint.load(tmp_path / "bad.safetensors")


def test_early_stopping_restores_the_best_weights(tmp_path):
    net = digits_net()
    cfg = small_cfg(net, epochs=6, early_stop=Call("early_stop", (("patience", 0),)))
    result = Trainer(net, cfg, tmp_path, progress=False, log=quiet).run()
    best = checkpoint.load(tmp_path, prefer="best")
    assert all(np.array_equal(best.weights[k], result.weights[k]) for k in result.weights)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == result.epochs_run and (tmp_path / "curves.png").exists()


def test_unknown_settings_say_did_you_mean():
    net = digits_net()

    def rendered(fn) -> str:
        with pytest.raises(NetlangError) as ei:
            fn()
        return ei.value.render(getattr(ei.value, "sources", None))

    assert "did you mean `epochs`" in rendered(
        lambda: apply_overrides(net.train, [("epoch", "3")], list(net.outputs)))
    assert "did you mean `adam`" in rendered(
        lambda: apply_overrides(net.train, [("optimizer", "adma(lr = 1)")], list(net.outputs)))
    src = (EXAMPLES / "lenet_digits.net").read_text().replace("batch = 32", "bach = 32")
    out = rendered(lambda: netlang.loads(src, file="d.net"))
    assert "unknown key `bach` in the train section" in out and "did you mean `batch`" in out


def test_sigint_saves_and_exits_cleanly(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "netlang", "train",
                             str(EXAMPLES / "lenet_digits.net"), "--out", str(tmp_path),
                             "--epochs", "500", "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with --resume" in out + err
    ck = checkpoint.load(tmp_path)
    assert ck.state["global_step"] > 0


@pytest.mark.torch
def test_a_few_steps_match_pytorch(torch_mod):
    torch = torch_mod
    from tests.torch_ref import TorchTwin

    net = digits_net()
    rng = np.random.default_rng(0)
    x = rng.random((5, 16, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, (5, 16))
    weights = net.init(0)
    twin = TorchTwin(net.graph)
    twin.materialize({"image": torch.from_numpy(x[0])})
    twin.load_netlang(weights)
    from netlang.train.optim import Optimizer

    opt = Optimizer.from_config(Call("adam", (("lr", 0.01),)))
    topt = torch.optim.Adam(twin.parameters(), lr=0.01)
    ours, theirs = [], []
    for i in range(5):
        loss, grads = net.value_and_grad(weights, {"image": x[i], "label": y[i]},
                                         loss="cross_entropy(logits, label)")
        opt.update(weights, grads, 0.01)
        ours.append(loss)
        topt.zero_grad()
        out = twin({"image": torch.from_numpy(x[i])})["logits"]
        tl = torch.nn.functional.cross_entropy(out, torch.from_numpy(y[i]))
        tl.backward()
        topt.step()
        theirs.append(tl.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


@pytest.mark.emu
@pytest.mark.skipif(not __import__("shutil").which("g++"), reason="cuda-emu needs g++")
def test_the_device_path_reads_losses_now_and_then_and_still_stops_on_nan(tmp_path,
                                                                          monkeypatch):
    """On cuda / cuda-emu the loss sums accumulate on the device and the loop reads them
    twice a second and at the end of the epoch; a non-finite loss is reported with the
    steps it was among."""
    import netlang.train.loop as loop

    net = digits_net()
    reads = []
    real = loop.Trainer._read_losses

    def counted(self, stepper, state, epoch, first, last):
        reads.append((first, last))
        return real(self, stepper, state, epoch, first, last)

    monkeypatch.setattr(loop.Trainer, "_read_losses", counted)
    clock = iter(range(10**6))   # each look at the clock moves it 0.3 s: a read every 2 steps
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(clock) * 0.3)
    cfg = small_cfg(net, epochs=1, optimizer=Call("sgd", (("lr", 1e6),)))
    with pytest.raises(TrainingStopped) as ei:
        Trainer(net, cfg, tmp_path / "run", progress=False, log=quiet,
                backend="cuda-emu").run()
    assert any(last > first for first, last in reads)   # some reads cover several steps
    assert re.search(r"the loss is (nan|inf|-inf) at epoch 1, (step \d+|one of steps "
                     r"\d+-\d+): training stopped", str(ei.value)), str(ei.value)


def test_a_valid_padding_unet_trains_on_targets_cropped_to_its_output(tmp_path, capsys):
    """unet_valid's output is 184 pixels smaller than its input: the `shapes` masks are
    centre-cropped to it (after augmentation), in training, validation and `eval`."""
    from netlang.cli import main

    sets = ["--set", "size=188", "--set", "base=2"]
    common = [str(EXAMPLES / "unet_valid.net"), *sets, "--data",
              "shapes(size=188, count=12)", "--loss", "cross_entropy(scores, target)"]
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "run"),
                 "--no-progress", "--backend", "numpy", "--opt", "augment=[flip]"]) == 0
    out = capsys.readouterr().out
    assert "targets `target`: one-channel 0/1 masks read as class indices" in out
    assert "targets `target` cropped from [188, 188] to [4, 4] (centred) to fit the " \
           "output" in out
    assert main(["eval", *common, "--weights", str(tmp_path / "run"),
                 "--backend", "numpy"]) == 0
    text = capsys.readouterr()
    assert "cropped from [188, 188] to [4, 4]" in text.err
    assert "dice " in text.out


def test_fit_targets_crops_the_centre_and_leaves_other_mismatches_alone():
    from netlang.ir.types import TensorType
    from netlang.train.data import DataSet, Split, fit_targets

    mask = np.arange(2 * 9 * 9, dtype=np.float32).reshape(2, 1, 9, 9)
    labels = np.zeros((2, 8, 8), np.int64)
    ds = DataSet("t", Split({"m": mask, "c": labels, "w": mask}), Split({}), Split({}))
    got = fit_targets(ds, {"m": TensorType((1, 4, 4)), "c": TensorType((6, 6), dtype="int64"),
                           "w": TensorType((2, 4, 4))})
    assert set(got.crops) == {"m", "c"}   # `w` has other channels: not a crop
    assert got.crops["m"][1] is False
    b = got.crop({"m": mask, "c": labels, "w": mask})
    np.testing.assert_array_equal(b["m"], mask[:, :, 2:6, 2:6])   # (9 - 4) // 2 = 2
    assert b["c"].shape == (2, 6, 6) and b["w"] is mask


TWO_HEADS = """
network two(base = 4) {
    input image: [1, 16, 16]
    f = image -> conv(base, 3, pad=same) -> relu
    output mask = f -> conv(1, 1) -> sigmoid
    output label = f -> global_avgpool -> dense(3)
}
train {
    loss = bce(mask, target) + 0.5 * cross_entropy(label, kind)
    data = npz("data.npz")
    epochs = 2
    batch = 16
    early_stop(patience = 3, monitor = kind_accuracy)
}
"""


def test_each_output_the_loss_reads_gets_its_metrics(tmp_path, capsys):
    """Two outputs, two tasks: `mask_dice`, `mask_iou`, `label_accuracy` in every row,
    and early stopping may monitor any of them."""
    from netlang.cli import main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", image=rng.standard_normal((60, 1, 16, 16)).astype("f4"),
             target=(rng.uniform(size=(60, 1, 16, 16)) > 0.5).astype("f4"),
             kind=rng.integers(0, 3, 60))
    src = tmp_path / "two.net"
    src.write_text(TWO_HEADS)
    assert main(["train", str(src), "--out", str(tmp_path / "bad"), "--no-progress",
                 "--backend", "numpy"]) == 1
    err = capsys.readouterr().err
    assert "early stopping monitors `kind_accuracy`, which this network does not report" \
        in err
    assert "metrics: loss, mask_dice, mask_iou, label_accuracy" in err
    src.write_text(TWO_HEADS.replace("kind_accuracy", "label_accuracy"))
    assert main(["train", str(src), "--out", str(tmp_path / "run"), "--no-progress",
                 "--backend", "numpy"]) == 0
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"val_mask_dice", "val_mask_iou", "val_label_accuracy"} <= set(rows[-1])
    out = capsys.readouterr().out
    assert "val_label_accuracy" in out and "test: loss" in out and "label_accuracy" in out
    net = netlang.load(src)
    trainer = Trainer(net, net.train, tmp_path / "t", progress=False, log=quiet)
    assert trainer.monitor == "val_label_accuracy" and trainer.maximize


def test_a_binary_mask_is_read_as_class_indices_for_cross_entropy():
    from netlang.ir.types import TensorType
    from netlang.train.data import DataSet, Split, fit_targets

    mask = (np.arange(2 * 6 * 6).reshape(2, 1, 6, 6) % 3 == 0).astype(np.float32)
    ds = DataSet("t", Split({"t": mask}), Split({}), Split({}))
    got = fit_targets(ds, {"t": TensorType((4, 4), dtype="int64")})
    b = got.crop({"t": mask})["t"]
    assert b.dtype == np.int64 and b.shape == (2, 4, 4)
    np.testing.assert_array_equal(b, mask[:, 0, 1:5, 1:5])
    assert "one-channel 0/1 masks read as class indices" in got.notes[0]
    soft = DataSet("t", Split({"t": mask * 0.5}), Split({}), Split({}))
    assert not fit_targets(soft, {"t": TensorType((4, 4), dtype="int64")}).crops


def test_bce_of_logits_is_warned_about(tmp_path):
    net = netlang.loads("""
network seg { input image: [1, 8, 8]  output scores = image -> conv(1, 3, pad=same) }
""")
    logs = []
    from netlang.config import TrainConfig

    cfg = apply_overrides(TrainConfig(), [("loss", "bce(scores, target)"),
                                          ("data", "shapes(size=8, count=16)"),
                                          ("epochs", "1")], list(net.outputs))
    Trainer(net, cfg, tmp_path / "run", progress=False, log=logs.append).run()
    assert any(line.startswith("warning: bce reads `scores`, which no sigmoid makes")
               for line in logs)


@pytest.mark.slow
def test_attention_unet_learns_shapes(tmp_path):
    """Oktay's gates (the example's default) on the bundled shapes, through the CLI's
    defaults but for the data, loss and learning rate."""
    net = netlang.load(EXAMPLES / "attention_unet.net",
                       params={"base": 4, "size": 32, "channels": 1})
    from netlang.config import TrainConfig

    cfg = apply_overrides(TrainConfig(), [("data", "shapes(size = 32, count = 256)"),
                                 ("loss", "bce(mask, target) + dice(mask, target)"),
                                 ("optimizer", "adam(lr = 3e-3)"), ("epochs", "20")],
                          list(net.outputs))
    result = Trainer(net, cfg, tmp_path, progress=False, log=quiet).run()
    assert result.test["dice"] >= 0.8, result.test


@pytest.mark.slow
def test_unet_plus_plus_deep_supervision_learns_shapes(tmp_path):
    """U-Net++ with a head on each of x01..x04, one shared target; every head gets its own
    metrics and the best checkpoint follows the last head's Dice."""
    net = netlang.load(EXAMPLES / "unet_plus_plus.net",
                       params={"base": 4, "size": 32, "channels": 1, "deep": "true"})
    assert list(net.outputs) == ["mask1", "mask2", "mask3", "mask4"]
    from netlang.config import TrainConfig

    loss = ("0.25 * (bce(mask1, target) + bce(mask2, target) + bce(mask3, target) + "
            "bce(mask4, target)) + dice(mask4, target)")
    cfg = apply_overrides(TrainConfig(), [("data", "shapes(size = 32, count = 256)"),
                                          ("loss", loss), ("optimizer", "adam(lr = 3e-3)"),
                                          ("early_stop", "early_stop(patience = 20, "
                                                         "monitor = mask4_dice)"),
                                          ("epochs", "12")], list(net.outputs))
    from tests.backends.test_cuda import HAVE_CXX

    result = Trainer(net, cfg, tmp_path, progress=False, log=quiet,
                     backend="cpu" if HAVE_CXX else "numpy").run()
    assert all(result.test[f"mask{k}_dice"] >= 0.8 for k in range(1, 5)), result.test
    assert result.best["val_mask4_dice"] == max(r["val_mask4_dice"] for r in result.history)
