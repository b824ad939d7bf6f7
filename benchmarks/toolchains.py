"""Toolchains for the cpu backend, measured on one U-Net layer's training step (conv 3x3
16 -> 16 channels at 128x128, batchnorm, relu, an MSE loss, the SGD update; batch 4), forward
+ backward + update, each candidate in its own process, in one run:

- `g++`: the cpu backend as it ships (the system compiler, OpenMP), at 1 and 2 threads;
- `zig`: the same generated C++ compiled by `python -m ziglang c++` (pip install ziglang;
  no OpenMP runtime, so one thread), through CXX;
- `numba`: the same layer written by hand for numba (`@njit(parallel=True)`: im2col, BLAS
  through np.dot, batchnorm and relu loops), the compiler-free alternative;
- `numpy`: netlang's reference backend.

    python benchmarks/toolchains.py [--steps 10]

Compile seconds are a cold compile in an empty cache (numba: the first call's JIT).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = """
network layer {
    input x: [16, 128, 128]
    output y = relu(batchnorm(conv(x, 16, kernel = 3, pad = same, bias = false)))
}
"""
N, C, K, H, W = 4, 16, 16, 128, 128


def _data():
    import numpy as np

    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((N, C, H, W)).astype(np.float32),
            "t": rng.standard_normal((N, K, H, W)).astype(np.float32)}


def netlang_worker(backend: str, steps: int) -> dict:
    import netlang
    from netlang.config import Call
    from netlang.train.optim import Optimizer
    from netlang.backends.step import train_step

    net = netlang.loads(LAYER)
    opt = Optimizer.from_config(Call("sgd", (("lr", 0.01), ("momentum", 0.9))))
    data = _data()
    t0 = time.perf_counter()
    step = train_step(net, "mse(y, t)", net.init(0), opt, backend)
    step.run(data, opt.lr, 0)
    first = time.perf_counter() - t0
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step.run(data, opt.lr, i + 1)
        times.append(time.perf_counter() - t)
    return {"step_ms": 1e3 * statistics.median(times), "first_s": first}


def numba_worker(steps: int) -> dict:
    import numba
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, cache=False, fastmath=False)
    def layer_step(x, t, w, gamma, beta, vel, lr, mom):
        n_, c_, h_, w_ = x.shape
        k_ = w.shape[0]
        p_ = h_ * w_
        cols = np.zeros((n_, c_ * 9, p_), np.float32)
        for n in prange(n_):   # im2col, zero padding of 1
            for c in range(c_):
                for ky in range(3):
                    for kx in range(3):
                        row = (c * 3 + ky) * 3 + kx
                        for yy in range(h_):
                            iy = yy + ky - 1
                            if iy < 0 or iy >= h_:
                                continue
                            for xx in range(w_):
                                ix = xx + kx - 1
                                if 0 <= ix < w_:
                                    cols[n, row, yy * w_ + xx] = x[n, c, iy, ix]
        wm = w.reshape(k_, c_ * 9)
        z = np.empty((n_, k_, p_), np.float32)
        for n in prange(n_):
            z[n] = np.dot(wm, cols[n])
        m = n_ * p_
        mean = np.zeros(k_, np.float32)
        var = np.zeros(k_, np.float32)
        for k in prange(k_):
            s = 0.0
            for n in range(n_):
                for i in range(p_):
                    s += z[n, k, i]
            mu = s / m
            q = 0.0
            for n in range(n_):
                for i in range(p_):
                    d = z[n, k, i] - mu
                    q += d * d
            mean[k] = mu
            var[k] = q / m
        y = np.empty_like(z)
        xhat = np.empty_like(z)
        loss = 0.0
        dy = np.empty_like(z)
        scale = 2.0 / (n_ * k_ * p_)
        for n in prange(n_):
            for k in range(k_):
                inv = 1.0 / np.sqrt(var[k] + 1e-5)
                for i in range(p_):
                    xh = (z[n, k, i] - mean[k]) * inv
                    xhat[n, k, i] = xh
                    v = gamma[k] * xh + beta[k]
                    v = v if v > 0 else 0.0
                    y[n, k, i] = v
                    d = v - t[n, k, i // w_, i % w_]
                    dy[n, k, i] = scale * d if v > 0 else 0.0
        for n in range(n_):
            for k in range(k_):
                for i in range(p_):
                    d = y[n, k, i] - t[n, k, i // w_, i % w_]
                    loss += d * d
        dgamma = np.zeros(k_, np.float32)
        dbeta = np.zeros(k_, np.float32)
        dz = np.empty_like(z)
        for k in prange(k_):
            sg = 0.0
            sb = 0.0
            for n in range(n_):
                for i in range(p_):
                    sg += dy[n, k, i] * xhat[n, k, i]
                    sb += dy[n, k, i]
            dgamma[k] = sg
            dbeta[k] = sb
            inv = 1.0 / np.sqrt(var[k] + 1e-5)
            for n in range(n_):
                for i in range(p_):
                    dz[n, k, i] = gamma[k] * inv / m * (m * dy[n, k, i] - sb
                                                        - xhat[n, k, i] * sg)
        dw = np.zeros((n_, k_, c_ * 9), np.float32)
        dcols = np.empty_like(cols)
        for n in prange(n_):
            dw[n] = np.dot(dz[n], cols[n].T)
            dcols[n] = np.dot(wm.T, dz[n])
        dx = np.zeros_like(x)
        for n in prange(n_):   # col2im
            for c in range(c_):
                for ky in range(3):
                    for kx in range(3):
                        row = (c * 3 + ky) * 3 + kx
                        for yy in range(h_):
                            iy = yy + ky - 1
                            if iy < 0 or iy >= h_:
                                continue
                            for xx in range(w_):
                                ix = xx + kx - 1
                                if 0 <= ix < w_:
                                    dx[n, c, iy, ix] += dcols[n, row, yy * w_ + xx]
        g = dw.sum(axis=0).reshape(w.shape)
        for i in range(w.size):   # SGD with momentum
            vel.flat[i] = mom * vel.flat[i] + g.flat[i]
            w.flat[i] -= lr * vel.flat[i]
        return loss / (n_ * k_ * p_), dgamma, dbeta, dx

    d = _data()
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((K, C, 3, 3)) * 0.1).astype(np.float32)
    gamma, beta = np.ones(K, np.float32), np.zeros(K, np.float32)
    vel = np.zeros_like(w)
    t0 = time.perf_counter()
    layer_step(d["x"], d["t"], w, gamma, beta, vel, np.float32(0.01), np.float32(0.9))
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        layer_step(d["x"], d["t"], w, gamma, beta, vel, np.float32(0.01), np.float32(0.9))
        times.append(time.perf_counter() - t)
    return {"step_ms": 1e3 * statistics.median(times), "first_s": first,
            "threads": numba.get_num_threads()}


CANDIDATES = [  # (label, worker, threads, environment)
    ("g++ (cpu backend)", "cpu", 2, {}),
    ("g++ (cpu backend)", "cpu", 1, {}),
    ("zig c++ (no OpenMP)", "cpu", 1, {"CXX": f"{sys.executable} -m ziglang c++"}),
    ("numba", "numba", 2, {}),
    ("numba", "numba", 1, {}),
    ("numpy backend", "numpy", 2, {}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--worker", nargs=2)
    args = ap.parse_args()
    if args.worker:
        kind = args.worker[0]
        out = numba_worker(args.steps) if kind == "numba" else \
            netlang_worker(kind, args.steps)
        print(json.dumps(out))
        return
    print(f"one U-Net layer's training step (conv3x3 {C}->{K} at {H}x{W}, batchnorm, relu, "
          f"mse, SGD), batch {N}")
    print(f"{'candidate':22} {'threads':>7} {'step ms':>9} {'first call s':>13}")
    for label, kind, threads, extra in CANDIDATES:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads),
                       OPENBLAS_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads),
                       XDG_CACHE_HOME=cache, PYTHONPATH=str(ROOT), **extra)
            res = subprocess.run([sys.executable, __file__, "--worker", kind, "x", "--steps",
                                  str(args.steps)], env=env, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{label:22} {threads:7d}   failed: {res.stderr.strip()[-300:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{label:22} {threads:7d} {r['step_ms']:9.1f} {r['first_s']:13.2f}")


if __name__ == "__main__":
    main()
