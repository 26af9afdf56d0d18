"""Prefix-cache salts without a model (RequestOptions.cache_salt, the server's per API key): an entry is a hit, a
prefill to wait for and a prompt to replace only for its own salt, in the host tier and the disk store too."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.cache.disk_tier import DiskStore, export_entry, restore_entry
from lighthouse.engine.cache.host_tier import HostCache
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.prefix_cache import PrefixCache
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.options import RequestOptions
from tests.engine.cache.test_prefix_cache_entries import SHAPE, finished_sequence

DOC = torch.arange(40)
LONGER = torch.cat([DOC, torch.tensor([7, 8, 9])])


def cache_with(salt, host: bool = False) -> tuple[KVCacheManager, PrefixCache]:
    kv = KVCacheManager(SHAPE, 40 * SHAPE.bytes_per_block)
    cache = PrefixCache(kv, min_tokens=16, host=HostCache(kv, 40 * SHAPE.bytes_per_block) if host else None)
    seq = finished_sequence(kv, DOC)
    assert cache.insert(DOC, 0, seq, salt=salt) is not None
    kv.free(seq)
    return kv, cache


@pytest.mark.parametrize("salt,other", [("a", "b"), ("a", None), (None, "a")])
def test_an_entry_is_a_hit_only_for_its_own_salt(salt, other):
    _, cache = cache_with(salt)
    assert cache.match(LONGER, 0, salt=salt).tokens == 40
    assert cache.match(LONGER, 0, salt=other) is None


def test_another_salts_prompt_neither_reuses_nor_replaces_the_entry():
    kv, cache = cache_with("a")
    (mine,) = cache.entries
    seq = finished_sequence(kv, LONGER, value=2.0)
    theirs = cache.insert(LONGER, 0, seq, salt="b")  # extends "a"'s entry's tokens: a new entry beside it
    assert theirs is not None and theirs is not mine and cache.entries == [mine, theirs]
    assert cache.insert(DOC, 0, finished_sequence(kv, DOC), salt="b") is theirs  # held under "b" as its head
    ours = cache.insert(LONGER, 0, finished_sequence(kv, LONGER), salt="a")  # same salt: replaces the shorter one
    assert ours not in (mine, theirs) and cache.entries == [theirs, ours]


def test_a_prefill_in_flight_is_awaited_only_by_its_own_salt():
    kv = KVCacheManager(SHAPE, 40 * SHAPE.bytes_per_block)
    cache = PrefixCache(kv, min_tokens=16)
    pending = cache.begin_prefill(DOC, 0, False, "a")
    assert cache.in_flight_gain(LONGER, 0, False, "a", 0)
    assert not cache.in_flight_gain(LONGER, 0, False, "b", 0) and not cache.in_flight_gain(LONGER, 0, False, None, 0)
    cache.end_prefill(pending)


def test_the_host_tier_keeps_the_salt():
    kv, cache = cache_with("a", host=True)
    assert cache.make_room(kv.allocator.usable)  # evicted: to host memory
    assert cache.entries == [] and cache.host.entries[0].salt == "a"
    assert cache.match(LONGER, 0, salt="b") is None
    hit = cache.match(LONGER, 0, salt="a")
    assert hit is not None and hit.host is not None
    restored, _ = cache.claim(hit)
    assert restored.entry.salt == "a"


def test_the_disk_store_keeps_the_salt(tmp_path):
    _, cache = cache_with("a")
    store = DiskStore(tmp_path, "identity")
    store.save("doc", export_entry(cache, cache.entries[0]), {})
    data, _ = store.load("doc")
    assert data.salt == "a"
    cache.clear()
    entry = restore_entry(cache, data)
    assert entry is not None and entry.salt == "a" and cache.match(LONGER, 0, salt=None) is None


@pytest.mark.parametrize("salt", ["", "x" * 257, 5])
def test_a_salt_is_a_short_non_empty_string(salt):
    with pytest.raises(InvalidRequest, match="cache_salt must be a non-empty string"):
        RequestOptions(cache_salt=salt)
