"""Latency of one attention layer vs sequence length, forward and forward+backward. Needs a CUDA device.

    python -m bench.perf.attention_bench --out bench/results/DATE_DEVICE_bench_attention [--official DIR]

Methods (one process, bf16, causal, B=1, random inputs, medians of CUDA-event timings after warm-up):
  dense-cudnn, dense-flash  torch SDPA restricted to one backend
  ours-triton, ours-torch   lighthouse_attention with backend="triton" / "torch"
  official                  the paper's code, when --official DIR is given (its selection needs H == H_kv;
                            bench/official.py says how to lay it out)
A method that fails at some N (out of memory, the official launch-grid limit) is recorded with its error and
the rest go on. Writes attention.json and a log-log attention.png (attention_gqa.png: H=32, H_kv=8) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

from bench.official import import_official
from bench.perf.cuda_timing import time_ms
from lighthouse.ops.attention import repeat_kv


@dataclass(frozen=True)
class BenchConfig:
    out: str
    official: str | None
    ns: tuple[int, ...]
    heads: int = 8
    kv_heads: int = 8
    head_dim: int = 128
    levels: int = 3
    pooling_factor: int = 4
    topk: int = 2048
    reps: int = 10
    dense_max_n: int = 524288
    torch_max_n: int = 524288
    gqa: bool = True


def _dense(backend: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def f(q, k, v):
        k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
        with sdpa_kernel([getattr(SDPBackend, backend)]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return f


def _methods(cfg: BenchConfig, H: int, H_kv: int) -> dict:
    from lighthouse.ops.dispatch import lighthouse_attention

    kw = dict(levels=cfg.levels, pooling_factor=cfg.pooling_factor, topk=cfg.topk)
    methods = {
        "dense-cudnn": (_dense("CUDNN_ATTENTION"), "BHND"),
        "dense-flash": (_dense("FLASH_ATTENTION"), "BHND"),
        "ours-triton": (lambda q, k, v: lighthouse_attention(q, k, v, backend="triton", **kw), "BHND"),
        "ours-torch": (lambda q, k, v: lighthouse_attention(q, k, v, backend="torch", **kw), "BHND"),
    }
    if cfg.official and H == H_kv:
        off = import_official(cfg.official)

        def sdpa(q, k, v, scale=None):
            return _dense("CUDNN_ATTENTION")(q, k, v)

        scorer = off.DialatedLighthouseNormScorer(pooling_factor=cfg.pooling_factor, levels=cfg.levels)
        mod = off.LighthouseLocal(attention=sdpa, scorer=scorer, num_levels=cfg.levels,
                                  pooling_factor=cfg.pooling_factor, topk=cfg.topk)
        methods["official"] = (mod, "BNHD")
    return methods


def _measure(fn, layout: str, N: int, H: int, H_kv: int, D: int, reps: int) -> dict:
    dt = torch.bfloat16
    shapes = [(1, H, N, D), (1, H_kv, N, D), (1, H_kv, N, D)]
    xs = [torch.randn(*s, device="cuda", dtype=dt) for s in shapes]
    if layout == "BNHD":
        xs = [x.transpose(1, 2).contiguous() for x in xs]
    dout = torch.randn(1, H, N, D, device="cuda", dtype=dt)
    row = {}
    with torch.no_grad():
        row["fwd_ms"] = time_ms(lambda: fn(*xs), reps)
    leaves = [x.requires_grad_(True) for x in xs]

    def fb():
        for x in leaves:
            x.grad = None
        fn(*leaves).backward(dout)

    row["fwdbwd_ms"] = time_ms(fb, reps)
    return row


def _sweep(cfg: BenchConfig, H: int, H_kv: int) -> list[dict]:
    rows = []
    for name, (fn, layout) in _methods(cfg, H, H_kv).items():
        for N in cfg.ns:
            if name.startswith("dense") and N > cfg.dense_max_n or name == "ours-torch" and N > cfg.torch_max_n:
                continue
            reps = max(3, cfg.reps // 3) if name.startswith("dense") and N >= 262144 else cfg.reps
            row = dict(method=name, N=N, H=H, H_kv=H_kv)
            t = time.time()
            try:
                row.update(_measure(fn, layout, N, H, H_kv, cfg.head_dim, reps))
            except Exception as exc:  # OOM, the official launch-grid limit, a too-short N
                row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            row["seconds"] = round(time.time() - t, 1)
            torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "fwd_ms", "forward"), (axes[1], "fwdbwd_ms", "forward+backward")):
        for method in sorted({r["method"] for r in rows}):
            pts = [(r["N"], r[key]) for r in rows if r["method"] == method and key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel("ms")
        ax.set_title(f"{label}: {title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_attention_bench(cfg: BenchConfig) -> int:
    if not torch.cuda.is_available():
        print("bench/perf/attention_bench.py needs a CUDA device (it times CUDA kernels)", file=sys.stderr)
        return 2
    os.makedirs(cfg.out, exist_ok=True)
    title = f"L{cfg.levels} p{cfg.pooling_factor} k{cfg.topk}, D={cfg.head_dim}, bf16"
    report = dict(config=asdict(cfg), device=torch.cuda.get_device_name(), torch=torch.__version__,
                  date=time.strftime("%Y-%m-%d %H:%M"))
    report["rows"] = _sweep(cfg, cfg.heads, cfg.kv_heads)
    _plot(report["rows"], os.path.join(cfg.out, "attention.png"), f"H={cfg.heads}/{cfg.kv_heads}, {title}")
    if cfg.gqa:
        gcfg = BenchConfig(**{**asdict(cfg), "ns": tuple(n for n in cfg.ns if n <= 262144)})
        report["gqa_rows"] = _sweep(gcfg, 32, 8)
        _plot(report["gqa_rows"], os.path.join(cfg.out, "attention_gqa.png"), f"H=32/8, {title}")
    with open(os.path.join(cfg.out, "attention.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"\n{'method':14s} {'N':>8s} {'fwd ms':>10s} {'fwd+bwd ms':>11s}")
    for r in report["rows"] + report.get("gqa_rows", []):
        tag = r["method"] + ("" if r["H"] == r["H_kv"] else " gqa")
        if "error" in r:
            print(f"{tag:14s} {r['N']:8d} {r['error'][:60]}")
        else:
            print(f"{tag:14s} {r['N']:8d} {r['fwd_ms']:10.2f} {r['fwdbwd_ms']:11.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for attention.json and the plots")
    p.add_argument("--official", default=None, help="DIR holding torchtitan/models/llama3/model/lighthouse_selection*.py")
    p.add_argument("--n", type=int, nargs="+", default=[8192, 16384, 32768, 65536, 131072, 262144, 524288])
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="H_kv (default: heads); the GQA shape runs too")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--pooling-factor", type=int, default=4)
    p.add_argument("--topk", type=int, default=2048)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--dense-max-n", type=int, default=524288, help="skip dense baselines above this N")
    p.add_argument("--torch-max-n", type=int, default=524288, help="skip the pure-PyTorch op above this N")
    p.add_argument("--no-gqa", action="store_true", help="skip the H=32, H_kv=8 shape")
    args = p.parse_args(argv)
    cfg = BenchConfig(
        out=args.out, official=args.official, ns=tuple(args.n), heads=args.heads, kv_heads=args.kv_heads or args.heads,
        head_dim=args.head_dim, levels=args.levels, pooling_factor=args.pooling_factor, topk=args.topk,
        reps=args.reps, dense_max_n=args.dense_max_n, torch_max_n=args.torch_max_n, gqa=not args.no_gqa,
    )
    return run_attention_bench(cfg)


if __name__ == "__main__":
    sys.exit(main())
