"""GPU benchmark: a training step (forward + loss + backward + SGD-momentum update) of
netlang's CUDA backend, with and without CUDA graphs, against PyTorch eager (cuDNN) on the
same GPU, batch and dtype (float32, TF32 off on both sides), in one run.

    python benchmarks/gpu.py [--steps 50] [--json results.json]
    python benchmarks/gpu.py --emu --nets lenet5 --steps 2     # plumbing check on a CPU

Times are medians of per-step CUDA-event intervals after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import NETS, make_batch, torch_loss  # noqa: E402


def _median_ms(fn, steps, sync, events=None) -> float:
    times = []
    for _ in range(steps):
        if events is not None:
            start, end = events()
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(_elapsed(start, end))
        else:
            t = time.perf_counter()
            fn()
            sync()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def _elapsed(start, end) -> float:
    if hasattr(start, "elapsed_time"):       # torch.cuda.Event
        return start.elapsed_time(end)
    import cupy

    return cupy.cuda.get_elapsed_time(start, end)


def bench_netlang(name, steps, kind):
    import netlang
    from netlang.config import Call
    from netlang.train.optim import Optimizer
    from netlang.backends.step import TrainStep

    file, network, params, batch, loss = NETS[name]
    net = netlang.load(ROOT / "examples" / file, network=network, params=params)
    data = make_batch(net, batch, np)
    out = {}
    # eager: cuBLAS GEMMs, kernels launched one by one; graph: GEMMs as tiled kernels, the
    # step replayed as a CUDA graph; auto: what `netlang train` picks (backends/step.py)
    for mode, capturable, graphs in (("eager", False, False), ("graph", True, True),
                                     ("auto", None, True)):
        opt = Optimizer.from_config(Call("sgd", (("lr", 0.01), ("momentum", 0.9))))
        ds = TrainStep(net, loss, net.init(0), opt, kind, capturable=capturable,
                       graphs=graphs)
        for _ in range(3):   # the second step captures the graph
            ds.run(data, opt.lr, opt.step_count)
        if graphs and not ds.graphs:
            out[mode] = None
            out[f"{mode}_refusal"] = ds.graph_refusal
            continue
        if kind == "cuda":
            import cupy

            def events():
                return cupy.cuda.Event(), cupy.cuda.Event()
            sync = cupy.cuda.Device().synchronize
        else:
            events, sync = None, (lambda: None)

        def step(ds=ds, opt=opt):
            ds.run(data, opt.lr, opt.step_count, read=False)
        out[mode] = _median_ms(step, steps, sync, events)
        out["loss_after"] = ds.loss(batch)
    out["launches"] = len(ds.runner.cprog.steps)
    return out


def bench_torch(name, steps):
    import torch

    import netlang
    from tests.torch_ref import TorchTwin

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    file, network, params, batch, loss = NETS[name]
    net = netlang.load(ROOT / "examples" / file, network=network, params=params)
    data = {k: torch.from_numpy(np.asarray(v)).cuda()
            for k, v in make_batch(net, batch, np).items()}
    twin = TorchTwin(net.graph, device="cuda")
    twin.materialize({k: data[k] for k in net.inputs})
    twin.load_netlang(net.init(0))
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    twin.train()

    def step():
        opt.zero_grad(set_to_none=True)
        out = twin({k: data[k] for k in net.inputs})
        torch_loss(torch, out, data).backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()

    def events():
        return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    return {"eager": _median_ms(step, steps, torch.cuda.synchronize, events)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", nargs="*", default=list(NETS))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--emu", action="store_true", help="cuda-emu, no torch (plumbing check)")
    ap.add_argument("--json")
    args = ap.parse_args()
    kind = "cuda-emu" if args.emu else "cuda"
    device = "host emulation"
    if not args.emu:
        import cupy
        device = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {device}")
    rows = []
    for name in args.nets:
        row = {"network": name, "netlang": bench_netlang(name, args.steps, kind)}
        if not args.emu:
            row["torch"] = bench_torch(name, args.steps)
        rows.append(row)
        nl, th = row["netlang"], row.get("torch", {})
        te = th.get("eager")

        def cell(mode, nl=nl, te=te):
            ms = nl.get(mode)
            if ms is None:
                return f"{mode} -  ({nl.get(f'{mode}_refusal', '')})"
            return f"{mode} {ms:8.3f} ms" + (f" ({ms / te:.2f}x torch)" if te else "")
        print(f"{name:15} netlang " + "; ".join(cell(m) for m in ("eager", "graph", "auto"))
              + (f"; torch eager {te:8.3f} ms" if te else "")
              + f"; launches {nl['launches']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
