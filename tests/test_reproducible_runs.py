"""A run folder records everything that made the run: `--set` values and command-line
settings; eval, predict and --resume use them, and deliberate changes are recorded."""

from __future__ import annotations

import json

from netlang.cli import main
from netlang.train import checkpoint
from tests.conftest import EXAMPLES

DIGITS = str(EXAMPLES / "lenet_digits.net")


def test_resume_continues_with_the_runs_settings_and_records_changes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", DIGITS, "--set", "width=2", "--batch", "16", "--epochs", "1",
                 "--seed", "3", "--out", str(run), "--no-progress"]) == 0
    first = json.loads((run / "config.json").read_text())
    assert first["set"] == {"width": "2"} and first["batch"] == 16 and first["seed"] == 3
    ck = checkpoint.load(run)
    assert ck.state["config"]["set"] == {"width": "2"}
    capsys.readouterr()
    # Resumed without repeating --set, --batch or --seed: the run's values continue.
    assert main(["train", DIGITS, "--resume", str(run), "--epochs", "2", "--lr", "5e-4",
                 "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "using the run's settings: --set width=2" in out.err
    assert "resuming with changed settings" in out.out and "epochs 1 -> 2" in out.out
    after = json.loads((run / "config.json").read_text())
    assert after["batch"] == 16 and after["seed"] == 3 and after["epochs"] == 2
    (change,) = after["changes"]
    assert change["at_epoch"] == 2 and set(change["changed"]) == {"epochs", "optimizer"}
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["lr"] == 5e-4
