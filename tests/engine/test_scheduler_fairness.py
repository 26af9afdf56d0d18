"""The scheduler's policy under load, without a model (issue #29 item 6, issue #30 item 1): a short prompt waits
for what is ahead of it in its class, not for every long prefill, while long prompts still progress; and a prompt
whose head is being prefilled waits for that prefill instead of prefilling the same tokens again. Steps are counted
and ordered, never timed."""

from __future__ import annotations

import pytest

from lighthouse.engine.scheduler import Scheduler
from tests.engine.test_scheduler_lifecycle import finish, prefill_done, request, scheduler

EXPRESS = 64  # prompts of at most 64 tokens are short


def step(s: Scheduler) -> str:
    """One step as the engine would run it: "P" a piece of the prefill in progress (it goes on), "E:<id>" an
    express prefill (done at once), "D" a decode step (committed)."""
    out = s.schedule()
    if out.prefill is None:
        for seq in out.decode:
            seq.kv.commit_token()
        return "D"
    if out.prefill.whole:
        prefill_done(s, out.prefill)
        return "E:" + out.prefill.request.request_id
    return "P"


def steps_until_prefilled(s: Scheduler, rid: str, most: int = 1000) -> list[str]:
    trace = []
    while f"E:{rid}" not in trace:
        trace.append(step(s))
        assert len(trace) < most, trace
    return trace


@pytest.mark.parametrize("longs_ahead", [1, 4, 16])
def test_a_short_prompt_waits_for_no_long_prompt_ahead_of_it(longs_ahead):
    s = scheduler(blocks=512, express=EXPRESS, max_num_seqs=64)
    for i in range(longs_ahead):
        s.add(request(f"long{i}", 200))
    s.add(request("short", 20))
    trace = steps_until_prefilled(s, "short")
    assert trace == ["P", "E:short"], trace  # the first long prefill's first piece, then the short one: however many


def test_short_prompts_keep_their_arrival_order_and_a_later_one_never_jumps_an_earlier_one():
    s = scheduler(blocks=512, express=EXPRESS, max_num_seqs=64)
    s.add(request("long", 200))
    for i in range(5):
        s.add(request(f"s{i}", 30, first_token=100 * i))
    trace = [t for t in (step(s) for _ in range(16)) if t.startswith("E:")]
    assert trace == [f"E:s{i}" for i in range(5)], trace


def test_long_prefills_progress_a_piece_per_round_of_express_prefills():
    """A stream of short prompts never stops the long prefill: after at most EXPRESS prompt tokens of express
    prefills (back to back), a decode step, then its next piece."""
    s = scheduler(blocks=1024, express=EXPRESS, max_num_seqs=64)
    s.add(request("long", 200))
    assert step(s) == "P"
    trace = []
    for i in range(12):
        s.add(request(f"s{i}", 20, first_token=50 * i))  # one more arrives every step
        trace.append(step(s))
    # 3 x 20 tokens fit a round, a 4th not: a decode step, the long prefill's piece, a decode step, the next round
    assert trace[:8] == ["E:s0", "E:s1", "E:s2", "D", "P", "D", "E:s3", "E:s4"], trace
    rounds = "".join("E" if t.startswith("E") else t for t in trace)
    assert "EEEE" not in rounds and rounds.count("P") == 2, trace


def test_with_express_prefills_off_the_queue_is_one_class_in_arrival_order():
    s = scheduler(blocks=512, express=0, max_num_seqs=64)
    long, short = request("long", 200), request("short", 20)
    s.add(long)
    s.add(short)
    first = s.schedule().prefill
    assert first.request is long and not first.whole
    for _ in range(3):
        assert s.schedule().prefill is first  # no express prefill: the short one waits for the long one
    prefill_done(s, first)
    assert s.schedule().decode == long.seqs and s.schedule().prefill.request is short


def test_a_short_prompt_that_does_not_fit_yet_is_not_jumped_by_a_later_short_one():
    s = scheduler(blocks=20, express=EXPRESS, max_num_seqs=64)
    long = request("long", 120)  # 2 layers x 8 blocks
    s.add(long)
    assert step(s) == "P"
    s.add(request("big_short", 60))  # 2 x 5 blocks: not while the long one holds 16 of 20
    s.add(request("small_short", 16))  # 2 x 2 blocks would fit
    for _ in range(4):
        assert step(s) == "P"


# ---- in-flight sharing ------------------------------------------------------------------------------------------
DOC = 160  # a document of 160 tokens (10 blocks of 16), asked two questions of 8 tokens


def doc_question(rid: str, question: int) -> object:
    req = request(rid, DOC + 8)
    req.prompt_ids[DOC:] = [1000 * question + i for i in range(8)]
    req.prompt_tensor = None
    return req


@pytest.mark.parametrize("express", [0, 256])
def test_a_second_question_on_a_document_in_prefill_waits_for_it_and_reuses_its_blocks(express):
    """Whether the second question is short (it would be an express prefill) or not: it waits for the first
    prefill and then prefills its 8 question tokens only, the entry usable before the first request finishes."""
    s = scheduler(blocks=512, prefix=True, express=express, max_num_seqs=64)
    q1, q2 = doc_question("q1", 1), doc_question("q2", 2)
    s.add(q1)
    first = s.schedule().prefill
    assert first.request is q1 and not first.whole and first.cached == 0
    s.add(q2)
    for _ in range(3):
        out = s.schedule()
        assert out.prefill is first  # q2 waits: no express prefill of the same document
    prefill_done(s, first)
    assert s.prefix_cache.entries and s.prefix_cache.in_flight == []  # kept now; q1 has not finished
    assert step(s) == "D"
    work = s.schedule().prefill
    assert work.request is q2 and work.cached == DOC  # its own 8 tokens alone are prefilled
    assert q1.seqs[0].status.value == "running"


def test_requests_behind_a_waiting_one_are_not_held_up_by_it():
    s = scheduler(blocks=512, prefix=True, express=256, max_num_seqs=64)
    q1, q2, other = doc_question("q1", 1), doc_question("q2", 2), request("other", 30, first_token=5000)
    s.add(q1)
    assert step(s) == "P"
    s.add(q2)
    s.add(other)
    assert step(s) == "E:other"  # q2 waits for q1's prefill, "other" need not


def test_when_the_prefill_waited_for_is_aborted_the_waiting_request_prefills_for_itself():
    s = scheduler(blocks=512, prefix=True, express=256, max_num_seqs=64)
    q1, q2 = doc_question("q1", 1), doc_question("q2", 2)
    s.add(q1)
    first = s.schedule().prefill
    s.add(q2)
    assert s.schedule().prefill is first  # q2 waits (it would be an express prefill otherwise)
    finish(s, q1.seqs, "abort")  # mid-prefill: nothing is kept
    assert s.prefix_cache.in_flight == [] and s.prefix_cache.entries == []
    work = s.schedule().prefill
    assert work.request is q2 and work.cached == 0
    prefill_done(s, work)
    assert len(s.prefix_cache.entries) == 1


def test_a_prompt_that_gains_nothing_from_the_prefill_in_progress_does_not_wait():
    s = scheduler(blocks=512, prefix=True, express=256, max_num_seqs=64)
    q1 = doc_question("q1", 1)
    s.add(q1)
    assert step(s) == "P"
    unrelated = request("unrelated", DOC + 8, first_token=7000)
    s.add(unrelated)
    assert step(s) == "E:unrelated"
