"""The synchronous engine: token ids in, token ids and text out; no HTTP, no threads of its own.

`add_request` validates and queues; `step` reads as schedule -> run -> postprocess: the scheduler picks a
prefill or the decode batch, the model runner runs it on the paged KV cache, the output processor samples and
detokenizes, and finished sequences give back their blocks (their prompt stays in the prefix cache by
reference). `abort_request` is safe to call from any thread (it also stops a prefill between layers).

Faults stay with the request that caused them. An exception (or device out-of-memory) in one request's prefill
fails that request. The decode step runs every sequence in one batch, so when it raises, the batch is split in
halves and each half run again (nothing advanced: lengths move only after a step succeeds, so a retry rewrites
the same cache slots); a half that still fails is split further, down to the one sequence at fault, which fails
with a clear error while the others go on with the same tokens they would have had. Out-of-memory retries in
smaller batches the same way. An error that leaves the device unusable (`errors.is_device_fatal`) is raised:
the engine must stop, not limp on.
"""

from __future__ import annotations

import array
import logging
import threading
import time
from typing import Callable

import torch

from lighthouse.engine.admission import Admission
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.detokenizer import IncrementalText
from lighthouse.engine.errors import INTERNAL_ERROR, OUT_OF_MEMORY, InvalidRequest, is_device_fatal
from lighthouse.engine.host_cache import HostCache
from lighthouse.engine.kv_cache import KV_CACHE_DTYPES, CacheShape, KVCacheManager, default_budget_bytes
from lighthouse.engine.memory import budget_hint
from lighthouse.engine.model_runner import ModelRunner
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.output import OutputProcessor
from lighthouse.engine.prefill import PrefillAborted, min_sparse_len, plan_prefill, sparse_unavailable
from lighthouse.engine.prefix_cache import PrefixCache, cache_split
from lighthouse.engine.sampling import SamplingParams, make_generator
from lighthouse.engine.scheduler import Scheduler
from lighthouse.engine.sequence import PrefillInfo, Request, RequestOutput, Sequence, Status, TokenLogprob
from lighthouse.model.llama import LlamaForCausalLM

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (request_id, prompt tokens processed, prompt tokens)


def _eos_ids(model: LlamaForCausalLM, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (model.config.eos_token_id, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids


class LLMEngine:
    def __init__(self, model: LlamaForCausalLM, tokenizer=None, config: EngineConfig | None = None, *,
                 stop_token_ids: list[int] = ()):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = c = config or EngineConfig()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        mc = model.config
        L = mc.num_hidden_layers
        shape = CacheShape(mc.num_hidden_layers, mc.num_key_value_heads, mc.num_attention_heads, mc.head_dim,
                           self.dtype, self.device, c.block_size, KV_CACHE_DTYPES[c.kv_cache_dtype])
        budget = c.kv_cache_bytes or default_budget_bytes(self.device, c.kv_cache_fraction)
        self.kv = KVCacheManager(shape, budget)
        # the longest sequence the budget holds in the default layout (kv_mode; compact: an upper bound, full caches
        # in the full-attention layers only); a request is then checked against its own layout's reservation
        lh = mc.lighthouse
        compactable = (sum(1 for i in range(L) if i not in lh.full_attn_layers)
                       if c.kv_mode == "compact" and lh.enabled and lh.levels >= 2 else 0)
        self.max_model_len = min([self.kv.max_positions(L - compactable), mc.max_position_embeddings]
                                 + [c.max_model_len or 1 << 62])
        # a checkpoint without Lighthouse layers serves densely: its defaults say so, explicit sparse asks get a 400
        self.sparse_unavailable = sparse_unavailable(model)
        self.defaults = ((c.prefill, c.decode, c.kv_mode) if self.sparse_unavailable is None
                         else ("dense", "dense", "full"))
        if self.sparse_unavailable is not None and (c.prefill, c.decode, c.kv_mode) != self.defaults:
            log.warning("%s; serving with prefill=dense decode=dense kv_mode=full", self.sparse_unavailable)
        self.vocab_size = mc.vocab_size
        self.eos_ids = _eos_ids(model, tokenizer) | set(stop_token_ids)  # + generation_config.json's
        host = HostCache(self.kv, c.host_cache_bytes) if c.host_cache_bytes and c.enable_prefix_caching else None
        self.prefix_cache = PrefixCache(self.kv, c.prefix_cache_min_tokens, host) if c.enable_prefix_caching else None
        self.admission = Admission(self.kv, self.prefix_cache, model)
        self.scheduler = Scheduler(c.max_num_seqs, make_room=self.admission.make_room,
                                   express_tokens=c.express_prefill_tokens)
        self.runner = ModelRunner(model, self.kv, max_batch=c.max_num_seqs, max_model_len=self.max_model_len,
                                  enforce_eager=c.enforce_eager, graph_max_batch=c.cuda_graph_max_batch,
                                  prefill_chunk_tokens=c.prefill_chunk_tokens)
        self.outputs = OutputProcessor(self.vocab_size, self.eos_ids, self.device)
        self.progress_callback: ProgressFn | None = None
        self._requests: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._to_abort: set[str] = set()
        self._abort_errors: dict[str, tuple[str, str]] = {}  # request id -> (message, code) it fails with
        self.runner.capture_all()
        log.info("engine ready: device=%s dtype=%s max_model_len=%d kv_cache=%.2f GiB (%d blocks of one layer x %d "
                 "positions, %s) kv_mode=%s prefill=%s decode=%s cuda_graphs=%s", self.device, self.dtype,
                 self.max_model_len, self.kv.budget_bytes / 2**30, self.kv.allocator.usable, c.block_size,
                 shape.storage_dtype, self.defaults[2], self.defaults[0],
                 "sparse" if self.defaults[2] == "compact" else self.defaults[1],  # compact sessions decode sparsely
                 sorted(self.runner.graphs) or "off")
        hint = budget_hint(mc, self.kv, kv_mode=c.kv_mode, max_model_len_cap=c.max_model_len,
                           dense_tail_tokens=c.dense_tail_tokens)
        if hint is not None:  # the KV budget, not the checkpoint, sets max_model_len: say what would lift it
            log.warning(hint)

    # ---- admission -------------------------------------------------------------------------------------------
    def make_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                     options: RequestOptions | None = None) -> Request:
        """Validate and build a request (thread-safe; raises InvalidRequest). `enqueue` it on the engine thread."""
        c = self.config
        options = options or RequestOptions()
        if self.sparse_unavailable is not None:
            self._refuse_sparse(options)
        prefill, decode, kv_mode = self.defaults
        opts = options.resolved(prefill, decode, c.dense_tail_tokens, kv_mode)
        n_prompt = len(prompt_ids)
        if n_prompt == 0:
            raise InvalidRequest("the prompt is empty; send at least one token", param="prompt")
        prompt = _id_tensor(prompt_ids)
        if prompt is None or int(prompt.min()) < 0 or int(prompt.max()) >= self.vocab_size:
            raise InvalidRequest(f"prompt token ids must be integers in [0, {self.vocab_size})", param="prompt")
        if n_prompt >= self.max_model_len:
            raise InvalidRequest(
                f"This model's maximum context length is {self.max_model_len} tokens, but the prompt has {n_prompt} "
                "tokens (at least one must remain for the completion). Please shorten the prompt.",
                param="prompt", code="context_length_exceeded")
        default_max_tokens = params.max_tokens is None
        if default_max_tokens:
            params.max_tokens = self.max_model_len - n_prompt
        params.validate(self.vocab_size)
        if n_prompt + params.max_tokens > self.max_model_len:
            raise InvalidRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{n_prompt + params.max_tokens} tokens ({n_prompt} in the prompt, {params.max_tokens} for max_tokens). "
                f"Please reduce max_tokens to at most {self.max_model_len - n_prompt} or shorten the prompt.",
                param="max_tokens", code="context_length_exceeded")
        if params.n > c.max_num_seqs:
            raise InvalidRequest(f"n={params.n} exceeds the server's max_num_seqs ({c.max_num_seqs})", param="n")
        plan = plan_prefill(self.model, n_prompt, prefill=opts.prefill, decode=opts.decode,
                            dense_tail_tokens=opts.dense_tail_tokens, kv_mode=opts.kv_mode)
        req = self.admission.sized_request(request_id, list(prompt_ids), params, opts, plan, prompt)
        req.dense_note = self._dense_note(options, plan)
        if default_max_tokens and not self.kv.fits_ever(self.admission.blocks_needed(req, None)):
            req = self.admission.largest_that_fits(req)  # no max_tokens given: as many as its layout fits
        capacity = req.capacity
        blocks = self.admission.blocks_needed(req, None)
        if not self.kv.fits_ever(blocks):
            raise InvalidRequest(
                f"The request needs {blocks} KV cache blocks (n={params.n} x {capacity} positions, kv_mode "
                f"{opts.kv_mode!r}), more than the server's {self.kv.allocator.usable}. Reduce n or max_tokens"
                + (", or ask with kv_mode 'compact'." if plan.sparse_decode and not plan.compact else "."),
                param="n" if params.n > 1 else "max_tokens", code="kv_cache_exceeded")
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            gen = None if params.greedy else make_generator(seed, self.device)
            req.seqs.append(Sequence(i, params, IncrementalText(self.tokenizer, params.stop), gen, request=req))
        return req

    def _dense_note(self, asked: RequestOptions, plan) -> str | None:
        """Why a sparse prefill (asked, or the configured default) ran densely; None when it ran sparsely or dense
        was asked: the checkpoint has no Lighthouse layers, or the prompt is below the op's minimum."""
        if plan.sparse or (asked.prefill or self.config.prefill) != "sparse":
            return None
        if self.sparse_unavailable is not None:
            return self.sparse_unavailable
        return (f"the prompt is below the sparse minimum ({min_sparse_len(self.model.config.lighthouse)} tokens before "
                "the dense tail): prefilled densely")

    def _refuse_sparse(self, options: RequestOptions) -> None:
        """An explicit ask for a sparse path on a checkpoint that has none: a clear 400, never a silent dense."""
        for param, value, sparse in (("prefill", options.prefill, "sparse"), ("decode", options.decode, "sparse"),
                                     ("kv_mode", options.kv_mode, "compact")):
            if value == sparse:
                raise InvalidRequest(f"{param} {value!r} was asked, but {self.sparse_unavailable}. Leave {param} "
                                     f"out or set it to {'full' if param == 'kv_mode' else 'dense'}.", param=param)

    def enqueue(self, request: Request) -> None:
        with self._lock:
            if request.request_id in self._requests:
                raise InvalidRequest(f"duplicate request id {request.request_id!r}", param="request_id")
            self._requests[request.request_id] = request
        self.scheduler.add(request)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    options: RequestOptions | None = None) -> None:
        self.enqueue(self.make_request(request_id, prompt_ids, params, options))

    def abort_request(self, request_id: str, *, error: str | None = None, code: str | None = None) -> None:
        """Safe from any thread: the request stops at the next layer (prefill) or step (decode). With `error`, it
        finishes as failed (finish_reason "error", the message and code in its outputs) instead of aborted."""
        with self._lock:
            req = self._requests.get(request_id)
            if req is not None:
                req.aborted.set()
                self._to_abort.add(request_id)
                if error is not None:
                    self._abort_errors[request_id] = (error, code or INTERNAL_ERROR)

    # ---- stepping ---------------------------------------------------------------------------------------------
    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or bool(self._to_abort)

    def step(self) -> list[RequestOutput]:
        outputs = self.apply_aborts()
        work = self.scheduler.schedule()
        if work.prefill is not None:
            return outputs + self._prefill(work.prefill, whole=work.whole)
        if work.decode:
            outputs += self._decode(work.decode)
        return outputs

    def _prefill_budget(self) -> float | None:
        """Seconds a prefill piece may take: the configured budget while other sequences wait to decode or a short
        prompt may arrive to be prefilled between pieces (express prefills on), else None (the prefill runs whole)."""
        ms = self.config.max_prefill_chunk_ms
        busy = self.scheduler.has_decodable() or self.config.express_prefill_tokens > 0
        return ms / 1000 if ms is not None and busy else None

    def stats(self) -> dict:
        host = self.prefix_cache.host if self.prefix_cache is not None else None
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_cache_usage": self.kv.usage_ratio, "prefix_cache_usage": self.kv.cached_ratio,
                "host_cache_usage": host.usage_ratio if host else 0.0,
                "host_cache_hit_tokens": host.hit_tokens if host else 0,
                "host_cache_bytes_to_host": host.bytes_to_host if host else 0,
                "host_cache_bytes_to_device": host.bytes_to_device if host else 0}

    # ---- run + postprocess ------------------------------------------------------------------------------------
    def apply_aborts(self) -> list[RequestOutput]:
        with self._lock:
            ids, self._to_abort = self._to_abort, set()
            reqs = [(self._requests[i], self._abort_errors.pop(i, None)) for i in ids if i in self._requests]
        outputs = []
        for req, failure in reqs:
            self.scheduler.remove_waiting(req)
            for s in req.seqs:
                if s.status is Status.FINISHED:
                    continue
                if failure is None:
                    outputs.append(self._finish(s, "abort"))
                else:
                    outputs.append(self._finish(s, "error", error=failure[0], error_code=failure[1]))
        return outputs

    def _prefill(self, req: Request, whole: bool = False) -> list[RequestOutput]:
        """Run the next piece of the request's prefill (the first piece reserves its blocks; `whole`: all of it);
        once it is done, sample the first token of each choice."""
        seqs, n_prompt, plan = req.seqs, len(req.prompt_ids), req.plan
        try:
            if req.prefill_task is None:
                req.prefill_started = time.monotonic()
                hit, req.hit = req.hit, None
                cached = req.prefill_cached = hit.tokens if hit is not None else 0
                first = seqs[0]
                first.kv = self.admission.allocate(req, hit)
                plan = req.plan  # (a compact hit: the entry's split and selection)

                def on_progress(fraction: float) -> None:
                    if self.progress_callback is not None:
                        done = cached + int((n_prompt - cached) * fraction)
                        self.progress_callback(req.request_id, min(n_prompt, done), n_prompt)

                req.prefill_task = self.runner.start_prefill(first.kv, req.prompt(), plan, cached=cached,
                                                             should_abort=req.aborted.is_set, on_progress=on_progress)
            logits = req.prefill_task.run(None if whole else self._prefill_budget())
            if logits is None:
                return []  # more pieces to come; the running sequences decode first
            req.prefill_task = None
            self.kv.release_scratch(seqs[0].kv)
            self.scheduler.prefill_done(req)
            for s in seqs[1:]:
                s.kv = self.kv.fork(seqs[0].kv)
        except PrefillAborted:
            req.prefill_task = None
            with self._lock:
                failure = self._abort_errors.get(req.request_id)  # failed from outside (shutdown): say so
            if failure is not None:
                return [self._finish(s, "error", error=failure[0], error_code=failure[1]) for s in seqs]
            return [self._finish(s, "abort") for s in seqs]
        except Exception as exc:  # never take the process down for one prompt; this request alone fails
            req.prefill_task = None
            if is_device_fatal(exc):
                raise
            msg, code = _failure(exc, f"the prefill of this request's {n_prompt} prompt tokens")
            log.error("request %s: %s", req.request_id, msg, exc_info=code == INTERNAL_ERROR)
            return [self._finish(s, "error", error=msg, error_code=code) for s in seqs]
        cached = req.prefill_cached
        sparse_tokens = plan.sparse_tokens if not cached else 0
        req.prefill_info = PrefillInfo(plan.path, sparse_tokens, n_prompt - cached - sparse_tokens,
                                       "sparse" if plan.sparse_decode else "dense",
                                       time.monotonic() - req.prefill_started, cached, req.dense_note)
        log.info("request %s: prefill %d tokens (%s: %d sparse + %d dense + %d from the prefix cache) in %.3fs",
                 req.request_id, n_prompt, plan.path, sparse_tokens, req.prefill_info.dense_tokens, cached,
                 req.prefill_info.seconds)
        if req.params.repetition_penalty != 1.0:
            req.prompt_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
            req.prompt_mask[torch.tensor(req.prompt_ids, device=self.device)] = True
        try:
            return self._postprocess(seqs, logits[None].expand(len(seqs), -1))
        except Exception as exc:  # sampling the first token: this request alone
            if is_device_fatal(exc):
                raise
            msg, code = _failure(exc, "sampling this request's first token")
            log.error("request %s: %s", req.request_id, msg, exc_info=True)
            return [self._finish(s, "error", error=msg, error_code=code) for s in seqs]

    def _decode(self, batch: list[Sequence]) -> list[RequestOutput]:
        try:
            sampled = self._decode_tokens(batch)
        except Exception as exc:
            if is_device_fatal(exc):
                raise
            return self._decode_isolating(batch, exc)
        return self._advance(batch, sampled)

    def _decode_tokens(self, batch: list[Sequence]) -> list[tuple[int, list[TokenLogprob] | None]]:
        """One decode step and its sampling for `batch`; on an exception nothing has advanced (retry-safe)."""
        kvs = [s.kv for s in batch]
        logits = self.runner.decode(kvs, [s.output_ids[-1] for s in batch])
        try:
            return self.outputs.sample(batch, logits)
        except Exception:
            for kv in kvs:  # the runner advanced the lengths; the step is run again, so step them back
                kv.length -= 1
                if kv.sparse:
                    kv.ctx_len -= 1
            raise

    def _decode_isolating(self, batch: list[Sequence], exc: Exception) -> list[RequestOutput]:
        """The decode step failed for `batch`: run its halves again; a single sequence that still fails is the
        one at fault and fails alone. (A seeded sampled sequence in a retried half draws again from its
        generator, so its tokens may differ from a run without the fault; greedy ones do not.)"""
        if isinstance(exc, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        if len(batch) == 1:
            s = batch[0]
            msg, code = _failure(exc, "the decode step of this request")
            log.error("request %s: %s", s.request.request_id, msg, exc_info=code == INTERNAL_ERROR)
            return [self._finish(s, "error", error=msg, error_code=code)]
        log.warning("decode step of %d sequences failed (%s); retrying it in halves to find the one at fault",
                    len(batch), type(exc).__name__)
        outputs = []
        for half in (batch[: len(batch) // 2], batch[len(batch) // 2 :]):
            try:
                sampled = self._decode_tokens(half)
            except Exception as again:
                if is_device_fatal(again):
                    raise
                outputs += self._decode_isolating(half, again)
                continue
            outputs += self._advance(half, sampled)
        return outputs

    def _postprocess(self, seqs: list[Sequence], logits: torch.Tensor) -> list[RequestOutput]:
        return self._advance(seqs, self.outputs.sample(seqs, logits))

    def _advance(self, seqs: list[Sequence], sampled: list[tuple[int, list[TokenLogprob] | None]]) -> list[RequestOutput]:
        outputs = []
        for s, (tok, lp) in zip(seqs, sampled):
            try:
                text, reason = self.outputs.advance(s, tok)
            except Exception as exc:  # detokenizing or a stop check of this sequence alone
                msg, code = _failure(exc, "the output processing of this request")
                log.error("request %s: %s", s.request.request_id, msg, exc_info=True)
                outputs.append(self._finish(s, "error", error=msg, error_code=code))
                continue
            if reason is not None:
                outputs.append(self._finish(s, reason, text=text, token_ids=[tok], logprobs=lp))
            else:
                outputs.append(self._output(s, [tok], text, lp, finished=False))
        return outputs

    def _output(self, s: Sequence, token_ids, text, lp, *, finished: bool, error: str | None = None,
                error_code: str | None = None) -> RequestOutput:
        req = s.request
        info = None
        if not s.prefill_reported and req.prefill_info is not None:
            info, s.prefill_reported = req.prefill_info, True
        return RequestOutput(req.request_id, s.index, token_ids, text, lp, finished, s.finish_reason,
                             len(req.prompt_ids), len(s.output_ids), info, error, error_code=error_code)

    def _finish(self, s: Sequence, reason: str, *, text: str = "", token_ids=(),
                logprobs: list[TokenLogprob] | None = None, error: str | None = None,
                error_code: str | None = None) -> RequestOutput:
        s.status, s.finish_reason = Status.FINISHED, reason
        self.scheduler.retire(s)
        req = s.request
        if (self.prefix_cache is not None and req.cache_prompt and not req.prompt_cached and reason != "error"
                and s.kv is not None and req.prefill_info is not None):
            req.prompt_cached = self.prefix_cache.insert(req.prompt(), cache_split(req.plan), s.kv,
                                                         req.plan.selected) is not None
        self.kv.free(s.kv)  # the prefix cache holds its own references to the prompt's blocks
        s.kv = None
        if req.finished:
            with self._lock:
                self._requests.pop(req.request_id, None)
                self._to_abort.discard(req.request_id)
                self._abort_errors.pop(req.request_id, None)
        if error is not None and error_code is None:
            error_code = INTERNAL_ERROR
        return self._output(s, list(token_ids), text, logprobs, finished=True, error=error, error_code=error_code)


def _failure(exc: Exception, where: str) -> tuple[str, str]:
    """(message, code) for a request that failed in `where`: what a client may be told (no internals)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return f"out of memory during {where}; retry later or with a shorter prompt", OUT_OF_MEMORY
    return (f"internal error ({type(exc).__name__}) during {where}; other requests were not affected",
            INTERNAL_ERROR)


def _id_tensor(ids: list[int]) -> torch.Tensor | None:
    """(N,) int64 on the CPU (array-backed: a 512K-token prompt converts in milliseconds); None if an id is not
    an integer that fits int64."""
    try:
        return torch.frombuffer(array.array("q", ids), dtype=torch.long).clone()
    except (OverflowError, TypeError):
        return None
