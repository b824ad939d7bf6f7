"""Render a fused program as CUDA C: one kernel per fusion group (plus the reductions some
ops need), and a launch plan. This module makes strings only; it never imports CuPy.

Every tensor is NCHW-contiguous in its own buffer (an arena slot, an input, a parameter or
a scratch buffer). Shapes are compile-time constants; the batch `N` is a kernel argument,
so one compiled module serves every batch size. Three kernel shapes:

  map     one thread per output element; the anchor computes `v` at the output coordinates
          (o0 = channel, o1.. = spatial), the fused epilogue rewrites `v`, one store.
  reduce  one block per output element; threads stride over the reduction domain, a
          shared-memory tree sums (this is where `__syncthreads` appears).
  gemm    dense layers and their gradients go to cuBLAS through `cupy.matmul` (NumPy in
          the host emulation); a fused epilogue then runs as a map kernel.

Example (conv 3x3 + bias + relu, one group):

    extern "C" __global__ void k3_conv_relu(const float* __restrict__ a0, ... float* out, int N)
    {
        long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
        if (i >= (long long)N * 1024) return;
        int n = (int)(i / 1024); long long r = i % 1024;
        int o0 = (int)(r / 64); r %= 64; int o1 = (int)(r / 8); int o2 = (int)(r % 8);
        float acc = 0.0f;
        for (int ci = 0; ci < 16; ++ci) for (int k0 = 0; k0 < 3; ++k0) ...
        float v = acc + a2[o0];
        v = fmaxf(v, 0.0f);   // relu
        out[i] = v;
    }
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources

from netlang.ir.graph import Graph, Node
from netlang.ir.types import TensorType
from netlang.passes.fusion import Fusion, Group

BLOCK = 256
# Convolutions with at least this many multiply-adds per sample go through im2col and a
# cuBLAS GEMM (compute-bound layers); smaller ones stay direct kernels (launch-bound
# layers, and capturable in CUDA graphs). Tests lower it to exercise both paths.
GEMM_CONV_MACS = 1 << 22


class Unsupported(Exception):
    """An op without a CUDA lowering (reported with its node)."""


@dataclass
class Arg:
    ctype: str      # "const float*", "float*", "const long long*", "int"
    key: str        # buffer key ("v12", "s3", "u7") or "N" / "seed"


@dataclass
class Launch:
    kernel: str
    args: list[Arg]
    count: int              # elements (map) or outputs (reduce), per sample if batched
    batched: bool
    reduce: bool
    nodes: tuple[int, ...]
    # For GEMM kernels: (rows, cols, batches), -1 standing for N; one block a 16x16 tile.
    tiles: tuple[int, int, int] | None = None


@dataclass
class Gemm:
    """out = op(a) @ op(b) on 2-D views of flat buffers; -1 in a view is the batch N."""
    a: str
    b: str
    out: str
    a_view: tuple[int, int]
    b_view: tuple[int, int]
    out_view: tuple[int, int]
    trans_a: bool
    trans_b: bool
    nodes: tuple[int, ...]


@dataclass
class KernelInfo:
    name: str
    nodes: tuple[str, ...]
    lines: tuple[str, ...]
    kind: str


@dataclass
class CudaProgram:
    source: str
    steps: list[Launch | Gemm]
    scratch: dict[str, tuple[int, bool]]     # key -> (elements, batched)
    updates: dict[str, str]                  # update key -> param name (batchnorm stats)
    kernels: list[KernelInfo]
    outputs: dict[str, str] = field(default_factory=dict)


def prelude() -> str:
    return resources.files("netlang.backends.cuda").joinpath("prelude.cuh").read_text()


def _f(x: float) -> str:
    s = repr(float(x))
    if "inf" in s or "nan" in s:
        raise Unsupported(f"constant {s}")
    return s + "f"


def _ident(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s)


# -- index helpers -------------------------------------------------------------------------

def _strides(shape: tuple[int, ...]) -> list[int]:
    st, acc = [], 1
    for d in reversed(shape):
        st.append(acc)
        acc *= d
    return list(reversed(st))


def _at(t: TensorType, key: str, coords: list[str], n: str = "n",
        out_shape: tuple[int, ...] | None = None) -> str:
    """Element of tensor `key` (type t) at per-sample coords, broadcasting size-1 dims."""
    parts = []
    for d, s, c in zip(t.shape, _strides(t.shape), coords[len(coords) - len(t.shape):]):
        if d == 1:   # a size-1 dimension is read at 0 (this is also broadcasting)
            continue
        parts.append(f"{c} * {s}" if s != 1 else c)
    inner = " + ".join(parts) or "0"
    if t.batched:
        return f"{key}[(long long){n} * {t.size} + {inner}]"
    return f"{key}[{inner}]"


def _decompose(shape: tuple[int, ...], var: str, prefix: str) -> list[str]:
    """Lines that split a per-sample linear index `var` into coordinates prefix0.."""
    lines = []
    st = _strides(shape)
    for k, s in enumerate(st):
        if k == len(st) - 1:
            lines.append(f"int {prefix}{k} = (int)({var});")
        else:
            lines.append(f"int {prefix}{k} = (int)({var} / {s}); {var} %= {s};")
    return lines


def _offsets_of(var: str, dims) -> str:
    """" + var0 * stride0 + var1 * stride1 ...": a row-major offset over `dims`."""
    return "".join(f" + {var}{j} * {math.prod(dims[j + 1:])}" for j in range(len(dims)))


def _head(name: str, nodes, params: list[str], index: str, out_t: TensorType, rest: str,
          shared: str | None = None) -> list[str]:
    """A kernel's signature, bounds check, and output coordinates n, o0, o1.. of `i`."""
    total = f"(long long)N * {out_t.size}" if out_t.batched else f"{out_t.size}LL"
    src = [f"// {', '.join(n.name for n in nodes)}",
           f'extern "C" __global__ void {name}({", ".join(params)}) {{']
    if shared:
        src.append(shared)
    src += [f"    long long i = {index};", f"    if (i >= {total}) return;"]
    if out_t.batched:
        src.append(f"    int n = (int)(i / {out_t.size}); long long {rest} = i % {out_t.size};")
    else:
        src.append(f"    int n = 0; long long {rest} = i;")
    if out_t.shape:
        src += ["    " + x for x in _decompose(out_t.shape, rest, "o")]
    return src


# -- the renderer ----------------------------------------------------------------------------

class Renderer:
    def __init__(self, g: Graph, fusion: Fusion, gemm_conv_macs: int | None = None,
                 capturable: bool = False):
        self.g = g
        self.fusion = fusion
        self.capturable = capturable
        # Values written straight into a concat's buffer: out key -> (concat key, channel
        # offset * positions, per-sample sizes of concat and value, keeps its own buffer).
        self.cat_slot: dict[str, tuple[str, int, int, int, bool]] = {}
        by_id = {n.id: n for n in g.nodes}
        for cid, xs in fusion.inplace.items():
            c = by_id[cid]
            start = 0
            per = math.prod(c.type.shape[1:])
            for xid in xs:
                x = by_id[xid]
                self.cat_slot[f"v{xid}"] = (f"v{cid}", start * per, c.type.size, x.type.size,
                                            fusion.keeps_own[xid])
                start += x.type.shape[0]
        self.gemm_conv_macs = GEMM_CONV_MACS if gemm_conv_macs is None else gemm_conv_macs
        self.kernels: list[str] = []
        self.steps: list[Launch | Gemm] = []
        self.scratch: dict[str, tuple[int, bool]] = {}
        self.updates: dict[str, str] = {}
        self.infos: list[KernelInfo] = []
        self.count = 0

    # naming and bookkeeping
    def key(self, n: Node) -> str:
        return f"v{n.id}"

    def new_scratch(self, size: int, batched: bool) -> str:
        k = f"s{len(self.scratch)}"
        self.scratch[k] = (size, batched)
        return k

    def _name(self, label: str) -> str:
        name = f"k{self.count}_{_ident(label)}"[:60]
        self.count += 1
        return name

    def _info(self, name: str, nodes: list[Node], kind: str) -> None:
        lines = sorted({f"{n.span.file.rsplit('/', 1)[-1]}:{n.span.line}"
                        for n in nodes if n.span is not None})
        self.infos.append(KernelInfo(name, tuple(n.name for n in nodes), tuple(lines), kind))

    def emit_map(self, label: str, nodes: list[Node], out_key: str, out_t: TensorType,
                 inputs: dict[str, str], body: list[str], extra: list[Arg] = ()) -> None:
        """A map kernel: `body` computes float v from coordinates n, o0, o1..."""
        name = self._name(label)
        params, args = [], []
        for key, ctype in inputs.items():
            params.append(f"{ctype} __restrict__ {key}")
            args.append(Arg(ctype, key))
        for a in extra:
            params.append(f"{a.ctype} {a.key}")
            args.append(a)
        stores = ["out[i] = v;"]
        slot = self.cat_slot.get(out_key)
        if slot is not None:   # concat in place: also (or only) store into the concat
            cat_key, offset, cat_size, own_size, keep_own = slot
            if not keep_own:
                stores = []
            params.append("float* __restrict__ cat")
            args.append(Arg("float*", cat_key))
            stores.append(f"cat[(long long)n * {cat_size} + {offset} + (i - (long long)n * "
                          f"{own_size})] = v;")
        if slot is None or slot[4]:
            params.append("float* __restrict__ out")
            args.append(Arg("float*", out_key))
        params.append("int N")
        args.append(Arg("int", "N"))
        src = _head(name, nodes, params, "(long long)blockIdx.x * blockDim.x + threadIdx.x",
                    out_t, "r")
        src += ["    " + x for x in body]
        src += ["    " + x for x in stores] + ["}"]
        self.kernels.append("\n".join(src))
        self.steps.append(Launch(name, args, out_t.size, out_t.batched, False,
                                 tuple(n.id for n in nodes)))
        self._info(name, nodes, "map")

    def emit_reduce(self, label: str, nodes: list[Node], out_key: str, out_t: TensorType,
                    inputs: dict[str, str], red_shape_expr: str, setup: list[str],
                    term: list[str], final: str = "v", acc: str = "float",
                    extra: list[Arg] = ()) -> None:
        """A reduce kernel: one block per output element o (coords n, o0..); threads loop
        r over `red_shape_expr` elements, `term` lines add to `acc_v`; `final` maps the
        sum v to the stored value."""
        if out_key in self.cat_slot:
            raise AssertionError(f"{out_key}: a reduction cannot write a concat in place")
        name = self._name(label)
        params, args = [], []
        for key, ctype in inputs.items():
            params.append(f"{ctype} __restrict__ {key}")
            args.append(Arg(ctype, key))
        for a in extra:
            params.append(f"{a.ctype} {a.key}")
            args.append(a)
        params += ["float* __restrict__ out", "int N"]
        args += [Arg("float*", out_key), Arg("int", "N")]
        src = _head(name, nodes, params, "blockIdx.x", out_t, "q",
                    shared=f"    __shared__ {acc} sh[{BLOCK}];")
        src += ["    " + x for x in setup]
        src += [f"    {acc} acc_v = 0;",
                f"    long long R = {red_shape_expr};",
                "    for (long long r = threadIdx.x; r < R; r += blockDim.x) {"]
        src += ["        " + x for x in term]
        src += ["    }",
                "    sh[threadIdx.x] = acc_v;",
                "    __syncthreads();",
                "    for (int s = blockDim.x / 2; s > 0; s >>= 1) {",
                "        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];",
                "        __syncthreads();",
                "    }",
                "    if (threadIdx.x == 0) {",
                "        float v = (float)sh[0];",
                f"        out[i] = {final};",
                "    }",
                "}"]
        self.kernels.append("\n".join(src))
        self.steps.append(Launch(name, args, out_t.size, out_t.batched, True,
                                 tuple(n.id for n in nodes)))
        self._info(name, nodes, "reduce")

    def add_gemm(self, gemm: Gemm) -> None:
        """A GEMM: cuBLAS through cupy.matmul, or, in a capturable program (CUDA graphs;
        CuPy refuses cuBLAS during capture), a generated shared-memory tiled kernel."""
        if not self.capturable:
            self.steps.append(gemm)
            return
        name = self._name("gemm")

        def dims(view):   # (batch, rows, cols) with -1 for N
            return (1,) + tuple(view) if len(view) == 2 else tuple(view)

        ba, ra, ca = dims(gemm.a_view)
        bb, rb, cb = dims(gemm.b_view)
        bo, m, nc = dims(gemm.out_view)
        kdim = ra if gemm.trans_a else ca

        def e(v):
            return "N" if v == -1 else str(v)

        def elem(key, b, r, c, trans, i, j):
            # element (i, j) of op(X) for batch item bb: X is [b?, r, c], row-major
            row, col = (j, i) if trans else (i, j)
            base = f"(long long)bb * {e(r)} * {e(c)} + " if b != 1 else ""
            return f"{key}[{base}(long long)({row}) * {e(c)} + ({col})]"

        a_at = elem("A", ba, ra, ca, gemm.trans_a, "ar", "ak")
        b_at = elem("B", bb, rb, cb, gemm.trans_b, "bk", "bc")
        src = f"""// tiled GEMM (capturable: no cuBLAS), {gemm.out} = op({gemm.a}) @ op({gemm.b})
extern "C" __global__ void {name}(const float* __restrict__ A, const float* __restrict__ B,
                                  float* __restrict__ C, int N) {{
    __shared__ float As[16][17];
    __shared__ float Bs[16][17];
    int M = {e(m)}, NC = {e(nc)}, KD = {e(kdim)};
    int tm = (M + 15) / 16, tn = (NC + 15) / 16;
    int t = blockIdx.x;
    int bb = t / (tm * tn); t %= tm * tn;
    int row0 = (t / tn) * 16, col0 = (t % tn) * 16;
    int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
    float acc = 0.0f;
    for (int k0 = 0; k0 < KD; k0 += 16) {{
        int ar = row0 + ty, ak = k0 + tx;
        As[ty][tx] = (ar < M && ak < KD) ? {a_at} : 0.0f;
        int bk = k0 + ty, bc = col0 + tx;
        Bs[ty][tx] = (bk < KD && bc < NC) ? {b_at} : 0.0f;
        __syncthreads();
        for (int q = 0; q < 16; ++q) acc += As[ty][q] * Bs[q][tx];
        __syncthreads();
    }}
    int r = row0 + ty, c = col0 + tx;
    if (r < M && c < NC) C[(long long)bb * M * NC + (long long)r * NC + c] = acc;
}}"""
        self.kernels.append(src)
        args = [Arg("const float*", gemm.a), Arg("const float*", gemm.b),
                Arg("float*", gemm.out), Arg("int", "N")]
        self.steps.append(Launch(name, args, 0, False, True, gemm.nodes, (m, nc, bo)))
        self.infos.append(KernelInfo(name, (), (), "gemm-kernel"))

    # -- programs --------------------------------------------------------------------------
    def render(self) -> CudaProgram:
        for grp in self.fusion.groups:
            try:
                self.group(grp)
            except Unsupported as exc:
                raise Unsupported(f"{grp.anchor.name} ({grp.anchor.op}): {exc}") from None
        source = "\n\n".join([prelude()] + self.kernels) + "\n"
        return CudaProgram(source, self.steps, self.scratch, self.updates, self.infos)

    def group(self, grp: Group) -> None:
        a = grp.anchor
        fn = getattr(self, f"op_{a.op}", None)
        if fn is None:
            if a.op in EPI:
                return self.elementwise_group(grp)
            raise Unsupported("no CUDA lowering")
        fn(grp)

    # epilogue: rewrite v through the fused elementwise ops
    def epilogue(self, grp: Group, nodes: list[Node], inputs: dict[str, str],
                 coords: list[str]) -> list[str]:
        lines = []
        out_shape = grp.output.type.shape
        for e in nodes:
            loads = {}
            for k, x in enumerate(e.inputs[1:], start=1):
                if x.op == "param" or (x.type.rank == 1 and len(out_shape) > 1
                                       and x.type.shape[0] == out_shape[0] and not x.type.batched):
                    inputs[self.key(x)] = "const float*"
                    loads[k] = f"{self.key(x)}[o0]" if len(out_shape) else f"{self.key(x)}[0]"
                else:
                    inputs[self.key(x)] = "const float*"
                    loads[k] = _at(x.type, self.key(x), coords, out_shape=out_shape)
            lines.append(f"v = {_expr(e, 'v', loads)};  // {e.op}")
        return lines

    def coords(self, t: TensorType) -> list[str]:
        return [f"o{k}" for k in range(t.rank)]

    def elementwise_group(self, grp: Group) -> None:
        a = grp.anchor
        out_t = grp.output.type
        coords = self.coords(out_t)
        x = a.inputs[0]
        inputs = {self.key(x): "const float*"}
        body = [f"float v = {_at(x.type, self.key(x), coords, out_shape=out_t.shape)};"]
        body += self.epilogue(grp, [a] + grp.epilogue, inputs, coords)
        self.emit_map(grp.name, grp.nodes, self.key(grp.output), out_t, inputs, body)

    def finish_map(self, grp: Group, label: str, inputs: dict[str, str], body: list[str],
                   extra: list[Arg] = ()) -> None:
        out_t = grp.output.type
        body = body + self.epilogue(grp, grp.epilogue, inputs, self.coords(out_t))
        self.emit_map(label, grp.nodes, self.key(grp.output), out_t, inputs, body, extra)

    # -- convolutions --------------------------------------------------------------------
    # -- convolutions as im2col + GEMM (large layers) -------------------------------------
    def _gemm_conv(self, n: Node, x: Node, w_shape: tuple[int, ...]) -> bool:
        """Whether a convolution-like node goes through cuBLAS."""
        macs = math.prod(w_shape) * math.prod(n.type.shape[1:]) if n.op == "conv" else \
            math.prod(w_shape) * math.prod(x.type.shape[1:])
        return n.attrs["groups"] == 1 and macs >= self.gemm_conv_macs

    def _im2col(self, n: Node, x: Node, k, out_sp) -> tuple[str, int, int]:
        """Scratch cols [N, C * prod(k), prod(out)] of x for a convolution's windows."""
        at = n.attrs
        s, d, p = at["stride"], at["dilation"], at["pad"]
        nd = len(k)
        cin, sp_in = x.type.shape[0], x.type.shape[1:]
        kk, P = math.prod(k), math.prod(out_sp)
        K = cin * kk
        cols = self.new_scratch(K * P, True)
        t = TensorType((K, P))
        body = [f"int ci = o0 / {kk}; int tap = o0 % {kk}; long long q = o1;"]
        body += _decompose(tuple(k), "tap", "t") if nd else []
        body += _decompose(tuple(out_sp), "q", "u")
        conds, idx = [], []
        for j in range(nd):
            body.append(f"int i{j} = u{j} * {s[j]} - {p[2 * j]} + t{j} * {d[j]};")
            conds.append(f"i{j} >= 0 && i{j} < {sp_in[j]}")
            idx.append(f"i{j}")
        body.append(f"float v = ({' && '.join(conds)}) ? {self._xat(x, 'ci', idx)} : 0.0f;")
        self.emit_map(n.name + "_im2col", [n], cols, t, {self.key(x): "const float*"}, body)
        return cols, K, P

    def _conv_gemm(self, grp: Group) -> None:
        """y[n] = W [Cout, K] @ cols[n] [K, P] (batched GEMM), then bias and the epilogue."""
        n = grp.anchor
        x, w = n.inputs[0], n.inputs[1]
        cout = n.type.shape[0]
        cols, K, P = self._im2col(n, x, tuple(n.attrs["kernel"]), n.type.shape[1:])
        gemm = Gemm(self.key(w), cols, "", (cout, K), (-1, K, P), (-1, cout, P), False, False,
                    (n.id,))
        self._gemm_then(grp, gemm, n.type, n.inputs[2] if n.attrs["bias"] else None)

    def _conv_grad_weight_gemm(self, grp: Group) -> None:
        """dW = sum_n dy[n] [Cout, P] @ cols[n]^T [P, K]: a batched GEMM, then a batch sum."""
        n = grp.anchor
        dy, x = n.inputs
        cout = dy.type.shape[0]
        cols, K, P = self._im2col(n, x, tuple(n.attrs["kernel"]), dy.type.shape[1:])
        per = self.new_scratch(cout * K, True)
        self.add_gemm(Gemm(self.key(dy), cols, per, (-1, cout, P), (-1, K, P),
                               (-1, cout, K), False, True, (n.id,)))
        self._info(f"gemm:{n.name}", [n], "gemm")
        size = cout * K
        body = ["float v = 0.0f;",
                f"for (int b = 0; b < N; ++b) v += {per}[(long long)b * {size} + i];"]
        self.emit_map(n.name + "_batch_sum", grp.nodes, self.key(n), n.type,
                      {per: "const float*"}, body)

    def _conv_grad_input_gemm(self, grp: Group) -> None:
        """dcols[n] = W^T [K, Cout] @ dy[n] [Cout, P], then a col2im gather per input pixel
        (no atomics), which also runs the fused epilogue (the activation's gradient mask)."""
        n = grp.anchor
        dy, w = n.inputs
        at = n.attrs
        k = tuple(w.type.shape[2:])
        s, d, p = at["stride"], at["dilation"], at["pad"]
        nd = len(k)
        cout, out_sp = dy.type.shape[0], dy.type.shape[1:]
        cin = n.type.shape[0]
        kk, P = math.prod(k), math.prod(out_sp)
        K = cin * kk
        dcols = self.new_scratch(K * P, True)
        self.add_gemm(Gemm(self.key(w), self.key(dy), dcols, (cout, K), (-1, cout, P),
                               (-1, K, P), True, False, (n.id,)))
        self._info(f"gemm:{n.name}", [n], "gemm")
        body, ind = ["float acc = 0.0f;"], ""
        for j in range(nd):
            body.append(ind + f"for (int k{j} = 0; k{j} < {k[j]}; ++k{j}) {{")
            ind += "    "
            body.append(ind + f"int t{j} = o{j + 1} + {p[2 * j]} - k{j} * {d[j]};")
            body.append(ind + f"if (t{j} < 0 || t{j} % {s[j]} != 0) continue;")
            body.append(ind + f"int u{j} = t{j} / {s[j]};")
            body.append(ind + f"if (u{j} >= {out_sp[j]}) continue;")
        tap = " + ".join(f"k{j} * {math.prod(k[j + 1:])}" for j in range(nd)) or "0"
        pos = " + ".join(f"u{j} * {math.prod(out_sp[j + 1:])}" for j in range(nd)) or "0"
        body.append(ind + f"acc += {dcols}[(long long)n * {K * P} + (long long)(o0 * {kk} + "
                          f"{tap}) * {P} + {pos}];")
        for _ in range(nd):
            ind = ind[:-4]
            body.append(ind + "}")
        body.append("float v = acc;")
        self.finish_map(grp, grp.name + "_col2im", {dcols: "const float*"}, body)

    def op_conv(self, grp: Group) -> None:
        n = grp.anchor
        x, w = n.inputs[0], n.inputs[1]
        if self._gemm_conv(n, x, w.type.shape):
            return self._conv_gemm(grp)
        at = n.attrs
        nd = x.type.rank - 1
        cin, sp_in = x.type.shape[0], x.type.shape[1:]
        cout = at["channels"]
        g = at["groups"]
        cg, og = cin // g, cout // g
        k, s, d, p = at["kernel"], at["stride"], at["dilation"], at["pad"]
        inputs = {self.key(x): "const float*", self.key(w): "const float*"}
        body = ["float acc = 0.0f;",
                f"int gbase = (o0 / {og}) * {cg};",
                f"for (int ci = 0; ci < {cg}; ++ci) {{"]
        ind = "    "
        for j in range(nd):
            body.append(ind + f"for (int k{j} = 0; k{j} < {k[j]}; ++k{j}) {{")
            ind += "    "
            body.append(ind + f"int i{j} = o{j + 1} * {s[j]} - {p[2 * j]} + k{j} * {d[j]};")
            body.append(ind + f"if (i{j} < 0 || i{j} >= {sp_in[j]}) continue;")
        xi = "(long long)n * {} + (long long)(gbase + ci) * {}".format(x.type.size,
                                                                        math.prod(sp_in))
        xi += _offsets_of("i", sp_in)
        wi = f"(o0 * {cg} + ci) * {math.prod(k)}"
        wi += _offsets_of("k", k)
        body.append(ind + f"acc += {self.key(x)}[{xi}] * {self.key(w)}[{wi}];")
        for _ in range(nd + 1):
            ind = ind[:-4]
            body.append(ind + "}")
        self._bias_and_finish(grp, inputs, body)

    def _bias_and_finish(self, grp: Group, inputs: dict[str, str], body: list[str]) -> None:
        """`v = acc (+ bias[o0])`, then the group's epilogue and the store."""
        n = grp.anchor
        if n.attrs["bias"]:
            b = n.inputs[2]
            inputs[self.key(b)] = "const float*"
            body.append(f"float v = acc + {self.key(b)}[o0];")
        else:
            body.append("float v = acc;")
        self.finish_map(grp, grp.name, inputs, body)

    def _transposed_body(self, x: Node, w: Node, out_t: TensorType, at: dict,
                         inputs: dict[str, str]) -> list[str]:
        """Gather form of a transposed convolution (conv_transpose, conv_grad_input): the
        output pixel o receives x[i] * w[k] wherever i * s - p + k * d == o."""
        nd = x.type.rank - 1
        cx, sp_x = x.type.shape[0], x.type.shape[1:]
        cy = out_t.shape[0]
        g = at["groups"]
        k, s, d, p = w.type.shape[2:], at["stride"], at["dilation"], at["pad"]
        gx, gy = cx // g, cy // g
        inputs[self.key(x)] = "const float*"
        inputs[self.key(w)] = "const float*"
        body = ["float acc = 0.0f;", f"int grp = o0 / {gy}; int oc = o0 % {gy};",
                f"for (int cj = 0; cj < {gx}; ++cj) {{", f"    int cx = grp * {gx} + cj;"]
        ind = "    "
        for j in range(nd):
            body.append(ind + f"for (int k{j} = 0; k{j} < {k[j]}; ++k{j}) {{")
            ind += "    "
            body.append(ind + f"int t{j} = o{j + 1} + {p[2 * j]} - k{j} * {d[j]};")
            body.append(ind + f"if (t{j} < 0 || t{j} % {s[j]} != 0) continue;")
            body.append(ind + f"int i{j} = t{j} / {s[j]};")
            body.append(ind + f"if (i{j} >= {sp_x[j]}) continue;")
        xi = f"(long long)n * {x.type.size} + (long long)cx * {math.prod(sp_x)}"
        xi += _offsets_of("i", sp_x)
        # conv_transpose weights are [Cin, Cout/g, *k] and conv_grad_input reads conv's
        # [Cout, Cin/g, *k]: in both, the first axis is the side being gathered from (cx).
        wi = f"(cx * {gy} + oc) * {math.prod(k)}"
        wi += _offsets_of("k", k)
        body.append(ind + f"acc += {self.key(x)}[{xi}] * {self.key(w)}[{wi}];")
        for _ in range(nd + 1):
            ind = ind[:-4]
            body.append(ind + "}")
        return body

    def op_conv_transpose(self, grp: Group) -> None:
        n = grp.anchor
        inputs: dict[str, str] = {}
        body = self._transposed_body(n.inputs[0], n.inputs[1], n.type, n.attrs, inputs)
        self._bias_and_finish(grp, inputs, body)

    def op_conv_grad_input(self, grp: Group) -> None:
        # dx = transposed conv of dy with w [Cout, Cin/g, *k]: w[co, ci_local, k], where the
        # "input" channels of the transposed conv are the forward's output channels.
        n = grp.anchor
        dy, w = n.inputs
        if self._gemm_conv(n, dy, w.type.shape):
            return self._conv_grad_input_gemm(grp)
        inputs: dict[str, str] = {}
        body = self._transposed_body(dy, w, n.type, n.attrs, inputs)
        body.append("float v = acc;")
        self.finish_map(grp, grp.name, inputs, body)

    def _weight_grad(self, grp: Group, dy: Node, x: Node, transposed: bool) -> None:
        """dW by reduction over (n, positions): conv's [Cout, Cin/g, *k] from dy (output
        side) and x (input side); conv_transpose's [Cin, Cout/g, *k] with the roles swapped."""
        n = grp.anchor
        at = n.attrs
        out_t = n.type
        s, d, p = at["stride"], at["dilation"], at["pad"]
        g = at["groups"]
        # "small" side: the tensor indexed by positions r (dy for conv, x for conv_transpose)
        big, small = (dy, x) if transposed else (x, dy)
        nd = small.type.rank - 1
        sp_small, sp_big = small.type.shape[1:], big.type.shape[1:]
        c_small_g = small.type.shape[0] // g
        c_big_g = big.type.shape[0] // g
        # Output coords: o0 = the weight's first axis, which is the small side's channel
        # (conv: dy's Cout; conv_transpose: x's Cin), o1 = the big side's channel in the
        # group, o2.. = kernel taps.
        setup = [f"int grp = o0 / {c_small_g};",
                 f"int cs = o0; int cb = grp * {c_big_g} + o1;"]
        per = math.prod(sp_small)
        term = [f"int nn = (int)(r / {per}); long long rr = r % {per};"]
        term += _decompose(sp_small, "rr", "p")
        cond = []
        for j in range(nd):
            term.append(f"int b{j} = p{j} * {s[j]} - {p[2 * j]} + o{j + 2} * {d[j]};")
            cond.append(f"b{j} >= 0 && b{j} < {sp_big[j]}")
        si = f"(long long)nn * {small.type.size} + (long long)cs * {per}"
        si += _offsets_of("p", sp_small)
        bi = f"(long long)nn * {big.type.size} + (long long)cb * {math.prod(sp_big)}"
        bi += _offsets_of("b", sp_big)
        term.append(f"if ({' && '.join(cond) or '1'}) acc_v += "
                    f"{self.key(small)}[{si}] * {self.key(big)}[{bi}];")
        inputs = {self.key(dy): "const float*", self.key(x): "const float*"}
        self.emit_reduce(grp.name, grp.nodes, self.key(n), out_t, inputs, f"(long long)N * {per}",
                         setup, term)

    def op_conv_grad_weight(self, grp: Group) -> None:
        n = grp.anchor
        if self._gemm_conv(n, n.inputs[0], n.type.shape) and not grp.epilogue:
            return self._conv_grad_weight_gemm(grp)
        self._weight_grad(grp, n.inputs[0], n.inputs[1], False)

    def op_conv_transpose_grad_weight(self, grp: Group) -> None:
        self._weight_grad(grp, grp.anchor.inputs[0], grp.anchor.inputs[1], True)

    def op_bias_grad(self, grp: Group) -> None:
        n = grp.anchor
        dy = n.inputs[0]
        per = math.prod(dy.type.shape[1:])
        term = [f"int nn = (int)(r / {per}); long long rr = r % {per};",
                f"acc_v += {self.key(dy)}[(long long)nn * {dy.type.size} + (long long)o0 * "
                f"{per} + rr];"]
        self.emit_reduce(grp.name, grp.nodes, self.key(n), n.type,
                         {self.key(dy): "const float*"}, f"(long long)N * {per}", [], term)

    # -- dense (GEMM through cuBLAS) -----------------------------------------------------
    def _gemm_then(self, grp: Group, gemm: Gemm, tmp_t: TensorType, bias: Node | None) -> None:
        in_concat = self.key(grp.output) in self.cat_slot   # needs the map kernel's store
        if bias is None and not grp.epilogue and not in_concat:
            gemm.out = self.key(grp.output)
            self.add_gemm(gemm)
            self._info(f"gemm:{grp.anchor.name}", grp.nodes, "gemm")
            return
        tmp = self.new_scratch(tmp_t.size, tmp_t.batched)
        gemm.out = tmp
        self.add_gemm(gemm)
        self._info(f"gemm:{grp.anchor.name}", [grp.anchor], "gemm")
        inputs = {tmp: "const float*"}
        body = [f"float v = {_at(tmp_t, tmp, self.coords(tmp_t))};"]
        if bias is not None:
            inputs[self.key(bias)] = "const float*"
            body.append(f"v += {self.key(bias)}[o0];")
        self.finish_map(grp, grp.name + "_epilogue", inputs, body)

    def op_dense(self, grp: Group) -> None:
        n = grp.anchor
        x, w = n.inputs[:2]
        o, k = w.type.shape
        gemm = Gemm(self.key(x), self.key(w), "", (-1, k), (o, k), (-1, o), False, True,
                    (n.id,))
        self._gemm_then(grp, gemm, n.type, n.inputs[2] if n.attrs["bias"] else None)

    def op_dense_grad_input(self, grp: Group) -> None:
        n = grp.anchor
        dy, w = n.inputs
        o, k = w.type.shape
        gemm = Gemm(self.key(dy), self.key(w), "", (-1, o), (o, k), (-1, k), False, False,
                    (n.id,))
        self._gemm_then(grp, gemm, n.type, None)

    def op_dense_grad_weight(self, grp: Group) -> None:
        n = grp.anchor
        dy, x = n.inputs
        o, k = n.type.shape
        gemm = Gemm(self.key(dy), self.key(x), self.key(n), (-1, o), (-1, k), (o, k), True,
                    False, (n.id,))
        self.add_gemm(gemm)
        self._info(f"gemm:{n.name}", [n], "gemm")

    # -- pooling and resampling -----------------------------------------------------------
    def _window_loops(self, at: dict, sp_in, nd: int, inner: list[str], bounds: str = "skip"
                      ) -> list[str]:
        k, s = at["kernel"], at["stride"]
        d = at.get("dilation", (1,) * nd)
        p = at["pad"]
        body, ind = [], ""
        for j in range(nd):
            body.append(ind + f"for (int k{j} = 0; k{j} < {k[j]}; ++k{j}) {{")
            ind += "    "
            body.append(ind + f"int i{j} = o{j + 1} * {s[j]} - {p[2 * j]} + k{j} * {d[j]};")
            if bounds == "skip":
                body.append(ind + f"if (i{j} < 0 || i{j} >= {sp_in[j]}) continue;")
        body += [ind + x for x in inner]
        for _ in range(nd):
            ind = ind[:-4]
            body.append(ind + "}")
        return body

    def _xat(self, x: Node, chan: str, idx: list[str]) -> str:
        sp = x.type.shape[1:]
        e = f"(long long)n * {x.type.size} + (long long){chan} * {math.prod(sp)}"
        for j, v in enumerate(idx):
            e += f" + {v} * {math.prod(sp[j + 1:])}"
        return f"{self.key(x)}[{e}]"

    def op_maxpool(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        nd = x.type.rank - 1
        inner = [f"float t = {self._xat(x, 'o0', [f'i{j}' for j in range(nd)])};",
                 "if (t > m) m = t;"]
        body = ["float m = -NL_INF;"] + self._window_loops(n.attrs, x.type.shape[1:], nd, inner)
        body.append("float v = m;")
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    def op_maxpool_grad(self, grp: Group) -> None:
        """dx at an input pixel: the dy of every window whose first maximum is this pixel."""
        n = grp.anchor
        dy, x = n.inputs
        at = n.attrs
        nd = x.type.rank - 1
        sp_in, sp_out = x.type.shape[1:], dy.type.shape[1:]
        k, s = at["kernel"], at["stride"]
        d = at.get("dilation", (1,) * nd)
        p = at["pad"]
        body = ["float acc = 0.0f;"]
        ind = ""
        for j in range(nd):   # output windows that may contain this pixel
            body.append(ind + f"for (int w{j} = 0; w{j} < {sp_out[j]}; ++w{j}) {{")
            ind += "    "
            body.append(ind + f"int kk{j} = o{j + 1} + {p[2 * j]} - w{j} * {s[j]};")
            body.append(ind + f"if (kk{j} < 0 || kk{j} % {d[j]} != 0 || kk{j} / {d[j]} >= "
                              f"{k[j]}) continue;")
        # find the window's first maximum (row-major over the kernel, as NumPy/PyTorch)
        body.append(ind + "float m = -NL_INF; int first = 1; int is_me = 0;")
        inner = [f"float t = {self._xat(x, 'o0', [f'i{j}' for j in range(nd)])};",
                 "if (first || t > m) { m = t; first = 0; is_me = ("
                 + " && ".join(f"i{j} == o{j + 1}" for j in range(nd)) + "); }"]
        loops, ind2 = [], ind
        for j in range(nd):
            loops.append(ind2 + f"for (int q{j} = 0; q{j} < {k[j]}; ++q{j}) {{")
            ind2 += "    "
            loops.append(ind2 + f"int i{j} = w{j} * {s[j]} - {p[2 * j]} + q{j} * {d[j]};")
            loops.append(ind2 + f"if (i{j} < 0 || i{j} >= {sp_in[j]}) continue;")
        loops += [ind2 + x_ for x_ in inner]
        for _ in range(nd):
            ind2 = ind2[:-4]
            loops.append(ind2 + "}")
        body += loops
        dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
        dyi += _offsets_of("w", sp_out)
        body.append(ind + f"if (is_me) acc += {self.key(dy)}[{dyi}];")
        for _ in range(nd):
            ind = ind[:-4]
            body.append(ind + "}")
        body.append("float v = acc;")
        self.finish_map(grp, grp.name, {self.key(dy): "const float*", self.key(x): "const float*"},
                        body)

    def _avg_count(self, at: dict, sp_in, nd: int, wvars: list[str]) -> list[str]:
        """Divisor of the window at output position `wvars` (PyTorch's rule)."""
        k, s = at["kernel"], at["stride"]
        p = at["pad"]
        lines = ["int cnt = 1;"]
        for j in range(nd):
            lo = f"{wvars[j]} * {s[j]} - {p[2 * j]}"
            if at["count_include_pad"]:
                lines.append(f"{{ int a = {lo}; int b = a + {k[j]}; if (b > {sp_in[j]} + "
                             f"{p[2 * j + 1]}) b = {sp_in[j]} + {p[2 * j + 1]}; cnt *= (b - a); }}")
            else:
                lines.append(f"{{ int a = {lo}; int b = a + {k[j]}; if (a < 0) a = 0; if (b > "
                             f"{sp_in[j]}) b = {sp_in[j]}; cnt *= (b - a); }}")
        lines.append("if (cnt < 1) cnt = 1;")
        return lines

    def op_avgpool(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        nd = x.type.rank - 1
        inner = [f"acc += {self._xat(x, 'o0', [f'i{j}' for j in range(nd)])};"]
        body = ["float acc = 0.0f;"] + self._window_loops(n.attrs, x.type.shape[1:], nd, inner)
        body += self._avg_count(n.attrs, x.type.shape[1:], nd, [f"o{j + 1}" for j in range(nd)])
        body.append("float v = acc / (float)cnt;")
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    def op_avgpool_grad(self, grp: Group) -> None:
        n = grp.anchor
        dy = n.inputs[0]
        at = n.attrs
        sp_in = tuple(at["in_shape"][1:])
        sp_out = dy.type.shape[1:]
        nd = len(sp_in)
        k, s = at["kernel"], at["stride"]
        p = at["pad"]
        body, ind = ["float acc = 0.0f;"], ""
        for j in range(nd):
            body.append(ind + f"for (int w{j} = 0; w{j} < {sp_out[j]}; ++w{j}) {{")
            ind += "    "
            body.append(ind + f"int kk{j} = o{j + 1} + {p[2 * j]} - w{j} * {s[j]};")
            body.append(ind + f"if (kk{j} < 0 || kk{j} >= {k[j]}) continue;")
        body += [ind + x_ for x_ in self._avg_count(at, sp_in, nd,
                                                     [f"w{j}" for j in range(nd)])]
        dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
        dyi += _offsets_of("w", sp_out)
        body.append(ind + f"acc += {self.key(dy)}[{dyi}] / (float)cnt;")
        for _ in range(nd):
            ind = ind[:-4]
            body.append(ind + "}")
        body.append("float v = acc;")
        self.finish_map(grp, grp.name, {self.key(dy): "const float*"}, body)

    def op_global_avgpool(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        per = math.prod(x.type.shape[1:])
        term = [f"acc_v += {self.key(x)}[(long long)n * {x.type.size} + (long long)o0 * {per} "
                "+ r];"]
        self.emit_reduce(grp.name, grp.nodes, self.key(n), n.type, {self.key(x): "const float*"},
                         f"{per}", [], term, final=f"v / {per}.0f")

    def op_global_avgpool_grad(self, grp: Group) -> None:
        n = grp.anchor
        dy = n.inputs[0]
        per = math.prod(n.type.shape[1:])
        body = [f"float v = {self.key(dy)}[(long long)n * {dy.type.size} + o0] / {per}.0f;"]
        self.finish_map(grp, grp.name, {self.key(dy): "const float*"}, body)

    def op_upsample(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        at = n.attrs
        nd = x.type.rank - 1
        sp_in = x.type.shape[1:]
        body = []
        if at["mode"] == "nearest":
            idx = []
            for j in range(nd):
                body.append(f"int i{j} = (int)floorf((float)o{j + 1} / {_f(at['scale'][j])}); "
                            f"if (i{j} > {sp_in[j] - 1}) i{j} = {sp_in[j] - 1};")
                idx.append(f"i{j}")
            body.append(f"float v = {self._xat(x, 'o0', idx)};")
        else:
            for j in range(nd):
                body += [f"float c{j} = ((float)o{j + 1} + 0.5f) / {_f(at['scale'][j])} - 0.5f; "
                         f"if (c{j} < 0.0f) c{j} = 0.0f;",
                         f"int a{j} = (int)floorf(c{j}); if (a{j} > {sp_in[j] - 1}) "
                         f"a{j} = {sp_in[j] - 1};",
                         f"int b{j} = a{j} + 1 < {sp_in[j]} ? a{j} + 1 : {sp_in[j] - 1};",
                         f"float l{j} = c{j} - (float)a{j};"]
            body.append("float v = 0.0f;")
            for combo in range(2 ** nd):
                idx, wts = [], []
                for j in range(nd):
                    hi = (combo >> j) & 1
                    idx.append(f"b{j}" if hi else f"a{j}")
                    wts.append(f"l{j}" if hi else f"(1.0f - l{j})")
                body.append(f"v += {' * '.join(wts)} * {self._xat(x, 'o0', idx)};")
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    def op_upsample_grad(self, grp: Group) -> None:
        """dx at input pixel i: sum over output pixels whose interpolation reads i."""
        n = grp.anchor
        dy = n.inputs[0]
        at = n.attrs
        sp_out = dy.type.shape[1:]
        nd = len(sp_out)
        sp_in = tuple(at["in_shape"][1:])
        body, ind = ["float acc = 0.0f;"], ""
        for j in range(nd):
            sc = at["scale"][j]
            lo = f"(int)floorf(((float)o{j + 1} - 1.0f) * {_f(sc)}) - 1"
            hi = f"(int)ceilf(((float)o{j + 1} + 2.0f) * {_f(sc)}) + 1"
            body.append(ind + f"int lo{j} = {lo}; if (lo{j} < 0) lo{j} = 0;")
            body.append(ind + f"int hi{j} = {hi}; if (hi{j} > {sp_out[j]}) hi{j} = {sp_out[j]};")
            if at["mode"] == "nearest":   # the last input row also takes the overflow rows
                body.append(ind + f"if (o{j + 1} == {sp_in[j] - 1}) hi{j} = {sp_out[j]};")
            body.append(ind + f"for (int d{j} = lo{j}; d{j} < hi{j}; ++d{j}) {{")
            ind += "    "
            if at["mode"] == "nearest":
                body.append(ind + f"int s{j} = (int)floorf((float)d{j} / {_f(sc)}); if (s{j} > "
                                  f"{sp_in[j] - 1}) s{j} = {sp_in[j] - 1};")
                body.append(ind + f"float w{j} = s{j} == o{j + 1} ? 1.0f : 0.0f;")
            else:
                body += [ind + f"float c{j} = ((float)d{j} + 0.5f) / {_f(sc)} - 0.5f; if (c{j} < "
                               f"0.0f) c{j} = 0.0f;",
                         ind + f"int a{j} = (int)floorf(c{j}); if (a{j} > {sp_in[j] - 1}) a{j} = "
                               f"{sp_in[j] - 1};",
                         ind + f"int b{j} = a{j} + 1 < {sp_in[j]} ? a{j} + 1 : {sp_in[j] - 1};",
                         ind + f"float l{j} = c{j} - (float)a{j};",
                         ind + f"float w{j} = (a{j} == o{j + 1} ? 1.0f - l{j} : 0.0f) + "
                               f"(b{j} == o{j + 1} ? l{j} : 0.0f);"]
            body.append(ind + f"if (w{j} == 0.0f) continue;")
        dyi = f"(long long)n * {dy.type.size} + (long long)o0 * {math.prod(sp_out)}"
        dyi += _offsets_of("d", sp_out)
        body.append(ind + f"acc += {' * '.join(f'w{j}' for j in range(nd))} * "
                          f"{self.key(dy)}[{dyi}];")
        for _ in range(nd):
            ind = ind[:-4]
            body.append(ind + "}")
        body.append("float v = acc;")
        self.finish_map(grp, grp.name, {self.key(dy): "const float*"}, body)

    # -- data movement ---------------------------------------------------------------------
    def op_concat(self, grp: Group) -> None:
        n = grp.anchor
        if n.id in self.fusion.inplace:
            return   # its inputs' kernels wrote it
        inputs, body = {}, ["float v;"]
        start = 0
        coords = self.coords(n.type)
        for k, x in enumerate(n.inputs):
            c = x.type.shape[0]
            inputs[self.key(x)] = "const float*"
            rest = [f"(o0 - {start})"] + coords[1:]
            kw = "if" if k == 0 else "else if"
            body.append(f"{kw} (o0 < {start + c}) v = {_at(x.type, self.key(x), rest)};")
            start += c
        self.finish_map(grp, grp.name, inputs, body)

    def op_slice_channels(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        coords = [f"(o0 + {n.attrs['start']})"] + self.coords(n.type)[1:]
        body = [f"float v = {_at(x.type, self.key(x), coords)};"]
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    def op_crop(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        box = n.attrs["box"]
        coords = ["o0"] + [f"(o{j + 1} + {box[2 * j]})" for j in range(x.type.rank - 1)]
        body = [f"float v = {_at(x.type, self.key(x), coords)};"]
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    def op_pad(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        box = n.attrs["box"]
        nd = x.type.rank - 1
        conds = [f"o{j + 1} >= {box[2 * j]} && o{j + 1} < {box[2 * j] + x.type.shape[j + 1]}"
                 for j in range(nd)]
        coords = ["o0"] + [f"(o{j + 1} - {box[2 * j]})" for j in range(nd)]
        body = [f"float v = ({' && '.join(conds)}) ? {_at(x.type, self.key(x), coords)} : 0.0f;"]
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    def _copy(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        if x.type.batched:
            src = f"{self.key(x)}[(long long)n * {x.type.size} + r0]"
        else:
            src = f"{self.key(x)}[r0]"
        body = ["long long r0 = i - (long long)n * " + str(n.type.size if n.type.batched else 0)
                + ";", f"float v = {src};"]
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    op_flatten = _copy
    op_reshape = _copy

    def op_broadcast_like(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        out_t = n.type
        coords = self.coords(out_t)
        if x.type.shape == () or (not x.type.batched and x.type.size == 1):
            body = [f"float v = {self.key(x)}[0];"]
        elif x.type.rank < out_t.rank:
            body = [f"float v = {self.key(x)}[o0];"]
        else:
            body = [f"float v = {_at(x.type, self.key(x), coords)};"]
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    def op_constant(self, grp: Group) -> None:
        self.finish_map(grp, grp.name, {}, [f"float v = {_f(grp.anchor.attrs['value'])};"])

    def op_sum_to(self, grp: Group) -> None:
        """Sum a broadcast gradient back: reduce over the batch (if the target is unbatched)
        and over dims where the target has size 1."""
        n = grp.anchor
        x = n.inputs[0]
        xs, ts = x.type.shape, n.type.shape
        lead = len(xs) - len(ts)
        red_dims = [j for j in range(len(xs)) if j < lead or ts[j - lead] == 1 and xs[j] != 1]
        red_sizes = [xs[j] for j in red_dims]
        batch_red = x.type.batched and not n.type.batched
        R = math.prod(red_sizes)
        term = []
        if batch_red:
            term.append(f"int nn = (int)(r / {R}); long long rr = r % {R};")
        else:
            term.append("int nn = n; long long rr = r;")
        term += _decompose(tuple(red_sizes), "rr", "q") if red_sizes else []
        idx, qk = [], 0
        for j in range(len(xs)):
            if j in red_dims:
                idx.append(f"q{qk}")
                qk += 1
            else:
                idx.append(f"o{j - lead}")
        inner = " + ".join(f"{v} * {s}" for v, s in zip(idx, _strides(xs))) or "0"
        base = f"(long long)nn * {x.type.size} + " if x.type.batched else ""
        term.append(f"acc_v += {self.key(x)}[{base}{inner}];")
        total = f"(long long)N * {R}" if batch_red else f"{R}"
        self.emit_reduce(grp.name, grp.nodes, self.key(n), n.type,
                         {self.key(x): "const float*"}, total, [], term)

    def op_sum(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        total = f"(long long)N * {x.type.size}" if x.type.batched else f"{x.type.size}"
        self.emit_reduce(grp.name, grp.nodes, self.key(n), n.type, {self.key(x): "const float*"},
                         total, [], [f"acc_v += {self.key(x)}[r];"], acc="double")

    # -- softmax ---------------------------------------------------------------------------
    def _chan_index(self, x: Node, chan: str) -> str:
        t = x.type
        per = math.prod(t.shape[1:])
        rest = " + ".join(f"o{j + 1} * {math.prod(t.shape[j + 2:])}"
                          for j in range(t.rank - 1)) or "0"
        return f"{self.key(x)}[(long long)n * {t.size} + (long long)({chan}) * {per} + {rest}]"

    def op_softmax(self, grp: Group) -> None:
        n = grp.anchor
        x = n.inputs[0]
        c = x.type.shape[0]
        body = ["float m = -NL_INF;",
                f"for (int c = 0; c < {c}; ++c) m = fmaxf(m, {self._chan_index(x, 'c')});",
                "float s = 0.0f;",
                f"for (int c = 0; c < {c}; ++c) s += expf({self._chan_index(x, 'c')} - m);",
                f"float v = expf({self._chan_index(x, 'o0')} - m) / s;"]
        self.finish_map(grp, grp.name, {self.key(x): "const float*"}, body)

    def op_softmax_grad(self, grp: Group) -> None:
        n = grp.anchor
        dy, y = n.inputs
        c = y.type.shape[0]
        body = ["float s = 0.0f;",
                f"for (int c = 0; c < {c}; ++c) s += {self._chan_index(dy, 'c')} * "
                f"{self._chan_index(y, 'c')};",
                f"float v = {self._chan_index(y, 'o0')} * ({self._chan_index(dy, 'o0')} - s);"]
        self.finish_map(grp, grp.name, {self.key(dy): "const float*", self.key(y): "const float*"},
                        body)

    # -- batchnorm -------------------------------------------------------------------------
    def _bn_stats(self, grp: Group, x: Node, nodes: list[Node]) -> tuple[str, str]:
        """Scratch [C] mean and (biased) variance of x over batch and positions."""
        c = x.type.shape[0]
        per = math.prod(x.type.shape[1:])
        stat_t = TensorType((c,), batched=False)
        mean, var = self.new_scratch(c, False), self.new_scratch(c, False)
        count = f"((long long)N * {per})"
        xi = f"{self.key(x)}[(long long)(r / {per}) * {x.type.size} + (long long)o0 * {per} + " \
             f"r % {per}]"
        self.emit_reduce(grp.anchor.name + "_mean", nodes, mean, stat_t,
                         {self.key(x): "const float*"}, count, [], [f"acc_v += {xi};"],
                         final=f"(float)(sh[0] / (double){count})", acc="double")
        self.emit_reduce(grp.anchor.name + "_var", nodes, var, stat_t,
                         {self.key(x): "const float*", mean: "const float*"}, count,
                         [f"float mu = {mean}[o0];"],
                         [f"float dd = {xi} - mu;", "acc_v += (double)dd * dd;"],
                         final=f"(float)(sh[0] / (double){count})", acc="double")
        return mean, var

    def op_batchnorm(self, grp: Group) -> None:
        n = grp.anchor
        at = n.attrs
        x = n.inputs[0]
        rm, rv = n.inputs[-2:]
        inputs = {self.key(x): "const float*"}
        coords = self.coords(n.type)
        xv = _at(x.type, self.key(x), coords)
        if at.get("training"):
            mean, var = self._bn_stats(grp, x, [n])
            # running statistics (unbiased variance), written to update buffers
            per = math.prod(x.type.shape[1:])
            m = at["momentum"]
            ur, uv = f"u{rm.id}", f"u{rv.id}"
            self.updates[ur], self.updates[uv] = rm.name, rv.name
            self.scratch.setdefault(ur, (rm.type.size, False))
            self.scratch.setdefault(uv, (rv.type.size, False))
            ctype = "const float*"
            body = [f"float cnt = (float)((long long)N * {per});",
                    f"float v = (1.0f - {_f(m)}) * {self.key(rm)}[o0] + {_f(m)} * {mean}[o0];"]
            self.emit_map(n.name + "_running_mean", [n], ur, rm.type,
                          {self.key(rm): ctype, mean: ctype}, body[1:])
            body = [f"float cnt = (float)((long long)N * {per});",
                    f"float ub = cnt > 1.0f ? {var}[o0] * cnt / (cnt - 1.0f) : {var}[o0];",
                    f"float v = (1.0f - {_f(m)}) * {self.key(rv)}[o0] + {_f(m)} * ub;"]
            self.emit_map(n.name + "_running_var", [n], uv, rv.type,
                          {self.key(rv): ctype, var: ctype}, body)
            mu, va = f"{mean}[o0]", f"{var}[o0]"
            inputs[mean] = inputs[var] = ctype
        else:
            inputs[self.key(rm)] = inputs[self.key(rv)] = "const float*"
            mu, va = f"{self.key(rm)}[o0]", f"{self.key(rv)}[o0]"
        body = [f"float v = ({xv} - {mu}) * rsqrtf({va} + {_f(at['eps'])});"]
        if at["affine"]:
            w, b = n.inputs[1], n.inputs[2]
            inputs[self.key(w)] = inputs[self.key(b)] = "const float*"
            body.append(f"v = v * {self.key(w)}[o0] + {self.key(b)}[o0];")
        self.finish_map(grp, grp.name, inputs, body)

    def op_batchnorm_grad_input(self, grp: Group) -> None:
        n = grp.anchor
        at = n.attrs
        dy, x, rm, rv = n.inputs[:4]
        w = n.inputs[4] if at["affine"] else None
        coords = self.coords(n.type)
        ctype = "const float*"
        inputs = {self.key(dy): ctype, self.key(x): ctype}
        gexpr = _at(dy.type, self.key(dy), coords)
        wexpr = f" * {self.key(w)}[o0]" if w is not None else ""
        if w is not None:
            inputs[self.key(w)] = ctype
        if not at["training"]:
            inputs[self.key(rv)] = ctype
            body = [f"float v = {gexpr}{wexpr} * rsqrtf({self.key(rv)}[o0] + {_f(at['eps'])});"]
            return self.finish_map(grp, grp.name, inputs, body)
        mean, var = self._bn_stats(grp, x, [n])
        c = x.type.shape[0]
        per = math.prod(x.type.shape[1:])
        stat_t = TensorType((c,), batched=False)
        count = f"((long long)N * {per})"
        off = f"(long long)(r / {per}) * {x.type.size} + (long long)o0 * {per} + r % {per}"
        sg, sgx = self.new_scratch(c, False), self.new_scratch(c, False)
        red_in = {self.key(dy): ctype, self.key(x): ctype, mean: ctype, var: ctype}
        if w is not None:
            red_in[self.key(w)] = ctype
        wmul = f" * {self.key(w)}[o0]" if w is not None else ""
        setup = [f"float mu = {mean}[o0]; float inv = rsqrtf({var}[o0] + {_f(at['eps'])});"]
        self.emit_reduce(n.name + "_sg", [n], sg, stat_t, red_in, count, setup,
                         [f"acc_v += (double){self.key(dy)}[{off}]{wmul};"], acc="double")
        self.emit_reduce(n.name + "_sgx", [n], sgx, stat_t, red_in, count, setup,
                         [f"acc_v += (double){self.key(dy)}[{off}]{wmul} * "
                          f"(({self.key(x)}[{off}] - mu) * inv);"], acc="double")
        inputs.update({mean: ctype, var: ctype, sg: ctype, sgx: ctype})
        xv = _at(x.type, self.key(x), coords)
        body = [f"float inv = rsqrtf({var}[o0] + {_f(at['eps'])});",
                f"float m = (float){count};",
                f"float xh = ({xv} - {mean}[o0]) * inv;",
                f"float g = {gexpr}{wexpr};",
                f"float v = inv / m * (m * g - {sg}[o0] - xh * {sgx}[o0]);"]
        self.finish_map(grp, grp.name, inputs, body)

    def op_batchnorm_grad_weight(self, grp: Group) -> None:
        n = grp.anchor
        at = n.attrs
        dy, x, rm, rv = n.inputs
        ctype = "const float*"
        per = math.prod(x.type.shape[1:])
        if at["training"]:
            mean, var = self._bn_stats(grp, x, [n])
        else:
            mean, var = self.key(rm), self.key(rv)
        off = f"(long long)(r / {per}) * {x.type.size} + (long long)o0 * {per} + r % {per}"
        setup = [f"float mu = {mean}[o0]; float inv = rsqrtf({var}[o0] + {_f(at['eps'])});"]
        self.emit_reduce(grp.name, grp.nodes, self.key(n), n.type,
                         {self.key(dy): ctype, self.key(x): ctype, mean: ctype, var: ctype},
                         f"((long long)N * {per})", setup,
                         [f"acc_v += (double){self.key(dy)}[{off}] * (({self.key(x)}[{off}] - mu)"
                          " * inv);"], acc="double")

    # -- dropout ---------------------------------------------------------------------------
    def op_dropout(self, grp: Group) -> None:
        self.elementwise_group(grp)

    def op_dropout_mask(self, grp: Group) -> None:
        p = grp.anchor.attrs["p"]
        keep = 1.0 - p
        body = [f"float v = nl_uniform((unsigned int)seed, (unsigned int)i) < {_f(keep)} ? "
                f"{_f(1.0 / keep)} : 0.0f;"]
        self.finish_map(grp, grp.name, {}, body, extra=[Arg("int", "seed")])

    # -- losses ----------------------------------------------------------------------------
    def _loss_reduce(self, grp: Group, term: list[str], count: str, inputs) -> None:
        n = grp.anchor
        self.emit_reduce(grp.name, grp.nodes, self.key(n), n.type, inputs, count, [], term,
                         final=f"(float)(sh[0] / (double)({count}))", acc="double")

    def op_mse(self, grp: Group) -> None:
        p, t = grp.anchor.inputs
        total = f"(long long)N * {p.type.size}"
        self._loss_reduce(grp, [f"float dd = {self.key(p)}[r] - {self.key(t)}[r];",
                                "acc_v += (double)dd * dd;"], total,
                          {self.key(p): "const float*", self.key(t): "const float*"})

    def op_bce(self, grp: Group) -> None:
        p, t = grp.anchor.inputs
        total = f"(long long)N * {p.type.size}"
        self._loss_reduce(grp, [
            f"double pp = {self.key(p)}[r]; double tt = {self.key(t)}[r];",
            "double lp = pp > 0.0 ? log(pp) : -100.0; if (lp < -100.0) lp = -100.0;",
            "double lq = pp < 1.0 ? log(1.0 - pp) : -100.0; if (lq < -100.0) lq = -100.0;",
            "acc_v += -(tt * lp + (1.0 - tt) * lq);"], total,
            {self.key(p): "const float*", self.key(t): "const float*"})

    def op_bce_logits(self, grp: Group) -> None:
        z, t = grp.anchor.inputs
        total = f"(long long)N * {z.type.size}"
        self._loss_reduce(grp, [
            f"double zz = {self.key(z)}[r]; double tt = {self.key(t)}[r];",
            "acc_v += (zz > 0.0 ? zz : 0.0) - zz * tt + log1p(exp(-fabs(zz)));"], total,
            {self.key(z): "const float*", self.key(t): "const float*"})

    def _ce_position(self, z: Node, var: str = "r") -> list[str]:
        c = z.type.shape[0]
        per = math.prod(z.type.shape[1:])
        zi = f"{self.key(z)}[(long long)nn * {z.type.size} + (long long)cc * {per} + pos]"
        return [f"int nn = (int)({var} / {per}); long long pos = {var} % {per};",
                "float m = -NL_INF;",
                f"for (int cc = 0; cc < {c}; ++cc) m = fmaxf(m, {zi});",
                "double s = 0.0;",
                f"for (int cc = 0; cc < {c}; ++cc) s += exp((double)({zi} - m));"]

    def op_cross_entropy(self, grp: Group) -> None:
        z, t = grp.anchor.inputs
        per = math.prod(z.type.shape[1:])
        total = f"(long long)N * {per}"
        term = self._ce_position(z) + [
            f"int tc = (int){self.key(t)}[(long long)nn * {per} + pos];",
            f"acc_v += log(s) + m - {self.key(z)}[(long long)nn * {z.type.size} + "
            f"(long long)tc * {per} + pos];"]
        self._loss_reduce(grp, term, total,
                          {self.key(z): "const float*", self.key(t): "const long long*"})

    def _dice_parts(self, grp: Group, p: Node, t: Node) -> str:
        """Scratch [3, C]: sum(p t), sum(p), sum(t) per channel."""
        c = p.type.shape[0]
        per = math.prod(p.type.shape[1:])
        parts = self.new_scratch(3 * c, False)
        off = f"(long long)(r / {per}) * {p.type.size} + (long long)ch * {per} + r % {per}"
        term = [f"float a = {self.key(p)}[{off}]; float b = {self.key(t)}[{off}];",
                "acc_v += which == 0 ? (double)a * b : (which == 1 ? (double)a : (double)b);"]
        self.emit_reduce(grp.anchor.name + "_parts", [grp.anchor], parts,
                         TensorType((3, c), batched=False),
                         {self.key(p): "const float*", self.key(t): "const float*"},
                         f"(long long)N * {per}", ["int which = o0; int ch = o1;"], term,
                         acc="double")
        return parts

    def op_dice(self, grp: Group) -> None:
        n = grp.anchor
        p, t = n.inputs
        c = p.type.shape[0]
        parts = self._dice_parts(grp, p, t)
        body = ["float v = 0.0f;",
                f"for (int ch = 0; ch < {c}; ++ch) v += (2.0f * {parts}[ch] + 1.0f) / "
                f"({parts}[{c} + ch] + {parts}[{2 * c} + ch] + 1.0f);",
                f"v = 1.0f - v / {c}.0f;"]
        self.finish_map(grp, grp.name, {parts: "const float*"}, body)

    def op_dice_grad(self, grp: Group) -> None:
        n = grp.anchor
        p, t, g = n.inputs
        c = p.type.shape[0]
        parts = self._dice_parts(grp, p, t)
        coords = self.coords(n.type)
        tv = _at(t.type, self.key(t), coords)
        body = [f"float num = 2.0f * {parts}[o0] + 1.0f;",
                f"float den = {parts}[{c} + o0] + {parts}[{2 * c} + o0] + 1.0f;",
                f"float v = -(2.0f * {tv} * den - num) / (den * den) / {c}.0f * "
                f"{self.key(g)}[0];"]
        self.finish_map(grp, grp.name, {parts: "const float*", self.key(t): "const float*",
                                        self.key(g): "const float*"}, body)

    def _pointwise_loss_grad(self, grp: Group, expr: str) -> None:
        """Gradient of a mean-reduced pointwise loss: expr(p, t) times g / count."""
        n = grp.anchor
        p, t, g = n.inputs
        coords = self.coords(n.type)
        pv, tv = _at(p.type, self.key(p), coords), _at(t.type, self.key(t), coords)
        body = [f"float pp = {pv}; float tt = {tv};",
                f"float v = ({expr}) * ({self.key(g)}[0] / "
                f"(float)((long long)N * {p.type.size}));"]
        self.finish_map(grp, grp.name, {self.key(p): "const float*", self.key(t): "const float*",
                                        self.key(g): "const float*"}, body)

    def op_mse_grad(self, grp: Group) -> None:
        self._pointwise_loss_grad(grp, "2.0f * (pp - tt)")

    def op_bce_grad(self, grp: Group) -> None:
        self._pointwise_loss_grad(grp, "(pp - tt) / fmaxf(pp * (1.0f - pp), 1e-12f)")

    def op_bce_logits_grad(self, grp: Group) -> None:
        self._pointwise_loss_grad(grp, "nl_sigmoid(pp) - tt")

    def op_cross_entropy_grad(self, grp: Group) -> None:
        n = grp.anchor
        z, t, g = n.inputs
        per = math.prod(z.type.shape[1:])
        rest = " + ".join(f"o{j + 1} * {math.prod(z.type.shape[j + 2:])}"
                          for j in range(z.type.rank - 1)) or "0"
        body = [f"long long pos = {rest}; int nn = n;"]
        body += self._ce_position(z, "0")[1:]   # reuses nn, pos
        body += [f"int tc = (int){self.key(t)}[(long long)n * {per} + pos];",
                 f"float pr = (float)(exp((double)({_at(z.type, self.key(z), self.coords(n.type))}"
                 " - m)) / s);",
                 f"float v = (pr - (o0 == tc ? 1.0f : 0.0f)) * ({self.key(g)}[0] / "
                 f"(float)((long long)N * {per}));"]
        self.finish_map(grp, grp.name, {self.key(z): "const float*",
                                        self.key(t): "const long long*",
                                        self.key(g): "const float*"}, body)


# Elementwise expressions: `{v}` is the flowing value, `{1}`.. the other inputs at the
# same coordinates (per-channel vectors read at o0).
EPI = {
    "relu": "fmaxf({v}, 0.0f)",
    "relu_grad": "({1} > 0.0f ? {v} : 0.0f)",
    "leaky_relu": "({v} > 0.0f ? {v} : {v} * {alpha})",
    "leaky_relu_grad": "({1} > 0.0f ? {v} : {v} * {alpha})",
    "sigmoid": "nl_sigmoid({v})",
    "sigmoid_grad": "({v} * {1} * (1.0f - {1}))",
    "tanh": "tanhf({v})",
    "tanh_grad": "({v} * (1.0f - {1} * {1}))",
    "add": "({v} + {1})",
    "mul": "({v} * {1})",
    "scale": "({v} * {factor})",
    "dropout": "{v}",
    "batchnorm": "((({v}) - {rm}) * rsqrtf({rv} + {eps}) {affine})",
}


def _expr(e: Node, v: str, loads: dict[int, str]) -> str:
    if e.op == "batchnorm":
        a = e.attrs
        if a.get("training"):
            raise Unsupported("batchnorm in training is not an epilogue")
        k = len(e.inputs)
        rm, rv = loads[k - 2], loads[k - 1]
        affine = f"* {loads[1]} + {loads[2]}" if a["affine"] else ""
        return EPI["batchnorm"].format(v=v, rm=rm, rv=rv, eps=_f(a["eps"]), affine=affine)
    if e.op not in EPI:
        raise Unsupported(f"{e.op} is not an elementwise expression")
    fmt = {"v": v}
    for key, val in e.attrs.items():
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            fmt[key] = _f(val)
    text = EPI[e.op]
    for k, val in loads.items():
        text = text.replace("{" + str(k) + "}", val)
    return text.format(**fmt)


def render(g: Graph, gemm_conv_macs: int | None = None, capturable: bool = False
           ) -> CudaProgram:
    """CUDA source and launch plan for a compiled program (its graph must be fused).
    `capturable`: no cuBLAS calls (GEMMs as generated kernels), for CUDA graphs."""
    if g.fusion is None:
        raise AssertionError("render needs a fused program")
    prog = Renderer(g, g.fusion, gemm_conv_macs, capturable).render()
    prog.outputs = {k: f"v{n.id}" for k, n in g.outputs.items()}
    return prog


__all__ = ["CudaProgram", "Gemm", "KernelInfo", "Launch", "Unsupported", "render"]
