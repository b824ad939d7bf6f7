"""The README's main job written in PyTorch, to the same protocol as
`netlang train examples/lenet_digits.net`: the same bundled digits and the same fixed
train / validation / test splits, the same network (conv 16 -> relu -> maxpool ->
conv 32 -> relu -> maxpool -> dense 64 -> relu -> dense 10), Adam (lr 1e-3), batch 32, up
to 60 epochs with a shuffle per epoch, validation after each epoch, early stopping after
15 epochs without a better validation accuracy, a checkpoint of the last and the best
weights each epoch, and the test split scored with the best weights at the end.

    python benchmarks/digits_torch.py [--threads 2]

`python benchmarks/digits_wall.py` times this script and `netlang train` as new processes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from netlang.train.data import digits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = digits(test_fraction=0.2, val_fraction=0.1)
    xs = {k: torch.from_numpy(data.split(k).arrays["input"]) for k in ("train", "val", "test")}
    ys = {k: torch.from_numpy(data.split(k).arrays["target"]) for k in ("train", "val", "test")}
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    out = Path(tempfile.mkdtemp(prefix="digits-torch-"))

    def score(split: str) -> tuple[float, float]:
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(xs[split][i:i + 256]) for i in range(0, len(xs[split]), 256)])
        return float(loss_fn(logits, ys[split])), float((logits.argmax(1) == ys[split]).float()
                                                        .mean())

    best, best_epoch, n = -1.0, 0, len(xs["train"])
    for epoch in range(1, 61):
        net.train()
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(n))
        for i in range(0, n, 32):
            idx = order[i:i + 32]
            opt.zero_grad()
            loss = loss_fn(net(xs["train"][idx]), ys["train"][idx])
            loss.backward()
            opt.step()
        _, acc = score("val")
        torch.save(net.state_dict(), out / "last.pt")
        if acc > best:
            best, best_epoch = acc, epoch
            torch.save(net.state_dict(), out / "best.pt")
        elif epoch - best_epoch >= 15:
            break
    net.load_state_dict(torch.load(out / "best.pt"))
    loss, acc = score("test")
    print(f"stopped after epoch {epoch}; best epoch {best_epoch}: val_accuracy {best:.4f}; "
          f"test loss {loss:.4f} accuracy {acc:.4f}; {time.perf_counter() - T0:.2f} s "
          "in this process")


if __name__ == "__main__":
    main()
