"""The prefix cache and its host tier without a model: entries keep blocks by reference, what matches what,
eviction order, and an evicted entry's bytes coming back from host memory unchanged."""

from __future__ import annotations

import torch

from lighthouse.engine.cache.host_tier import HostCache
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.prefix_cache import PrefixCache
from lighthouse.engine.cache.spec import CacheShape, kv_spec

BS = 16
SHAPE = CacheShape(num_layers=2, num_kv_heads=1, num_heads=2, head_dim=4, dtype=torch.float32,
                   device=torch.device("cpu"), block_size=BS)


def finished_sequence(kv: KVCacheManager, tokens: torch.Tensor, value: float = 1.0):
    """A sequence that prefilled `tokens` (its K/V all `value`), as the scheduler retires it."""
    n = int(tokens.shape[0])
    seq = kv.allocate(kv_spec(SHAPE.num_layers, n + 8))
    for t in seq.blocks:
        rows = torch.full((n, 1, 4), value)
        kv.pool.write(kv.pool.slots(t, 0, n), rows, rows)
    seq.length = n
    return seq


def test_an_entry_keeps_the_prompts_blocks_by_reference_after_the_sequence_is_freed():
    kv = KVCacheManager(SHAPE, 40 * SHAPE.bytes_per_block)
    cache = PrefixCache(kv, min_tokens=16)
    doc = torch.arange(40)
    seq = finished_sequence(kv, doc)
    entry = cache.insert(doc, 0, seq)
    kv.free(seq)
    assert entry is not None and kv.usage_ratio == 0.0
    assert kv.cache_only_blocks() == 2 * SHAPE.blocks_for(40) == len(entry.all_blocks())
    assert cache.insert(doc, 0, finished_sequence(kv, doc)) is entry  # already held: no second entry


def test_matching_leaves_one_position_to_compute_and_keeps_dense_and_sparse_heads_apart():
    kv = KVCacheManager(SHAPE, 40 * SHAPE.bytes_per_block)
    cache = PrefixCache(kv, min_tokens=16)
    doc = torch.arange(40)
    cache.insert(doc, 0, finished_sequence(kv, doc))
    assert cache.match(torch.cat([doc, torch.tensor([7, 8])]), 0).tokens == 40
    assert cache.match(doc, 0).tokens == 39  # the last prompt position's logits start the generation
    assert cache.match(torch.cat([doc[:10], doc[10:] + 1]), 0) is None  # 10 < min_tokens
    assert cache.match(doc, 32) is None  # a sparse head never reuses a dense entry


def test_a_pinned_entry_under_the_minimum_is_kept_and_reused_only_whole():
    kv = KVCacheManager(SHAPE, 40 * SHAPE.bytes_per_block)
    cache = PrefixCache(kv, min_tokens=32)
    doc = torch.arange(20)  # under min_tokens
    assert cache.insert(doc, 0, finished_sequence(kv, doc)) is None  # an ordinary prompt that short: no entry
    entry = cache.insert(doc, 0, finished_sequence(kv, doc), any_length=True)  # a document's upload
    assert entry is not None
    question = torch.cat([doc, torch.tensor([7, 8])])
    assert cache.match(question, 0) is None  # not pinned yet: the minimum holds
    entry.pins = 1
    assert cache.match(question, 0).tokens == 20  # pinned: reused whole
    assert cache.match(torch.cat([doc[:15], doc[15:] + 1]), 0) is None  # part of it: under the minimum, a miss


def test_eviction_takes_the_least_recently_used_entry_and_spares_the_one_kept():
    kv = KVCacheManager(SHAPE, 21 * SHAPE.bytes_per_block)  # 20 usable blocks
    cache = PrefixCache(kv, min_tokens=16)
    a, b = torch.arange(64), torch.arange(64) + 1000  # 8 blocks each (2 layers x 4)
    for doc in (a, b):
        seq = finished_sequence(kv, doc)
        cache.insert(doc, 0, seq)
        kv.free(seq)
    cache.match(torch.cat([a, a]), 0)  # a used last
    assert cache.make_room(kv.num_free + 8)
    assert [e.tokens[0].item() for e in cache.entries] == [0]  # b went
    assert not cache.make_room(kv.num_free + 8, keep=cache.entries[0])
    assert cache.entries and cache.make_room(kv.allocator.usable)


def test_an_evicted_entry_returns_from_the_host_tier_with_the_same_bytes():
    kv = KVCacheManager(SHAPE, 21 * SHAPE.bytes_per_block)
    host = HostCache(kv, 40 * SHAPE.bytes_per_block)
    cache = PrefixCache(kv, min_tokens=16, host=host)
    doc = torch.arange(50)
    seq = finished_sequence(kv, doc, value=3.5)
    cache.insert(doc, 0, seq)
    kv.free(seq)
    cache.clear()  # dropped, not offloaded
    assert host.entries == []
    seq = finished_sequence(kv, doc, value=3.5)
    cache.insert(doc, 0, seq)
    kv.free(seq)
    assert cache.make_room(kv.allocator.usable)  # evicts it: to host memory
    assert cache.entries == [] and len(host.entries) == 1 and kv.num_free == kv.allocator.usable
    hit = cache.match(torch.cat([doc, torch.tensor([1])]), 0)
    assert hit is not None and hit.entry is None and hit.host is host.entries[0] and hit.tokens == 50
    device_hit, restore = cache.claim(hit)  # blocks and an entry now, the bytes when the engine copies them
    assert device_hit.entry in cache.entries and len(host.entries) == 1
    host.copy_in(restore)
    assert host.entries == [] and host.hit_tokens == 50 and host.bytes_to_device > 0
    k, v = kv.pool.read(device_hit.entry.blocks[1], 50)
    assert torch.equal(k, torch.full_like(k, 3.5)) and torch.equal(v, torch.full_like(v, 3.5))
