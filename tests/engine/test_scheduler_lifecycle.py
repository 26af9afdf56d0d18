"""The scheduler and admission without a model (as vLLM's tests/v1/core test theirs): what `schedule()` picks,
what `update()` commits, frees and keeps in the prefix cache, and admission's block arithmetic."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.admission import Admission, blocks_needed, largest_max_tokens
from lighthouse.engine.cache.host_tier import HostCache
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.prefix_cache import PrefixCache
from lighthouse.engine.cache.spec import CacheShape
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.plan import PrefillPlan
from lighthouse.engine.request import PrefillInfo, Request, Sequence, Status
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.scheduler import Scheduler, StepResult

BS = 16
L = 2
SHAPE = CacheShape(num_layers=L, num_kv_heads=1, num_heads=2, head_dim=4, dtype=torch.float32,
                   device=torch.device("cpu"), block_size=BS)


def request(rid: str, prompt_len: int, max_tokens: int = 8, n: int = 1, first_token: int = 0) -> Request:
    """A dense request: its plan, its spec as admission sizes it, and its n sequences (no model anywhere)."""
    plan = PrefillPlan(prompt_len, 0, False, False, (), 0)
    params = SamplingParams(max_tokens=max_tokens, n=n, temperature=0.0)
    spec = Admission(SHAPE).sized_spec(plan, max_tokens)
    prompt = [first_token + i for i in range(prompt_len)]
    req = Request(rid, prompt, params, RequestOptions(), [], plan, spec.capacity, 0, spec)
    req.seqs = [Sequence(i, params, None, None, request=req) for i in range(n)]
    return req


def scheduler(blocks: int = 64, *, prefix: bool = False, max_num_seqs: int = 8, express: int = 0) -> Scheduler:
    kv = KVCacheManager(SHAPE, (blocks + 1) * SHAPE.bytes_per_block)
    return Scheduler(kv, PrefixCache(kv, min_tokens=16) if prefix else None, max_num_seqs=max_num_seqs,
                     express_tokens=express)


def prefill_done(s: Scheduler, work) -> None:
    """What the engine does when a prefill's last piece ran and its first tokens were sampled."""
    req = work.request
    req.seqs[0].kv.length = req.plan.prompt_len  # the prefill wrote the prompt
    req.prefill_info = PrefillInfo("dense", 0, req.plan.prompt_len, "dense", 0.0)
    for seq in req.seqs:
        seq.output_ids.append(1)
    s.update(StepResult(prefilled=work))


def finish(s: Scheduler, seqs: list[Sequence], reason: str = "length") -> None:
    for seq in seqs:
        seq.status, seq.finish_reason = Status.FINISHED, reason
    s.update(StepResult(finished=list(seqs)))


def test_the_head_is_admitted_with_its_blocks_then_prefill_and_decode_alternate():
    s = scheduler()
    a, b = request("a", 40), request("b", 40)
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert out.prefill is not None and out.prefill.request is a and not out.decode
    assert a.seqs[0].kv is not None and s.kv.allocator.usable - s.kv.num_free == a.reservation.blocks(SHAPE)
    prefill_done(s, out.prefill)
    assert a.seqs[0].status is Status.RUNNING and s.prefilling is None
    out = s.schedule()  # a prefill just ran and a sequence waits to decode: decode first
    assert out.prefill is None and out.decode == a.seqs
    assert s.schedule().prefill.request is b


def test_lengths_move_only_when_update_commits_a_sampled_step():
    s = scheduler()
    req = request("a", 40)
    s.add(req)
    prefill_done(s, s.schedule().prefill)
    kv = req.seqs[0].kv
    batch = s.schedule().decode
    assert kv.length == 40  # the step ran (or failed and is retried): nothing moved
    s.update(StepResult(decoded=batch))
    assert kv.length == 41


def test_n_choices_fork_at_the_end_of_the_prefill_sharing_the_prompts_full_blocks():
    s = scheduler()
    req = request("a", 40, n=3)
    s.add(req)
    work = s.schedule().prefill
    assert [seq.kv is None for seq in req.seqs] == [False, True, True]
    held = s.kv.allocator.usable - s.kv.num_free
    prefill_done(s, work)
    shared = L * (40 // BS)
    assert s.kv.allocator.usable - s.kv.num_free == held + 2 * (held - shared)
    assert s.kv.allocator.usable - s.kv.num_free == blocks_needed(req, None, SHAPE)
    assert all(seq.kv.length == 40 for seq in req.seqs) and len(s.running) == 3


def test_a_finished_request_gives_its_blocks_back_and_leaves_its_prompt_in_the_prefix_cache():
    s = scheduler(prefix=True)
    req = request("a", 40)
    s.add(req)
    prefill_done(s, s.schedule().prefill)
    finish(s, req.seqs)
    assert s.running == [] and req.seqs[0].kv is None and s.kv.usage_ratio == 0.0
    assert req.prompt_cached and len(s.prefix_cache.entries) == 1 and s.admitted == {}
    again = request("b", 60)  # starts with a's 40 tokens
    s.add(again)
    work = s.schedule().prefill
    assert work.cached == 40 and work.copies  # positions 32..39 sit in a shared, partly filled block: copied
    assert all(again.seqs[0].kv.blocks[i][:2] == s.prefix_cache.entries[0].blocks[i][:2] for i in range(L))


def test_a_hit_in_the_host_tier_is_claimed_at_admission_and_its_copy_left_to_the_step():
    s = scheduler(prefix=True)
    s.prefix_cache.host = host = HostCache(s.kv, 32 * SHAPE.bytes_per_block)
    req = request("a", 40)
    s.add(req)
    prefill_done(s, s.schedule().prefill)
    finish(s, req.seqs)
    assert s.prefix_cache.make_room(s.kv.allocator.usable) and len(host.entries) == 1  # evicted to host memory
    again = request("b", 60)
    s.add(again)
    work = s.schedule().prefill
    assert work.cached == 40 and work.restore is not None and work.restore.entry is host.entries[0]
    assert work.hit.entry in s.prefix_cache.entries  # on the device already (its blocks filled by the copy)
    host.copy_in(work.restore)
    assert host.entries == [] and host.hit_tokens == 40


def test_a_failed_or_aborted_request_is_not_cached():
    s = scheduler(prefix=True)
    req = request("a", 40)
    s.add(req)
    prefill_done(s, s.schedule().prefill)
    finish(s, req.seqs, "error")
    assert s.prefix_cache.entries == [] and s.kv.num_free == s.kv.allocator.usable


def test_a_prefill_aborted_midway_frees_its_tables_and_the_scheduler_moves_on():
    s = scheduler()
    req = request("a", 40)
    s.add(req)
    s.schedule()
    assert s.prefilling is not None
    finish(s, req.seqs, "abort")
    assert s.prefilling is None and s.kv.num_free == s.kv.allocator.usable and not s.has_work()


def test_the_head_waits_for_room_and_is_never_skipped():
    s = scheduler(blocks=12)
    big, small, later = request("big", 80), request("small", 40), request("later", 16)
    s.add(big)
    prefill_done(s, s.schedule().prefill)  # big holds 2 layers x 6 blocks: every block
    s.add(small)
    s.add(later)
    for _ in range(3):
        out = s.schedule()
        assert out.prefill is None and out.decode == big.seqs  # small does not fit; later may not jump it
    finish(s, big.seqs)
    assert s.schedule().prefill.request is small


def test_max_num_seqs_bounds_what_runs_together():
    s = scheduler(max_num_seqs=2)
    a, b = request("a", 20, n=2), request("b", 20)
    s.add(a)
    s.add(b)
    prefill_done(s, s.schedule().prefill)
    for _ in range(3):
        assert s.schedule().prefill is None  # b waits: two sequences already run


def test_a_short_prompt_is_prefilled_whole_between_the_pieces_of_a_long_one():
    s = scheduler(express=32)
    long, short = request("long", 200), request("short", 20)
    s.add(long)
    first = s.schedule().prefill  # the long prefill starts (runs in pieces: it stays `prefilling`)
    s.add(short)
    out = s.schedule()
    assert out.prefill.request is short and out.prefill.whole and s.prefilling is first
    prefill_done(s, out.prefill)
    assert s.schedule().decode == short.seqs  # then decode, then the long prefill's next piece
    assert s.schedule().prefill is first


def test_admission_arithmetic_counts_choices_hits_and_the_largest_max_tokens_that_fits():
    req = request("a", 40, max_tokens=24, n=2)  # capacity 64: 4 blocks a layer
    one = L * 4
    assert blocks_needed(req, None, SHAPE) == one + (one - L * 2)  # the second choice shares 2 full blocks a layer
    assert largest_max_tokens(lambda m: m <= 37, 100) == 37 and largest_max_tokens(lambda m: False, 9) == 1


@pytest.mark.parametrize("compact", [False, True])
def test_the_spec_of_a_sparse_decode_request_has_a_context_and_a_compact_one_a_scratch(compact):
    plan = PrefillPlan(100, 64, True, True, (1,), 12, compact)
    spec = Admission(SHAPE).sized_spec(plan, 8)
    assert spec.ctx_layers == (1,) and spec.ctx_entries == 12 + 108 - 64
    assert spec.full_layers == ((0,) if compact else (0, 1)) and spec.scratch_positions == (100 if compact else 0)
