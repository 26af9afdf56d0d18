"""Where a Lighthouse layer's time goes: the Triton path's stages timed one at a time, on a CUDA device.

At one size (default 512K tokens), with the device's copy bandwidth as the memory roofline and the fused norm
scores' calibration. Writes OUT/triton_stages.json and prints it.

    python -m bench.perf.triton_stages_bench --out DIR [--n 524288]

Stages of the forward: pooling (with and without fused norm scores, and torch's norm for comparison), the
selection cascade and its sort, the inverse map, the gather, SDPA over the selected sub-sequence, the scatter;
of the backward: scatter_bwd, gather_bwd and SDPA's. Memory-bound stages report GB/s next to copy_GBps.
(Until 2026-12 this was the `breakdown` section of bench/triton_check.py; its correctness part is now
tests/ops/test_triton_matches_reference_gpu.py, its timings bench/perf/attention_bench.py.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.perf.cuda_timing import time_ms


def breakdown(N=524288, H=8, D=128, L=3, p=4, k=2048):
    """The stages of the Triton path at one size, each timed alone (CUDA events, medians), in ms; the memory-bound
    ones also in GB/s."""
    from lighthouse.ops.attention import causal_attention
    from lighthouse.ops.triton import gather as tg
    from lighthouse.ops.triton import pool as tp
    from lighthouse.ops.triton import scatter as ts
    from lighthouse.ops.triton import select as tsel
    from lighthouse.ops.triton.geometry import Plan

    dt = torch.bfloat16
    q, kk, v = (torch.randn(1, H, N, D, device="cuda", dtype=dt) for _ in range(3))
    plan = Plan.make(N, L, p, k)
    order = tp.norm_order(str(q.device), dt, D)
    out = dict(N=N, order=order)
    # pool_q_ms / pool_v_ms: the pass the forward runs per tensor when scores come from torch's norm (order None);
    # pool_q_scores_ms: the same pass with fused norm scores (order, or candidate 1 when none matched: its cost)
    out["pool_q_ms"] = time_ms(lambda: tp.pool(q, plan, None))
    out["pool_q_scores_ms"] = time_ms(lambda: tp.pool(q, plan, order if order is not None else 1))
    out["pool_v_ms"] = time_ms(lambda: tp.pool(v, plan, None))
    out["torch_norm_q_ms"] = time_ms(lambda: q.norm(dim=-1))
    cq, sq, _ = tp.pool(q, plan, order if order is not None else 1)
    ck, sk, _ = tp.pool(kk, plan, order if order is not None else 1)
    cv, _, _ = tp.pool(v, plan, None)
    out["select_ms"] = time_ms(lambda: tsel.select(sq, sk, plan, 1))
    rows = plan.tiles * H
    keys = torch.empty(rows, plan.seg, device="cuda", dtype=torch.int64)
    par = torch.empty(rows, plan.levels * 128, device="cuda", dtype=torch.int32)
    out["cascade_kernel_ms"] = time_ms(lambda: tsel._cascade_kernel[(rows,)](
        sq, sk, keys, par, H, 1, plan.n_run, plan.score_len, plan.span, plan.seg, plan.tiles,
        P=p, LEVELS=L, num_warps=1))
    out["sort_ms"] = time_ms(lambda: torch.sort(keys, dim=1))
    idx, inv = tsel.select(sq, sk, plan, 1)
    out["inverse_ms"] = time_ms(lambda: tsel.inverse(idx, plan))
    out["gather_ms"] = time_ms(lambda: tg.gather(q, kk, v, cq, ck, cv, idx, plan))
    qs, ks, vs = tg.gather(q, kk, v, cq, ck, cv, idx, plan)
    out["sdpa_fwd_ms"] = time_ms(lambda: causal_attention(qs, ks, vs))
    o = causal_attention(qs, ks, vs)
    out["scatter_ms"] = time_ms(lambda: ts.scatter(o, inv, plan))
    dout = torch.randn(1, H, N, D, device="cuda", dtype=dt)
    out["scatter_bwd_ms"] = time_ms(lambda: ts.scatter_backward(dout, idx, plan))
    out["gather_bwd_ms"] = time_ms(lambda: tg.gather_backward(qs, ks, vs, inv, H, plan))
    leaves = [x.detach().requires_grad_(True) for x in (qs, ks, vs)]

    def sdpa_fb():
        for a in leaves:
            a.grad = None
        causal_attention(*leaves).backward(o)

    out["sdpa_fwdbwd_ms"] = time_ms(sdpa_fb)
    gb = 1e9
    pool_bytes = q.numel() * 2 + cq.numel() * 2  # read x once, write the coarsest level
    out["pool_q_GBps"] = pool_bytes / gb / (out["pool_q_ms"] / 1e3)
    out["pool_q_scores_GBps"] = pool_bytes / gb / (out["pool_q_scores_ms"] / 1e3)
    out["pool_v_GBps"] = pool_bytes / gb / (out["pool_v_ms"] / 1e3)
    out["scatter_GBps"] = (N * H * D * 2 + o.numel() * 2) / gb / (out["scatter_ms"] / 1e3)
    return out


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, GB/s (read + write)."""
    x = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
    y = torch.empty_like(x)
    ms = time_ms(lambda: y.copy_(x))
    return 2 * x.numel() / 1e9 / (ms / 1e3)


def calibration() -> dict:
    """Which fused bf16 norm order matches torch's norms bit for bit on this device (lighthouse.ops.triton.pool)."""
    from lighthouse.ops.triton import pool as tp

    tp.norm_order("cuda:0", torch.bfloat16, 128)
    return {str(k): v for k, v in tp.CALIBRATION.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for triton_stages.json")
    ap.add_argument("--n", type=int, default=524288, help="sequence length (tokens)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.perf.triton_stages_bench needs a CUDA device (it times CUDA kernels)", file=sys.stderr)
        return 2
    import triton

    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  date=time.strftime("%Y-%m-%d %H:%M"), copy_GBps=copy_bandwidth(), calibration=calibration(),
                  breakdown=breakdown(N=args.n))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "triton_stages.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in report["breakdown"].items()}))
    print(f"copy {report['copy_GBps']:.0f} GB/s; calibration {report['calibration']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
