"""Our Lighthouse op against the official implementation, side by side on one GPU.

The official code is never part of this repository: lay it out in an ignored folder as the torchtitan package
path it imports itself through (DIR/torchtitan/models/llama3/model/lighthouse_selection{,_cuda}.py with empty
__init__.py files on the way) and pass --official DIR.

Checks, per configuration: selected index sequences identical (sets and order); fp32 outputs within 1e-4
relative norm error; bf16 outputs pass FlashAttention's rule (error against an fp32 computation over the same
selection at most 2x the official code's own error); fp32 gradients. Then: configurations where the official
code crashes (selected sub-sequence > 65,535 entries) run here with finite outputs; and timings at 512K.

    python bench/compare_official.py --official .official --out bench/results/DIR
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from lighthouse.ops import lighthouse_attention_ref
from lighthouse.ops.lighthouse_ref import _select_padded, attend_selected

from attention_bench import time_ms  # the sibling script: bench/ is sys.path[0] when run as a script

CONFIGS = [  # (B, H, N, D, L, p, k, dtype, scorer, check_grad)
    (2, 4, 32768, 128, 3, 4, 2048, "float32", "norm", True),
    (1, 8, 131072, 128, 3, 4, 2048, "bfloat16", "norm", False),
    (2, 4, 16384, 64, 3, 2, 4096, "bfloat16", "norm", False),
    (1, 8, 65536, 128, 3, 2, 4096, "float32", "norm", True),
    (2, 4, 16384, 128, 2, 4, 1024, "bfloat16", "norm", False),
    (1, 4, 131072, 128, 2, 4, 1024, "float32", "norm", False),
    (2, 8, 65536, 128, 3, 4, 2048, "bfloat16", "norm", True),
    (1, 8, 65536, 128, 3, 4, 512, "bfloat16", "dilated", False),
    (1, 4, 32768, 128, 3, 4, 512, "float32", "dilated", False),
]
CRASH_CONFIGS = [  # selected sub-sequence > 65,535 entries
    (1, 8, 524288, 128, 3, 4, 4096, "bfloat16"),
    (1, 8, 262144, 128, 3, 2, 4096, "bfloat16"),
]


def sdpa_causal(q, k, v, scale=None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def official_module(L, p, k, scorer):
    from torchtitan.models.llama3.model import lighthouse_selection as off

    if scorer == "norm":
        sc = off.DialatedLighthouseNormScorer(pooling_factor=p, levels=L)
    else:
        sc = off.DilatedLighthouseScorer(attention=sdpa_causal, dilation=4, pooling_factor=p, levels=L)
    return off.LighthouseLocal(attention=sdpa_causal, scorer=sc, num_levels=L, pooling_factor=p, topk=k), sc


def official_indices(mod, scorer_mod, xq, xk, xv, L, p, k):
    from torchtitan.models.llama3.model.lighthouse_selection_cuda import LighthouseSelectionQkKqChunkedTopkNvrtc

    with torch.no_grad():
        sq, sk, *_ = scorer_mod(xq, xk, xv)
        return LighthouseSelectionQkKqChunkedTopkNvrtc.forward(sq.float(), sk.float(), L, p, k, xq.shape[1])


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def check_config(cfg):
    B, H, N, D, L, p, k, dt, scorer, check_grad = cfg
    dtype = getattr(torch, dt)
    g = torch.Generator(device="cuda").manual_seed(hash(cfg) % 2**31)
    # the official code takes (B, N, H, D); ours takes (B, H, N, D): pass transposed views of the same memory
    xq, xk, xv = (torch.randn(B, N, H, D, device="cuda", generator=g, dtype=torch.float32).to(dtype) for _ in range(3))
    q, kk, v = (x.transpose(1, 2) for x in (xq, xk, xv))
    mod, scorer_mod = official_module(L, p, k, scorer)
    res = dict(B=B, H=H, N=N, D=D, levels=L, pooling_factor=p, topk=k, dtype=dt, scorer=scorer)

    idx_off = official_indices(mod, scorer_mod, xq, xk, xv, L, p, k).long()
    sel = _select_padded(q, kk, v, N, L, p, k, scorer)
    idx_ours = sel.indices
    res["S"] = idx_ours.shape[-1]
    res["indices_same_order"] = bool(idx_off.shape == idx_ours.shape and torch.equal(idx_off, idx_ours))
    res["indices_same_sets"] = bool(
        idx_off.shape == idx_ours.shape and torch.equal(idx_off.sort(-1).values, idx_ours.sort(-1).values)
    )
    if not res["indices_same_sets"] and idx_off.shape == idx_ours.shape:
        res["rows_differing"] = int((idx_off.sort(-1).values != idx_ours.sort(-1).values).any(-1).sum())

    with torch.no_grad():
        out_off = mod(xq, xk, xv)  # (B, H, N, D)
        out_ours = lighthouse_attention_ref(q, kk, v, levels=L, pooling_factor=p, topk=k, scorer=scorer)
        if dtype == torch.float32:
            res["rel_err_vs_official"] = rel(out_ours, out_off)
            res["pass_output"] = res["rel_err_vs_official"] <= 1e-4
        else:
            ref32 = attend_selected(q.float(), kk.float(), v.float(), sel, L, p)  # same selection, fp32 math
            res["err_ours_vs_fp32"] = rel(out_ours, ref32)
            res["err_official_vs_fp32"] = rel(out_off, ref32)
            res["rel_err_vs_official"] = rel(out_ours, out_off)
            res["pass_output"] = res["err_ours_vs_fp32"] <= 2 * res["err_official_vs_fp32"] + 1e-6
        res["max_abs_diff"] = (out_ours.float() - out_off.float()).abs().max().item()
    if check_grad:
        dout = torch.randn_like(out_off)
        grads = []
        for run in ("official", "ours"):
            leaves = [x.detach().clone().requires_grad_(True) for x in (xq, xk, xv)]
            if run == "official":
                o = mod(*leaves)
            else:
                o = lighthouse_attention_ref(*(x.transpose(1, 2) for x in leaves), levels=L, pooling_factor=p, topk=k, scorer=scorer)
            o.backward(dout)
            grads.append([x.grad for x in leaves])
        res["grad_rel_err"] = [rel(a, b) for a, b in zip(grads[1], grads[0])]
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        res["pass_grad"] = all(e <= tol for e in res["grad_rel_err"])
    res["pass"] = res["indices_same_sets"] and res["pass_output"] and res.get("pass_grad", True)
    return res


def crash_config(cfg):
    B, H, N, D, L, p, k, dt = cfg
    dtype = getattr(torch, dt)
    res = dict(B=B, H=H, N=N, D=D, levels=L, pooling_factor=p, topk=k, dtype=dt)
    xq, xk, xv = (torch.randn(B, N, H, D, device="cuda", dtype=dtype) for _ in range(3))
    with torch.no_grad():
        out = lighthouse_attention_ref(*(x.transpose(1, 2) for x in (xq, xk, xv)), levels=L, pooling_factor=p, topk=k)
        torch.cuda.synchronize()
        res["ours_finite"] = bool(torch.isfinite(out).all())
        res["S"] = (N // p ** (L - 1)) + (L - 1) * p * k
        del out
        mod, _ = official_module(L, p, k, "norm")
        try:
            mod(xq, xk, xv)
            torch.cuda.synchronize()
            res["official"] = "ran"
        except Exception as exc:  # the launch-grid limit
            res["official"] = f"crashed: {type(exc).__name__}: {str(exc)[:160]}"
    return res


def timings(N=524288, L=3, p=4, k=2048, H=8, D=128, reps=5):
    dtype = torch.bfloat16
    xs = [torch.randn(1, N, H, D, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)]
    hs = [x.detach().transpose(1, 2).contiguous().requires_grad_(True) for x in xs]
    dout = torch.randn(1, H, N, D, device="cuda", dtype=dtype)
    mod, _ = official_module(L, p, k, "norm")

    def fwd_bwd(f, args):
        def run():
            for a in args:
                a.grad = None
            f(*args).backward(dout)
        return run

    ours = lambda q, k_, v: lighthouse_attention_ref(q, k_, v, levels=L, pooling_factor=p, topk=k)
    rows = {}
    with torch.no_grad():
        rows["cudnn_sdpa_fwd_ms"] = time_ms(lambda: sdpa_causal(*hs), reps)
        rows["ours_ref_fwd_ms"] = time_ms(lambda: ours(*hs), reps)
        rows["official_fwd_ms"] = time_ms(lambda: mod(*xs), reps)
    rows["cudnn_sdpa_fwdbwd_ms"] = time_ms(fwd_bwd(sdpa_causal, hs), reps)
    rows["ours_ref_fwdbwd_ms"] = time_ms(fwd_bwd(ours, hs), reps)
    rows["official_fwdbwd_ms"] = time_ms(fwd_bwd(mod, xs), reps)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        ours(*hs)
    rows["ours_ref_fwd_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    rows.update(N=N, levels=L, pooling_factor=p, topk=k, H=H, D=D, dtype="bfloat16", B=1)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, args.official)
    import os

    os.makedirs(args.out, exist_ok=True)
    report = dict(
        device=torch.cuda.get_device_name(), torch=torch.__version__, python=platform.python_version(),
        date=time.strftime("%Y-%m-%d"), configs=[], crash_configs=[], timing=None,
    )
    for cfg in CONFIGS:
        t0 = time.time()
        try:
            r = check_config(cfg)
        except Exception as exc:
            r = dict(config=str(cfg), error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2000:], **{"pass": False})
        r["seconds"] = round(time.time() - t0, 2)
        report["configs"].append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "trace"}), flush=True)
        torch.cuda.empty_cache()
    for cfg in CRASH_CONFIGS:
        try:
            r = crash_config(cfg)
        except Exception as exc:
            r = dict(config=str(cfg), error=f"{type(exc).__name__}: {exc}")
        report["crash_configs"].append(r)
        print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()
    if not args.skip_timing:
        try:
            report["timing"] = timings()
        except Exception as exc:
            report["timing"] = dict(error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2000:])
        print(json.dumps(report["timing"]), flush=True)
    with open(os.path.join(args.out, "compare_official.json"), "w") as f:
        json.dump(report, f, indent=1)
    print("\nconfig                                   S      order  sets  out_err     pass")
    for r in report["configs"]:
        if "error" in r:
            print(r.get("config"), "ERROR", r["error"][:120])
            continue
        name = f"B{r['B']} H{r['H']} N{r['N']} L{r['levels']}p{r['pooling_factor']}k{r['topk']} {r['dtype'][:4]} {r['scorer'][:4]}"
        err = r.get("err_ours_vs_fp32", r["rel_err_vs_official"])
        print(f"{name:40s} {r['S']:6d} {r['indices_same_order']!s:6s} {r['indices_same_sets']!s:5s} {err:.2e} {r['pass']}")


if __name__ == "__main__":
    main()
