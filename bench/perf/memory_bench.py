"""Memory benchmark for the H200: what one long-document session holds, how many fit, the host tier, 1M tokens.

The 270M paper shape of serve_bench.py (random bf16 weights, full-attention layers [0, 1, 28, 29], Lighthouse
L3 p4 k2048, dense tail 64), run by the engine in this process (no HTTP: the figures are the engine's memory and
time; serve_bench / prefill_bench measure the HTTP path). Prompts are random token ids of 2^k + 64 tokens,
greedy with ignore_eos. "Held" is what the session's blocks take in the KV cache once its prefill is done
((blocks in use) x (bytes per block)); "peak" is torch.cuda.max_memory_allocated over the prefill.

- full_session_gb_512k / fp8_full_session_gb_512k / compact_session_gb_512k: one session each (dense decode,
  dense decode with the float8 cache, kv_mode compact), and its decode time per token;
- concurrent_compact_512k_sessions: 8 distinct 512K documents sent at once to an engine with the default KV budget
  (75% of free memory) in compact mode, 400 tokens each: how many were running at once (all must finish, none be
  refused), with the usage ratio checked against the sum of the running sessions' reservations at every step;
- cold_ttft_512k_s / host_tier_hit_ttft_512k_s: a full-layout engine whose KV budget holds one 512K document and a
  host tier that holds one: document A + question 1 (cold), document B (A moves to host memory), A + question 2
  (restored over PCIe, then the question prefilled): TTFTs (also with the float8 cache);
- compact_1m_ttft_s / compact_1m_session_gb: a 1,048,576 + 64-token prompt in compact mode;
- compact_equals_full_tokens_128k: the compact session's greedy tokens equal the full session's with sparse decode.

    python -m bench.perf.memory_bench --out DIR [--quick]
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

import torch

from bench.perf.cuda_timing import sync
from bench.perf.paper_server import TAIL, paper_config
from bench.perf.paper_server import random_prompt as prompt
from bench.perf.results_file import ResultsFile

K = 1024
GB = 1e9
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class Bench:
    def __init__(self, max_len: int, tiny: bool = False):
        from lighthouse.model import LlamaForCausalLM

        torch.manual_seed(0)
        self.tiny = tiny
        if tiny:  # a CPU dry run of every code path: 4 layers (0 and 3 dense), L2 p4 k128, fp32
            from lighthouse.model.config import LighthouseConfig
            from lighthouse.model.presets import model_preset

            cfg = model_preset("tiny")
            cfg.num_hidden_layers, cfg.max_position_embeddings = 4, max_len
            cfg.lighthouse = LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0, 3],
                                              min_seq_len=512)
            self.model = LlamaForCausalLM(cfg).eval()
        else:
            with torch.device("cuda"):
                self.model = LlamaForCausalLM(paper_config(max_len)).to(torch.bfloat16).eval()
        self.eng = None

    def session_bytes(self, n: int, itemsize: int) -> int:
        """A full session's K/V: every layer, n positions (and a block to spare)."""
        c = self.model.config
        return c.num_hidden_layers * (n + 2 * 128) * 2 * c.num_key_value_heads * c.head_dim * itemsize

    def engine(self, **config):
        from lighthouse.engine.config import EngineConfig
        from lighthouse.engine.engine import LLMEngine

        self.eng = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        base = dict(prefill="sparse", decode="dense", dense_tail_tokens=TAIL, max_num_seqs=8, cuda_graph_max_batch=8)
        if self.tiny and "kv_cache_bytes" not in config:
            config["kv_cache_bytes"] = 64 << 20
        self.eng = LLMEngine(self.model, None, EngineConfig(**{**base, **config}))
        return self.eng

    def held_gb(self) -> float:
        kv = self.eng.kv
        return (kv.allocator.usable - kv.num_free) * kv.shape.bytes_per_block / GB


def params(max_tokens: int):
    from lighthouse.engine.sampling import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def one_session(b: Bench, n: int, opts, decode_steps: int = 64) -> dict:
    """One n-token prompt: TTFT, held GB after the prefill, peak GB over it, decode ms/token."""
    eng = b.eng
    sync()
    cuda = torch.cuda.is_available()
    base = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    eng.add_request("one", prompt(n, 1), params(decode_steps + 2), opts)
    outs = []
    while not outs:
        outs = [o for o in eng.step() if o.token_ids]
    sync()
    ttft = time.perf_counter() - t0
    held, peak = b.held_gb(), (torch.cuda.max_memory_allocated() - base) / GB if cuda else 0.0
    res = eng._requests["one"].reservation.held_blocks(eng.kv.shape) * eng.kv.shape.bytes_per_block / GB
    eng.step()  # first decode step (graph replay warm)
    sync()
    t1, steps = time.perf_counter(), 0
    while eng.has_unfinished():
        eng.step()
        steps += 1
    sync()
    ms = (time.perf_counter() - t1) / max(1, steps) * 1000
    return {"ttft_s": round(ttft, 3), "held_gb": round(held, 3), "reserved_gb": round(res, 3),
            "prefill_peak_extra_gb": round(peak, 3), "decode_ms_per_token": round(ms, 3), "prompt_tokens": n}


def concurrent_compact(b: Bench, n: int, count: int, max_tokens: int) -> dict:
    from lighthouse.engine.errors import InvalidRequest
    from lighthouse.engine.options import RequestOptions

    eng = b.engine(kv_mode="compact")  # default budget: 75% of free memory
    opts = RequestOptions(kv_mode="compact", cache_prompt=False)
    refused = []
    for i in range(count):
        try:
            eng.add_request(f"doc{i}", prompt(n, 100 + i), params(max_tokens), opts)
        except InvalidRequest as e:
            refused.append(str(e))
    shape, usable = eng.kv.shape, eng.kv.allocator.usable
    reasons, peak, checks, mismatches, first_token = {}, 0, 0, 0, {}
    t0 = time.perf_counter()
    while eng.has_unfinished():
        for o in eng.step():
            if o.token_ids and o.request_id not in first_token:
                first_token[o.request_id] = round(time.perf_counter() - t0, 2)
            if o.finished:
                reasons[o.request_id] = o.finish_reason
        running = eng.scheduler.running
        peak = max(peak, len(running))
        if running and eng.scheduler.prefilling is None:
            held = sum(s.request.reservation.held_blocks(shape) for s in running)
            checks += 1
            mismatches += abs(eng.kv.usage_ratio - held / usable) > 1e-9
    return {"documents": count, "prompt_tokens": n, "max_tokens": max_tokens, "peak_running": peak,
            "finished": sum(r == "length" for r in reasons.values()), "finish_reasons": reasons, "refused": refused,
            "usage_checks": checks, "usage_mismatches": mismatches, "first_token_s": first_token,
            "kv_cache_gb": round(eng.kv.budget_bytes / GB, 2),
            "session_reserved_gb": round(eng.make_request("x", prompt(n, 0), params(max_tokens), opts)
                                         .reservation.held_blocks(shape) * shape.bytes_per_block / GB, 3),
            "wall_s": round(time.perf_counter() - t0, 1)}


def host_tier(b: Bench, n: int, dtype: str) -> dict:
    from lighthouse.engine.options import RequestOptions

    per_session = b.session_bytes(n + TAIL, 1 if dtype != "auto" else (4 if b.tiny else 2))
    eng = b.engine(kv_cache_bytes=int(per_session * 1.05), host_cache_bytes=int(per_session * 1.1),
                   kv_cache_dtype=dtype)
    opts = RequestOptions(decode="dense")
    doc_a, doc_b, q1, q2 = prompt(n, 7), prompt(n, 8), prompt(TAIL, 9), prompt(TAIL, 10)

    def ttft(rid: str, ids: list[int]) -> tuple[float, int]:
        sync()
        t0 = time.perf_counter()
        eng.add_request(rid, ids, params(1), opts)
        t, cached = None, 0
        while eng.has_unfinished():
            for o in eng.step():
                if o.prefill is not None:
                    cached = o.prefill.cached_tokens
                if o.token_ids and t is None:
                    sync()
                    t = time.perf_counter() - t0
        return round(t, 3), cached

    cold, _ = ttft("a1", doc_a + q1)
    evict, _ = ttft("b1", doc_b + q1)  # A's entry moves to host memory to make room
    host = eng.prefix_cache.host
    in_host = [e.length for e in host.entries]
    hit, cached = ttft("a2", doc_a + q2)
    return {"kv_cache_dtype": dtype, "cold_ttft_s": cold, "ttft_while_evicting_s": evict, "host_hit_ttft_s": hit,
            "host_hit_cached_tokens": cached, "host_entries_before_hit": in_host,
            "bytes_to_host": host.bytes_to_host, "bytes_to_device": host.bytes_to_device,
            "restore_gbps": round(host.bytes_to_device / GB / max(hit, 1e-9), 1)}


def compact_vs_full(b: Bench, n: int) -> dict:
    from lighthouse.engine.options import RequestOptions

    toks = {}
    for mode, opts in (("full", RequestOptions(decode="sparse", cache_prompt=False)),
                       ("compact", RequestOptions(kv_mode="compact", cache_prompt=False))):
        eng = b.engine()
        eng.add_request(mode, prompt(n, 3), params(32), opts)
        got = []
        while eng.has_unfinished():
            for o in eng.step():
                got += o.token_ids
        toks[mode] = got
    return {"equal": toks["full"] == toks["compact"], "tokens": 32, "prompt_tokens": n,
            "first_mismatch": next((i for i, (x, y) in enumerate(zip(toks["full"], toks["compact"])) if x != y), None)}


def profile_compact(b: Bench, n: int, out: Path) -> dict:
    """torch.profiler over one compact prefill of n tokens and 16 decode steps: top kernels by GPU time."""
    from torch.profiler import ProfilerActivity, profile

    from lighthouse.engine.options import RequestOptions

    eng = b.engine(kv_mode="compact")
    opts = RequestOptions(kv_mode="compact", cache_prompt=False)
    eng.add_request("warm", prompt(n, 11), params(4), opts)
    while eng.has_unfinished():
        eng.step()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        eng.add_request("prof", prompt(n, 12), params(17), opts)
        while eng.has_unfinished():
            eng.step()
        sync()
        wall = time.perf_counter() - t0
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    gpu = sum(e.self_device_time_total for e in prof.key_averages()) / 1e6
    text = f"== compact prefill of {n} tokens + 16 decode steps: wall {wall:.3f} s (profiled), GPU busy {gpu:.3f} s ==\n"
    (out / "profile_memory.txt").write_text(text + table)
    return {"wall_s": round(wall, 3), "gpu_busy_s": round(gpu, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="32K stands in for 512K and 64K for 1M (a smoke test)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, 1.1K/2.1K tokens: a dry run")
    ap.add_argument("--profile", action="store_true", help="profile a compact 512K prefill (DIR/profile_memory.txt)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: sessions,concurrent,host,1m,equal")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    n512 = 1036 + TAIL if args.tiny else (32 if args.quick else 512) * K + TAIL
    n1m = 2048 + TAIL if args.tiny else (64 if args.quick else 1024) * K + TAIL
    from lighthouse.engine.options import RequestOptions

    res: dict = {"bench": "memory_bench", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                 "torch": torch.__version__, "quick": args.quick, "tiny": args.tiny,
                 "model": "paper 270M shape (serve_bench.paper_config), random bf16 weights", "dense_tail_tokens": TAIL,
                 "errors": {}}
    if torch.cuda.is_available():
        res["gpu_total_gb"] = round(torch.cuda.get_device_properties(0).total_memory / GB, 1)
    path = out / "memory_bench.json"
    results = ResultsFile(path, res, log, T0)
    save, measure = results.save, results.measure

    b = Bench(n1m + 4096, args.tiny)
    full = b.session_bytes(n512 + 64, 4 if args.tiny else 2)  # budgets: a session's size and some room
    if "sessions" not in skip:
        for key, config, opts in (
            ("full_session_512k", dict(kv_cache_bytes=int(full * 1.1)), RequestOptions(decode="dense", cache_prompt=False)),
            ("fp8_full_session_512k", dict(kv_cache_bytes=int(full * 0.6), kv_cache_dtype="fp8_e4m3"),
             RequestOptions(decode="dense", cache_prompt=False)),
            ("full_sparse_decode_session_512k", dict(kv_cache_bytes=int(full * 1.25)),
             RequestOptions(decode="sparse", cache_prompt=False)),
            ("compact_session_512k", dict(kv_cache_bytes=int(full * (0.8 if args.tiny else 0.3)), kv_mode="compact"),
             RequestOptions(kv_mode="compact", cache_prompt=False)),
        ):
            def run(config=config, opts=opts):
                b.engine(**{k: v for k, v in config.items() if not (args.tiny and k == "kv_cache_bytes")})
                one_session(b, n512, opts, 4)  # warm-up: kernels, plans
                return one_session(b, n512, opts)
            measure(key, run)
        for key, field in (("full_session_512k", "full_session_gb_512k"),
                           ("fp8_full_session_512k", "fp8_full_session_gb_512k"),
                           ("compact_session_512k", "compact_session_gb_512k")):
            if key in res:
                res[field] = res[key]["held_gb"]
    if "equal" not in skip:
        n128 = 1100 if args.tiny else (8 if args.quick else 128) * K + TAIL
        r = measure("compact_vs_full_128k", lambda: compact_vs_full(b, n128))
        if r:
            res["compact_equals_full_tokens_128k"] = r["equal"]
    if "concurrent" not in skip:
        r = measure("concurrent_compact_512k", lambda: concurrent_compact(b, n512, 8, 400))
        if r:
            ok = r["finished"] == r["documents"] and not r["refused"] and not r["usage_mismatches"]
            res["concurrent_compact_512k_sessions"] = r["peak_running"] if ok else 0
    if "host" not in skip:
        r = measure("host_tier_512k", lambda: host_tier(b, n512 - TAIL, "auto"))
        if r:
            res["cold_ttft_512k_s"], res["host_tier_hit_ttft_512k_s"] = r["cold_ttft_s"], r["host_hit_ttft_s"]
        r = measure("host_tier_512k_fp8", lambda: host_tier(b, n512 - TAIL, "fp8_e4m3"))
        if r:
            res["host_tier_hit_ttft_512k_fp8_s"] = r["host_hit_ttft_s"]
    if "1m" not in skip:
        def one_m():
            b.engine(kv_mode="compact")
            return one_session(b, n1m, RequestOptions(kv_mode="compact", cache_prompt=False), 16)
        r = measure("compact_1m", one_m)
        if r:
            res["compact_1m_ttft_s"], res["compact_1m_session_gb"] = r["ttft_s"], r["held_gb"]
    if args.profile:
        measure("profile_compact_512k", lambda: profile_compact(b, n512, out))
    b.eng = None
    save()
    log(f"done: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
