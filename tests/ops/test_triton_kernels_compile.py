"""Every Lighthouse Triton kernel compiles for a Hopper target (sm_90) without a GPU: Triton ships ptxas, so this
catches the compiled-mode errors (types, layouts, shared memory) that TRITON_INTERPRET=1 cannot, on any machine.

The compile runs in a child process with TRITON_INTERPRET=0 (under the interpreter the kernels are not compilable
JIT functions): this file is that child too. `python tests/ops/test_triton_kernels_compile.py [--arch 90]` prints
each kernel's warps, shared memory and PTX instruction counts. (Until 2026-12: bench/triton_aot_check.py.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pytest


def kernels(D=128, P=4, L=3):
    """(name, kernel, argument types, constexprs, compile options) for each kernel at the served shape."""
    from lighthouse.ops.triton import gather, pool, scatter, select

    R = pool.windows_per_program(D, P ** (L - 1)) * P ** (L - 1)  # the launcher's rows per program
    lanes, acc, steps = pool.order_params(D, 1)
    yield "pool(scores, V=1)", pool._pool_kernel, dict(
        x_ptr="*bf16", coarse_ptr="*bf16", score_ptr="*fp32", base_ptr="*fp32",
        HX="i32", N_VALID="i32", N_RUN="i32", S1="i32", s_b="i64", s_h="i64", s_n="i64",
    ), dict(D=D, R=R, P=P, CH=P ** (L - 1), SC_LEVELS=L - 1, SCORES=True, STORE_BASE=False, PARTIAL=False,
            V=1, LANES=lanes, A=acc, T=steps, DOWN=True), {"enable_fp_fusion": False}
    for V, down in ((4, True), (4, False), (8, True)):
        lanes, acc, steps = pool.order_params(D, V)
        yield f"pool(scores, V={V}, {'down' if down else 'up'})", pool._pool_kernel, dict(
            x_ptr="*bf16", coarse_ptr="*bf16", score_ptr="*fp32", base_ptr="*fp32",
            HX="i32", N_VALID="i32", N_RUN="i32", S1="i32", s_b="i64", s_h="i64", s_n="i64",
        ), dict(D=D, R=R, P=P, CH=P ** (L - 1), SC_LEVELS=L - 1, SCORES=True, STORE_BASE=True, PARTIAL=False,
                V=V, LANES=lanes, A=acc, T=steps, DOWN=down), {"enable_fp_fusion": False}
    yield "pool(no scores)", pool._pool_kernel, dict(
        x_ptr="*bf16", coarse_ptr="*bf16", score_ptr="*fp32", base_ptr="*fp32",
        HX="i32", N_VALID="i32", N_RUN="i32", S1="i32", s_b="i64", s_h="i64", s_n="i64",
    ), dict(D=D, R=R, P=P, CH=P ** (L - 1), SC_LEVELS=L - 1, SCORES=False, STORE_BASE=False, PARTIAL=False,
            V=1, LANES=32, A=4, T=1, DOWN=True), {"enable_fp_fusion": False}
    yield "cascade", select._cascade_kernel, dict(
        sq_ptr="*fp32", sk_ptr="*fp32", key_ptr="*i64", par_ptr="*i32",
        H="i32", KQ_REP="i32", N_RUN="i32", S1="i32", SPAN="i32", SEG="i32", TILES="i32",
    ), dict(P=P, LEVELS=L), {"num_warps": 1}
    yield "gather", gather._gather_kernel, dict(
        q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", cq_ptr="*bf16", ck_ptr="*bf16", cv_ptr="*bf16", idx_ptr="*i64",
        oq_ptr="*bf16", ok_ptr="*bf16", ov_ptr="*bf16", H="i32", KV_REP="i32", N_VALID="i32", N_RUN="i32", S="i32", CL="i32",
        sq_b="i64", sq_h="i64", sq_n="i64", sk_b="i64", sk_h="i64", sk_n="i64", sv_b="i64", sv_h="i64", sv_n="i64",
    ), dict(D=D, BLOCK=gather.BLOCK_S, P=P, LEVELS=L, C_MID=P ** (L - 2)), {}
    yield "gather_bwd(kv)", gather._gather_bwd_kernel, dict(
        d1_ptr="*bf16", d2_ptr="*bf16", inv_ptr="*i32", o1_ptr="*bf16", o2_ptr="*bf16",
        H="i32", HX="i32", N_VALID="i32", N_RUN="i32", S="i32", PYR="i32",
    ), dict(D=D, BLOCK=gather.BLOCK_T, P=P, LEVELS=L, TWO=True), {}
    yield "scatter", scatter._scatter_kernel, dict(
        o_ptr="*bf16", inv_ptr="*i32", out_ptr="*bf16", N_VALID="i32", N_RUN="i32", S="i32", PYR="i32",
    ), dict(D=D, BLOCK=scatter.BLOCK_T, P=P, LEVELS=L), {}
    yield "scatter_bwd", scatter._scatter_bwd_kernel, dict(
        g_ptr="*bf16", idx_ptr="*i64", d_ptr="*bf16", H="i32", N_VALID="i32", N_RUN="i32", S="i32",
        s_b="i64", s_h="i64", s_n="i64",
    ), dict(D=D, BLOCK=scatter.BLOCK_S, P=P, LEVELS=L), {}


def main() -> int:
    os.environ["TRITON_INTERPRET"] = "0"  # before triton and the kernels are imported
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    for name, fn, types, consts, opts in kernels():
        t0 = time.time()
        signature = dict(types)
        signature.update({k: "constexpr" for k in consts})
        try:
            src = ASTSource(fn=fn, signature=signature, constexprs=consts)
            ck = triton.compile(src, target=target, options=opts)
            md = ck.metadata
            ptx = ck.asm["ptx"]
            spills = "local" in ptx and ".local" in ptx
            counted = ("shfl.sync", "bar.sync", "ld.shared", "st.shared", "fma.rn", "add.f32")
            sass_like = {k: ptx.count(k) for k in counted}
            print(f"{name:22s} ok  warps={md.num_warps} shared={md.shared:6d} local_mem_in_ptx={spills} "
                  f"ptx={sass_like} ({time.time() - t0:.1f}s)", flush=True)
        except Exception as exc:  # report every kernel, not just the first failure
            failed += 1
            print(f"{name:22s} FAILED: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
    return 1 if failed else 0


@pytest.mark.slow  # ~30 s on 2 cores
def test_every_kernel_compiles_for_sm90_without_a_gpu():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, __file__, "--arch", "90"], capture_output=True, text=True, env=env,
                          timeout=500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert " ok " in proc.stdout and "FAILED" not in proc.stdout, out[-8000:]


if __name__ == "__main__":
    sys.exit(main())
