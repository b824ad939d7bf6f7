"""CPU benchmark: netlang (its NumPy or compiled cpu backend) against PyTorch on the same
networks, batches and dtype, in one run, reporting ratios.

    python benchmarks/cpu.py                  # all networks, 2 threads
    python benchmarks/cpu.py --nets lenet5 --steps 20 --threads 1
    python benchmarks/cpu.py --backend cpu     # netlang's compiled cpu backend

Each (framework, network) pair runs in its own subprocess, so that NumPy's BLAS pool and
torch's OpenMP pool never spin against each other, and so that peak memory is measured
per framework: the growth of the process's peak RSS (ru_maxrss) from the moment weights
and data are allocated through the warm-up and the timed steps, i.e. activations,
gradients, optimizer state and temporaries, not the weights or the data.
Train step = forward + loss + backward + SGD-momentum update: for netlang, the step
`netlang train` runs (netlang/backends/step.py; on cpu one native call, update included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import NETS, make_batch, torch_loss  # noqa: E402


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(framework: str, name: str, steps: int, backend: str = "numpy") -> dict:
    import numpy as np

    import netlang

    file, network, params, batch, loss = NETS[name]
    net = netlang.load(ROOT / "examples" / file, network=network, params=params)
    data = make_batch(net, batch, np)
    weights = net.init(0)
    fwd, step = [], []
    if framework == "netlang":
        from netlang.config import Call
        from netlang.train.optim import Optimizer
        from netlang.backends.step import train_step as make_step

        inputs = {k: data[k] for k in net.inputs}
        # What `netlang train` runs: the backend's step with its fused update.
        opt = Optimizer.from_config(Call("sgd", (("lr", 0.01), ("momentum", 0.9))))
        stepper = make_step(net, loss, weights, opt, backend)

        def forward():
            net.forward(weights, inputs, backend=backend)

        def train_step():
            stepper.run(data, opt.lr, opt.step_count)
    else:
        import torch

        from tests.torch_ref import TorchTwin

        tdata = {k: torch.from_numpy(np.asarray(v)) for k, v in data.items()}
        twin = TorchTwin(net.graph)
        twin.materialize({k: tdata[k] for k in net.inputs})
        twin.load_netlang(weights)
        opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)

        def forward():
            with torch.no_grad():
                twin.eval()
                twin({k: tdata[k] for k in net.inputs})

        def train_step():
            twin.train()
            opt.zero_grad()
            out = twin({k: tdata[k] for k in net.inputs})
            torch_loss(torch, out, tdata).backward()
            opt.step()
    base = _maxrss()   # weights, data and the framework itself are resident by now
    forward()
    train_step()   # warm-up (compiles netlang's programs, allocates torch's buffers)
    for _ in range(steps):
        t = time.perf_counter()
        forward()
        fwd.append(time.perf_counter() - t)
    for _ in range(steps):
        t = time.perf_counter()
        train_step()
        step.append(time.perf_counter() - t)
    return {"forward_ms": 1e3 * statistics.median(fwd), "step_ms": 1e3 * statistics.median(step),
            "peak_mb": (_maxrss() - base) / 2**20, "resident_mb": _maxrss() / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", nargs="*", default=["lenet5", "simple_cnn", "unet_small"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "NET"))
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--backend", default="numpy", help="netlang's backend (numpy or cpu)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps, args.backend)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(ROOT))
    rows = []
    print(f"netlang backend: {args.backend}")
    print(f"{'network':12} {'fwd netlang':>12} {'fwd torch':>10} {'ratio':>6}   "
          f"{'step netlang':>12} {'step torch':>10} {'ratio':>6}   {'peak MB nl/torch':>17}")
    for name in args.nets:
        res = {}
        for fw in ("netlang", "torch"):
            out = subprocess.run([sys.executable, __file__, "--worker", fw, name, "--steps",
                                  str(args.steps), "--backend", args.backend], env=env,
                                 capture_output=True, text=True, check=True)
            res[fw] = json.loads(out.stdout.strip().splitlines()[-1])
        a, b = res["netlang"], res["torch"]
        rows.append({"network": name, "netlang": a, "torch": b})
        print(f"{name:12} {a['forward_ms']:10.1f}ms {b['forward_ms']:8.1f}ms "
              f"{a['forward_ms'] / b['forward_ms']:6.2f}   {a['step_ms']:10.1f}ms "
              f"{b['step_ms']:8.1f}ms {a['step_ms'] / b['step_ms']:6.2f}   "
              f"{a['peak_mb']:7.1f} / {b['peak_mb']:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
