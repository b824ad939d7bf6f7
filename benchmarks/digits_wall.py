"""Wall time of the README's main job, each as a new process, in one run:
`netlang train examples/lenet_digits.net` (the default backend, and --backend numpy)
against benchmarks/digits_torch.py (the same protocol in PyTorch).

    python benchmarks/digits_wall.py [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - t, res.stdout.strip().splitlines()[-1 if "torch" in cmd[1]
                                                                      else -2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    netlang = str(Path(sys.executable).with_name("netlang"))
    runs = {
        "netlang (auto)": lambda d: [netlang, "train", "examples/lenet_digits.net", "--out",
                                     d, "--overwrite", "--no-progress", "--threads",
                                     str(args.threads)],
        "netlang --backend numpy": lambda d: [netlang, "train", "examples/lenet_digits.net",
                                              "--out", d, "--overwrite", "--no-progress",
                                              "--backend", "numpy"],
        "pytorch": lambda d: [sys.executable, "benchmarks/digits_torch.py", "--threads",
                              str(args.threads)],
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    last = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):   # interleaved, so drift hits all alike
            for name, cmd in runs.items():
                t, line = wall(cmd(tmp), env)
                times[name].append(t)
                last[name] = line
    for name, ts in times.items():
        print(f"{name:<26} median {statistics.median(ts):6.2f} s  "
              f"({', '.join(f'{t:.2f}' for t in ts)})  {last[name]}")


if __name__ == "__main__":
    main()
