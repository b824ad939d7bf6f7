"""docs/adding_an_op.md, followed literally: its two code blocks register `hardshrink`, and a
network using it runs forward and backward on NumPy and on cuda-emu with equal results.

Runs in a subprocess, so the registries of the test session stay without `hardshrink`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.backends.test_cuda import emu
from tests.conftest import ROOT

SCRIPT = r'''
import ast, re, sys
import numpy as np
import netlang
from netlang.kernels import registry as kernels
from netlang.ops import elementwise as family

doc = open(sys.argv[1], encoding="utf-8").read()
blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
op_block = next(b for b in blocks if b.startswith("# netlang/ops/elementwise.py"))
kernel_block = next(b for b in blocks if b.startswith("# netlang/kernels/elementwise.py"))
exec(compile(op_block, "docs/adding_an_op.md", "exec"), vars(family))
entries = ast.literal_eval("{" + kernel_block.split("\n", 1)[1] + "}")
kernels.EXPRESSIONS.update(entries)   # what adding the lines to EXPRESSIONS does

assert kernels.has_lowering("hardshrink") and kernels.has_lowering("hardshrink_grad")
net = netlang.loads("""network n {
    input x: [2, 6, 6]
    output y = x -> conv(3, 3, pad=1) -> hardshrink(lambd=0.3) -> conv(2, 1)
}""")
rng = np.random.default_rng(0)
w = net.init(0)
x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
t = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
ref = net.value_and_grad(w, {"x": x, "t": t}, loss="mse(y, t)", wrt_inputs=True)
emu = net.value_and_grad(w, {"x": x, "t": t}, loss="mse(y, t)", wrt_inputs=True,
                         backend="cuda-emu")
np.testing.assert_allclose(emu[0], ref[0], rtol=1e-5)
for k in ref[1]:
    np.testing.assert_allclose(emu[1][k], ref[1][k], rtol=1e-4, atol=1e-6)
y = net.forward(w, {"x": x}, backend="cuda-emu")["y"]
np.testing.assert_allclose(y, net.forward(w, {"x": x})["y"], rtol=1e-5, atol=1e-6)
print("hardshrink ok on numpy and cuda-emu")
'''


@pytest.mark.emu
@emu
def test_the_documented_op_runs_on_every_backend():
    doc = ROOT / "docs" / "adding_an_op.md"
    assert re.search(r"```python\n# netlang/ops/elementwise.py", doc.read_text())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(doc)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "hardshrink ok on numpy and cuda-emu" in res.stdout
