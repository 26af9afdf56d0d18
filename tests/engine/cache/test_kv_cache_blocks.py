"""The KV cache without a model: the per-layer spec, the allocator's reference counts, tables allocated from a spec,
copy on write (now, or deferred for the engine), forks, and the blocks only the prefix cache holds."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.cache.allocator import BlockAllocator
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.spec import CacheShape, KVSpec, kv_spec

BS = 16
SHAPE = CacheShape(num_layers=3, num_kv_heads=1, num_heads=2, head_dim=4, dtype=torch.float32,
                   device=torch.device("cpu"), block_size=BS)


def manager(blocks: int = 64) -> KVCacheManager:
    return KVCacheManager(SHAPE, blocks * SHAPE.bytes_per_block)


def fill(kv: KVCacheManager, table: list[int], n: int, value: float) -> None:
    rows = torch.full((n, 1, 4), value)
    kv.pool.write(kv.pool.slots(table, 0, n), rows, rows)


def test_the_allocator_hands_out_low_ids_first_and_frees_a_block_when_its_last_holder_lets_go():
    a = BlockAllocator(8)
    assert a.usable == 7 and a.allocate(3) == [1, 2, 3]  # block 0 is the scratch block, never handed out
    a.share([2])
    a.release([1, 2, 3])
    assert a.num_free == 6 and a.refs[2] == 1  # still held once
    a.release([2])
    assert a.num_free == 7
    with pytest.raises(AssertionError, match="released twice"):
        a.release([2])
    with pytest.raises(MemoryError):
        a.allocate(8)


def test_each_layer_keeps_what_the_spec_says():
    full = kv_spec(3, 40)
    assert full.held_blocks(SHAPE) == 3 * 3 and all(full.layer(i).full and not full.layer(i).context for i in range(3))
    sparse = kv_spec(3, 40, (1, 2), ctx_entries=20, prompt_len=30)  # full session, sparse decode
    assert sparse.layer(1).full and sparse.layer(1).decode_reads_context and not sparse.layer(1).scratch
    assert sparse.held_blocks(SHAPE) == 3 * 3 + 2 * SHAPE.ctx_blocks_for(20) and sparse.scratch_positions == 0
    compact = kv_spec(3, 40, (1, 2), ctx_entries=20, compact=True, prompt_len=30)
    assert compact.full_layers == (0,) and compact.compact and compact.layer(2).scratch
    assert compact.blocks(SHAPE) - compact.held_blocks(SHAPE) == SHAPE.blocks_for(30)  # the prefill's scratch


def test_a_sequence_takes_exactly_its_specs_blocks_and_gives_them_all_back():
    kv = manager()
    spec = kv_spec(3, 40, (1, 2), ctx_entries=20, compact=True, prompt_len=30)
    seq = kv.allocate(spec)
    assert kv.allocator.usable - kv.num_free == spec.blocks(SHAPE)
    assert seq.blocks[1] == [] and seq.layer(1).scratch and seq.decode_table(1) == (seq.ctx_blocks[1], True)
    assert seq.decode_table(0) == (seq.blocks[0], False)
    kv.release_scratch(seq)
    assert kv.allocator.usable - kv.num_free == spec.held_blocks(SHAPE)
    kv.free(seq)
    assert kv.num_free == kv.allocator.usable


def test_a_continued_table_shares_the_filled_blocks_and_copies_the_partial_one_when_asked():
    kv = manager()
    src = kv.allocate(kv_spec(3, 40))
    for t in src.blocks:
        fill(kv, t, 40, 7.0)
    copies: list = []
    seq = kv.allocate(kv_spec(3, 60), src.blocks, 20, copies=copies)
    assert all(seq.blocks[i][0] == src.blocks[i][0] for i in range(3))  # block 0 (positions 0..15): shared
    assert all(seq.blocks[i][1] != src.blocks[i][1] for i in range(3))  # block 1 (16..19 filled): own
    assert [(s, n) for s, _, n in copies] == [(src.blocks[i][1], 4) for i in range(3)]  # deferred, not run
    k, _ = kv.pool.read(seq.blocks[0], 20)
    assert not torch.equal(k[0, 0, 16:20], torch.full((4, 4), 7.0))
    kv.run_copies(copies)
    k, _ = kv.pool.read(seq.blocks[0], 20)
    assert torch.equal(k[0, 0], torch.full((20, 4), 7.0))


def test_a_fork_continues_at_the_same_length_and_shares_only_filled_blocks():
    kv = manager()
    seq = kv.allocate(kv_spec(3, 40))
    seq.length = 20
    fork = kv.fork(seq)
    assert fork.length == 20 and fork.uid != seq.uid and fork.spec == seq.spec
    assert kv.allocator.refs[seq.blocks[0][0]] == 2 and kv.allocator.refs[seq.blocks[0][1]] == 1


def test_commit_token_moves_the_full_and_the_context_length_together():
    kv = manager()
    dense = kv.allocate(kv_spec(3, 40))
    sparse = kv.allocate(kv_spec(3, 40, (1,), ctx_entries=30))
    sparse.ctx_len = 10
    for seq in (dense, sparse):
        seq.commit_token()
    assert dense.decode_position() == (1, 0) and sparse.decode_position() == (1, 11)


def test_blocks_only_the_prefix_cache_holds_are_not_counted_as_in_use():
    kv = manager()
    seq = kv.allocate(kv_spec(3, 32))
    kept = [kv.share_for_cache(t) for t in seq.blocks]
    assert kv.cache_only_blocks() == 0 and kv.usage_ratio == pytest.approx(6 / kv.allocator.usable)
    kv.free(seq)
    assert kv.cache_only_blocks() == 6 and kv.usage_ratio == 0.0 and kv.cached_ratio == pytest.approx(6 / 63)
    for t in kept:
        kv.release_from_cache(t)
    assert kv.num_free == kv.allocator.usable and kv.cache_only_blocks() == 0


def test_a_spec_counts_what_a_continuation_shares():
    spec = KVSpec(48, (0, 2), (1, 2), ctx_entries=40)
    # 33 prompt positions fill 2 blocks of each full layer; 24 context entries x 2 heads fill 3 blocks of each
    assert spec.filled_blocks(SHAPE, 33, 24) == 2 * 2 + 2 * 3
