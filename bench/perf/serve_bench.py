"""Serving benchmark for the H200: time to first token through HTTP and decode tokens/s, sparse vs dense.

Serves a random-weight 270M-class model (the paper's shape: 30 layers, dim 1024, 8 heads / 8 KV heads, head dim
128, FFN 1536, byte vocabulary, full-attention layers [0, 1, 28, 29], Lighthouse L3 p4 k2048) with the real
server (create_app + uvicorn on loopback, in this process) and measures, over HTTP with streaming:

- TTFT for prompts of 32K / 128K / 512K tokens (+64 for the dense tail, so the sparse part is exactly 2^k)
  with prefill=sparse and prefill=dense (per-request override);
- decode tokens/s at 512K with decode=dense and decode=sparse (prefill sparse).

Prompts are sent as token ids. Writes DIR/serve_bench.json.

    python -m bench.perf.serve_bench --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from bench.perf.paper_server import TAIL, Server, make_checkpoint, stream_completion

SIZES = {"32K": 32768, "128K": 131072, "512K": 524288}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for serve_bench.json")
    ap.add_argument("--sizes", default="32K,128K,512K")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="TTFT repeats below 512K (median reported)")
    ap.add_argument("--budget-s", type=float, default=420, help="skip what would start after this many seconds")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--ckpt-dir", default=None, help="reuse/create the random checkpoint here")
    ap.add_argument("--kv-cache-gb", type=float, default=None, help="KV budget (default: 75%% of free GPU memory)")
    ap.add_argument("--device", default=None)
    # smoke-testing on a CPU only: fewer layers, smaller top-k, sizes as raw token counts (e.g. --sizes 4096)
    ap.add_argument("--layers", type=int, default=30, help=argparse.SUPPRESS)
    ap.add_argument("--topk", type=int, default=2048, help=argparse.SUPPRESS)
    args = ap.parse_args()
    t_start = time.monotonic()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = [s for s in args.sizes.split(",") if s]
    for s in sizes:
        SIZES.setdefault(s, int(s) if s.isdigit() else 0)
    if any(SIZES[s] <= 0 for s in sizes):
        ap.error(f"--sizes: use {', '.join(SIZES)} or token counts")
    warm = min(SIZES[s] for s in sizes)
    max_len = max(SIZES[s] for s in sizes) + TAIL + args.decode_tokens + 64

    from lighthouse.ops import lighthouse_attention
    from lighthouse_server.settings import Settings

    results: dict = {
        "bench": "serve_bench", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "python": sys.version.split()[0],
        "lighthouse_op": f"{lighthouse_attention.__module__}.{lighthouse_attention.__name__}",
        "model": {"layers": 30, "hidden": 1024, "heads": 8, "kv_heads": 8, "head_dim": 128, "ffn": 1536,
                  "vocab": "bytes (320)", "full_attn_layers": [0, 1, 28, 29], "lighthouse": "L3 p4 k2048 norm",
                  "dtype": "bfloat16", "weights": "random"},
        "dense_tail_tokens": TAIL, "ttft": [], "decode": [], "notes": [],
    }
    tmp = None
    ckpt = Path(args.ckpt_dir) if args.ckpt_dir else Path(tmp := tempfile.mkdtemp(prefix="serve-bench-")) / "ckpt"
    if not (ckpt / "config.json").exists():
        results["model"]["parameters"] = make_checkpoint(ckpt, max_len, args.layers, args.topk)
    if (args.layers, args.topk) != (30, 2048):
        results["model"].update(layers=args.layers, lighthouse=f"L3 p4 k{args.topk} norm",
                                full_attn_layers=[0, 1, args.layers - 2, args.layers - 1])
        results["notes"].append("smoke configuration, not the paper's shape")
    settings = Settings(checkpoint=str(ckpt), port=args.port, dtype="bfloat16", device=args.device,
                        kv_cache_gb=args.kv_cache_gb, prefill="sparse", decode="dense",
                        dense_tail_tokens=TAIL, max_num_seqs=4, max_body_mb=64, drain_timeout_s=5,
                        log_level="warning")
    path = out_dir / "serve_bench.json"

    def save():
        results["elapsed_s"] = round(time.monotonic() - t_start, 1)
        if torch.cuda.is_available():
            results["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        path.write_text(json.dumps(results, indent=2))

    def over_budget(what: str) -> bool:
        if time.monotonic() - t_start > args.budget_s:
            results["notes"].append(f"skipped {what}: past the {args.budget_s:.0f}s budget")
            return True
        return False

    with Server(settings) as srv, httpx.Client(timeout=900) as client:
        engine = srv.app.state.engine
        results["max_model_len"] = engine.max_model_len
        results["kv_cache_budget_gb"] = round(engine.engine.kv.budget_bytes / 1e9, 1)
        print(f"server up in {time.monotonic() - t_start:.0f}s; max_model_len={engine.max_model_len}", flush=True)
        for mode in ("sparse", "dense"):  # warm-up: kernels, cuDNN plans, Triton compiles
            r = stream_completion(client, srv.url, warm + TAIL, 4, prefill=mode, decode="sparse")
            if "error" in r:
                results["notes"].append(f"warm-up {mode} failed: {r['error']}")
        for size in sizes:
            n = SIZES[size] + TAIL
            for mode in ("sparse", "dense"):
                if over_budget(f"TTFT {size} {mode}"):
                    continue
                reps = 1 if SIZES[size] >= 524288 else args.repeats
                runs = [stream_completion(client, srv.url, n, 1, prefill=mode) for _ in range(reps)]
                ok = [r["ttft_s"] for r in runs if "ttft_s" in r]
                row = {"size": size, "prompt_tokens": n, "prefill": mode, "runs": runs}
                if ok:
                    row["ttft_s"] = statistics.median(ok)
                results["ttft"].append(row)
                print(f"TTFT {size:>5} {mode:>6}: {row.get('ttft_s', 'error')}", flush=True)
                save()
        n = SIZES[max(sizes, key=lambda s: SIZES[s])] + TAIL
        for dec in ("dense", "sparse"):
            if over_budget(f"decode {dec}"):
                continue
            r = stream_completion(client, srv.url, n, args.decode_tokens, prefill="sparse", decode=dec)
            results["decode"].append({"context_tokens": n, "decode": dec, "prefill": "sparse", **r})
            print(f"decode {dec:>6} @ {n}: {r.get('decode_tok_per_s', r.get('error'))} tok/s", flush=True)
            save()
        # document reuse: one document, two questions; the second prefills only its question (prefix cache).
        # 128K: a hit is copied into the request's own buffers, so two copies must fit the KV budget.
        results["reuse"] = []
        for size in [s for s in sizes if SIZES[s] <= 131072][-1:]:
            n = SIZES[size] + TAIL
            for mode in ("sparse", "dense"):
                if over_budget(f"reuse {size} {mode}"):
                    continue
                first = stream_completion(client, srv.url, n, 1, prefill=mode, question=1, cache_prompt=True)
                second = stream_completion(client, srv.url, n, 1, prefill=mode, question=2, cache_prompt=True,
                                           dense_tail_tokens=TAIL)
                row = {"size": size, "prompt_tokens": n, "prefill": mode, "first": first, "second": second}
                results["reuse"].append(row)
                print(f"reuse {size} {mode}: first {first.get('ttft_s', first.get('error'))} "
                      f"second {second.get('ttft_s', second.get('error'))}", flush=True)
                save()
    save()
    print(f"wrote {path} in {time.monotonic() - t_start:.0f}s")
    if tmp:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
