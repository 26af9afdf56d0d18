"""Decode benchmark for the H200: every decode figure of the paged-KV / CUDA-graph work, in one process.

Builds the 270M paper shape (`paper_config` of serve_bench.py: 30 layers, dim 1024, 8/8 heads of 128, FFN 1536,
byte vocabulary, Lighthouse L3 p4 k2048) with random bf16 weights on CUDA (seed 0, no checkpoint), one LLMEngine
(max_num_seqs=128, default KV budget), warms every path up (sparse/dense prefill, dense/sparse decode at 64K+64,
a prefix-cache hit, batches of 32 and 128) and measures, timing on the host around `engine.step()`:

- dense_/sparse_ms_per_token_512k: one request of 524,288+64 prompt tokens (sparse prefill, dense tail 64),
  64 new tokens; ms/token = (last token time - first token time) / (tokens - 1); ttft_512k_*_decode_s too;
- batch32_8k_tokens_per_s, batch128_1k_tokens_per_s: 32 x 8,192 resp. 128 x 1,024-token prompts (each its own),
  dense decode; tokens / time of the first 128 steps in which every sequence decoded (the scheduler alternates
  prefills and decodes, so the first requests decode while the last prefill: each may run 128 + 2 x batch tokens,
  and the run is aborted after the timed steps); *_e2e_tokens_per_s: all tokens from the first add_request to
  the end of those steps / that time;
- cached_question_ttft_128k_s / _512k_s: document D + question Q1 (cache_prompt, max_tokens 1), then D + Q2, Q3,
  Q4: the median of their add_request -> first token (each in _runs), and prefill.cached_tokens (must be >= len(D));
- fp8_dense_ms_per_token_512k (--no-fp8 skips it): the 512K dense decode again on an engine with a float8 KV cache;
- with --eager-compare (default unless --quick): a second engine with enforce_eager=True, batch 32 and 512K dense
  decode (32 tokens) again;
- with --overlap-compare (default on where the engine overlaps, i.e. on CUDA): the same engine with its overlap off
  (each step's tokens read before the next is launched, as before engine/overlap.py), dense and sparse 512K and
  batch 32 again (fields suffixed _no_overlap).
torch.profiler covers 8 more decode steps after the timed ones of the 512K dense request and the batch-32 run
(DIR/profile_decode.txt: top-20 kernels, kernels and launches per step). Every measure has its own try/except
(failures go to "errors"); DIR/decode_bench.json is rewritten after each one.

- spec_speedup_128k_b1 / _512k_b1 / _8k_b32, spec_acceptance_rate: prompt-lookup speculative decoding on an
  extractive task with the bundled checkpoint (bench/perf/spec_decode_bench.py; --no-spec skips them).
- json_schema_b32_tokens_per_s_ratio: decode tokens/s of 32 json_schema requests over 32 unconstrained ones on one
  engine with a 49K vocabulary (bench/perf/structured_bench.py; --no-structured skips it).

    python -m bench.perf.decode_bench --out DIR [--quick | --tiny] [--no-eager-compare] [--no-spec] [--no-structured]

--quick: 32K instead of 512K and smaller batches' prompts (GPU smoke test); --tiny: a tiny model on the CPU.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from bench.perf.paper_server import TAIL, paper_config
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams

PROF_STEPS = 8
SIZES = {  # long: the 512K request; cached: the 128K and 512K documents; b32/b128: (batch, prompt tokens)
    "full": dict(long=524288, warm=65536, cached=(131072, 524288), b32=(32, 8192), b128=(128, 1024),
                 long_tokens=64, batch_tokens=128, eager_tokens=32, max_num_seqs=128),
    "quick": dict(long=32768, warm=32768, cached=(16384, 32768), b32=(32, 2048), b128=(128, 512),
                  long_tokens=32, batch_tokens=32, eager_tokens=16, max_num_seqs=128),
    "tiny": dict(long=2048, warm=2048, cached=(1024, 2048), b32=(4, 1024), b128=(4, 256),
                 long_tokens=16, batch_tokens=16, eager_tokens=8, max_num_seqs=8),
}
CUDA = torch.cuda.is_available()
T0 = time.monotonic()
_next_id = iter(range(1 << 40))


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def prompt(n: int, seed: int = 0, question: int = 0) -> list[int]:
    """ASCII byte ids as serve_bench's stream_completion builds them; `seed` changes the first two tokens (its own
    document), `question` the last TAIL tokens (another question about the same document)."""
    ids = [32 + (i * 7919) % 90 for i in range(n)]
    for j in range(max(0, n - TAIL), n):
        ids[j] = 32 + (j * 7919 + question * 31) % 90
    if seed:
        ids[0], ids[1] = 32 + seed % 90, 32 + seed // 90 % 90
    return ids


def build_model(mode: str, max_len: int):
    from lighthouse.model import LlamaForCausalLM

    cfg = paper_config(max_len)
    if mode == "tiny":
        cfg = replace(paper_config(max_len, layers=4, topk=128), hidden_size=128, intermediate_size=256,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=64)
        cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[0, 3])
    torch.manual_seed(0)
    with torch.device("cuda" if CUDA else "cpu"):
        model = LlamaForCausalLM(cfg)
    return model.to(torch.bfloat16).eval(), cfg


@dataclass
class Run:
    t0: float
    rids: list[str]
    times: dict  # request id -> host time of each token
    info: dict = field(default_factory=dict)  # request id -> PrefillInfo
    steps: list = field(default_factory=list)  # (end time, seconds, decode outputs, all tokens)
    prof: object = None  # the profiler, once started
    prof_on: bool = False
    prof_steps: int = 0

    def full_steps(self) -> list:  # the steps in which every request decoded
        return [st for st in self.steps if st[2] == len(self.rids)]


def profiler(run: Run, on: bool) -> None:
    if on and run.prof is None:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if CUDA else [])
        run.prof = torch.profiler.profile(activities=acts)
        run.prof.start()
    elif not on and run.prof_on:
        run.prof.stop()
    run.prof_on = on and run.prof is not None


def drive(engine, prompts: list[list[int]], max_tokens: int, opts: RequestOptions, prof_from=None,
          stop_at=None) -> Run:
    """One request per prompt, stepped until all finish. The profiler runs from the step where prof_from(run) holds;
    the requests are aborted (the run ends) once stop_at(run) holds."""
    sp = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    rids = [f"r{next(_next_id)}" for _ in prompts]
    run, stopped, carry = Run(time.perf_counter(), rids, {r: [] for r in rids}), False, 0.0
    try:
        for rid, ids in zip(rids, prompts):
            engine.add_request(rid, ids, sp, opts)
        while engine.has_unfinished():
            if prof_from and run.prof is None and prof_from(run):
                profiler(run, True)
            if stop_at and not stopped and stop_at(run):
                profiler(run, False)
                stopped = True
                for rid in rids:
                    engine.abort_request(rid)
            a = time.perf_counter()
            outs = engine.step()
            b = time.perf_counter()
            run.prof_steps += run.prof_on
            n_dec = sum(1 for o in outs if o.token_ids and o.prefill is None)
            # with overlap (engine/overlap.py) a call may only launch a decode step, whose tokens the next call
            # returns: the launch's time counts toward that call's step
            launched = not outs and getattr(getattr(engine, "overlap", None), "inflight", None) is not None
            dt, carry = b - a + carry, 0.0
            if launched:
                dt, carry = 0.0, dt
            run.steps.append((b, dt, n_dec, sum(len(o.token_ids) for o in outs)))
            for o in outs:
                if o.error:
                    raise RuntimeError(f"request {o.request_id}: {o.error}")
                if o.prefill is not None:
                    run.info.setdefault(o.request_id, o.prefill)
                run.times[o.request_id] += [b] * len(o.token_ids)
    except BaseException:
        for rid in rids:  # leave the engine empty for the next measure
            engine.abort_request(rid)
        while engine.has_unfinished():
            engine.step()
        raise
    finally:
        profiler(run, False)
    return run


def single(run: Run, n: int) -> tuple[float, float]:
    """(TTFT s, ms per token over the first n tokens) of a one-request run."""
    t = run.times[run.rids[0]][:n]
    return t[0] - run.t0, 1000 * (t[-1] - t[0]) / max(1, len(t) - 1)


def batch_rates(run: Run, n: int) -> tuple[float, float]:
    """(tokens/s over the first n steps in which every request decoded, tokens/s from the first add_request to the
    end of those steps)."""
    full = run.full_steps()[:n]
    if len(full) < n:
        raise RuntimeError(f"only {len(full)} steps decoded the whole batch, {n} wanted")
    end = full[-1][0]
    total = sum(st[3] for st in run.steps if st[0] <= end)
    return sum(st[2] for st in full) / sum(st[1] for st in full), total / (end - run.t0)


def write_profile(path: Path, label: str, run: Run) -> dict:
    ev, steps = run.prof.events(), max(1, run.prof_steps)
    gpu = [e for e in ev if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels = [e for e in gpu if not e.name.startswith(("Memcpy", "Memset"))]
    launch_api = sum(e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
                     for e in ev)
    counts = {"steps": run.prof_steps, "kernels_per_step": len(kernels) / steps,
              "gpu_events_per_step": len(gpu) / steps, "kernel_launch_calls_per_step": launch_api / steps,
              "graph_launches_per_step": sum(e.name == "cudaGraphLaunch" for e in ev) / steps,
              # kernel time per step: beside ms/token, the share of a step the GPU computes (the rest: gaps, host)
              "kernel_ms_per_step": sum(getattr(e, "device_time_total", 0) for e in kernels) / steps / 1e3}
    table = run.prof.key_averages().table(sort_by="cuda_time_total" if CUDA else "cpu_time_total", row_limit=20)
    with path.open("a") as f:
        f.write(f"=== {label}: {run.prof_steps} decode steps ===\n{json.dumps(counts)}\n{table}\n\n")
    return counts


class Bench:
    def __init__(self, args, mode: str, cfg):
        self.S, self.args, self.eng, self.figures = SIZES[mode], args, None, []
        self.json, self.prof_path = Path(args.out) / "decode_bench.json", Path(args.out) / "profile_decode.txt"
        self.prof_path.write_text(f"decode_bench profile ({mode}), {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n")
        lh = cfg.lighthouse
        self.res: dict = {
            "bench": "decode_bench", "mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
            "triton": importlib.import_module("triton").__version__ if importlib.util.find_spec("triton") else None,
            "sizes": self.S, "dense_tail_tokens": TAIL,
            "model": {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
                      "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim, "ffn": cfg.intermediate_size,
                      "vocab": cfg.vocab_size, "max_position_embeddings": cfg.max_position_embeddings,
                      "lighthouse": f"L{lh.levels} p{lh.pooling_factor} k{lh.topk} {lh.scorer}",
                      "full_attn_layers": list(lh.full_attn_layers), "dtype": "bfloat16", "weights": "random"},
            "engine": {}, "peak_memory_gb": {}, "profile": {}, "errors": {},
        }

    def save(self) -> None:
        self.res["elapsed_s"] = round(time.monotonic() - T0, 1)
        self.json.write_text(json.dumps(self.res, indent=2, default=str))

    def measure(self, key: str, fn) -> None:
        if time.monotonic() - T0 > self.args.budget_s:
            self.res["errors"][key] = f"skipped: past the {self.args.budget_s:.0f}s budget"
            return self.save()
        log(f"{key} ...")
        if CUDA:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        try:
            got = fn()
            self.res.update(got)
            self.figures += list(got)
            log(f"{key}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in got.items()))
        except Exception as exc:
            traceback.print_exc()
            self.res["errors"][key] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"{key}: FAILED {self.res['errors'][key][:200]}")
        if CUDA:
            self.res["peak_memory_gb"][key] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        self.save()

    def engine(self, model, variant: str) -> dict:
        cfg = EngineConfig(prefill="sparse", decode="dense", dense_tail_tokens=TAIL,
                           max_num_seqs=self.S["max_num_seqs"], enforce_eager=variant == "eager",
                           kv_cache_dtype="fp8_e4m3" if variant == "fp8" else "auto",
                           kv_cache_bytes=int(self.args.kv_cache_gb * 2**30) if self.args.kv_cache_gb else None)
        self.eng = LLMEngine(model, None, cfg)
        budget = getattr(getattr(self.eng, "kv", None), "budget_bytes", 0)
        self.res["engine"][variant] = {
            "block_size": cfg.block_size, "enforce_eager": cfg.enforce_eager, "max_num_seqs": cfg.max_num_seqs,
            "cuda_graph_max_batch": cfg.cuda_graph_max_batch, "kv_cache_fraction": cfg.kv_cache_fraction,
            "kv_cache_dtype": cfg.kv_cache_dtype, "overlap_decode": getattr(self.eng, "overlap", None) is not None
            and self.eng.overlap.enabled,
            "max_model_len": self.eng.max_model_len, "kv_budget_gb": round(budget / 1e9, 2)}
        return {}

    def run(self, model, variant: str = "default") -> None:
        """Build an engine (variant: default, eager = enforce_eager, fp8 = a float8 KV cache), warm it up, run the
        measures; the engine is dropped at the end. The fp8 engine measures only the 512K dense decode."""
        self.eng = None
        x = "" if variant == "default" else "_" + variant
        self.measure("engine" + x, lambda: self.engine(model, variant))
        if self.eng is None:
            return
        self.measure("warmup" + x, self.warmup)
        S = self.S
        b32 = ("batch32_8k", lambda: self.batch("b32", 1, "batch32_8k", None if variant == "eager" else "batch32_8k"))
        if variant == "eager":
            todo = [b32, ("dense_512k", lambda: self.long_decode("dense", S["eager_tokens"]))]
        elif variant == "fp8":
            todo = [("dense_512k", lambda: self.long_decode("dense", S["long_tokens"]))]
        else:
            todo = [("dense_512k", lambda: self.long_decode("dense", S["long_tokens"], "dense_512k")),
                    ("sparse_512k", lambda: self.long_decode("sparse", S["long_tokens"], "sparse_512k")), b32,
                    ("batch128_1k", lambda: self.batch("b128", 201, "batch128_1k"))]
            todo += [(f"cached_question_{t}", lambda n=n, t=t, s=s: self.cached_question(n, s, t))
                     for n, t, s in zip(S["cached"], ("128k", "512k"), (1000, 2000))]
        name = (lambda k: "fp8_" + k) if variant == "fp8" else (lambda k: k + x)  # fp8_dense_ms_per_token_512k
        for key, fn in todo:
            self.measure(key + x, lambda fn=fn: {name(k): v for k, v in fn().items()})
        overlap = getattr(self.eng, "overlap", None)  # (an engine before engine/overlap.py has none)
        if variant == "default" and self.args.overlap_compare and overlap is not None and overlap.enabled:
            overlap.enabled = False  # the same engine reading each step before launching the next
            for key, fn in (("dense_512k", lambda: self.long_decode("dense", S["long_tokens"])),
                            ("sparse_512k", lambda: self.long_decode("sparse", S["long_tokens"])),
                            ("batch32_8k", lambda: self.batch("b32", 1, "batch32_8k"))):
                self.measure(key + "_no_overlap", lambda fn=fn: {k + "_no_overlap": v for k, v in fn().items()})
            overlap.enabled = True
        self.eng = None

    # ---- the measures (each returns its JSON fields) ------------------------------------------------------------
    def warmup(self) -> dict:
        n, nocache = self.S["warm"] + TAIL, dict(dense_tail_tokens=TAIL, cache_prompt=False)
        for pf, dec in (("sparse", "dense"), ("sparse", "sparse"), ("dense", "dense")):
            drive(self.eng, [prompt(n)], 4, RequestOptions(pf, dec, **nocache))
        for q in (1, 2):  # a prefix-cache hit
            drive(self.eng, [prompt(n, 3000, q)], 2, RequestOptions("sparse", "dense", TAIL, cache_prompt=True))
        for b, _ in (self.S["b32"], self.S["b128"]):
            drive(self.eng, [prompt(256, 4000 + i) for i in range(b)], 4, RequestOptions(**nocache))
        return {}

    def long_decode(self, decode: str, n_tokens: int, prof: str | None = None) -> dict:
        """One 512K request decoding n_tokens. Sparse decode in kv_mode full keeps the full caches and the contexts;
        where the budget cannot hold both (an 80 GB card at --kv-cache-gb 62), it runs in kv_mode compact, which
        reads the same contexts and full-attention layers per step (the JSON says which: sparse_512k_kv_mode)."""
        opts = RequestOptions("sparse", decode, TAIL, cache_prompt=False)
        prof_from = (lambda r: len(r.times[r.rids[0]]) >= n_tokens) if prof else None
        steps, doc = n_tokens + (PROF_STEPS if prof else 0), prompt(self.S["long"] + TAIL)
        extra = {}
        try:
            run = drive(self.eng, [doc], steps, opts, prof_from)
        except InvalidRequest as exc:
            if decode != "sparse" or "KV cache blocks" not in str(exc):
                raise
            opts = replace(opts, kv_mode="compact")
            run = drive(self.eng, [doc], steps, opts, prof_from)
            extra = {"sparse_512k_kv_mode": "compact", "sparse_512k_full_refused": str(exc)[:200]}
        if prof:
            self.res["profile"][prof] = write_profile(self.prof_path, prof, run)
        ttft, ms = single(run, n_tokens)
        return {f"{decode}_ms_per_token_512k": ms, f"ttft_512k_{decode}_decode_s": ttft, **extra}

    def batch(self, which: str, seed: int, key: str, prof: str | None = None) -> dict:
        (b, n), n_tok = self.S[which], self.S["batch_tokens"]
        extra = PROF_STEPS if prof else 0
        prompts = [prompt(n, seed + i) for i in range(b)]
        run = drive(self.eng, prompts, n_tok + extra + 2 * b + 8, RequestOptions(cache_prompt=False),
                    prof_from=(lambda r: len(r.full_steps()) >= n_tok) if prof else None,
                    stop_at=lambda r: len(r.full_steps()) >= n_tok + extra)
        if prof:
            self.res["profile"][prof] = write_profile(self.prof_path, prof, run)
        tps, e2e = batch_rates(run, n_tok)
        return {f"{key}_tokens_per_s": tps, f"{key}_e2e_tokens_per_s": e2e}

    def cached_question(self, n_doc: int, seed: int, tag: str, questions: int = 3) -> dict:
        """D + Q1 prefills the document; then D + Q2, D + Q3, ... each hit it: the median of their TTFTs (the first
        hit at a new table width may pay one-time costs that a single question cannot tell apart)."""
        opts = RequestOptions("sparse", "dense", TAIL, cache_prompt=True)
        first = drive(self.eng, [prompt(n_doc + TAIL, seed, 1)], 1, opts)
        runs, cached = [], n_doc
        for q in range(2, 2 + questions):
            hit = drive(self.eng, [prompt(n_doc + TAIL, seed, q)], 1, opts)
            runs.append(round(single(hit, 1)[0], 4))
            cached = min(cached, hit.info[hit.rids[0]].cached_tokens)
        if cached < n_doc:
            self.res["errors"][f"cached_question_cached_tokens_{tag}"] = f"{cached} cached < len(D) = {n_doc}"
        return {f"cached_question_ttft_{tag}_s": statistics.median(runs), f"cached_question_ttft_{tag}_runs": runs,
                f"cached_question_cached_tokens_{tag}": cached, f"cached_question_first_ttft_{tag}_s": single(first, 1)[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for decode_bench.json and profile_decode.txt")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes (32K instead of 512K): a GPU smoke test")
    size.add_argument("--tiny", action="store_true", help="a tiny model and sizes, for a CPU dry run")
    ap.add_argument("--eager-compare", action=argparse.BooleanOptionalAction, default=None,
                    help="also measure with enforce_eager=True (default: on unless --quick)")
    ap.add_argument("--overlap-compare", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure dense/sparse 512K and batch 32 with the engine's overlap off (where it is on)")
    ap.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=True,
                    help="also fp8_dense_ms_per_token_512k: an engine with a float8 KV cache (kv_cache_dtype=fp8_e4m3)")
    ap.add_argument("--spec", action=argparse.BooleanOptionalAction, default=True,
                    help="also the speculative-decoding measures (bench/perf/spec_decode_bench.py)")
    ap.add_argument("--structured", action=argparse.BooleanOptionalAction, default=True,
                    help="also json_schema_b32_tokens_per_s_ratio (bench/perf/structured_bench.py)")
    ap.add_argument("--base", action=argparse.BooleanOptionalAction, default=True,
                    help="the measures of the default engine (dense/sparse 512K, batches, cached questions); "
                         "--no-base with --spec: only speculation's (and --structured's)")
    ap.add_argument("--budget-s", type=float, default=450, help="skip measures that would start after this")
    ap.add_argument("--kv-cache-gb", type=float, default=None,
                    help="KV cache GiB (default: the engine's share of free memory; on an 80 GB card 62 holds 512K+128)")
    args = ap.parse_args()
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model, cfg = build_model(mode, SIZES[mode]["long"] + TAIL + SIZES[mode]["batch_tokens"] + PROF_STEPS + 64)
    bench = Bench(args, mode, cfg)
    bench.res["model"]["parameters"] = sum(p.numel() for p in model.parameters())
    log(f"{mode}: model built ({bench.res['model']['parameters'] / 1e6:.0f}M parameters) on {bench.res['device']}")
    if args.base:
        bench.run(model)
    for variant, on in (("eager", args.eager_compare if args.eager_compare is not None else not args.quick),
                        ("fp8", args.fp8)):
        if on and args.base:
            gc.collect()  # the engine before and its KV cache go before the next is built
            torch.cuda.empty_cache() if CUDA else None
            bench.run(model, variant)
    if args.spec:
        from bench.perf.spec_decode_bench import run_all  # noqa: PLC0415

        model = None
        gc.collect()
        torch.cuda.empty_cache() if CUDA else None
        run_all(bench, mode)
    if args.structured:
        from bench.perf.structured_bench import run_all as run_structured  # noqa: PLC0415

        model = None
        gc.collect()
        torch.cuda.empty_cache() if CUDA else None
        run_structured(bench, mode)
    bench.save()
    log(f"wrote {bench.json} and {bench.prof_path}")
    for k in bench.figures:
        v = bench.res[k]
        print(f"  {k:<40} {v:>12.4g}" if isinstance(v, float) else f"  {k:<40} {v!s:>12}")
    for k, e in bench.res["errors"].items():
        print(f"  error {k}: {e[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
