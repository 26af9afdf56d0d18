"""Admission against the KV cache: what a request reserves, how many free blocks it takes now (less what a
prefix-cache hit shares), and making room for it by evicting prefix-cache entries (prefix_cache.py says what is
reused and why that is exact, and where compact entries are not)."""

from __future__ import annotations

from dataclasses import replace

import torch

from lighthouse.engine.kv_cache import KVCacheManager, Reservation, SequenceKV
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.prefill import PrefillPlan
from lighthouse.engine.prefix_cache import CacheHit, PrefixCache, cache_split
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.sequence import Request
from lighthouse.model.llama import LlamaForCausalLM


class Admission:
    def __init__(self, kv: KVCacheManager, prefix_cache: PrefixCache | None, model: LlamaForCausalLM):
        self.kv, self.prefix_cache, self.model = kv, prefix_cache, model

    def sized_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams, opts: RequestOptions,
                      plan: PrefillPlan, prompt: torch.Tensor) -> Request:
        """The request with its capacity and KV cache reservation for `params.max_tokens`."""
        n_prompt = plan.prompt_len
        capacity = n_prompt + params.max_tokens
        ctx_entries = plan.selected + capacity - plan.split if plan.sparse_decode else 0
        res = self.kv.reservation(capacity, plan.lighthouse_layers if plan.sparse_decode else (), ctx_entries,
                                  compact=plan.compact, prompt_len=n_prompt)
        return Request(request_id, prompt_ids, params, opts, [], plan, capacity, ctx_entries, res, prompt_tensor=prompt)

    def largest_that_fits(self, req: Request) -> Request:
        """The request resized to the most max_tokens (at least 1, at most its own) whose blocks the budget holds."""
        params = req.params
        lo, hi = 0, params.max_tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            params.max_tokens = mid
            probe = self.sized_request(req.request_id, [], params, req.options, req.plan, req.prompt_tensor)
            lo, hi = (mid, hi) if self.kv.fits_ever(self.blocks_needed(probe, None)) else (lo, mid - 1)
        params.max_tokens = max(1, lo)
        return self.sized_request(req.request_id, req.prompt_ids, params, req.options, req.plan, req.prompt_tensor)

    def allocate(self, req: Request, hit: CacheHit | None) -> SequenceKV:
        """The first sequence's tables at the start of its prefill, sharing what the hit gives. Continuing a
        compact entry, the request takes the entry's split and selection (`req.plan`) and its grown reservation."""
        cached = hit.tokens if hit is not None else 0
        e = hit.entry if hit is not None else None
        if e is None or not e.compact:
            return self.kv.allocate(req.reservation, e.blocks if e is not None else None, cached)
        req.reservation = self.reservation(req, hit)
        req.plan = replace(req.plan, split=e.split, selected=e.selected)
        kv = self.kv.allocate(req.reservation, e.blocks, cached, ctx_prefix=e.ctx_blocks,
                              ctx_prefix_len=e.selected + cached - e.split)
        assert e.ctx_hole_start is not None
        kv.ctx_hole_start, kv.ctx_hole_end = e.ctx_hole_start.clone(), e.selected
        return kv

    def reservation(self, req: Request, hit: CacheHit | None) -> Reservation:
        """What each of the request's sequences holds: as planned, or, continuing a compact prefix-cache entry, its
        context grown from the entry's (the entry's split and selection stand for the prompt's; no scratch)."""
        e = hit.entry if hit is not None else None
        if e is None or not e.compact:
            return req.reservation
        res = req.reservation
        return Reservation(res.capacity, res.full_layers, res.ctx_layers, e.selected + res.capacity - e.split)

    def blocks_needed(self, req: Request, hit: CacheHit | None) -> int:
        """Free blocks the request takes at its prefill: the first sequence's tables, less what a prefix-cache hit
        shares, plus what each other choice does not share with the first (its filled prompt blocks)."""
        kv, n, bs = self.kv, req.params.n, self.kv.block_size
        res = self.reservation(req, hit)
        one = res.held_blocks(kv.shape)
        shared_prompt = len(res.full_layers) * (req.plan.prompt_len // bs)
        filled_ctx = (res.ctx_entries - req.params.max_tokens) * kv.shape.group // bs if res.ctx_entries else 0
        shared_ctx = len(res.ctx_layers) * filled_ctx
        saved_by_hit = len(res.full_layers) * (hit.tokens // bs) if hit is not None else 0
        if hit is not None and hit.entry is not None and hit.entry.compact:
            e = hit.entry
            saved_by_hit += len(res.ctx_layers) * ((e.selected + hit.tokens - e.split) * kv.shape.group // bs)
        scratch = res.blocks(kv.shape) - one  # a compact prefill's, given back before the other choices fork
        return one + scratch - saved_by_hit + (n - 1) * (one - shared_prompt - shared_ctx)

    def cache_hit(self, req: Request) -> CacheHit | None:
        if self.prefix_cache is None or not req.cache_prompt:
            return None
        if req.plan.compact:  # a compact document's follow-up: against its kept context (prefix_cache.py)
            lh = self.model.config.lighthouse  # (not where the context's K were rotated with other frequencies)
            if lh.rope == "after_select" and lh.rope_freqs == "unscaled":
                return None
            return self.prefix_cache.match(req.prompt(), 0, compact=True)
        if req.plan.sparse_decode:
            return None  # sparse decode selects from the head's queries, which are not cached
        return self.prefix_cache.match(req.prompt(), cache_split(req.plan))

    def make_room(self, req: Request) -> bool:
        """Whether the request's blocks fit now, evicting prefix-cache entries (the one it would reuse last)."""
        req.hit = self.cache_hit(req)
        if req.hit is not None and req.hit.host is not None:  # in the host tier: back to the device first
            h = req.hit.host
            # the entry's blocks, then the request's as with that entry on the device (less what it shares)
            need = h.num_blocks + self.blocks_needed(req, req.hit.as_restored())
            if self.kv.fits_now(need) or self.prefix_cache.make_room(need, keep_host=h):
                req.hit = self.prefix_cache.restore(req.hit)
                return True
            req.hit = None
            if self.kv.fits_ever(need):
                return False  # wait for running requests to give blocks back
            # never with the entry restored: prefill from scratch below
        need = self.blocks_needed(req, req.hit)
        if self.kv.fits_now(need) or self.prefix_cache is None:
            return self.kv.fits_now(need)
        if self.prefix_cache.make_room(need, keep=req.hit.entry if req.hit else None):
            return True
        req.hit = None  # the kept entry is in the way: evict it too and prefill from scratch
        return self.prefix_cache.make_room(self.blocks_needed(req, None))

