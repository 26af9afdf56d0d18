"""The synchronous engine: token ids in, token ids and text out; no HTTP, no threads of its own.

`add_request` validates (intake.py) and queues; `step` reads as schedule -> run -> sample -> update: the scheduler
says what to run (a prefill piece, with the host-tier restores and block copies it needs first, or the decode
batch), the model runner runs it on the paged KV cache, the output processor samples and detokenizes, and the
scheduler takes the outcome. `abort_request` is safe from any thread (it also stops a prefill between layers).

Faults stay with the request that caused them. An exception (or device out-of-memory) in one request's prefill
fails that request. The decode step runs every sequence in one batch, so when it raises, the batch is split in
halves and each half run again (nothing advanced: lengths are committed only after sampling, so a retry rewrites
the same cache slots); a half that still fails is split further, down to the one sequence at fault, which fails
with a clear error while the others go on with the same tokens they would have had. Out-of-memory retries in
smaller batches the same way. An error that leaves the device unusable (`errors.is_device_fatal`) is raised:
the engine must stop, not limp on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import torch

from lighthouse.engine.cache.host_tier import HostCache
from lighthouse.engine.cache.manager import KVCacheManager, default_budget_bytes
from lighthouse.engine.cache.pool import KV_CACHE_DTYPES
from lighthouse.engine.cache.prefix_cache import PrefixCache
from lighthouse.engine.cache.spec import CacheShape
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.errors import INTERNAL_ERROR, KV_CACHE_EXCEEDED, InvalidRequest, is_device_fatal
from lighthouse.engine.intake import Intake
from lighthouse.engine.model_runner import ModelRunner
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.output import OutputProcessor, Sampled, eos_ids, failure
from lighthouse.engine.overlap import DecodeOverlap
from lighthouse.engine.plan import context_rotated_apart, lighthouse_layer_indices, sparse_unavailable
from lighthouse.engine.prefill import PrefillAborted
from lighthouse.engine.request import PrefillInfo, PromptProgress, Request, RequestOutput, Sequence, Status
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.scheduler import Scheduler
from lighthouse.engine.speculative.step import Speculator
from lighthouse.engine.step_work import PrefillWork, StepResult, piece_budget
from lighthouse.engine.warmup import log_ready, maybe_warm_up

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, PromptProgress], None]  # (request_id, how far its prefill is)


class LLMEngine:
    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, *, stop_token_ids: list[int] = ()):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = c = config or EngineConfig()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        mc = model.config
        L = mc.num_hidden_layers
        shape = CacheShape(L, mc.num_key_value_heads, mc.num_attention_heads, mc.head_dim, self.dtype, self.device,
                           c.block_size, KV_CACHE_DTYPES[c.kv_cache_dtype])
        self.kv = KVCacheManager(shape, c.kv_cache_bytes or default_budget_bytes(self.device, c.kv_cache_fraction))
        # the longest sequence the budget holds in the default layout (kv_mode; compact: an upper bound, full caches
        # in the full-attention layers only); a request is then checked against its own layout's reservation
        compactable = len(lighthouse_layer_indices(mc)) if c.kv_mode == "compact" else 0
        self.max_model_len = min([self.kv.max_positions(L - compactable), mc.max_position_embeddings]
                                 + [c.max_model_len or 1 << 62])
        # a checkpoint without Lighthouse layers serves densely: its defaults say so, explicit sparse asks get a 400
        self.sparse_unavailable = sparse_unavailable(model.config)
        self.defaults = ((c.prefill, c.decode, c.kv_mode) if self.sparse_unavailable is None
                         else ("dense", "dense", "full"))
        if self.sparse_unavailable is not None and (c.prefill, c.decode, c.kv_mode) != self.defaults:
            log.warning("%s; serving with prefill=dense decode=dense kv_mode=full", self.sparse_unavailable)
        self.vocab_size = mc.vocab_size
        self.eos_ids = eos_ids(mc.eos_token_id, tokenizer) | set(stop_token_ids)  # + generation_config.json's
        host = HostCache(self.kv, c.host_cache_bytes) if c.host_cache_bytes and c.enable_prefix_caching else None
        self.prefix_cache = PrefixCache(self.kv, c.prefix_cache_min_tokens, host) if c.enable_prefix_caching else None
        self.scheduler = Scheduler(self.kv, self.prefix_cache, max_num_seqs=c.max_num_seqs,
                                   express_tokens=c.express_prefill_tokens, compact_reuse=not context_rotated_apart(mc),
                                   decode_budget_ms=c.decode_step_budget_ms)
        self.admission = self.scheduler.admission
        self.intake = Intake(model, tokenizer, shape, self.kv.allocator.usable, max_model_len=self.max_model_len,
                             max_num_seqs=c.max_num_seqs, defaults=self.defaults, dense_tail_tokens=c.dense_tail_tokens,
                             prefill_default=c.prefill, sparse_unavailable=self.sparse_unavailable, eos_ids=self.eos_ids)
        self.runner = ModelRunner(model, self.kv, max_batch=c.max_num_seqs, max_model_len=self.max_model_len,
                                  enforce_eager=c.enforce_eager, graph_max_batch=c.cuda_graph_max_batch,
                                  prefill_chunk_tokens=c.prefill_chunk_tokens)
        self.outputs = OutputProcessor(self.vocab_size, self.eos_ids, self.device)
        self.speculator = Speculator(c.speculative_num_tokens)
        overlap = c.overlap_decode if c.overlap_decode is not None else self.device.type == "cuda"
        self.overlap = DecodeOverlap(self.runner, self.outputs, self.speculator, overlap)
        self.progress_callback: ProgressFn | None = None
        self._requests: dict[str, Request] = {}
        self._lock = threading.Lock()
        self._to_abort: set[str] = set()
        self._abort_errors: dict[str, tuple[str, str]] = {}  # request id -> (message, code) it fails with
        self.runner.capture_all()
        maybe_warm_up(self)
        log_ready(self)

    # ---- requests ---------------------------------------------------------------------------------------------
    def make_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                     options: RequestOptions | None = None) -> Request:
        """Validate and build a request (thread-safe; raises InvalidRequest). `enqueue` it on the engine thread."""
        return self.intake.make_request(request_id, prompt_ids, params, options)

    def enqueue(self, request: Request) -> None:
        with self._lock:
            if request.request_id in self._requests:
                raise InvalidRequest(f"duplicate request id {request.request_id!r}", param="request_id")
            self._requests[request.request_id] = request
        self.speculator.admit(request)  # (a drafting request's prompt index, built while it waits and prefills)
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

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or bool(self._to_abort) or self.overlap.inflight is not None

    def stats(self) -> dict:
        host = self.prefix_cache.host if self.prefix_cache is not None else None
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_cache_usage": self.kv.usage_ratio, "prefix_cache_usage": self.kv.cached_ratio,
                "host_cache_usage": host.usage_ratio if host else 0.0,
                **{f"host_cache_{k}": getattr(host, k) if host else 0 for k in ("hit_tokens", "bytes_to_host", "bytes_to_device")},
                "spec_draft_tokens": self.speculator.proposed, "spec_accepted_tokens": self.speculator.accepted}

    # ---- stepping ---------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        if self.overlap.inflight is not None:  # a decode step in flight (overlap.py)
            return self._read_inflight()
        for req, why in self.scheduler.take_refused():  # never to fit beside the pinned documents: fail them now
            self.abort_request(req.request_id, error=why, code=KV_CACHE_EXCEEDED)
        outputs = self.apply_aborts()
        work = self.scheduler.schedule()
        if work.prefill is not None:
            return outputs + self._prefill(work.prefill, whole=work.prefill.whole)
        if work.decode:
            outputs += self._decode(work.decode)
        return outputs

    def apply_aborts(self) -> list[RequestOutput]:
        with self._lock:
            ids, self._to_abort = self._to_abort, set()
            reqs = [(self._requests[i], self._abort_errors.pop(i, None)) for i in ids if i in self._requests]
        outputs, finished = [], []
        for req, fail in reqs:
            self.scheduler.remove_waiting(req)
            for s in req.seqs:
                if s.status is Status.FINISHED:
                    continue
                outputs.append(self.outputs.finish(s, "abort") if fail is None else
                               self.outputs.finish(s, "error", error=fail[0], error_code=fail[1]))
                finished.append(s)
        return self._update(StepResult(finished=finished), outputs)

    def _update(self, result: StepResult, outputs: list[RequestOutput]) -> list[RequestOutput]:
        """The scheduler takes the step's outcome; finished requests leave the engine's table."""
        self.scheduler.update(result)
        for s in result.finished:
            if s.request.finished:
                with self._lock:
                    rid = s.request.request_id
                    self._requests.pop(rid, None)
                    self._to_abort.discard(rid)
                    self._abort_errors.pop(rid, None)
        return outputs

    # ---- prefill ----------------------------------------------------------------------------------------------
    def _start_prefill(self, work: PrefillWork) -> None:
        """The first piece: what the schedule copies first (a host-tier entry, partial blocks), then the task."""
        req, n_prompt, cached = work.request, len(work.request.prompt_ids), work.cached
        if work.restore is not None:
            restore, work.restore = work.restore, None
            try:
                self.prefix_cache.host.copy_in(restore)
            except Exception:  # the claimed entry's blocks hold nothing: no later request may reuse them
                self.prefix_cache.discard(work.hit.entry)
                raise
        self.kv.run_copies(work.copies)
        work.copies = []

        def on_progress(fraction: float) -> None:  # llama.cpp's prompt_progress: processed counts the cached too
            if self.progress_callback is not None:
                done = min(n_prompt, cached + int((n_prompt - cached) * fraction))
                ms = int((time.monotonic() - work.started) * 1000)
                self.progress_callback(req.request_id, PromptProgress(n_prompt, cached, done, ms))

        on_progress(0.0)  # the first event: only what the prefix cache gave
        work.task = self.runner.start_prefill(req.seqs[0].kv, req.prompt(), work.plan, cached=cached,
                                              should_abort=req.aborted.is_set, on_progress=on_progress)

    def _prefill(self, work: PrefillWork, whole: bool = False) -> list[RequestOutput]:
        """Run the next piece of the request's prefill (`whole`: all of it, an express prefill); once it is done,
        sample the first token of each choice."""
        req, n_prompt = work.request, len(work.request.prompt_ids)
        seqs = req.seqs
        try:
            if work.task is None:
                self._start_prefill(work)
            c = self.config
            logits = work.task.run(None if whole else piece_budget(work, c.max_prefill_chunk_ms, c.express_prefill_tokens,
                                                                   self.scheduler.has_decodable()))
            if logits is None:
                return []  # more pieces to come; the running sequences decode first
            work.task = None
        except PrefillAborted:
            work.task = None
            with self._lock:
                fail = self._abort_errors.get(req.request_id)  # failed from outside (shutdown): say so
            outs = [self.outputs.finish(s, "abort") if fail is None else
                    self.outputs.finish(s, "error", error=fail[0], error_code=fail[1]) for s in seqs]
            return self._update(StepResult(finished=list(seqs)), outs)
        except Exception as exc:  # never take the process down for one prompt; this request alone fails
            work.task = None
            if is_device_fatal(exc):
                raise
            return self._fail(seqs, exc, f"the prefill of this request's {n_prompt} prompt tokens")
        plan, cached = work.plan, work.cached
        sparse_tokens = plan.sparse_tokens if not cached else 0
        info = PrefillInfo(plan.path, sparse_tokens, n_prompt - cached - sparse_tokens,
                           "sparse" if plan.sparse_decode else "dense", time.monotonic() - work.started, cached,
                           req.dense_note)
        log.info("request %s: prefill %d tokens (%s: %d sparse + %d dense + %d from the prefix cache) in %.3fs",
                 req.request_id, n_prompt, plan.path, sparse_tokens, info.dense_tokens, cached, info.seconds)
        try:
            sampled = self.outputs.sample(seqs, logits[None].expand(len(seqs), -1))
        except Exception as exc:  # sampling the first token: this request alone
            if is_device_fatal(exc):
                raise
            return self._fail(seqs, exc, "sampling this request's first token")
        req.prefill_info = info
        self.scheduler.update(StepResult(prefilled=work))  # its sequences hold the prompt now, and run
        return self._advanced(seqs, sampled, decoded=False)

    # ---- decode -----------------------------------------------------------------------------------------------
    def _decode(self, batch: list[Sequence]) -> list[RequestOutput]:
        try:
            if self.overlap.takes(batch):
                self.overlap.launch(batch)  # its tokens are read at the next step, after the step after it launched
                return []
            sampled = self.speculator.step(self.runner, self.outputs, batch)  # a verify step where drafts are
        except Exception as exc:
            if is_device_fatal(exc):
                raise
            return self._decode_isolating(batch, exc)
        return self._advanced(batch, sampled, decoded=True)

    def _read_inflight(self) -> list[RequestOutput]:
        """Read the decode step in flight, launching the next one first if the same batch would run again."""
        batch = self.overlap.inflight.batch
        try:
            batch, sampled = self.overlap.resolve(self.scheduler, quiet=not self._to_abort)
        except Exception as exc:
            if is_device_fatal(exc):
                raise
            return self._decode_isolating([s for s in batch if s.status is Status.RUNNING], exc)
        return self._advanced(batch, sampled, decoded=True)

    def _decode_isolating(self, batch: list[Sequence], exc: Exception) -> list[RequestOutput]:
        """The decode step failed for `batch`: run its halves again; a single sequence that still fails is the
        one at fault and fails alone. (A seeded sampled sequence in a retried half draws again from its
        generator, so its tokens may differ from a run without the fault; greedy ones do not.)"""
        if isinstance(exc, torch.OutOfMemoryError):
            torch.cuda.empty_cache()
        if len(batch) == 1:
            return self._fail(batch, exc, "the decode step of this request")
        log.warning("decode step of %d sequences failed (%s); retrying it in halves to find the one at fault",
                    len(batch), type(exc).__name__)
        outputs = []
        for half in (batch[: len(batch) // 2], batch[len(batch) // 2 :]):
            try:
                sampled = self.speculator.step(self.runner, self.outputs, half)
            except Exception as again:
                if is_device_fatal(again):
                    raise
                outputs += self._decode_isolating(half, again)
                continue
            outputs += self._advanced(half, sampled, decoded=True)
        return outputs

    # ---- outcomes ---------------------------------------------------------------------------------------------
    def _advanced(self, seqs: list[Sequence], sampled: list[Sampled], *, decoded: bool) -> list[RequestOutput]:
        """The sampled tokens appended and reported; the scheduler commits the step (`decoded`: as many positions
        each as tokens it got: its last token's and its accepted drafts') and retires the sequences that finished."""
        outputs = self.outputs.advance_all(seqs, sampled)
        finished = [s for s in seqs if s.status is Status.FINISHED]  # (they were running: finished just now)
        committed = [len(toks) for toks, _ in sampled] if decoded else None
        return self._update(StepResult(list(seqs) if decoded else [], committed, finished=finished), outputs)

    def _fail(self, seqs: list[Sequence], exc: Exception, where: str) -> list[RequestOutput]:
        """These sequences fail alone with a message a client may read (the others go on)."""
        msg, code = failure(exc, where)
        log.error("request %s: %s", seqs[0].request.request_id, msg, exc_info=code == INTERNAL_ERROR)
        outs = [self.outputs.finish(s, "error", error=msg, error_code=code) for s in seqs]
        return self._update(StepResult(finished=list(seqs)), outs)
