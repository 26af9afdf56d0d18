"""Prefill benchmark for the H200: time to first token through HTTP (cold), prefill peak memory, and the
inter-token latency of running streams while a 512K-token prompt is prefilled.

The 270M paper shape of serve_bench.py (random bf16 weights, dense tail 64) served by the real server (create_app +
uvicorn on loopback, in this process), every request streamed with `cache_prompt: false` (no prefix-cache hit):

- ttft_32k_s / ttft_128k_s / ttft_512k_s: the checkpoint layout (full-attention layers [0, 1, 28, 29]), sparse
  prefill, prompts of 2^k + 64 tokens; median of --repeats (one at 512K);
- ttft_512k_all_sparse_s: a second server whose checkpoint has no full-attention layers;
- prefill_peak_extra_gb_512k: torch.cuda.max_memory_allocated during the layout's 512K prefill minus what was
  allocated before it (the KV cache is allocated at startup, so this is what the prefill needs beyond its K/V);
- itl_p99_during_512k_prefill_s: 8 streams of 256-token prompts decode (greedy, ignore_eos) while a 512K+64
  prompt is sent; the gaps between their consecutive tokens from the moment it is sent to its first token, p99
  over all 8 streams (also max, median, and the 512K TTFT under that load).

With --profile, torch.profiler records one 512K all-sparse prefill and one layout prefill through the engine
(DIR/profile_prefill.txt: top kernels by GPU time). Writes DIR/prefill_bench.json after each measure.

    python -m bench.perf.prefill_bench --out DIR [--profile] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import torch

from bench.perf.paper_server import TAIL, Server, paper_config, stream_completion
from bench.perf.results_file import ResultsFile

K = 1024
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def make_checkpoint(out: Path, max_len: int, all_sparse: bool) -> None:
    from lighthouse.checkpoint import save_checkpoint
    from lighthouse.model import LlamaForCausalLM

    cfg = paper_config(max_len)
    if all_sparse:
        cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    save_checkpoint(model, None, out, dtype=torch.bfloat16)
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None


def settings_for(ckpt: Path, port: int, kv_gb: float | None):
    from lighthouse_server.settings import Settings

    return Settings(checkpoint=str(ckpt), port=port, dtype="bfloat16", kv_cache_gb=kv_gb, prefill="sparse",
                    decode="dense", dense_tail_tokens=TAIL, max_num_seqs=16, max_body_mb=64, drain_timeout_s=5,
                    log_level="warning")


def ttft(client, url: str, n: int, repeats: int) -> dict:
    runs = [stream_completion(client, url, n, 1) for _ in range(repeats)]
    ok = [r["ttft_s"] for r in runs if "ttft_s" in r]
    if not ok:
        raise RuntimeError(runs[0].get("error"))
    return {"ttft_s": statistics.median(ok), "runs": [round(t, 4) for t in ok]}


def peak_extra(client, url: str, n: int) -> dict:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    r = stream_completion(client, url, n, 1)
    torch.cuda.synchronize()
    return {"peak_extra_gb": (torch.cuda.max_memory_allocated() - base) / 1e9, "ttft_s": r.get("ttft_s"),
            "baseline_allocated_gb": base / 1e9}


def itl_during_prefill(url: str, n_long: int, streams: int = 8, short: int = 256) -> dict:
    """Token times of `streams` short greedy streams while one n_long-token prompt is prefilled."""
    times: list[list[float]] = [[] for _ in range(streams)]
    status: list[object] = [None] * streams
    stop = threading.Event()
    errors: list[str] = []

    def stream(i: int) -> None:
        ids = [32 + ((j + 17 * i) * 7919) % 90 for j in range(short)]
        # 1500 tokens outlast the prefill at a decode step per piece; the 8 reservations leave room for the prompt
        # logprobs=0: a chunk per token (random weights emit bytes that are no text yet, which send no chunk)
        body = json.dumps({"prompt": ids, "max_tokens": 1500, "temperature": 0, "stream": True, "ignore_eos": True,
                           "cache_prompt": False, "logprobs": 0})
        try:
            with httpx.Client(timeout=600) as c, c.stream("POST", url + "/v1/completions", content=body,
                                                          headers={"content-type": "application/json"}) as r:
                status[i] = r.status_code
                if r.status_code != 200:
                    r.read()
                    errors.append(f"stream {i}: HTTP {r.status_code}: {r.text[:300]}")
                    return
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            errors.append(f"stream {i}: {line[:300]}")
                        for c in chunk.get("choices", []):
                            times[i] += [time.perf_counter()] * len((c.get("logprobs") or {}).get("tokens", []))
                    if stop.is_set():
                        break  # closing the stream aborts the request
        except Exception as exc:  # noqa: BLE001 - reported
            errors.append(f"stream {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while min(len(t) for t in times) < 10 and time.monotonic() < deadline and not errors:
        time.sleep(0.02)
    started = [len(t) for t in times]
    with httpx.Client(timeout=900) as c:
        sent = time.perf_counter()
        long = stream_completion(c, url, n_long, 1)
    first = sent + long.get("ttft_s", 0.0)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(60)
    gaps = []
    for ts in times:
        window = [t for t in ts if sent <= t <= first]
        before = [t for t in ts if t < sent][-1:]  # the gap that spans the moment the long prompt came counts too
        after = [t for t in ts if t > first][:1]
        seq = before + window + after
        gaps += [b - a for a, b in zip(seq, seq[1:])]
    gaps.sort()
    out = {"gaps": len(gaps), "ttft_long_under_load_s": long.get("ttft_s"), "long_error": long.get("error"),
           "errors": errors, "status": status, "tokens_before_long": started,
           "tokens_per_stream_during_prefill": [len([t for t in ts if sent <= t <= first]) for ts in times],
           "tokens_per_stream": [len(ts) for ts in times]}
    if not gaps:
        raise RuntimeError(f"no tokens during the prefill: {out}")
    out.update(itl_p99_s=gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], itl_max_s=gaps[-1],
               itl_median_s=statistics.median(gaps))
    return out


def profile_engine(ckpt_layout: Path, ckpt_sparse: Path, n: int, out: Path) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from lighthouse.engine.config import EngineConfig
    from lighthouse.engine.llm import load_engine
    from lighthouse.engine.options import RequestOptions
    from lighthouse.engine.sampling import SamplingParams

    res, text = {}, []
    for name, ckpt in (("all_sparse", ckpt_sparse), ("layout", ckpt_layout)):
        eng = load_engine(str(ckpt), EngineConfig(dense_tail_tokens=TAIL, max_num_seqs=4, enable_prefix_caching=False),
                          device="cuda", dtype="bfloat16")
        ids = [32 + (i * 7919) % 90 for i in range(n)]
        sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)

        def one(rid: str) -> float:
            eng.add_request(rid, ids, sp, RequestOptions(cache_prompt=False))
            t = time.perf_counter()
            while eng.has_unfinished():
                eng.step()
            torch.cuda.synchronize()
            return time.perf_counter() - t

        one("warm")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            wall = one("prof")
        events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or e.self_device_time_total > 0]
        gpu = sum(e.self_device_time_total for e in events) / 1e6
        top = sorted(events, key=lambda e: -e.self_device_time_total)[:20]
        res[name] = {"wall_s": wall, "gpu_s": gpu,
                     "top": [(e.key[:80], round(e.self_device_time_total / 1e3, 2), e.count) for e in top]}
        text.append(f"== {name} prefill of {n} tokens: wall {wall:.3f} s (profiled), GPU busy {gpu:.3f} s ==")
        text.append(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70))
        eng = None
        gc.collect()
        torch.cuda.empty_cache()
    (out / "profile_prefill.txt").write_text("\n".join(text))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--kv-cache-gb", type=float, default=72.0, help="per server (512K+64 needs 64.4 GB)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="32K stands in for 512K (a smoke test)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    big = 32 * K if args.quick else 512 * K
    res: dict = {"bench": "prefill_bench", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "dense_tail_tokens": TAIL, "quick": args.quick, "errors": {},
                 "model": "paper 270M shape (serve_bench.paper_config), random bf16 weights"}
    path = out / "prefill_bench.json"
    results = ResultsFile(path, res, log, T0)
    save, measure = results.save, results.measure

    tmp = Path(tempfile.mkdtemp(prefix="prefill-bench-"))
    ckpt_layout, ckpt_sparse = tmp / "layout", tmp / "all_sparse"
    make_checkpoint(ckpt_layout, big + TAIL + 4096, all_sparse=False)
    make_checkpoint(ckpt_sparse, big + TAIL + 4096, all_sparse=True)
    url = f"http://127.0.0.1:{args.port}"
    with Server(settings_for(ckpt_layout, args.port, args.kv_cache_gb)), httpx.Client(timeout=900) as client:
        for n in (32 * K, min(big, 128 * K), big):  # warm-up: kernels, cuDNN plans, Triton compiles
            stream_completion(client, url, n + TAIL, 1)
        measure("ttft_32k", lambda: ttft(client, url, 32 * K + TAIL, args.repeats))
        if not args.quick:
            measure("ttft_128k", lambda: ttft(client, url, 128 * K + TAIL, args.repeats))
        measure("peak_512k", lambda: peak_extra(client, url, big + TAIL))
        measure("ttft_512k", lambda: ttft(client, url, big + TAIL, 1 if not args.quick else args.repeats))
        measure("itl_during_512k", lambda: itl_during_prefill(url, big + TAIL))
    gc.collect()
    torch.cuda.empty_cache()
    with Server(settings_for(ckpt_sparse, args.port + 1, args.kv_cache_gb)), httpx.Client(timeout=900) as client:
        url2 = f"http://127.0.0.1:{args.port + 1}"
        stream_completion(client, url2, big + TAIL, 1)
        measure("ttft_512k_all_sparse", lambda: ttft(client, url2, big + TAIL, 2))
    gc.collect()
    torch.cuda.empty_cache()
    if args.profile:
        measure("profile", lambda: profile_engine(ckpt_layout, ckpt_sparse, big + TAIL, out))

    def get(key: str, field: str):
        return res.get(key, {}).get(field)

    res["summary"] = {
        "ttft_512k_all_sparse_s": get("ttft_512k_all_sparse", "ttft_s"), "ttft_512k_s": get("ttft_512k", "ttft_s"),
        "ttft_128k_s": get("ttft_128k", "ttft_s"), "ttft_32k_s": get("ttft_32k", "ttft_s"),
        "itl_p99_during_512k_prefill_s": get("itl_during_512k", "itl_p99_s"),
        "prefill_peak_extra_gb_512k": get("peak_512k", "peak_extra_gb"),
        "device": res["device"], "torch": res["torch"],
    }
    res.update(res["summary"])
    save()
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
