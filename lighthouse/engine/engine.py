"""The synchronous engine: token ids in, token ids and text out; no HTTP, no threads of its own.

`add_request` validates and queues, `step` does one unit of work (a prefill or a batched decode) and returns
what it produced, `abort_request` is safe to call from any thread (it also stops a prefill between layers).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import torch

from lighthouse.engine.config import DECODE_MODES, PREFILL_MODES, EngineConfig
from lighthouse.engine.decode import decode_step
from lighthouse.engine.detokenizer import IncrementalText
from lighthouse.engine.errors import InvalidRequest, RequestFailed
from lighthouse.engine.kv_cache import CacheShape, KVCacheManager, default_budget_bytes
from lighthouse.engine.prefill import PrefillAborted, plan_prefill, run_prefill
from lighthouse.engine.prefix_cache import CacheHit, PrefixCache, cache_split
from lighthouse.engine.sampling import SampleRow, SamplingParams, make_generator, sample
from lighthouse.engine.scheduler import Scheduler
from lighthouse.engine.sequence import PrefillInfo, Request, RequestOutput, Sequence, Status, TokenLogprob

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (request_id, prompt tokens processed, prompt tokens)


def _cache_shape(model, device: torch.device, dtype: torch.dtype) -> CacheShape:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return CacheShape(c.num_hidden_layers, kv_heads, c.num_attention_heads, head_dim, dtype, device)


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model.config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids


class LLMEngine:
    def __init__(self, model, tokenizer, config: EngineConfig | None = None, *, stop_token_ids: list[int] = ()):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        budget = self.config.kv_cache_bytes or default_budget_bytes(self.device, self.config.kv_cache_fraction)
        self.kv = KVCacheManager(_cache_shape(model, self.device, self.dtype), budget)
        limits = [self.kv.max_tokens, int(getattr(model.config, "max_position_embeddings", 1 << 62))]
        if self.config.max_model_len:
            limits.append(self.config.max_model_len)
        self.max_model_len = min(limits)
        self.vocab_size = int(model.config.vocab_size)
        self.eos_ids = _eos_ids(model, tokenizer) | set(stop_token_ids)  # + generation_config.json's
        self.prefix_cache = (PrefixCache(self.kv, self.config.prefix_cache_min_tokens)
                             if self.config.enable_prefix_caching else None)
        self.scheduler = Scheduler(self.kv, self.config.max_num_seqs, make_room=self._make_room)
        self.progress_callback: ProgressFn | None = None
        self._requests: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._to_abort: set[str] = set()
        log.info("engine ready: device=%s dtype=%s max_model_len=%d kv_budget=%.2f GiB prefill=%s decode=%s",
                 self.device, self.dtype, self.max_model_len, budget / 2**30, self.config.prefill, self.config.decode)

    # ---- admission -------------------------------------------------------------------------------------------
    def make_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams, *, prefill: str | None = None,
                     decode: str | None = None, dense_tail_tokens: int | None = None,
                     cache_prompt: bool | None = None) -> Request:
        """Validate and build a request (thread-safe; raises InvalidRequest). `enqueue` it on the engine thread."""
        prefill = prefill or self.config.prefill
        decode = decode or self.config.decode
        tail = self.config.dense_tail_tokens if dense_tail_tokens is None else dense_tail_tokens
        if prefill not in PREFILL_MODES:
            raise InvalidRequest(f"prefill must be one of {list(PREFILL_MODES)}, got {prefill!r}", param="prefill")
        if decode not in DECODE_MODES:
            raise InvalidRequest(f"decode must be one of {list(DECODE_MODES)}, got {decode!r}", param="decode")
        if not isinstance(tail, int) or tail < 0:
            raise InvalidRequest(f"dense_tail_tokens must be an integer >= 0, got {tail!r}", param="dense_tail_tokens")
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise InvalidRequest("the prompt is empty; send at least one token", param="prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.vocab_size:
            raise InvalidRequest(f"prompt token ids must be in [0, {self.vocab_size})", param="prompt")
        if n_prompt >= self.max_model_len:
            raise InvalidRequest(
                f"This model's maximum context length is {self.max_model_len} tokens, but the prompt has {n_prompt} "
                "tokens (at least one must remain for the completion). Please shorten the prompt.",
                param="prompt", code="context_length_exceeded")
        if params.max_tokens is None:
            params.max_tokens = self.max_model_len - n_prompt
        params.validate(self.vocab_size)
        if n_prompt + params.max_tokens > self.max_model_len:
            raise InvalidRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{n_prompt + params.max_tokens} tokens ({n_prompt} in the prompt, {params.max_tokens} for max_tokens). "
                f"Please reduce max_tokens to at most {self.max_model_len - n_prompt} or shorten the prompt.",
                param="max_tokens", code="context_length_exceeded")
        if params.n > self.config.max_num_seqs:
            raise InvalidRequest(f"n={params.n} exceeds the server's max_num_seqs ({self.config.max_num_seqs})", param="n")
        plan = plan_prefill(self.model, n_prompt, prefill=prefill, decode=decode, dense_tail_tokens=tail)
        capacity = n_prompt + params.max_tokens
        sparse_entries = plan.selected + capacity - plan.split if plan.sparse_decode else 0
        per_seq = self.kv.bytes_for(capacity, sparse_entries, len(plan.lighthouse_layers))
        if not self.kv.fits_ever(params.n * per_seq):
            raise InvalidRequest(
                f"The request needs {params.n * per_seq / 2**20:.1f} MiB of KV cache (n={params.n} x {capacity} positions), "
                f"more than the server's {self.kv.budget_bytes / 2**20:.1f} MiB. Reduce n or max_tokens.",
                param="n" if params.n > 1 else "max_tokens", code="kv_cache_exceeded")
        req = Request(request_id, list(prompt_ids), params, prefill, decode, tail, [], plan, per_seq, capacity,
                      cache_prompt=cache_prompt is not False)
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            gen = None if params.greedy else make_generator(seed, self.device)
            text = IncrementalText(self.tokenizer, params.stop)
            req.seqs.append(Sequence(i, params, text, gen, request=req))
        return req

    def enqueue(self, request: Request) -> None:
        with self._lock:
            if request.request_id in self._requests:
                raise InvalidRequest(f"duplicate request id {request.request_id!r}", param="request_id")
            self._requests[request.request_id] = request
        self.scheduler.add(request)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams, **options) -> None:
        self.enqueue(self.make_request(request_id, prompt_ids, params, **options))

    def abort_request(self, request_id: str) -> None:
        """Safe from any thread: the request stops at the next layer (prefill) or step (decode)."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is not None:
                req.aborted.set()
                self._to_abort.add(request_id)

    # ---- stepping ---------------------------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or bool(self._to_abort)

    def step(self) -> list[RequestOutput]:
        outputs = self._apply_aborts()
        req = self.scheduler.next_prefill()
        if req is not None:
            return outputs + self._prefill(req)
        batch = self.scheduler.decode_batch()
        if batch:
            outputs += self._decode(batch)
        return outputs

    def stats(self) -> dict:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_cache_usage": self.kv.usage_ratio, "prefix_cache_usage": self.kv.cached_ratio}

    # ---- prefix cache (prefix_cache.py says what is reused and why that is exact) ------------------------------
    def _cache_hit(self, req: Request) -> CacheHit | None:
        if self.prefix_cache is None or not req.cache_prompt or req.plan.sparse_decode:
            return None  # sparse decode selects from the head's queries, which are not cached
        return self.prefix_cache.match(_prompt_tensor(req), cache_split(req.plan))

    def _cacheable(self, req: Request, s: Sequence, reason: str) -> bool:
        return (self.prefix_cache is not None and req.cache_prompt and not req.prompt_cached and reason != "error"
                and s.kv is not None and s.kv.length >= len(req.prompt_ids) and req.prefill_info is not None)

    def _make_room(self, req: Request, nbytes: int) -> bool:
        """Whether `nbytes` fit now, evicting prefix-cache entries (the one this request would reuse last)."""
        if self.kv.fits_now(nbytes) or self.prefix_cache is None:
            return self.kv.fits_now(nbytes)
        hit = self._cache_hit(req)
        return self.prefix_cache.make_room(nbytes, keep=hit.entry if hit else None) or self.prefix_cache.make_room(nbytes)

    # ---- internals --------------------------------------------------------------------------------------------
    def _apply_aborts(self) -> list[RequestOutput]:
        with self._lock:
            ids, self._to_abort = self._to_abort, set()
            reqs = [self._requests[i] for i in ids if i in self._requests]
        outputs = []
        for req in reqs:
            self.scheduler.remove_waiting(req)
            outputs += [self._finish(s, "abort") for s in req.seqs if s.status is not Status.FINISHED]
        return outputs

    def _prefill(self, req: Request) -> list[RequestOutput]:
        t0 = time.monotonic()
        seqs, n_prompt, plan = req.seqs, len(req.prompt_ids), req.plan
        hit = self._cache_hit(req)
        cached = hit.tokens if hit is not None else 0
        passes = 2 if plan.sparse and not cached else 1
        calls, per_pass = [0], passes * self.model.config.num_hidden_layers

        def on_layer(_i: int) -> None:
            calls[0] += 1
            if self.progress_callback is not None:
                done = cached + (n_prompt - cached) * calls[0] // per_pass
                self.progress_callback(req.request_id, min(n_prompt, done), n_prompt)

        try:
            for s in seqs:
                s.kv = self.kv.allocate(req.capacity, req.reserve_bytes)
            if hit is not None:
                hit.copy_into(seqs[0].kv)
            logits = run_prefill(self.model, seqs[0].kv, req.prompt_ids, plan, cached=cached,
                                 should_abort=req.aborted.is_set, on_layer=on_layer)
            for s in seqs[1:]:
                s.kv.copy_from(seqs[0].kv, n_prompt)
        except PrefillAborted:
            return [self._finish(s, "abort") for s in seqs]
        except torch.OutOfMemoryError as exc:  # never take the process down; this request alone fails
            for s in seqs:
                self.kv.free(s.kv)
            torch.cuda.empty_cache()
            msg = f"out of device memory during prefill of {n_prompt} tokens; try a shorter prompt"
            log.error("request %s: %s (%s)", req.request_id, msg, exc.__class__.__name__)
            return [self._finish(s, "error", error=msg) for s in seqs]
        sparse_tokens = plan.sparse_tokens if not cached else 0
        req.prefill_info = PrefillInfo(plan.path, sparse_tokens, n_prompt - cached - sparse_tokens,
                                       "sparse" if plan.sparse_decode else "dense", time.monotonic() - t0, cached)
        log.info("request %s: prefill %d tokens (%s: %d sparse + %d dense + %d from the prefix cache) in %.3fs",
                 req.request_id, n_prompt, plan.path, sparse_tokens, req.prefill_info.dense_tokens, cached,
                 req.prefill_info.seconds)
        if req.params.repetition_penalty != 1.0:
            req.prompt_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            req.prompt_mask[torch.tensor(req.prompt_ids, device=self.device)] = True
        self.scheduler.start(seqs)
        return self._sample_and_advance(seqs, logits[None].expand(len(seqs), -1))

    def _decode(self, batch: list[Sequence]) -> list[RequestOutput]:
        kvs = [s.kv for s in batch]
        try:
            logits = decode_step(self.model, kvs, [s.output_ids[-1] for s in batch],
                                 [s.request.plan.sparse_decode for s in batch])
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return [self._finish(s, "error", error="out of device memory during decode") for s in batch]
        return self._sample_and_advance(batch, logits)

    def _sample_and_advance(self, seqs: list[Sequence], logits: torch.Tensor) -> list[RequestOutput]:
        for s in seqs:
            if s.output_counts is None and (s.params.presence_penalty or s.params.frequency_penalty
                                            or s.params.repetition_penalty != 1.0):
                s.output_counts = torch.zeros(self.vocab_size, dtype=torch.float32, device=self.device)
        rows = [SampleRow(s.params, s.generator, s.output_counts, s.request.prompt_mask) for s in seqs]
        res = sample(logits, rows)
        outputs = []
        for b, s in enumerate(seqs):
            lp = None
            if s.params.logprobs is not None:
                lp = [TokenLogprob(res.token_ids[b], res.logprobs[b], res.top_logprobs[b])]
            outputs.append(self._advance(s, res.token_ids[b], lp))
        return outputs

    def _advance(self, s: Sequence, tok: int, lp: list[TokenLogprob] | None) -> RequestOutput:
        s.output_ids.append(tok)
        if s.output_counts is not None:
            s.output_counts[tok] += 1
        p, text, reason = s.params, "", None
        if tok in p.stop_token_ids or (tok in self.eos_ids and not p.ignore_eos):
            reason = "stop"
        else:
            text = s.text.add(tok)
            if s.text.stopped_by is not None:
                reason = "stop"
        if reason is None and len(s.output_ids) >= p.max_tokens:
            reason = "length"
        if reason is not None:
            return self._finish(s, reason, text=text + s.text.flush(), token_ids=[tok], logprobs=lp)
        return self._output(s, [tok], text, lp, finished=False)

    def _output(self, s: Sequence, token_ids, text, lp, *, finished: bool, error: str | None = None) -> RequestOutput:
        req = s.request
        info = None
        if not s.prefill_reported and req.prefill_info is not None:
            info, s.prefill_reported = req.prefill_info, True
        return RequestOutput(req.request_id, s.index, token_ids, text, lp, finished, s.finish_reason,
                             len(req.prompt_ids), len(s.output_ids), info, error)

    def _finish(self, s: Sequence, reason: str, *, text: str = "", token_ids=(), logprobs=None,
                error: str | None = None) -> RequestOutput:
        s.status, s.finish_reason = Status.FINISHED, reason
        self.scheduler.retire(s)
        req = s.request
        keep = self._cacheable(req, s, reason)
        k, v = (list(s.kv.k), list(s.kv.v)) if keep else (None, None)
        self.kv.free(s.kv)  # the reservation first: the cache entry is smaller and takes its place
        s.kv = None
        if keep:
            req.prompt_cached = True
            try:
                self.prefix_cache.insert(_prompt_tensor(req), cache_split(req.plan), k, v)
            except torch.OutOfMemoryError:  # the copy did not fit on the device: just do not cache it
                torch.cuda.empty_cache()
        if req.finished:
            with self._lock:
                self._requests.pop(req.request_id, None)
                self._to_abort.discard(req.request_id)
        return self._output(s, list(token_ids), text, logprobs, finished=True, error=error)


def _prompt_tensor(req: Request) -> torch.Tensor:
    if req.prompt_tensor is None:
        req.prompt_tensor = torch.tensor(req.prompt_ids, dtype=torch.long)
    return req.prompt_tensor
