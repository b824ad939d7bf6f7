"""The CUDA path without a GPU: kernels compiled by nvcc for sm_80 and sm_90, golden
sources, and the same kernels run on the host (`cuda-emu`) against the NumPy backend.
On a machine with a GPU and CuPy, the `gpu` tests run the same checks for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import netlang
from netlang.backends.cuda import render as R
from netlang.diagnostics import NetlangError
from netlang.kernels import builder
from tests.backends.test_torch_parity import grad_error
from tests.conftest import EXAMPLES, ROOT

HAVE_CXX = shutil.which("g++") is not None or shutil.which("clang++") is not None
HAVE_NVCC = shutil.which("nvcc") is not None
emu = pytest.mark.skipif(not HAVE_CXX, reason="cuda-emu needs a host C++ compiler")


def _gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


BACKENDS = [pytest.param("cuda-emu", marks=[pytest.mark.emu, emu]),
            pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
                not _gpu_available(), reason="no CUDA device or CuPy")])]

# The backends that run the kernel layer's kernels (the CUDA ones and their C rendering).
KERNEL_BACKENDS = BACKENDS + [pytest.param("cpu", marks=[pytest.mark.emu, emu])]

# Small configurations of every example with a CUDA lowering: (file, network, params, batch)
SMALL = [
    ("lenet5.net", None, {}, 2),
    ("simple_cnn.net", None, {}, 2),
    ("unet.net", None, {"base": 2, "size": 16}, 2),
    ("unet_shapes.net", None, {"base": 2, "size": 16}, 2),
    ("resnet18.net", "resnet18_cifar", {"base": 4}, 2),
    ("attention_unet.net", None, {"base": 2, "size": 16}, 2),
    ("unet_plus_plus.net", None, {"base": 2, "size": 16}, 2),
    ("unet3d.net", None, {"base": 2, "size": 8}, 2),
    ("vgg16.net", None, {"width": 2, "size": 32, "classes": 10, "p": 0}, 2),
    ("unet_valid.net", None, {"base": 2, "size": 188}, 1),
    ("unet_resnet18.net", None, {"base": 4, "size": 64}, 2),   # enc4 2x2: batchnorm over 8 values
]
ALL_PROGRAMS = [(p, n) for p in sorted(EXAMPLES.glob("*.net"))
                for n in netlang.api.network_names(p)]


def _case(file, network, params, batch, seed=0):
    net = netlang.load(EXAMPLES / file, network=network, params=params)
    rng = np.random.default_rng(seed)
    inputs = {k: rng.standard_normal(t.full_shape(batch)).astype(np.float32)
              for k, t in net.inputs.items()}
    weights = net.init(seed)
    for k in weights:   # non-trivial running statistics for inference batchnorm
        if "running_var" in k:
            weights[k] = np.linspace(0.5, 2.0, weights[k].size, dtype=np.float32)
    targets = {f"t_{k}": rng.standard_normal(t.full_shape(batch)).astype(np.float32)
               for k, t in net.outputs.items()}
    loss = " + ".join(f"mse({k}, t_{k})" for k in net.outputs)
    return net, weights, inputs, targets, loss


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    err = np.abs(a - b).max() if a.size else 0.0
    assert err <= rtol * max(np.abs(b).max(), 1e-30) + 1e-7, f"max error {err:.3g}"


def _check(backend, file, network, params, batch, rtol):
    net, w, x, t, loss = _case(file, network, params, batch)
    got = net.forward(w, x, backend=backend)
    want = net.forward(w, x)
    for k in want:
        _close(got[k], want[k], rtol)
    v1, g1, u1 = net.value_and_grad(w, x | t, loss=loss, return_updates=True, backend=backend)
    v0, g0, u0 = net.value_and_grad(w, x | t, loss=loss, return_updates=True)
    assert v1 == pytest.approx(v0, rel=rtol)
    for k in g0:
        assert grad_error(g1[k], g0[k]) <= 10 * rtol, k
    assert sorted(u1) == sorted(u0)
    for k in u0:
        _close(u1[k], u0[k], rtol)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("file,params", [("lenet5.net", {}), ("unet.net", {"base": 4,
                                                                            "size": 16})],
                         ids=["lenet5", "unet_small"])
def test_whole_programs_match_numpy(backend, file, params):
    """LeNet and a small U-Net, forward and training step, to 1e-5."""
    _check(backend, file, None, params, 2, 1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("file,params", [("lenet5.net", {}), ("resnet18.net", {"base": 4})],
                         ids=["lenet5", "resnet18_cifar"])
def test_convolutions_through_gemm_match_numpy(backend, file, params, monkeypatch):
    """Every convolution through im2col + GEMM (large layers take this path)."""
    monkeypatch.setattr(builder, "GEMM_CONV_MACS", 0)
    network = "resnet18_cifar" if "resnet" in file else None
    net = netlang.load(EXAMPLES / file, network=network, params=params)
    prog = net.compile(training=True, loss="mse(logits, t_logits)")
    assert sum(isinstance(s, R.Gemm) for s in R.render(prog.graph).steps) > 3
    _check(backend, file, network, params, 2, 1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_capturable_program_has_no_cublas_and_matches_numpy(backend, monkeypatch):
    """For CUDA graphs, GEMMs (dense layers, large convolutions) become generated tiled
    kernels; results stay those of the NumPy backend."""
    from netlang.backends.cuda.runtime import Runner

    monkeypatch.setattr(builder, "GEMM_CONV_MACS", 0)
    net, w, x, t, loss = _case("lenet5.net", None, {}, 3)
    prog = net.program_for(True, loss)
    runner = Runner(prog, backend, capturable=True)
    assert not any(isinstance(s, R.Gemm) for s in runner.cprog.steps)
    assert any(s.tiles is not None for s in runner.cprog.steps)
    feeds, n = prog.feeds(w, x | t)
    roots, _ = runner.execute(feeds, n)
    v0, g0 = net.value_and_grad(w, x | t, loss=loss)
    assert float(roots[prog.graph.loss.id]) == pytest.approx(v0, rel=1e-5)
    for k, node in prog.graph.grads.items():
        assert grad_error(roots[node.id], g0[k]) <= 1e-4, k


@pytest.mark.slow
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("file,network,params,batch", SMALL[1:],
                         ids=[c[1] or c[0][:-4] for c in SMALL[1:]])
def test_every_example_matches_numpy(backend, file, network, params, batch):
    # Reductions sum in other orders than NumPy: 1e-4 relative, gradients in norm.
    _check(backend, file, network, params, batch, 1e-4)


@emu
@pytest.mark.emu
def test_fused_equals_unfused():
    net, w, x, t, loss = _case("unet.net", None, {"base": 4, "size": 16}, 2)
    fused = net.compile(training=True, loss=loss)
    unfused = net.compile(training=True, loss=loss, fuse=False)
    assert len(fused.graph.fusion.groups) < len(unfused.graph.fusion.groups)
    a = fused.value_and_grad(w, x | t, backend="cuda-emu")
    b = unfused.value_and_grad(w, x | t, backend="cuda-emu")
    assert a[0] == pytest.approx(b[0], rel=1e-6)
    for k in a[1]:
        _close(a[1][k], b[1][k], 1e-5)


def _all_sources():
    out = []
    for path, network in ALL_PROGRAMS:
        net = netlang.load(path, network=network)
        loss = " + ".join(f"mse({k}, t_{k})" for k in net.outputs)
        for training in (False, True):
            prog = net.compile(training=training, loss=loss if training else None)
            out.append((f"{network}_{'train' if training else 'infer'}",
                        R.render(prog.graph).source))
    # the step graph's forms: GEMMs as tiled kernels, a dropout kernel, the update kernels
    from netlang.optimizers import KERNELS

    drop = netlang.loads("network d() { input x: [4, 8, 8]\n"
                         "output y = x -> dropout(0.5) -> flatten -> dense(3) }")
    for net, loss in ((netlang.load(EXAMPLES / "lenet5.net"), "mse(logits, t)"),
                      (drop, "mse(y, t)")):
        prog = net.compile(training=True, loss=loss)
        out.append((f"{net.name}_train_capturable",
                    R.render(prog.graph, capturable=True).source))
    lenet = netlang.load(EXAMPLES / "lenet5.net")
    for precision in ("tf32", "bf16", "fp16"):   # the round_to kernels, the loss scale
        prog = lenet.with_precision(precision).compile(training=True, loss="mse(logits, t)")
        out.append((f"lenet5_train_{precision}", R.render(prog.graph).source))
    out.append(("updates", R.prelude() + KERNELS))
    return out


@pytest.mark.nvcc
@pytest.mark.skipif(not HAVE_NVCC, reason="nvcc (the CUDA compiler) is not installed")
def test_every_kernel_compiles_with_nvcc(tmp_path):
    """All kernels of every example network, inference and training, as one file, for
    sm_80 and sm_90 (the two compilers run side by side)."""
    units = []
    prelude = R.prelude()
    for i, (name, src) in enumerate(_all_sources()):
        body = src.replace(prelude, "")
        units.append(f"// ---- {name}\n" + re.sub(r"\bk(\d+)_", rf"p{i}_k\1_", body))
    cu = tmp_path / "all.cu"
    cu.write_text(prelude + "\n".join(units))
    runs = {arch: subprocess.Popen(["nvcc", "-ptx", f"-arch={arch}", "-diag-suppress",
                                    "177,550", str(cu), "-o", str(tmp_path / f"{arch}.ptx")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for arch in ("sm_80", "sm_90")}
    for arch, proc in runs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{arch}: {err[-3000:]}"
        ptx = (tmp_path / f"{arch}.ptx").read_text()
        assert f".target {arch}" in ptx
        assert ptx.count(".entry") == sum(u.count("__global__") for u in units)


GOLDEN = ROOT / "tests" / "golden"


@pytest.mark.parametrize("file,training", [("lenet5.net", True), ("unet.net", False)])
def test_golden_cuda_source(file, training):
    net = netlang.load(EXAMPLES / file, params={"base": 4, "size": 32} if "unet" in file else {})
    prog = net.compile(training=training,
                         loss="cross_entropy(logits, label)" if training else None)
    src = R.render(prog.graph).source
    path = GOLDEN / f"{file[:-4]}_{'train' if training else 'infer'}.cu"
    if os.environ.get("NETLANG_UPDATE_GOLDEN"):
        path.write_text(src)
    assert path.exists(), "run with NETLANG_UPDATE_GOLDEN=1 to create the golden file"
    assert src == path.read_text(), "generated CUDA changed; NETLANG_UPDATE_GOLDEN=1 if intended"


def test_unet_inference_kernel_count():
    """Every activation and bias fuses into its conv and every concat is written in place:
    one kernel per conv layer plus the pools and up-convolutions (direct kernels; with
    the GEMM path a large conv is im2col + GEMM + its epilogue kernel instead)."""
    net = netlang.load(EXAMPLES / "unet.net", params={"base": 8, "size": 64})
    prog = net.compile(training=False)
    ops = [n.op for n in prog.graph.nodes]
    fusion = prog.graph.fusion
    assert len(fusion.inplace) == ops.count("concat") == 4
    launches = [s for s in R.render(prog.graph, gemm_conv_macs=1 << 62).steps]
    assert len(launches) == ops.count("conv") + ops.count("maxpool") + \
        ops.count("conv_transpose")
    assert all(g.anchor.op != "relu" for g in fusion.groups)


def test_explain_fusion_says_why():
    net = netlang.load(EXAMPLES / "unet.net", params={"base": 4, "size": 32})
    text = net.compile(training=True, loss="bce(mask, target)").graph.fusion.explain()
    assert "fused: e1.double_conv.conv0 + e1.double_conv.relu0" in text
    assert "not fused: e1.double_conv.relu1 (relu) -> e2.maxpool0 (maxpool): maxpool is " \
           "reduce, not elementwise" in text
    assert "users, so it must be written to memory" in text


def test_compile_writes_kernels_plan_and_report(tmp_path, capsys):
    from netlang.cli import main

    assert main(["compile", str(EXAMPLES / "lenet5.net"), "--train", "--loss",
                 "cross_entropy(logits, label)", "--batch", "8", "-o", str(tmp_path)]) == 0
    src = (tmp_path / "kernels.cu").read_text()
    assert "// implements lenet5.net:4" in src and "__global__" in src
    c_src = (tmp_path / "kernels.cpp").read_text()
    assert "// implements lenet5.net:4" in c_src and "#pragma omp parallel for" in c_src
    assert "__global__" not in c_src and "__syncthreads" not in c_src
    import json

    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["memory"]["arena_bytes"] <= plan["memory"]["total_bytes"]
    assert any("kernel" in s and s["grid"] > 0 for s in plan["steps"])
    report = (tmp_path / "report.txt").read_text()
    assert "kernels after fusion" in report and "without fusion" in report


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="no CUDA device or CuPy")
def test_tf32_flag_switches_cublas_precision():
    import cupy

    from netlang.backends.cuda import runtime

    a = cupy.full((256, 256), 1.0001, dtype=cupy.float32)
    b = cupy.ones((256, 256), dtype=cupy.float32)
    try:
        runtime.use_tf32(False)
        exact = float((a @ b)[0, 0])
        runtime.use_tf32(True)
        tf32 = float((a @ b)[0, 0])
    finally:
        runtime.use_tf32(False)
    assert abs(exact - 256 * 1.0001) < 1e-3
    assert abs(tf32 - 256.0) < abs(exact - 256.0)   # TF32 rounds 1.0001 to 1


def test_cuda_backend_without_cupy_is_a_clear_error():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    net = netlang.load(EXAMPLES / "lenet5.net")
    with pytest.raises(NetlangError) as ei:
        net.forward(net.init(), {"image": np.zeros((1, 1, 28, 28), np.float32)},
                    backend="cuda")
    text = ei.value.render()
    assert "E062" in text and "needs CuPy" in text and "cuda-emu" in text


@emu
@pytest.mark.emu
def test_emu_checks_kernel_arguments():
    from netlang.backends.cuda.emu import EmuModule

    src = R.prelude() + '''
extern "C" __global__ void k0_copy(const float* __restrict__ a, float* __restrict__ out, int N) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    out[i] = a[i] * 2.0f;
}'''
    mod = EmuModule(src)
    a = np.arange(8, dtype=np.float32)
    out = np.zeros(8, np.float32)
    mod.launch("k0_copy", 1, 256, [a, out, 8])
    np.testing.assert_array_equal(out, 2 * a)
    with pytest.raises(AssertionError, match="32-bit int"):
        mod.launch("k0_copy", 1, 256, [a, out, 2**40])
    with pytest.raises(AssertionError, match="float32"):
        mod.launch("k0_copy", 1, 256, [a.astype(np.float64), out, 8])
    with pytest.raises(AssertionError, match="C-contiguous"):
        mod.launch("k0_copy", 1, 256, [np.zeros(16, np.float32)[::2], out, 8])


@emu
@pytest.mark.emu
def test_emu_barrier_runs_threads_cooperatively():
    """A block reduction only works if every thread reaches __syncthreads before any
    passes it: the fiber emulation must give the exact sum."""
    from netlang.backends.cuda.emu import EmuModule

    src = R.prelude() + '''
extern "C" __global__ void k0_sum(const float* __restrict__ a, float* __restrict__ out, int N) {
    __shared__ float sh[256];
    float acc = 0.0f;
    for (int r = threadIdx.x; r < N; r += blockDim.x) acc += a[r];
    sh[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}'''
    mod = EmuModule(src)
    a = np.arange(1000, dtype=np.float32)
    out = np.zeros(3, np.float32)
    mod.launch("k0_sum", 3, 256, [a, out, 1000])
    np.testing.assert_array_equal(out, [a.sum()] * 3)


