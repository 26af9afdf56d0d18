"""Prefix caching: a finished request's prompt K/V, kept so that a later prompt starting with the same tokens
skips prefilling them (a long document asked many questions is prefilled once).

What is reused, and why it is exact (never an approximation; outputs do not depend on what ran before):

- Dense-prefilled prompts (`split == 0`): every layer attends causally, so layer i's K/V at position t depend
  only on tokens 0..t. Any common prefix of an entry's tokens is reusable by a request that prefills densely.
- Sparse-prefilled prompts (`split > 0`): the Lighthouse op selects per tile over the whole head [0, split)
  (tile spans and top-k depend on every position and on the head's length), so from the first Lighthouse layer
  on, K/V at position t < split depend on tokens after t. The head is therefore reusable only as a unit: by a
  request whose own plan has the same split and whose first `split` tokens are the same. Then its head pass
  would compute exactly what the entry holds. Positions after the split (the dense tail, causal against that
  head) are reusable as far as the tokens match.
- Nothing else: a dense request never reuses a sparse entry, nor a sparse one a dense entry or a head of
  another length (layers before the first Lighthouse layer would be exact for a partial prefix, but skipping
  them needs the residual stream and saves only those layers). Requests with sparse decode do not reuse: their
  selected context is computed from the head's queries, which are not cached.

"Exact" is the same arithmetic on the same inputs, except that the suffix attends to the cached K/V in a
separate pass, so results match a cache-less prefill up to floating-point summation order.

Memory: entries are accounted in the KV budget (`KVCacheManager.cached_bytes`) beside the requests'
reservations; they are evictable, least recently used first, whenever a request or a newer entry needs room.
Two entries with the same split that share most of their tokens (one document, different questions) are
merged into their common prefix, so a document asked many questions is held once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lighthouse.engine.kv_cache import KVCacheManager, SequenceKV
from lighthouse.engine.prefill import PrefillPlan


@dataclass(eq=False)  # entries compare by identity
class CacheEntry:
    tokens: Tensor  # (N,) int64 on the CPU
    split: int  # 0: dense prefill (every prefix exact); > 0: sparse head [0, split), reusable only whole
    k: list[Tensor]  # per layer (1, H_kv, N, D)
    v: list[Tensor]
    nbytes: int
    last_used: int = 0

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class CacheHit:
    entry: CacheEntry
    tokens: int  # positions [0, tokens) are copied from the entry

    def copy_into(self, kv: SequenceKV) -> None:
        m = self.tokens
        for i in range(len(kv.k)):
            kv.k[i][:, :, :m].copy_(self.entry.k[i][:, :, :m])
            kv.v[i][:, :, :m].copy_(self.entry.v[i][:, :, :m])


def cache_split(plan: PrefillPlan) -> int:
    """How a prompt's K/V were made, as entries record it: its sparse head's length, or 0 for a dense prefill."""
    return plan.split if plan.sparse else 0


def common_prefix(a: Tensor, b: Tensor) -> int:
    """Length of the longest common prefix of two 1-D int tensors."""
    n = min(a.shape[0], b.shape[0])
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0, 0]) if diff.numel() else n


@dataclass
class PrefixCache:
    kv: KVCacheManager
    min_tokens: int = 256  # shorter prompts get no entry, and shorter common prefixes are not reused
    entries: list[CacheEntry] = field(default_factory=list)
    _clock: itertools.count = field(default_factory=itertools.count)

    # ---- lookup -----------------------------------------------------------------------------------------------
    def match(self, prompt: Tensor, split: int) -> CacheHit | None:
        """The longest reusable prefix for a prompt whose plan prefills [0, split) sparsely (split 0: densely).

        At least one prompt position is left to compute (its logits start the generation); a reusable prefix
        shorter than `min_tokens` is not worth the copy and counts as a miss."""
        best: CacheHit | None = None
        for e in self.entries:
            if e.split != split:
                continue
            usable = min(common_prefix(prompt, e.tokens), prompt.shape[0] - 1)
            if usable < max(split, self.min_tokens, 1):  # a sparse head is reusable only whole
                continue
            if best is None or usable > best.tokens or (usable == best.tokens and e.last_used > best.entry.last_used):
                best = CacheHit(e, usable)
        if best is not None:
            best.entry.last_used = next(self._clock)
        return best

    # ---- memory -----------------------------------------------------------------------------------------------
    def make_room(self, nbytes: int, keep: CacheEntry | None = None) -> bool:
        """Evict least recently used entries (never `keep`) until `nbytes` more fit the budget. Evicts nothing
        when that could not make room (the running requests' reservations are in the way)."""
        held = keep.nbytes if keep is not None and keep in self.entries else 0
        if self.kv.used_bytes + held + nbytes > self.kv.budget_bytes:
            return False
        while not self.kv.fits_now(nbytes):
            victims = [e for e in self.entries if e is not keep]
            if not victims:
                return False
            self._drop(min(victims, key=lambda e: e.last_used))
        return True

    def clear(self) -> None:
        for e in list(self.entries):
            self._drop(e)

    def _drop(self, e: CacheEntry) -> None:
        self.entries.remove(e)
        self.kv.cached_bytes -= e.nbytes
        e.k.clear(), e.v.clear()

    # ---- insertion ----------------------------------------------------------------------------------------------
    def insert(self, prompt: Tensor, split: int, k: list[Tensor], v: list[Tensor]) -> CacheEntry | None:
        """Keep positions [0, len(prompt)) of a finished request's per-layer K/V buffers (copied layer by layer,
        dropping each source buffer as it goes, so the copy needs at most one extra layer of device memory)."""
        n = int(prompt.shape[0])
        if n < self.min_tokens:
            return None
        same = [(common_prefix(prompt, e.tokens), e) for e in self.entries if e.split == split]
        for m, e in same:
            if m == n:  # already held (as this prompt or a longer one)
                e.last_used = next(self._clock)
                return e
        for m, e in same:
            if m == e.length:  # this prompt extends an entry: it replaces it
                self._drop(e)
        shared = max(same, key=lambda t: t[0], default=(0, None))
        m, e = shared
        if e is not None and e in self.entries and m >= max(split, self.min_tokens) and 2 * m >= max(n, e.length):
            self._truncate(e, m)  # one document, another question: hold the document once
            return e
        nbytes = n * self.kv.shape.bytes_per_token
        if not self.make_room(nbytes):
            return None
        ks, vs = [], []
        for i in range(len(k)):
            ks.append(k[i][:, :, :n].clone())
            vs.append(v[i][:, :, :n].clone())
            k[i] = v[i] = None  # type: ignore[call-overload]  # free the source layer now
        entry = CacheEntry(prompt.clone(), split, ks, vs, nbytes, next(self._clock))
        self.entries.append(entry)
        self.kv.cached_bytes += nbytes
        return entry

    def _truncate(self, e: CacheEntry, m: int) -> None:
        for i in range(len(e.k)):
            e.k[i] = e.k[i][:, :, :m].clone()
            e.v[i] = e.v[i][:, :, :m].clone()
        nbytes = m * self.kv.shape.bytes_per_token
        self.kv.cached_bytes -= e.nbytes - nbytes
        e.tokens, e.nbytes, e.last_used = e.tokens[:m].clone(), nbytes, next(self._clock)
