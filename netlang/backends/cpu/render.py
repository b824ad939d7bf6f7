"""The C renderer: the same kernels as the CUDA renderer (the kernel layer builds both),
in the C dialect: a kernel is a function whose nested loops over output elements OpenMP
splits over the cores; convolutions are calls of the host routines (routines.h: im2col +
BLAS); and one function, `nl_step`, runs the whole launch plan, so that a step is one
native call. Strings only; compiling and running is backends/cpu/runtime.py."""

from __future__ import annotations

import re
from importlib import resources

from netlang.ir.graph import Graph
from netlang.kernels.builder import (
    C, Call, CudaProgram, Gemm, KernelBuilder, Launch, source_lines,
)

_KEY = re.compile(r"\$(\w+)")


def prelude() -> str:
    """The C header lines, then the CUDA prelude and the optimizers' update elements as
    host code (one definition of the helpers both renderings use), then the host
    routines."""
    from netlang.backends.cuda.render import prelude as cuda_prelude
    from netlang.optimizers import ELEMENTS

    here = resources.files("netlang.backends.cpu")
    host = (cuda_prelude() + ELEMENTS).replace("__device__ __forceinline__", "static inline")
    return here.joinpath("prelude.h").read_text() + host + \
        here.joinpath("routines.h").read_text()


def render(g: Graph, gemm_conv_macs: int | None = None, capturable: bool = False
           ) -> CudaProgram:
    """C++ source and launch plan for a compiled (fused) program, ending with `nl_step`;
    `prog.buffer_keys` is the order of the buffer table `nl_step` takes."""
    if g.fusion is None:
        raise AssertionError("render needs a fused program")
    if capturable:
        raise AssertionError("the cpu backend has no CUDA graphs")
    prog = KernelBuilder(g, g.fusion, gemm_conv_macs, dialect=C).build(prelude())
    prog.outputs = {k: f"v{n.id}" for k, n in g.outputs.items()}
    by_id = {n.id: n for n in g.nodes}

    def describe(st) -> str:
        nodes = [by_id[i] for i in st.nodes if i in by_id]
        lines = source_lines(nodes)
        return ", ".join(n.name for n in nodes[:3]) + (" ..." if len(nodes) > 3 else "") + \
            (f" (implements {', '.join(lines)})" if lines else "")

    text, keys = step_function(prog.steps, describe)
    prog.source += "\n" + text
    prog.buffer_keys = keys
    return prog


def _braced(statement: str) -> str:
    """`{ NL_TIC; call; NL_TOC(k); }` under its comment line (if any)."""
    *comment, code = statement.split("\n")
    return "\n".join(comment + [f"    {{{code.strip()}}}"])


def _dims(view) -> tuple:
    """(batch, rows, cols) of a GEMM operand's view, as C expressions (-1 is N, -k is
    k * N)."""
    v = (1,) + tuple(view) if len(view) == 2 else tuple(view)
    return tuple("N" if d == -1 else f"(N * {-d})" if d < 0 else str(d) for d in v)


def step_function(steps, describe=None) -> tuple[str, list[str]]:
    """`extern "C" void nl_step(void** B, int N, int seed)`: every step in order, buffer
    `key` being B[keys.index(key)]; `describe(step)` gives each statement's comment (the
    layers and `.net` lines it implements)."""
    keys: list[str] = []

    def buf(key: str, ctype: str = "float*") -> str:
        if key not in keys:
            keys.append(key)
        return f"(({ctype})B[{keys.index(key)}])"

    body = []
    for st in steps:
        if isinstance(st, Launch):
            args = []
            for a in st.args:
                if a.key == "N":
                    args.append("N")
                elif a.key == "seed":   # the dropout kernels read it from memory
                    args.append("&seed_v")
                else:
                    args.append(buf(a.key, a.ctype))
            body.append(f"    {st.kernel}({', '.join(args)});")
        elif isinstance(st, Gemm):
            ba, ra, ca = _dims(st.a_view)
            bb, rb, cb = _dims(st.b_view)
            bo, m, nc = _dims(st.out_view)
            k = ra if st.trans_a else ca
            sa = "0LL" if ba == "1" else f"(long long){ra} * {ca}"
            sb = "0LL" if bb == "1" else f"(long long){rb} * {cb}"
            sc = f"(long long){m} * {nc}"
            ta, tb = ("true" if t else "false" for t in (st.trans_a, st.trans_b))
            body.append(f"    nl_gemm_step({ta}, {tb}, {bo}, {m}, {nc}, {k}, "
                        f"{buf(st.a, 'const float*')}, {sa}, {buf(st.b, 'const float*')}, "
                        f"{sb}, {buf(st.out)}, {sc});")
        elif isinstance(st, Call):
            body.append("    " + _KEY.sub(lambda m: buf(m.group(1)), st.code))
        else:
            raise AssertionError(f"unknown step {st!r}")
    timed = [f"    NL_TIC; {line.strip()} NL_TOC({i});" for i, line in enumerate(body)]
    if describe is not None:
        timed = [f"    // {describe(st)}\n{t}" for st, t in zip(steps, timed)]
    src = ['// one training (or inference) step: every kernel and routine in order',
           "// (built with -DNL_PROFILE, each statement's seconds add up in nl_seconds[])",
           "#ifdef NL_PROFILE",
           f"static double nl_seconds[{max(len(body), 1)}];",
           'extern "C" double* nl_profile(void) { return nl_seconds; }',
           "#define NL_TIC double nl_t0 = nl_now();",
           "#define NL_TOC(k) nl_seconds[k] += nl_now() - nl_t0;",
           "#else",
           "#define NL_TIC",
           "#define NL_TOC(k)",
           "#endif",
           'extern "C" void nl_step(void** B, int N, int seed) {',
           "    const long long seed_v = seed; (void)seed_v;", *[_braced(t) for t in timed],
           "}", TRAIN]
    return "\n".join(src) + "\n", keys


# A training step: the plan, then (when the loss is finite) the batchnorm statistics copied
# into their parameters and the optimizer's update of every trained parameter (routines.h
# nl_update). The tables are built once per batch size by netlang/backends/step.py.
TRAIN = """
// one training step with its update; 0 (and nothing updated) when the loss is not finite
extern "C" int nl_train(void** B, int N, int seed, const float* loss, int kind,
                        const float* h, int nh, int np, void** P, const long long* n,
                        int nu, void** U, const long long* un) {
    nl_step(B, N, seed);
    if (!isfinite(*loss)) return 0;
    for (int i = 0; i < nu; ++i)
        memcpy(U[2 * i + 1], U[2 * i], (size_t)un[i] * sizeof(float));
    nl_update(kind, h, nh, np, P, n);
    return 1;
}"""
