"""The kernel builder: turns the fusion groups of a compiled program into kernel source
and a launch plan, using each op's lowering (kernels/<family>.py, by op) and elementwise
expressions (fused into whichever kernel produces their input).

Every tensor is NCHW-contiguous in its own buffer (an arena slot, an input, a parameter or
a scratch buffer). Shapes are compile-time constants; the batch `N` is a kernel argument,
so one compiled module serves every batch size. Three kernel shapes:

  map     one thread per output element; the anchor computes `v` at the output coordinates
          (o0 = channel, o1.. = spatial), the fused epilogue rewrites `v`, one store.
  reduce  one block per output element; threads stride over the reduction domain, a
          shared-memory tree sums (this is where `__syncthreads` appears).
  gemm    dense layers and their gradients go to cuBLAS through `cupy.matmul` (NumPy in
          the host emulation); a fused epilogue then runs as a map kernel.
  call    (the C dialect only) a host routine of backends/cpu/routines.h: convolutions as
          im2col + BLAS, the max-pool gradient as a scatter; an epilogue as a map kernel.

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
        v = (v < 0.0f ? 0.0f : v);   // relu
        out[i] = v;
    }

The module makes strings only and imports no CuPy (the CUDA runtime does). The kernel
text is CUDA C; the host emulation compiles the same text (backends/cuda/emu.h).

(Longer than our ~400-line guide: the three kernel shapes share the argument, store and
in-place-concat logic; the op-specific lowerings are elsewhere, in kernels/<family>.py.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from netlang.ir.graph import Graph, Node
from netlang.ir.types import TensorType
from netlang.kernels import registry
from netlang.ir.fusion import Fusion, Group

BLOCK = 256
# Convolutions with at least this many multiply-adds per sample go through im2col and a
# cuBLAS GEMM (compute-bound layers); smaller ones stay direct kernels (launch-bound
# layers, and capturable in CUDA graphs). Tests lower it to exercise both paths.
GEMM_CONV_MACS = 1 << 22


class Unsupported(Exception):
    """An op without a kernel lowering (reported with its node)."""


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
    # For GEMM kernels: (rows, cols, batches), -k standing for k * N; one block a 16x16
    # tile.
    tiles: tuple[int, int, int] | None = None

    def grid(self, batch: int) -> int:
        """Blocks to launch at this batch size (BLOCK threads each)."""
        if self.tiles is not None:
            m, nc, b = (-d * batch if d < 0 else d for d in self.tiles)
            return -(-m // 16) * -(-nc // 16) * b
        total = self.count * (batch if self.batched else 1)
        return total if self.reduce else -(-total // BLOCK)


@dataclass
class Gemm:
    """out = op(a) @ op(b) on 2-D (or batched 3-D) views of flat buffers; a negative
    extent -k in a view is k times the batch N (-1 is N: a dense layer's rows; -T the
    N * T token rows of a dense layer on [T, D])."""
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
class Call:
    """A call of a host routine (backends/cpu/routines.h; the C dialect only): `code` is
    one C statement in which `$key` stands for a buffer and `N` for the batch."""
    code: str
    keys: tuple[str, ...]
    nodes: tuple[int, ...]


@dataclass
class KernelInfo:
    name: str
    nodes: tuple[str, ...]
    lines: tuple[str, ...]
    form: str                 # map | reduce | gemm | gemm-kernel | call


@dataclass
class CudaProgram:
    source: str
    steps: list[Launch | Gemm | Call]
    scratch: dict[str, tuple[int, bool]]     # key -> (elements, batched)
    updates: dict[str, str]                  # update key -> param name (batchnorm stats)
    kernels: list[KernelInfo]
    outputs: dict[str, str] = field(default_factory=dict)
    buffer_keys: list[str] = field(default_factory=list)   # C: nl_step's buffer table


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


def position_in_channel(t: TensorType) -> str:
    """The offset of output coordinates o1, o2.. within channel o0's plane (row-major)."""
    sp = t.shape[1:]
    return " + ".join(f"(long long)o{j + 1} * {math.prod(sp[j + 1:])}"
                      for j in range(len(sp))) or "0"


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


# -- loop nests as data -------------------------------------------------------------------

@dataclass(frozen=True)
class Loop:
    """One level of a loop nest, `for (int var = start; var < stop; ++var)`: `before` lines
    go just above the `for`, `head` lines open its body (index arithmetic, `continue`
    guards)."""

    var: str
    stop: int | str
    head: tuple[str, ...] = ()
    start: int | str = 0
    before: tuple[str, ...] = ()


def nest(loops: list[Loop], inner: list[str]) -> list[str]:
    """The C lines of `loops` (outermost first) around `inner`, indented by depth (the one
    place that indents: lowerings describe loops, they never count spaces)."""
    lines: list[str] = []
    for depth, lp in enumerate(loops):
        pad = "    " * depth
        lines += [pad + x for x in lp.before]
        lines.append(f"{pad}for (int {lp.var} = {lp.start}; {lp.var} < {lp.stop}; ++{lp.var}) {{")
        lines += [pad + "    " + x for x in lp.head]
    pad = "    " * len(loops)
    lines += [pad + x for x in inner]
    lines += ["    " * depth + "}" for depth in reversed(range(len(loops)))]
    return lines


def window_taps(k, s, d, p, sizes, out: str = "o", tap: str = "k", var: str = "i",
                first: int = 1, bounds: bool = True) -> list[Loop]:
    """Loops over a sliding window's taps: var_j = out_j * s - p + tap_j * d, skipping taps
    outside [0, size) when `bounds`. `out` coordinates are numbered from `first` (o1 is
    the first spatial coordinate of the output)."""
    loops = []
    for j in range(len(k)):
        head = [f"int {var}{j} = {out}{j + first} * {s[j]} - {p[2 * j]} + {tap}{j} * {d[j]};"]
        if bounds:
            head.append(f"if ({var}{j} < 0 || {var}{j} >= {sizes[j]}) continue;")
        loops.append(Loop(f"{tap}{j}", k[j], tuple(head)))
    return loops


def gather_taps(k, s, d, p, sizes, var: str) -> list[Loop]:
    """Loops over the taps that reach output pixel o in a transposed window (the gather
    form of a scatter): t = o + p - k d must be a multiple of s, and var = t / s in range."""
    return [Loop(f"k{j}", k[j], (f"int t{j} = o{j + 1} + {p[2 * j]} - k{j} * {d[j]};",
                                 f"if (t{j} < 0 || t{j} % {s[j]} != 0) continue;",
                                 f"int {var}{j} = t{j} / {s[j]};",
                                 f"if ({var}{j} >= {sizes[j]}) continue;"))
            for j in range(len(k))]


def _params(inputs: dict[str, str], extra) -> tuple[list[str], list[Arg]]:
    """A kernel's parameter declarations and launch arguments for its input buffers (key ->
    C type) and extra scalars."""
    params = [f"{ctype} __restrict__ {key}" for key, ctype in inputs.items()]
    params += [f"{a.ctype} {a.key}" for a in extra]
    return params, [Arg(ctype, key) for key, ctype in inputs.items()] + list(extra)


def source_lines(nodes) -> tuple[str, ...]:
    """The `.net` lines (file:line) that a kernel's nodes come from."""
    return tuple(sorted({f"{n.span.file.rsplit('/', 1)[-1]}:{n.span.line}"
                         for n in nodes if n.span is not None}))


@dataclass(frozen=True)
class Dialect:
    """What differs between renderings of the same kernels, as data (tinygrad's renderers):
    how a kernel is declared, how output elements are spread (CUDA: one thread, or one
    block for a reduction; C: a loop, split over cores by OpenMP), and how a reduction
    sums (a shared-memory tree, or a plain loop). Lines may use {total}, {acc}, {final}."""

    name: str
    signature: str
    map_open: tuple[str, ...]
    map_close: tuple[str, ...]
    reduce_open: tuple[str, ...]
    reduce_loop: str
    reduce_close: tuple[str, ...]
    # C: output elements as nested loops (batch, channel, ...; the outer two split over the
    # cores), so no index is divided per element and inner loops can vectorise.
    nested: bool = False
    # C: convolutions as calls of the host routines (im2col + BLAS), not generated loops.
    routines: bool = False


CUDA = Dialect(
    "cuda", 'extern "C" __global__ void {name}({params}) {{',
    ("    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;",
     "    if (i >= {total}) return;"),
    (),
    (f"    __shared__ {{acc}} sh[{BLOCK}];", "    long long i = blockIdx.x;",
     "    if (i >= {total}) return;"),
    "    for (long long r = threadIdx.x; r < R; r += blockDim.x) {{",
    ("    }}",
     "    sh[threadIdx.x] = acc_v;",
     "    __syncthreads();",
     "    for (int s = blockDim.x / 2; s > 0; s >>= 1) {{",
     "        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];",
     "        __syncthreads();",
     "    }}",
     "    if (threadIdx.x == 0) {{",
     "        float v = (float)sh[0];",
     "        out[i] = {final};",
     "    }}"))

C = Dialect(
    "c", 'extern "C" void {name}({params}) {{',
    (), (),
    ("    {acc} sh[1];",),
    "    for (long long r = 0; r < R; ++r) {{",
    ("    }}",
     "    sh[0] = acc_v;",
     "    {{ float v = (float)sh[0]; out[i] = {final}; }}"),
    nested=True, routines=True)


def _head(dialect: Dialect, opening: tuple[str, ...], name: str, nodes, params: list[str],
          out_t: TensorType, rest: str, acc: str = "float") -> tuple[list[str], list[str]]:
    """A kernel's signature, element loop or index, and output coordinates n, o0, o1..;
    and the lines that close the element loops."""
    total = f"(long long)N * {out_t.size}" if out_t.batched else f"{out_t.size}LL"
    src = [f"// {', '.join(n.name for n in nodes)}"]
    if source_lines(nodes):
        src.append(f"// implements {', '.join(source_lines(nodes))}")
    src.append(dialect.signature.format(name=name, params=", ".join(params)))
    if dialect.nested:
        loops = ([("n", "N")] if out_t.batched else []) + \
            [(f"o{k}", str(d)) for k, d in enumerate(out_t.shape)]
        outer = min(len(loops), 2)
        if outer:
            src.append(f"    #pragma omp parallel for collapse({outer}) schedule(static)")
        for var, stop in loops:
            src.append(f"    for (int {var} = 0; {var} < {stop}; ++{var}) {{")
        if not out_t.batched:
            src.append("    const int n = 0;")
        index = f"(long long)n * {out_t.size}" if out_t.batched else "0LL"
        index += _offsets_of("o", out_t.shape).replace(" + o", " + (long long)o")
        src.append(f"    long long i = {index};")
        src += [line.format(total=total, acc=acc) for line in opening]
        return src, ["    }"] * len(loops)
    src += [line.format(total=total, acc=acc) for line in opening]
    if out_t.batched:
        src.append(f"    int n = (int)(i / {out_t.size}); long long {rest} = i % {out_t.size};")
    else:
        src.append(f"    int n = 0; long long {rest} = i;")
    if out_t.shape:
        src += ["    " + x for x in _decompose(out_t.shape, rest, "o")]
    return src, []


# -- the builder -----------------------------------------------------------------------------

class KernelBuilder:
    def __init__(self, g: Graph, fusion: Fusion, gemm_conv_macs: int | None = None,
                 capturable: bool = False, dialect: Dialect = CUDA):
        if capturable and dialect is not CUDA:
            raise AssertionError("generated GEMM kernels are CUDA only")
        self.dialect = dialect
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

    def _info(self, name: str, nodes: list[Node], form: str) -> None:
        self.infos.append(KernelInfo(name, tuple(n.name for n in nodes), source_lines(nodes),
                                     form))

    def emit_map(self, label: str, nodes: list[Node], out_key: str, out_t: TensorType,
                 inputs: dict[str, str], body: list[str], extra: list[Arg] = ()) -> None:
        """A map kernel: `body` computes float v from coordinates n, o0, o1..."""
        name = self._name(label)
        params, args = _params(inputs, extra)
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
        d = self.dialect
        src, close = _head(d, d.map_open, name, nodes, params, out_t, "r")
        src += ["    " + x for x in body]
        src += ["    " + x for x in stores] + [x.format() for x in d.map_close] + close + ["}"]
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
        params, args = _params(inputs, extra)
        params += ["float* __restrict__ out", "int N"]
        args += [Arg("float*", out_key), Arg("int", "N")]
        d = self.dialect
        src, close = _head(d, d.reduce_open, name, nodes, params, out_t, "q", acc)
        src += ["    " + x for x in setup]
        src += [f"    {acc} acc_v = 0;",
                f"    long long R = {red_shape_expr};",
                d.reduce_loop.format()]
        src += ["        " + x for x in term]
        src += [x.format(final=final) for x in d.reduce_close] + close + ["}"]
        self.kernels.append("\n".join(src))
        self.steps.append(Launch(name, args, out_t.size, out_t.batched, True,
                                 tuple(n.id for n in nodes)))
        self._info(name, nodes, "reduce")

    def add_call(self, label: str, nodes: list[Node], code: str, keys) -> None:
        """A host routine call (C dialect): `code` names buffers as `$key`."""
        self.steps.append(Call(code, tuple(keys), tuple(n.id for n in nodes)))
        self._info(f"call:{label}", nodes, "call")

    def call_then(self, grp: Group, call, out_t: TensorType) -> None:
        """A routine writing the group's anchor: `call(dst, image_stride)` gives the C
        statement and its buffer keys. Straight into the output (or its concat slot) when
        nothing is fused after it, else into scratch that a map kernel reads for the
        epilogue."""
        n = grp.anchor
        slot = self.cat_slot.get(self.key(grp.output))
        if not grp.epilogue and (slot is None or not slot[4]):
            if slot is None:
                dst, stride, key = f"${self.key(n)}", out_t.size, self.key(n)
            else:
                key, offset, cat_size, _, _ = slot
                dst, stride = f"${key} + {offset}", cat_size
            code, keys = call(dst, stride)
            self.add_call(n.name, grp.nodes, code, list(keys) + [key])
            return
        # The routine's result is read once, by the epilogue kernel right after it: all
        # such results share one scratch buffer (per batched-ness), as large as the largest.
        tmp = "se" if out_t.batched else "su"
        size, _ = self.scratch.get(tmp, (0, out_t.batched))
        self.scratch[tmp] = (max(size, out_t.size), out_t.batched)
        code, keys = call(f"${tmp}", out_t.size)
        self.add_call(n.name, [n], code, list(keys) + [tmp])
        self.finish_map(grp, grp.name + "_epilogue", {tmp: "const float*"},
                        [f"float v = {_at(out_t, tmp, self.coords(out_t))};"])

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
            return "N" if v == -1 else f"(N * {-v})" if v < 0 else str(v)

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
    def build(self, prelude: str) -> CudaProgram:
        for grp in self.fusion.groups:
            self.group(grp)
        source = "\n\n".join([prelude] + self.kernels) + "\n"
        return CudaProgram(source, self.steps, self.scratch, self.updates, self.infos)

    def group(self, grp: Group) -> None:
        """The anchor's lowering, or a map kernel for an elementwise anchor."""
        a = grp.anchor
        fn = registry.lowering(a.op)
        if fn is not None:
            return fn(self, grp)
        if registry.expression_of(a.op) is not None:
            return self.elementwise_group(grp)
        raise Unsupported(f"`{a.op}` (layer `{a.name}`) has no kernel lowering")

    # epilogue: rewrite v through the fused elementwise ops
    def epilogue(self, grp: Group, nodes: list[Node], inputs: dict[str, str],
                 coords: list[str]) -> list[str]:
        lines = []
        out_shape = grp.output.type.shape
        # Values computed inside this kernel that a later op reads again as another operand
        # (`add(a, a)` fused after a): kept in registers, since they have no buffer.
        inside = {grp.anchor.id} if nodes and nodes[0] is not grp.anchor else set()
        reread = {x.id for e in nodes for x in e.inputs[1:]}
        if grp.anchor.id in inside and grp.anchor.id in reread:
            lines.append(f"float r{grp.anchor.id} = v;")
        for e in nodes:
            loads = {}
            for k, x in enumerate(e.inputs[1:], start=1):
                if x.id in inside:
                    loads[k] = f"r{x.id}"
                elif (x.op == "param" and x.type.rank == 1) or (
                        x.type.rank == 1 and len(out_shape) > 1
                        and x.type.shape[0] == out_shape[0] and not x.type.batched):
                    # a per-channel vector (a bias, batchnorm's statistics): read at o0
                    inputs[self.key(x)] = "const float*"
                    one = x.type.shape[0] == 1   # one value for all channels (prelu)
                    loads[k] = f"{self.key(x)}[o0]" if len(out_shape) and not one else \
                        f"{self.key(x)}[0]"
                else:
                    inputs[self.key(x)] = "const float*"
                    loads[k] = _at(x.type, self.key(x), coords, out_shape=out_shape)
            lines.append(f"v = {_expr(e, 'v', loads)};  // {e.op}")
            inside.add(e.id)
            if e.id in reread:
                lines.append(f"float r{e.id} = v;")
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

    def _xat(self, x: Node, chan: str, idx: list[str]) -> str:
        sp = x.type.shape[1:]
        e = f"(long long)n * {x.type.size} + (long long){chan} * {math.prod(sp)}"
        for j, v in enumerate(idx):
            e += f" + {v} * {math.prod(sp[j + 1:])}"
        return f"{self.key(x)}[{e}]"


def _expr(e: Node, v: str, loads: dict[int, str]) -> str:
    """The elementwise expression of node `e` applied to `v` (other inputs from `loads`)."""
    text = registry.expression_of(e.op)
    if text is None:
        raise Unsupported(f"`{e.op}` (layer `{e.name}`) has no elementwise expression")
    if callable(text):
        return text(e, v, loads)
    fmt = {"v": v}
    for key, val in e.attrs.items():
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            fmt[key] = _f(val)
    for k, val in loads.items():
        text = text.replace("{" + str(k) + "}", val)
    return text.format(**fmt)
