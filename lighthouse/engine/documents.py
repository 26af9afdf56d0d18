"""Documents in the engine: pinned prefix-cache entries, found by the document's tokens.

A document is uploaded as a request whose options pin its prompt (`RequestOptions.pin_prompt`): when it finishes,
the scheduler leaves its prompt in the prefix cache as usual and counts a pin on the entry, which the cache then
never evicts (nor replaces with a longer prompt) until `unpin`. Later prompts that start with the document's tokens
reuse it as any prefix-cache hit (prefix_cache.py says what is reused and why it is exact); the same tokens uploaded
again add a pin to the same entry (`pin_again`), each delete takes one. `export` and `restore`
move a pinned entry's K/V to and from CPU tensors for the disk tier (cache/disk_tier.py).

Every method but `estimate_bytes` touches the cache and must run on the engine thread (AsyncEngine.call).
"""

from __future__ import annotations

import torch

from lighthouse.engine.cache.disk_tier import EntryData, export_entry, restore_entry
from lighthouse.engine.cache.prefix_cache import CacheEntry, common_prefix
from lighthouse.engine.citations import answer_attention
from lighthouse.engine.citations_context import DocumentContext
from lighthouse.engine.errors import CITATIONS_NEED_SPANS, InvalidRequest
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.plan import plan_prefill
from lighthouse.engine.sampling import SamplingParams


class DocumentPins:
    def __init__(self, engine):
        self.engine = engine  # an LLMEngine

    @property
    def bytes_per_block(self) -> int:
        return self.engine.kv.shape.bytes_per_block

    def estimate_bytes(self, prompt_ids: list[int], options: RequestOptions) -> int:
        """What pinning this prompt would hold in the KV cache, in bytes (its reservation for one token more; raises
        InvalidRequest when it cannot be served at all). Thread-safe."""
        req = self.engine.make_request("document-size", prompt_ids, SamplingParams(max_tokens=1), options)
        return req.reservation.held_blocks(self.engine.kv.shape) * self.bytes_per_block

    def compact(self, kv_mode: str | None) -> bool:
        """Whether a document uploaded with `kv_mode` (None: the engine's default) is kept as a compact entry."""
        return (kv_mode or self.engine.defaults[2]) == "compact"

    def kept_compact(self, prompt_ids: list[int], kv_mode: str | None) -> bool:
        """Whether the document's entry is a compact one: uploaded compact and long enough for a sparse prefill (a
        shorter one is prefilled densely and kept in full, as its questions reuse it)."""
        if not self.compact(kv_mode):
            return False
        prefill, decode, _ = self.engine.defaults  # the upload's options (server/documents.py), as intake plans them
        opts = RequestOptions(kv_mode="compact", dense_tail_tokens=0).resolved(prefill, decode, 0, "compact")
        return plan_prefill(self.engine.model.config, len(prompt_ids), prefill=opts.prefill, decode=opts.decode,
                            dense_tail_tokens=0, kv_mode="compact").compact

    def find(self, prompt_ids: list[int], kv_mode: str | None = None, salt: str | None = None) -> CacheEntry | None:
        """The pinned entry of the document's kind (full or compact: the same tokens may be pinned as both) and of
        its owner's cache salt that holds these tokens: its own (exactly these tokens) where there is one, else the
        head of a longer one."""
        cache = self.engine.prefix_cache
        if cache is None:
            return None
        t, compact = torch.tensor(prompt_ids, dtype=torch.long), self.kept_compact(prompt_ids, kv_mode)
        held = [e for e in cache.entries if e.pins and e.compact == compact and e.salt == salt
                and e.length >= len(prompt_ids)
                and common_prefix(t, e.tokens) == len(prompt_ids)]
        return min(held, key=lambda e: e.length, default=None)

    def pin_again(self, prompt_ids: list[int], kv_mode: str | None = None, salt: str | None = None) -> bool:
        """One more pin on the pinned entry whose prompt is exactly these tokens (of the document's kind): the same
        document uploaded again needs no prefill. False when there is none (a longer entry holding these tokens as
        its head does not count: a sparse head is reusable only whole)."""
        e = self.find(prompt_ids, kv_mode, salt)
        if e is None or e.length != len(prompt_ids):
            return False
        e.pins += 1
        return True

    def held_bytes(self, prompt_ids: list[int], kv_mode: str | None = None, salt: str | None = None) -> int:
        """Bytes of the KV cache the pinned entry holds (0: not pinned on the device)."""
        e = self.find(prompt_ids, kv_mode, salt)
        return len(e.all_blocks()) * self.bytes_per_block if e is not None else 0

    def unpin(self, prompt_ids: list[int], kv_mode: str | None = None, salt: str | None = None) -> None:
        """One pin less; the entry leaves the cache with its last pin (a deleted document frees its memory)."""
        e = self.find(prompt_ids, kv_mode, salt)
        if e is None:
            return
        e.pins -= 1
        if not e.pins:
            self.engine.prefix_cache.discard(e)

    def answer_attention(self, prefix_ids: list[int], kv_mode: str | None, prompt_ids: list[int],
                         answer_ids: list[int], salt: str | None = None) -> list[float] | None:
        """Per position of the document's prefix, the attention the answer paid to it beyond the prompt's (citations.py),
        from its pinned entry (full, or compact: its Lighthouse layers' context); None when it is not pinned on the
        device. Raises InvalidRequest for a compact entry without its context's windows (restored from a store
        written before they were kept) or a prompt that does not start with the prefix."""
        e = self.find(prefix_ids, kv_mode, salt)
        if e is None:
            return None
        P = len(prefix_ids)
        context = None
        if e.compact:
            if e.ctx_spans is None:
                raise InvalidRequest(CITATIONS_NEED_SPANS, param="citations", code="citations_unavailable")
            if e.split > P:  # another, longer document's entry: its selection covers more than this one
                raise InvalidRequest("citations need the compact document's own entry", param="citations",
                                     code="citations_unavailable")
            context = DocumentContext.of(e)
        if prompt_ids[:P] != prefix_ids:
            raise InvalidRequest("citations need the document in its uploaded layout (the same system message as its "
                                 "upload)", param="citations")
        eng = self.engine
        return answer_attention(eng.model, eng.kv.pool, e.blocks, P, prompt_ids[P:] + answer_ids,
                                len(answer_ids), context=context).tolist()

    def export(self, prompt_ids: list[int], kv_mode: str | None = None, salt: str | None = None) -> EntryData | None:
        e = self.find(prompt_ids, kv_mode, salt)
        return export_entry(self.engine.prefix_cache, e) if e is not None else None

    def restore(self, data: EntryData) -> int:
        """A stored document back on the device, pinned (under `data.salt`); the bytes it holds (0: no room now, or
        no prefix cache)."""
        cache = self.engine.prefix_cache
        if cache is None:
            return 0
        e = restore_entry(cache, data)
        return len(e.all_blocks()) * self.bytes_per_block if e is not None else 0
