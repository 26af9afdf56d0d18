"""Prefix caching: a prefilled prompt's blocks, kept by reference so that a later prompt starting with the same
tokens skips prefilling them (a long document asked many questions is prefilled once).

An entry is inserted as soon as its prefill ends (not when its request finishes), and a prefill in progress is
announced (`begin_prefill`): a prompt that would reuse more of it than of any entry waits for it (the scheduler asks
`in_flight_gain`), so two concurrent questions on a new document cost one prefill. An aborted or failed prefill
leaves nothing; whoever waited for it then prefills for itself.

What is reused, and why it is exact (never an approximation; outputs do not depend on what ran before):

- Dense-prefilled prompts (`split == 0`): every layer attends causally, so layer i's K/V at position t depend
  only on tokens 0..t. Any common prefix of an entry's tokens is reusable by a request that prefills densely.
- Sparse-prefilled prompts (`split > 0`): the Lighthouse op selects per tile over the whole head [0, split)
  (tile spans and top-k depend on every position and on the head's length), so from the first Lighthouse layer
  on, K/V at position t < split depend on tokens after t. The head is therefore reusable only as a unit: by a
  request whose own plan has the same split and whose first `split` tokens are the same. Positions after the
  split (the dense tail, causal against that head) are reusable as far as the tokens match.
- Only within one salt (`RequestOptions.cache_salt`, the server's per API key): an entry made under one salt is
  never a hit for, awaited by, or replaced by a request of another (or of none), so what one tenant's prompts
  hold cannot be probed by another's cached-token counts or timings (vLLM's cache_salt).
- Nothing else: a dense request never reuses a sparse entry, nor a sparse one a dense entry or a head of
  another length. Requests with sparse decode in a full session do not reuse: their selected context comes from
  the head's queries, which are not cached.
- Compact sessions (kv_mode "compact") are the exception, and not exact: their entry keeps what the session
  kept, the full-attention layers' caches and each Lighthouse layer's context (the head's selected entries, then
  the positions after the split). A compact request whose prompt starts with the entry's whole head (whatever its
  own split would be) reuses it: its new positions are prefilled against that context as sparse decode attends
  to it (the entry's split and selection stand for the new prompt's), not as a fresh sparse prefill would select.
  Compact entries serve compact requests only.

"Exact" is the same arithmetic on the same inputs, except that the suffix attends to the cached K/V in a
separate pass, so results match a cache-less prefill up to floating-point summation order.

With a host tier (host_tier.py, `host_cache_bytes` > 0), an entry evicted to make room moves to host memory (a
compact entry with its context), and a prompt whose longest reusable prefix is there gets it back over PCIe
instead of prefilling it again: the scheduler `claim`s it (device blocks and a device entry, now) and the engine
copies it in (`HostRestore`, when it runs the step).

Memory: an entry holds references to the blocks of its prompt (manager.py counts them as the cache's), so a hit copies
nothing but the partly filled last block it continues from, and entries of one document asked different
questions share that document's blocks. Entries are evicted whole, least recently used first, whenever a
request needs blocks; a block returns to the free list when no entry and no sequence holds it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from torch import Tensor

from lighthouse.engine.cache.host_tier import HostCache, HostEntry, HostRestore
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.sequence_kv import SequenceKV


@dataclass(eq=False)  # entries compare by identity
class CacheEntry:
    tokens: Tensor  # (N,) int64 on the CPU
    split: int  # 0: dense prefill (every prefix exact); > 0: sparse head [0, split), reusable only whole
    blocks: list[list[int]]  # per layer: the blocks holding positions [0, N), one reference each ([] in a
    # compact entry's Lighthouse layers)
    last_used: int = 0
    ctx_blocks: list[list[int]] | None = None  # compact: per layer, the context's blocks (entries [0, S + N - split))
    selected: int = 0  # compact: S, the head's selected entries per layer
    ctx_hole_start: Tensor | None = None  # compact: (L, H) int32, as SequenceKV's
    pins: int = 0  # documents holding it (engine/documents.py): a pinned entry is never evicted nor replaced
    ctx_spans: Tensor | None = None  # compact: (L, H, S, 2) int32 on the CPU, as SequenceKV's (None: not kept)
    salt: str | None = None  # reusable only by requests of this cache_salt

    @property
    def compact(self) -> bool:
        return self.ctx_blocks is not None

    def all_blocks(self) -> list[int]:
        return [b for t in self.blocks + (self.ctx_blocks or []) for b in t]

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class CacheHit:
    entry: CacheEntry | None  # a device entry, or None while the hit is in the host tier
    tokens: int  # positions [0, tokens) come from the entry's blocks
    host: HostEntry | None = None  # the hit is in host memory: `PrefixCache.claim` brings it back first

    def as_restored(self) -> CacheHit:
        """A host hit as it will be once restored (its entry without blocks), for sizing the request against it."""
        assert self.host is not None
        h = self.host
        return CacheHit(CacheEntry(h.tokens, h.split, [], ctx_blocks=[] if h.compact else None, selected=h.selected),
                        self.tokens)


def common_prefix(a: Tensor, b: Tensor) -> int:
    """Length of the longest common prefix of two 1-D int tensors."""
    n = min(a.shape[0], b.shape[0])
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0, 0]) if diff.numel() else n


@dataclass
class PrefixCache:
    kv: KVCacheManager
    min_tokens: int = 256  # shorter prompts get no entry, and shorter common prefixes are not reused
    host: HostCache | None = None  # the host-memory tier (None: evicted entries are dropped)
    entries: list[CacheEntry] = field(default_factory=list)
    in_flight: list[CacheEntry] = field(default_factory=list)  # prompts being prefilled (no blocks: never a hit)
    _clock: itertools.count = field(default_factory=itertools.count)

    # ---- lookup -----------------------------------------------------------------------------------------------
    def match(self, prompt: Tensor, split: int, compact: bool = False, salt: str | None = None) -> CacheHit | None:
        """The longest reusable prefix for a prompt whose plan prefills [0, split) sparsely (split 0: densely); with
        `compact`, of a compact entry whose whole head the prompt starts with (split is not used); among the
        entries of `salt` only.

        At least one prompt position is left to compute (its logits start the generation); a reusable prefix
        shorter than `min_tokens` counts as a miss."""
        best: CacheHit | None = None
        for e in self.entries:
            if e.salt != salt:
                continue
            usable = self._usable(prompt, e.tokens, e.split, e.compact, split, compact, whole=bool(e.pins))
            if usable and (best is None or usable > best.tokens
                           or (usable == best.tokens and e.last_used > best.entry.last_used)):
                best = CacheHit(e, usable)
        for h in self.host.entries if self.host is not None else ():  # only longer than on device
            if h.salt != salt:
                continue
            usable = self._usable(prompt, h.tokens, h.split, h.compact, split, compact)
            if usable and (best is None or usable > best.tokens):
                best = CacheHit(None, usable, h)
        if best is not None and best.entry is not None:
            best.entry.last_used = next(self._clock)
        elif best is not None:
            self.host.touch(best.host)
        return best

    def _usable(self, prompt: Tensor, tokens: Tensor, e_split: int, e_compact: bool, split: int,
                compact: bool, whole: bool = False) -> int:
        """Positions of `prompt` an entry of `tokens` (made with `e_split`, `e_compact`) would give it; 0: none.
        With `whole` (a pinned entry: a document), the entry reused whole counts however short it is."""
        if e_compact != compact or (not compact and e_split != split):
            return 0
        usable = min(common_prefix(prompt, tokens), prompt.shape[0] - 1)
        if whole and usable == tokens.shape[0] and usable >= max(e_split, 1):
            return usable
        return usable if usable >= max(e_split, self.min_tokens, 1) else 0  # a sparse head is reusable only whole

    # ---- prefills in progress ----------------------------------------------------------------------------------
    def begin_prefill(self, prompt: Tensor, split: int, compact: bool, salt: str | None = None) -> CacheEntry | None:
        """Announce a prefill in progress whose prompt becomes an entry when it ends (`end_prefill`, then `insert`):
        a later prompt starting the same way waits for it (`in_flight_gain`) instead of prefilling those tokens
        again. The announcement holds no blocks and is never a hit. None: the prompt is too short to be kept."""
        if int(prompt.shape[0]) < self.min_tokens:
            return None
        pending = CacheEntry(prompt, split, [], ctx_blocks=[] if compact else None, salt=salt)
        self.in_flight.append(pending)
        return pending

    def end_prefill(self, pending: CacheEntry | None) -> None:
        """The announced prefill ended (completed: its entry is inserted next; aborted or failed: nothing comes)."""
        if pending is not None and pending in self.in_flight:
            self.in_flight.remove(pending)

    def in_flight_gain(self, prompt: Tensor, split: int, compact: bool, salt: str | None, than: int) -> bool:
        """Whether a prefill in progress (of `salt`) will leave an entry reusing more than `than` positions of this
        prompt."""
        return any(e.salt == salt and self._usable(prompt, e.tokens, e.split, e.compact, split, compact) > than
                   for e in self.in_flight)

    def claim(self, hit: CacheHit) -> tuple[CacheHit, HostRestore]:
        """A host hit as an ordinary device hit of the same length: its entry in freshly allocated blocks (they must
        be free), and the copy that fills them (`HostCache.copy_in`, before anything reads them)."""
        assert hit.host is not None and self.host is not None
        h = hit.host
        restore = self.host.plan_restore(h, self.kv.allocate_for_cache(h.num_blocks), hit.tokens)
        entry = CacheEntry(h.tokens, h.split, restore.tables, next(self._clock), restore.ctx_tables, h.selected,
                           h.ctx_hole_start, ctx_spans=h.ctx_spans, salt=h.salt)
        self.entries.append(entry)
        return CacheHit(entry, hit.tokens), restore

    # ---- memory -----------------------------------------------------------------------------------------------
    def cache_only_blocks(self) -> int:
        """Blocks that only entries hold (what evicting every entry would free)."""
        return self.kv.cache_only_blocks()

    def pinned(self) -> tuple[list[int], int]:
        """The pinned entries' lengths and the distinct blocks they hold (documents: never evicted)."""
        pins = [e for e in self.entries if e.pins]
        return [e.length for e in pins], len({b for e in pins for b in e.all_blocks()})

    def make_room(self, blocks: int, keep: CacheEntry | None = None, keep_host: HostEntry | None = None) -> bool:
        """Evict least recently used entries (never `keep`) until `blocks` blocks are free; with a host tier they
        move there (never pushing out `keep_host`). Whether the blocks are free."""
        while not self.kv.fits_now(blocks):
            victims = [e for e in self.entries if e is not keep and not e.pins]
            if not victims:
                return False
            victim = min(victims, key=lambda e: e.last_used)
            if self.host is not None:
                self.host.offload(victim.tokens, victim.split, victim.blocks, keep=keep_host,
                                  ctx_tables=victim.ctx_blocks, selected=victim.selected,
                                  ctx_hole_start=victim.ctx_hole_start, ctx_spans=victim.ctx_spans, salt=victim.salt)
            self._drop(victim)
        return True

    def discard(self, e: CacheEntry) -> None:
        """Drop one entry (a restore that failed to copy in: its blocks hold nothing reusable)."""
        if e in self.entries:
            self._drop(e)

    def clear(self) -> None:
        for e in list(self.entries):
            self._drop(e)

    def _drop(self, e: CacheEntry) -> None:
        self.entries.remove(e)
        self.kv.release_from_cache(e.all_blocks())
        e.blocks, e.ctx_blocks = [], [] if e.compact else None

    # ---- insertion ----------------------------------------------------------------------------------------------
    def insert(self, prompt: Tensor, split: int, kv: SequenceKV, selected: int = 0, *,
               any_length: bool = False, salt: str | None = None) -> CacheEntry | None:
        """Keep the blocks of positions [0, len(prompt)) of a finished sequence (by reference: no copy); of a compact
        one, its full-attention layers' and its context's (`selected`: the head's S). `any_length`: also when
        shorter than `min_tokens` (a document's upload, to be pinned: `match` reuses a pinned entry whole). Entries
        of another salt are neither reused nor replaced."""
        n = int(prompt.shape[0])
        if (n < self.min_tokens and not any_length) or kv.length < n:
            return None
        compact = kv.compact
        same = [(common_prefix(prompt, e.tokens), e) for e in self.entries
                if e.split == split and e.compact == compact and e.salt == salt]
        for m, e in same:
            if m == n:  # already held (as this prompt or a longer one)
                e.last_used = next(self._clock)
                return e
        for m, e in same:
            if m == e.length and not e.pins:  # this prompt extends an entry: it replaces it (unless pinned)
                self._drop(e)
        nb = self.kv.shape.blocks_for(n)
        blocks = [self.kv.share_for_cache(t[:nb]) for t in kv.blocks]
        entry = CacheEntry(prompt.clone(), split, blocks, next(self._clock), salt=salt)
        if compact:
            nc = self.kv.shape.ctx_blocks_for(selected + n - split)
            entry.ctx_blocks = [self.kv.share_for_cache(t[:nc]) for t in kv.ctx_blocks]
            entry.selected, entry.ctx_hole_start, entry.ctx_spans = selected, kv.ctx_hole_start, kv.ctx_spans
        self.entries.append(entry)
        return entry
