"""Prefill: run the prompt through the model once, writing every layer's K/V for every position to the cache.

What runs is decided before (plan.py: `PrefillPlan`); how each layer attends and writes its K/V is the backend's
(prefill_backend.py); the layers themselves are the model's own, run by its chunked forward (model/chunked.py).
This module runs that forward in pieces: `PrefillTask.run(budget_s)` until it returns the last position's logits,
stopping between units of work for the time budget or an abort. Only the last position's logits are computed.
K/V go to the sequence's blocks of the paged cache; with sparse decode each Lighthouse layer also keeps the
prompt's selected sub-sequence (sparse_context.py), followed by the tail positions, in its context table.
A prefix-cache hit (cache/prefix_cache.py says what is reusable) shares positions [0, cached) in the cache first;
then only [cached, N) run, densely against the cache (for a sparse plan, cached >= split: the whole head was reused).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from lighthouse.engine.plan import PrefillPlan
from lighthouse.engine.prefill_backend import PrefillBackend
from lighthouse.model.chunked import chunked_forward, token_chunks

if TYPE_CHECKING:
    from lighthouse.engine.cache.pool import KVPool
    from lighthouse.engine.cache.sequence_kv import SequenceKV
    from lighthouse.model.llama import LlamaForCausalLM

DEFAULT_CHUNK_TOKENS = 32768  # token chunk of the projections and MLP; attention units of ~8 x its square in pairs


class PrefillAborted(Exception):
    """Raised between the pieces of a prefill when the request was aborted mid-prefill."""


def run_prefill(model: "LlamaForCausalLM", pool: "KVPool", kv: "SequenceKV", prompt_ids, plan: PrefillPlan, *,
                cached: int = 0, should_abort: Callable[[], bool] = lambda: False,
                chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Tensor:
    """A whole prefill in one go (`PrefillTask(...).run()`): the last position's logits (V,) float32."""
    task = PrefillTask(model, pool, kv, prompt_ids, plan, cached=cached, should_abort=should_abort,
                       chunk_tokens=chunk_tokens)
    logits = task.run()
    assert logits is not None
    return logits


class PrefillTask:
    """One prompt's prefill into `kv`, run in pieces: `run(budget_s)` until it returns the logits."""

    def __init__(self, model: "LlamaForCausalLM", pool: "KVPool", kv: "SequenceKV", prompt_ids, plan: PrefillPlan, *,
                 cached: int = 0, should_abort: Callable[[], bool] = lambda: False,
                 chunk_tokens: int = DEFAULT_CHUNK_TOKENS, on_progress: Callable[[float], None] | None = None):
        self.prompt = torch.as_tensor(prompt_ids, dtype=torch.long)  # (N,) on the CPU
        N = self.N = int(self.prompt.shape[0])
        if (not 0 <= cached < N or (cached and plan.sparse and cached < plan.split)
                or (cached and plan.sparse_decode and not (plan.compact and cached >= plan.split))):
            raise ValueError(f"cannot resume a prefill of {N} tokens (split {plan.split}) at position {cached}")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.model, self.pool, self.kv, self.plan, self.cached = model, pool, kv, plan, cached
        self.should_abort, self.chunk_tokens, self.on_progress = should_abort, chunk_tokens, on_progress
        self.progress = 0.0  # fraction of the layers done
        self.units = 0  # units of work run so far
        self.logits: Tensor | None = None
        multi_chunk = len(token_chunks(cached, N, chunk_tokens)) > 1
        self.backend = PrefillBackend(model, pool, kv, plan, N, cached, chunk_tokens, multi_chunk)
        self._work = self._pieces()

    @property
    def done(self) -> bool:
        return self.logits is not None

    def run(self, budget_s: float | None = None) -> Tensor | None:
        """Run units of work until the prefill is done: the last position's logits (V,) float32. With `budget_s`,
        stop early, before a unit that would likely end past the budget (the last unit's time predicts the next;
        at least one unit runs), and return None: call again to go on. Raises PrefillAborted between units once
        `should_abort()` holds."""
        cuda = self.pool.k.is_cuda
        t0 = last = time.perf_counter()
        for _ in self._work:
            self.units += 1
            if self.should_abort():
                raise PrefillAborted
            if budget_s is not None and not self.done:
                if cuda:
                    torch.cuda.synchronize(self.pool.k.device)  # the device's time, not the launches'
                now = time.perf_counter()
                unit, last = now - last, now
                if now - t0 + unit > budget_s:
                    return None
        return self.logits


    def _pieces(self):
        """The model's chunked forward with this prefill's backend; then the lengths of what was written."""
        ids = self.prompt[self.cached :].to(self.pool.k.device)
        forward = chunked_forward(self.model, ids, self.cached, self.backend, self.chunk_tokens)
        while True:
            try:
                fraction = next(forward)
            except StopIteration as end:
                self.logits = end.value
                break
            if fraction > self.progress:
                self.progress = fraction
                if self.on_progress is not None:
                    self.on_progress(fraction)
            yield
        self.kv.length = self.N
        if self.plan.sparse_decode:
            self.kv.ctx_len = self.plan.selected + self.N - self.plan.split
        yield
