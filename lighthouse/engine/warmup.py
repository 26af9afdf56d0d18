"""Startup warm-up: one short request through every serving path before the engine takes real ones; then the
engine's ready line (`log_ready`).

On CUDA the Triton kernels (the Lighthouse op's pooling, cascade, gather and scatter; the paged decode kernel as the
cached tail and the sparse-decode context read it) compile at their first call, seconds each. Without a warm-up the
first long prompt after startup pays all of them, and every request queued behind it waits (the engine runs one
prefill at a time). The likeliest cause, not yet confirmed, of what an H100 showed: 100 concurrent streams on the
bundled checkpoint took 20 s there, longer than on a 2-core CPU (bench/results/2026-12-07_h100_session5_checks/).
The decode step's CUDA graphs are captured before this runs.

Each path the engine serves gets two requests, of `min_sparse_len + dense_tail_tokens + 16` random tokens (about
the shortest prompt that takes the sparse path) and one more, two new tokens each, no prefix-cache entry: sparse
prefill with dense and with sparse decode, compact, and dense prefill; a model without Lighthouse layers, dense
only. Two lengths because Triton compiles a kernel once per specialization of its integer arguments (divisible by
16 or not): the op's pooling, gather and scatter kernels take the sparse length, and the first length's is a
multiple of 16 (the bundled checkpoint's op under the interpreter: one variant per kernel for 4K-8K prompts of
other lengths, a second at 8,000). Then a prompt of the default path is left in the prefix cache and three
questions reuse it but for their last 16, 32 and 64 query rows (a question after a document: the cached tail's
kernel at each of its tile heights), and those entries are dropped. Last, speculative decoding's verify step at each
of its query buckets (2, 3, 5, 9 queries a row: a kernel variant each), with dense and with sparse decode. A path whose request the budget cannot hold is skipped with a log line; one
whose request fails is logged as a warning (a fault stays with its request, as in serving), not fatal. Nothing
stays behind: the blocks are freed, no entry is cached and the counters the metrics read are restored.
"""

from __future__ import annotations

import logging
import time

import torch

from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.memory import budget_hint
from lighthouse.engine.model_runner import VERIFY_QUERIES
from lighthouse.engine.options import RequestOptions, Speculation
from lighthouse.engine.plan import min_sparse_len, usable_lighthouse
from lighthouse.engine.sampling import SamplingParams

log = logging.getLogger(__name__)
# `engine` below is an LLMEngine (engine.py imports this module: no import back, not even for annotations)

WARMUP_ID = "__warmup__"


def warmup_paths(engine) -> list[RequestOptions]:
    """The (prefill, decode, kv_mode) paths the engine can serve, as the warm-up asks for them."""
    if engine.sparse_unavailable is not None:
        return [RequestOptions("dense", "dense", cache_prompt=False, kv_mode="full")]
    return [RequestOptions("sparse", "dense", cache_prompt=False, kv_mode="full"),
            RequestOptions("sparse", "sparse", cache_prompt=False, kv_mode="full"),
            RequestOptions("sparse", "sparse", cache_prompt=False, kv_mode="compact"),
            RequestOptions("dense", "dense", cache_prompt=False, kv_mode="full")]


def warmup_prompt_len(engine) -> int:
    lh = usable_lighthouse(engine.model.config)
    return (min_sparse_len(lh) if lh is not None else 0) + engine.config.dense_tail_tokens + 16


def maybe_warm_up(engine) -> float | None:
    """The warm-up if the engine's config asks for it (`warmup`; None: on CUDA only); its seconds, or None."""
    on = engine.config.warmup
    if on if on is not None else engine.device.type == "cuda":
        return warm_up(engine)
    return None


def _run_one(engine, rid: str, ids: list[int], params: SamplingParams, opts: RequestOptions) -> int | None:
    """One warm-up request to its end: the prompt tokens it took from the prefix cache, or None when it was refused
    or failed (logged)."""
    what = f"prefill={opts.prefill} decode={opts.decode} kv_mode={opts.kv_mode}"
    try:
        engine.add_request(rid, ids, params, opts)
    except InvalidRequest as exc:
        log.info("warm-up: skipped %s (%s)", what, exc)
        return None
    failed, cached = None, 0
    while engine.has_unfinished():
        for out in engine.step():
            failed = out.error if out.finished and out.error else failed
            cached = out.prefill.cached_tokens if out.prefill is not None else cached
    if failed is not None:  # a fault stays with its request, here as in serving: said, not fatal
        log.warning("warm-up: %s failed: %s", what, failed)
        return None
    return cached


def _prefix_hits(engine, ids: list[int], params: SamplingParams) -> list[str]:
    """A prompt left in the prefix cache, then prompts that reuse all of it but their last k tokens: the cached tail's
    kernel (prefill_attention.CachedTail) at 16, 32 and 64 rows (k x the query heads per KV head), the sizes a
    question after a document takes; the entries made here are dropped afterwards."""
    cache = engine.prefix_cache
    if cache is None:
        return []
    r = engine.model.config.num_attention_heads // engine.model.config.num_key_value_heads
    tail = engine.config.dense_tail_tokens
    ks = [k for k in sorted({max(1, rows // r) for rows in (16, 32, 64)}) if k <= tail]
    n = max(len(ids) - 1, cache.min_tokens + tail + 16)
    doc = (ids * (n // len(ids) + 1))[:n]
    before = list(cache.entries)
    opts = RequestOptions(cache_prompt=True)
    ran = []
    if ks and _run_one(engine, f"{WARMUP_ID}doc", doc, params, opts) is not None:
        for k in ks:
            question = doc[: n - k] + [(t + 1) % engine.vocab_size for t in doc[n - k :]]
            cached = _run_one(engine, f"{WARMUP_ID}hit{k}", question, params, opts)
            if cached:
                ran.append(f"hit/{n - cached}")
    for e in [e for e in cache.entries if e not in before]:
        cache.discard(e)
    return ran


def _verify_steps(engine, ids: list[int], n: int) -> list[str]:
    """Speculative decoding's verify step at each query bucket (VERIFY_QUERIES: k drafts + 1), dense decode after a
    short prompt and, with Lighthouse layers, sparse decode after the sparse one: drafts are forced (the last token
    k times, accepted or not), so each bucket runs whatever the model generates."""
    paths = [("dense", 16)] + ([("sparse", n)] if engine.sparse_unavailable is None else [])
    ran = []
    with engine.speculator.drafting(lambda s, k: [s.output_ids[-1]] * k):
        for q in VERIFY_QUERIES:
            for decode, length in paths:
                opts = RequestOptions(prefill="dense" if decode == "dense" else "sparse", decode=decode,
                                      cache_prompt=False, speculative=Speculation("prompt_lookup", q - 1))
                params = SamplingParams(max_tokens=q + 1, temperature=0.0, ignore_eos=True)
                if _run_one(engine, f"{WARMUP_ID}verify{q}{decode}", ids[:length], params, opts) is not None:
                    ran.append(f"verify/{decode}/{q}")
    return ran


def warm_up(engine) -> float:
    """Run the warm-up requests (module docstring) to completion; seconds it took."""
    t0 = time.monotonic()
    n = warmup_prompt_len(engine)
    ids = torch.randint(0, engine.vocab_size, (n + 1,), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True)
    counters = engine.speculator.proposed, engine.speculator.accepted
    ran = []
    for i, (opts, length) in enumerate((o, m) for o in warmup_paths(engine) for m in (n, n + 1)):
        if _run_one(engine, f"{WARMUP_ID}{i}", ids[:length], params, opts) is not None:
            ran.append(f"{opts.prefill}/{opts.decode}/{opts.kv_mode}/{length}")
    ran += _prefix_hits(engine, ids, params)
    ran += _verify_steps(engine, ids, n)
    engine.speculator.proposed, engine.speculator.accepted = counters
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    seconds = time.monotonic() - t0
    log.info("warm-up: requests through %s (prefill/decode/kv_mode/tokens; hit/tokens computed after a prefix hit) "
             "in %.1f s (kernels compiled before the first request)", ", ".join(ran) or "no path", seconds)
    return seconds


def log_ready(engine) -> None:
    """The engine's ready line (what it serves, with which budget), and what would lift max_model_len when the KV
    budget, not the checkpoint, sets it."""
    c, kv = engine.config, engine.kv
    prefill, decode, kv_mode = engine.defaults
    log.info("engine ready: device=%s dtype=%s max_model_len=%d kv_cache=%.2f GiB (%d blocks of one layer x %d "
             "positions, %s) kv_mode=%s prefill=%s decode=%s cuda_graphs=%s overlap_decode=%s", engine.device,
             engine.dtype, engine.max_model_len, kv.budget_bytes / 2**30, kv.allocator.usable, c.block_size,
             kv.shape.storage_dtype, kv_mode, prefill,
             "sparse" if kv_mode == "compact" else decode,  # compact sessions decode sparsely
             sorted(engine.runner.graphs) or "off", "on" if engine.overlap.enabled else "off")
    hint = budget_hint(engine.model.config, kv, kv_mode=c.kv_mode, max_model_len_cap=c.max_model_len,
                       dense_tail_tokens=c.dense_tail_tokens)
    if hint is not None:
        log.warning(hint)
