"""Admission's arithmetic, as pure functions: what a request's sequences hold in the KV cache (their spec), and how
many free blocks it takes when its prefill starts, less what a prefix-cache hit shares. Nothing here allocates,
evicts or changes a request: the scheduler (scheduler.py) asks these and acts. prefix_cache.py says what a hit
reuses and why that is exact (and where compact entries are not)."""

from __future__ import annotations

from typing import Any, Callable

from lighthouse.engine.cache.prefix_cache import CacheHit
from lighthouse.engine.cache.spec import CacheShape, KVSpec, continued_spec, kv_spec
from lighthouse.engine.request import Request


def cache_split(plan: Any) -> int:
    """How a prompt's K/V were made, as prefix-cache entries record it: its sparse head's length, or 0 (dense)."""
    return plan.split if plan.sparse else 0


def sized_spec(plan: Any, max_tokens: int, num_layers: int) -> KVSpec:
    """What each sequence of a request planned as `plan` (engine/plan.py's PrefillPlan) holds for `max_tokens`."""
    capacity = plan.prompt_len + max_tokens
    ctx_entries = plan.selected + capacity - plan.split if plan.sparse_decode else 0
    return kv_spec(num_layers, capacity, plan.lighthouse_layers if plan.sparse_decode else (), ctx_entries,
                   compact=plan.compact, prompt_len=plan.prompt_len)


def spec_with_hit(spec: KVSpec, hit: CacheHit | None) -> KVSpec:
    """What each sequence holds: as sized, or, continuing a compact prefix-cache entry, its context grown from the
    entry's (the entry's split and selection stand for the prompt's; no scratch)."""
    e = hit.entry if hit is not None else None
    if e is None or not e.compact:
        return spec
    return continued_spec(spec, e.selected, e.split)


def blocks_needed(req: Request, hit: CacheHit | None, shape: CacheShape) -> int:
    """Free blocks the request takes at its prefill: the first sequence's tables, less what a prefix-cache hit
    shares, plus what each other choice does not share with the first (its filled prompt blocks)."""
    spec = spec_with_hit(req.reservation, hit)
    one = spec.held_blocks(shape)
    ctx_filled = spec.ctx_entries - req.params.max_tokens if spec.ctx_entries else 0
    shared_with_first = spec.filled_blocks(shape, req.plan.prompt_len, ctx_filled)
    saved_by_hit = 0
    if hit is not None:  # (a compact entry shares its context too: the head's selection and what followed it)
        e = hit.entry
        ctx_hit = e.selected + hit.tokens - e.split if e is not None and e.compact else 0
        saved_by_hit = spec.filled_blocks(shape, hit.tokens, ctx_hit)
    scratch = spec.blocks(shape) - one  # a compact prefill's, given back before the other choices fork
    return one + scratch - saved_by_hit + (req.params.n - 1) * (one - shared_with_first)


def pinned_refusal(req: Request, pinned_hit: CacheHit | None, shape: CacheShape, usable: int,
                   pinned_tokens: list[int], held: int) -> str | None:
    """Why the request can never be admitted while the pinned prefix-cache entries (documents) stay, or None.

    The pinned entries (`pinned_tokens`: each one's length) hold `held` distinct blocks for good, so at most
    `usable - held` blocks are ever free for the request. It takes the fewest fresh blocks with no hit, or continuing
    `pinned_hit` (a pinned entry whose blocks it shares); an unpinned hit's blocks are held by its entry while they
    are shared, so it never needs fewer fresh blocks than `usable - held` allows without it."""
    room = usable - held
    need = blocks_needed(req, None, shape)
    if pinned_hit is not None:
        need = min(need, blocks_needed(req, pinned_hit, shape))
    if not pinned_tokens or need <= room:
        return None
    full = max(1, len(req.reservation.full_layers))
    sizes = ", ".join(f"{t:,}" for t in sorted(pinned_tokens, reverse=True)[:10])
    return (f"This request can never fit in the KV cache while the pinned documents stay: it needs {need:,} blocks "
            f"({len(req.prompt_ids):,} prompt tokens, {req.capacity:,} positions with max_tokens, n={req.params.n}), "
            f"but {len(pinned_tokens)} pinned document(s) ({sizes} tokens) hold {held:,} of the server's {usable:,} "
            f"blocks, leaving {max(room, 0):,} (about {max(room, 0) // full * shape.block_size:,} positions of one "
            "sequence). Delete pinned documents (DELETE /v1/documents/{id}), or shorten the prompt or max_tokens.")


def largest_max_tokens(fits: Callable[[int], bool], most: int) -> int:
    """The largest max_tokens in [1, most] for which `fits(max_tokens)` (monotone: fewer tokens never take more
    blocks); 1 when none does (the caller then refuses the request with the blocks it needs)."""
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return max(1, lo)


class Admission:
    """The arithmetic above for one engine's cache shape (what engine.py and the tests ask)."""

    def __init__(self, shape: CacheShape):
        self.shape = shape

    def sized_spec(self, plan: Any, max_tokens: int) -> KVSpec:
        return sized_spec(plan, max_tokens, self.shape.num_layers)

    def blocks_needed(self, req: Request, hit: CacheHit | None) -> int:
        return blocks_needed(req, hit, self.shape)
