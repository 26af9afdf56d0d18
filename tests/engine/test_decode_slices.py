"""Decode slices (issue #29 item 6): a decode step that would outlast the budget runs a round-robin slice of the
batch, so a prompt arriving meanwhile is prefilled after about one budget of decoding; within the budget, or with
no budget, every running sequence decodes. Times per sequence are set, never measured."""

from __future__ import annotations

import pytest

from lighthouse.engine.decode_slices import DecodeSlicer
from tests.engine.test_scheduler_fairness import EXPRESS, step
from tests.engine.test_scheduler_lifecycle import prefill_done, request, scheduler


def test_whole_batch_unless_the_step_would_outlast_the_budget():
    rows = list(range(10))
    assert DecodeSlicer(0.5, row_s=0.1).pick(rows[:5]) == rows[:5]  # 0.5 s: within the budget
    assert DecodeSlicer(None, row_s=0.1).pick(rows) == rows
    assert DecodeSlicer(0.5).pick(rows) == rows  # nothing measured yet
    assert len(DecodeSlicer(0.5, row_s=0.1).pick(rows)) == 5


def test_slices_go_round_robin_and_every_row_decodes_in_turn():
    rows = list(range(10))
    sl = DecodeSlicer(0.3, row_s=0.1)
    picks = [sl.pick(rows) for _ in range(5)]
    assert all(len(p) == 3 for p in picks)
    assert picks[:4] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 1]]
    counts = [sum(p.count(r) for p in picks) for r in rows]
    assert max(counts) - min(counts) <= 1, counts


def test_a_slice_is_never_empty():
    assert DecodeSlicer(0.01, row_s=1.0).pick([7, 8]) == [7]


def test_the_time_per_row_is_the_running_mean_of_the_steps(monkeypatch):
    clock = iter([0.0, 2.0, 10.0, 11.0])
    monkeypatch.setattr("lighthouse.engine.decode_slices.time.perf_counter", lambda: next(clock))
    sl = DecodeSlicer(0.5)
    sl.pick(list(range(4)))
    sl.done(4)  # 2 s for 4 rows
    assert sl.row_s == pytest.approx(0.5)
    sl.pick(list(range(4)))
    sl.done(2)  # 1 s for 2 rows
    assert sl.row_s == pytest.approx(0.5)
    sl.done(3)  # no step planned: ignored
    assert sl.row_s == pytest.approx(0.5)


def test_a_short_prompt_arriving_while_many_sequences_decode_waits_for_one_slice_not_the_batch():
    s = scheduler(blocks=512, express=EXPRESS, max_num_seqs=64)
    for i in range(12):
        s.add(request(f"r{i}", 20, max_tokens=64))
    while s.waiting or s.prefilling:  # all twelve prefilled (short ones), decoding
        out = s.schedule()
        if out.prefill is not None:
            prefill_done(s, out.prefill)
        else:
            for seq in out.decode:
                seq.kv.commit_token()
    assert len(s.running) == 12
    s.slicer = DecodeSlicer(0.4, row_s=0.1)  # a step of 12 would take 1.2 s
    out = s.schedule()
    assert len(out.decode) == 4  # a slice within the budget ...
    s.add(request("short", 20))  # (arriving during it)
    for seq in out.decode:
        seq.kv.commit_token()
    trace = [step(s), step(s), step(s)]
    assert trace[0] in ("E:short", "P"), trace  # ... then the short prompt (whole, or its only piece)
    assert len(s.schedule().decode) == 4
