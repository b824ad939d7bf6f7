"""Where a cpu-backend training step spends its time: each statement of the generated
`nl_step` (a kernel, a GEMM, a convolution routine) timed over a number of steps, with the
`.net` layers it implements, largest first.

    python benchmarks/cpu_layers.py --net unet_small --steps 10 [--threads 2] [--top 25]

The multiply-adds of the convolution routines give each one's GFLOP/s, to compare with
the machine's GEMM peak (printed first: one large sgemm through the same BLAS).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import netlang  # noqa: E402
from benchmarks.common import NETS, make_batch  # noqa: E402


def gemm_peak(threads: int) -> float:
    """GFLOP/s of a 1024^3 float32 GEMM through SciPy's BLAS on `threads` threads."""
    from scipy.linalg import blas
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    with threadpool_limits(threads):
        blas.sgemm(1.0, a, a)
        t = time.perf_counter()
        for _ in range(5):
            blas.sgemm(1.0, a, a)
        dt = (time.perf_counter() - t) / 5
    return 2 * 1024 ** 3 / dt / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="unet_small", choices=sorted(NETS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    from netlang.backends.cpu.runtime import CpuModule
    from netlang.backends.cuda.runtime import Runner

    file, network, params, batch, loss = NETS[args.net]
    net = netlang.load(ROOT / "examples" / file, network=network, params=params)
    data = make_batch(net, batch, np)
    prog = net.program_for(True, loss)
    runner = Runner(prog, "cpu")
    runner.device.module = module = CpuModule(runner.cprog.source, args.threads, profile=True)
    feeds, n = prog.feeds(net.init(0), data)
    bufs = runner.buffers(feeds, n)
    runner.run_steps(bufs, n, 0)   # warm-up (thread buffers, caches)
    before = module.seconds(len(runner.cprog.steps))
    t = time.perf_counter()
    for s in range(args.steps):
        runner.run_steps(bufs, n, s)
    wall = (time.perf_counter() - t) / args.steps
    after = module.seconds(len(runner.cprog.steps))
    per = [(b - a) / args.steps for a, b in zip(before, after)]
    by_id = {node.id: node for node in prog.graph.nodes}
    threads = module.threads
    print(f"{args.net}, batch {n}, {threads} threads: step {wall * 1e3:.1f} ms "
          f"(statements sum {sum(per) * 1e3:.1f} ms); sgemm peak "
          f"{gemm_peak(threads):.0f} GFLOP/s")
    from netlang.ops import registry

    rows = []
    for st, sec in zip(runner.cprog.steps, per):
        nodes = [by_id[i] for i in st.nodes if i in by_id]
        anchor = nodes[0] if nodes else None
        label = getattr(st, "kernel", None) or type(st).__name__.lower()
        if anchor is not None:
            label = f"{anchor.op} {anchor.name}"
        if getattr(st, "kernel", None):
            label = f"{st.kernel} ({anchor.name})" if anchor is not None else st.kernel
        macs = 0
        if anchor is not None and registry.get(anchor.op).macs is not None and \
                not hasattr(st, "kernel"):
            od = registry.get(anchor.op)
            macs = od.macs([i.type for i in anchor.inputs], anchor.type, anchor.attrs) * \
                (n if anchor.type.batched or anchor.inputs[0].type.batched else 1)
        rows.append((sec, label, type(st).__name__, macs))
    rows.sort(reverse=True)
    totals: dict[str, float] = {}
    for sec, label, kind, _ in rows:
        what = label.split()[0] if kind != "Launch" else "kernel " + (
            "epilogue" if "_epilogue" in label else label.split("_", 1)[1].split(" ")[0])
        totals[what] = totals.get(what, 0.0) + sec
    print("by op: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in
                                sorted(totals.items(), key=lambda kv: -kv[1])[:12]) + " (ms)")
    print(f"{'ms':>8} {'%':>5} {'GFLOP/s':>8}  step  what")
    for sec, label, kind, macs in rows[:args.top]:
        rate = f"{2 * macs / sec / 1e9:8.1f}" if macs and sec > 0 else " " * 8
        print(f"{sec * 1e3:8.2f} {100 * sec / max(sum(per), 1e-12):5.1f} {rate}  "
              f"{kind:<6} {label}")


if __name__ == "__main__":
    main()
