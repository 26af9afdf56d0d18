"""Sampling, parameter validation and stop strings, on synthetic logits (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lighthouse.engine.detokenizer import IncrementalText
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.sampling import SampleRow, SamplingParams, _mt19937_state, make_generator, sample


def row(**kw) -> SampleRow:
    p = SamplingParams(**kw)
    gen = None if p.greedy else make_generator(p.seed if p.seed is not None else 0, torch.device("cpu"))
    return SampleRow(p, gen, None, None)


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 4.9]])
    assert sample(logits, [row(temperature=0), row(temperature=0)]).token_ids == [1, 0]


def test_top_k_one_and_tiny_top_p_are_greedy_even_when_sampling():
    logits = torch.randn(1, 50)
    best = int(logits.argmax())
    for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 0.999}):
        for seed in range(5):
            assert sample(logits, [row(temperature=1.0, seed=seed, **kw)]).token_ids == [best], kw


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    logits = torch.zeros(1, 1000)
    a = [sample(logits, [row(temperature=1.0, seed=7)]).token_ids[0] for _ in range(3)]
    assert a[0] == a[1] == a[2]
    r = row(temperature=1.0, seed=7)
    seq1 = [sample(logits, [r]).token_ids[0] for _ in range(10)]
    r = row(temperature=1.0, seed=7)
    seq2 = [sample(logits, [r]).token_ids[0] for _ in range(10)]
    r = row(temperature=1.0, seed=8)
    seq3 = [sample(logits, [r]).token_ids[0] for _ in range(10)]
    assert seq1 == seq2 and seq1 != seq3


def _stream(seed: int) -> list[int]:
    r = row(temperature=1.0, seed=seed)
    return [sample(torch.zeros(1, 1000), [r]).token_ids[0] for _ in range(10)]


@pytest.mark.parametrize("a,b", [(5, 5 + 2**32), (-1, 2**63 - 1), (0, -(2**63)), (2**32, 0), (-(2**31), 2**31)])
def test_every_int64_seed_has_its_own_stream_on_the_cpu(a, b):
    """The CPU's mt19937 keeps 32 bits of manual_seed's seed: these pairs drew the same tokens."""
    assert _stream(a) != _stream(b)
    assert _stream(b) == _stream(b)


def test_a_32_bit_seed_keeps_torchs_own_stream():
    ours = make_generator(12345, torch.device("cpu"))
    assert torch.rand(8, generator=torch.Generator().manual_seed(12345)).tolist() == torch.rand(8, generator=ours).tolist()


def test_a_wide_seed_seeds_mt19937_as_its_reference_init_by_array():
    seed = 5 + 2**32 + 2**40
    key = np.array([seed & 0xFFFF_FFFF, seed >> 32], dtype=np.uint32)
    assert _mt19937_state([int(k) for k in key]) == [int(x) for x in np.random.RandomState(key).get_state()[1]]
    assert make_generator(-1, torch.device("cpu")).initial_seed() == 2**64 - 1


def test_penalties_push_away_from_generated_tokens():
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    counts = torch.tensor([3.0, 0.0, 0.0])
    for kw in ({"presence_penalty": 1.0}, {"frequency_penalty": 0.1}, {"repetition_penalty": 1.2}):
        p = SamplingParams(temperature=0, **kw)
        assert sample(logits, [SampleRow(p, None, counts, None)]).token_ids == [1], kw
    # repetition penalty also counts prompt tokens
    p = SamplingParams(temperature=0, repetition_penalty=1.5)
    mask = torch.tensor([True, False, False])
    assert sample(logits, [SampleRow(p, None, torch.zeros(3), mask)]).token_ids == [1]


def test_logprobs_are_the_models_log_softmax_with_top_k():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    res = sample(logits, [row(temperature=0, logprobs=2)])
    lp = torch.log_softmax(logits[0], -1)
    assert res.token_ids == [2]
    assert math.isclose(res.logprobs[0], float(lp[2]), rel_tol=1e-6)
    assert [t for t, _ in res.top_logprobs[0]] == [2, 1]


@pytest.mark.parametrize("field,value", [
    ("temperature", float("nan")), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("top_p", float("inf")),
    ("min_p", -0.1), ("presence_penalty", 3.0), ("frequency_penalty", float("nan")), ("repetition_penalty", 0.0),
    ("max_tokens", 0), ("top_k", -2), ("n", 0), ("n", 17), ("logprobs", 21),
])
def test_out_of_range_values_are_refused_naming_the_param(field, value):
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**{field: value}).validate()
    expected = "logprobs" if field == "logprobs" else field
    assert info.value.param == expected and expected in info.value.message


class ByteTok:
    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def feed(text: str, stops: list[str]) -> tuple[list[str], IncrementalText]:
    it = IncrementalText(ByteTok(), stops)
    pieces = []
    for b in text.encode():
        pieces.append(it.add(b))
        if it.stopped_by:
            break
    pieces.append(it.flush())
    return pieces, it


def test_stop_string_is_cut_and_never_streamed_even_partially():
    pieces, it = feed("Hello wor END more", ["END"])
    assert "".join(pieces) == "Hello wor " and it.stopped_by == "END"
    # nothing that could start the stop string was handed out before it was ruled in or out
    streamed = ""
    for p in pieces:
        streamed += p
        assert not streamed.endswith("E") and not streamed.endswith("EN")


def test_held_back_prefix_is_released_when_it_does_not_become_a_stop():
    pieces, it = feed("abc ENx done", ["END"])
    assert "".join(pieces) == "abc ENx done" and it.stopped_by is None


def test_multibyte_characters_are_not_split():
    pieces, _ = feed("héllo wörld ✓", [])
    assert "".join(pieces) == "héllo wörld ✓"
    assert all("\ufffd" not in p for p in pieces)


def test_earliest_of_several_stop_strings_wins():
    pieces, it = feed("one two three", ["three", "two"])
    assert "".join(pieces) == "one " and it.stopped_by == "two"


@pytest.mark.parametrize("kw", [dict(repetition_penalty=2.6861283962920537e-235, temperature=1.0),
                                dict(temperature=1e-300), dict(temperature=1e-40, repetition_penalty=1e-30)])
def test_extreme_but_valid_values_sample_a_token_instead_of_failing(kw):
    """Found by schemathesis: a repetition penalty of 2.7e-235 divided a positive logit into inf, and the softmax of
    inf - inf was NaN (a 500). Tiny penalties and temperatures now pick among the largest logits."""
    logits = torch.tensor([[3.0, 1.0, -2.0, 0.5]])
    counts = torch.tensor([0.0, 1.0, 0.0, 0.0])
    p = SamplingParams(max_tokens=1, seed=3, **kw).validate()
    got = sample(logits, [SampleRow(p, make_generator(p.seed, "cpu"), counts, torch.zeros(4, dtype=torch.bool))])
    want = 1 if kw.get("repetition_penalty", 1.0) < 1e-3 else 0  # the penalized seen token 1 becomes the largest
    assert got.token_ids == [want]
