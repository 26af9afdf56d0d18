"""Acceptance of drafts: greedy keeps exactly the drafts the argmax agrees with and emits the first mismatch's
argmax; sampling with the rejection rule leaves the distribution of the emitted tokens the model's own (processed
as the sampler does: temperature, top-k, top-p, penalties counting earlier drafts). The statistical tests use a
fixed seed and enough draws that a chi-square test at p = 0.001 is both reliable and sensitive: a rule that skips
removing the rejected draft (or accepts too often) fails it by far."""

from __future__ import annotations

import math

import pytest
import torch

from lighthouse.engine.sampling import SampleRow, SamplingParams, _filter, _penalize
from lighthouse.engine.speculative.acceptance import emitted_logprobs, verify


def chi2_critical(df: int, z: float = 3.09) -> float:
    """The chi-square value exceeded with probability ~0.001 (Wilson-Hilferty)."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def row(params: SamplingParams, gen=None, counts=None) -> SampleRow:
    return SampleRow(params, gen, counts, None)


def test_greedy_accepts_the_drafts_the_argmax_agrees_with_then_its_own_token():
    V = 6
    target = [[3, 1, 4, 2], [5, 5, 0, 1]]  # argmax at each position of two rows
    logits = torch.full((2, 4, V), -1.0)
    for b, ts in enumerate(target):
        for i, t in enumerate(ts):
            logits[b, i, t] = 2.0
    greedy = row(SamplingParams(temperature=0.0))
    out = verify(logits, [greedy, greedy], [[3, 1, 0], [5, 5, 0]])
    assert [v.tokens for v in out] == [[3, 1, 4], [5, 5, 0, 1]]
    assert [v.accepted for v in out] == [2, 3]
    # a row with one draft among rows with three: its logits are the last two positions
    out = verify(logits, [greedy, greedy], [[3, 1, 4], [9]])
    assert out[1].tokens == [0] and out[1].accepted == 0, "draft 9 != argmax 0 at the row's first position"


def test_greedy_with_a_repetition_penalty_counts_the_drafts_before_each_position():
    V = 4
    logits = torch.tensor([[[0.0, 3.0, 2.9, 0.0], [0.0, 3.0, 2.9, 0.0]]])  # token 1 barely ahead of 2 at both
    p = SamplingParams(temperature=0.0, repetition_penalty=1.2)
    out = verify(logits, [row(p, counts=torch.zeros(V))], [[1]])
    # position 1 follows draft 1: penalized, so 2 wins there
    assert out[0].tokens == [1, 2]


def test_logprobs_are_the_raw_distributions_at_each_emitted_position():
    logits = torch.randn(4, 7)
    chosen, top = emitted_logprobs(logits, 2, [5, 6], 3)
    logp = torch.log_softmax(logits, -1)
    assert chosen == pytest.approx([logp[1, 5].item(), logp[2, 6].item()])
    assert [t for t, _ in top[0]] == torch.topk(logp[1], 3).indices.tolist()


def target_law(probs: list[torch.Tensor], drafts: list[int]) -> dict[tuple[int, ...], float]:
    """Exact law of the emitted tokens when decoding one token at a time: the tokens up to the first that differs
    from the draft (or all n+1)."""
    law, prefix = {}, 1.0
    for i, p in enumerate(probs):
        for t in range(p.shape[0]):
            if i < len(drafts) and t == drafts[i]:
                continue
            law[tuple(drafts[:i]) + (t,)] = prefix * float(p[t])
        if i < len(drafts):
            prefix *= float(p[drafts[i]])
    return law


def chi2(counts: dict, law: dict, N: int) -> tuple[float, int]:
    stat, df = 0.0, -1
    for outcome, p in law.items():
        if p * N < 1e-9:
            assert counts.get(outcome, 0) == 0, f"{outcome} has probability 0 but was emitted"
            continue
        stat += (counts.get(outcome, 0) - p * N) ** 2 / (p * N)
        df += 1
    assert set(counts) <= set(law)
    return stat, df


CASES = [  # (params, drafts): drafts likely, unlikely, filtered out (probability 0), penalized
    (SamplingParams(temperature=1.0), [2, 0]),
    (SamplingParams(temperature=0.7, top_k=4, top_p=0.9), [1, 3]),
    (SamplingParams(temperature=1.3, top_k=3), [5, 2]),
    (SamplingParams(temperature=1.0, presence_penalty=1.5, frequency_penalty=0.5), [2, 2]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_rejection_sampling_emits_the_models_own_distribution(case):
    params, drafts = CASES[case]
    V, N = 6, 12000
    torch.manual_seed(100 + case)
    logits = torch.randn(len(drafts) + 1, V) * 1.5
    logits[0, 2] += 1.0  # some drafts likely
    counts0 = torch.zeros(V) if params.presence_penalty or params.frequency_penalty else None
    # the target: each position processed as the sampler would, counting the drafts before it
    probs = []
    for i in range(len(drafts) + 1):
        c = None if counts0 is None else counts0 + torch.bincount(torch.tensor(drafts[:i], dtype=torch.long),
                                                                  minlength=V).float()
        probs.append(_filter(_penalize(logits[i], row(params, counts=c)), params).softmax(-1))
    law = target_law(probs, drafts)
    gen = torch.Generator().manual_seed(7)
    rows = [row(params, gen, counts0) for _ in range(N)]
    out = verify(logits[None].expand(N, -1, -1), rows, [drafts] * N)
    counts: dict[tuple[int, ...], int] = {}
    for v in out:
        counts[tuple(v.tokens)] = counts.get(tuple(v.tokens), 0) + 1
        assert v.accepted == len(v.tokens) - 1
    stat, df = chi2(counts, law, N)
    assert stat < chi2_critical(df), f"chi2 {stat:.1f} > {chi2_critical(df):.1f} (df {df})"


def test_the_test_is_sensitive_to_a_wrong_rule():
    """Accepting every draft with probability max(p) (a plausible bug) is far outside the bound."""
    V, N, drafts = 6, 12000, [2, 0]
    torch.manual_seed(100)
    logits = torch.randn(3, V) * 1.5
    logits[0, 2] += 1.0
    probs = [logits[i].softmax(-1) for i in range(3)]
    law = target_law(probs, drafts)
    g = torch.Generator().manual_seed(7)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(N):
        toks = []
        for i in range(3):
            if i < 2 and torch.rand((), generator=g) < probs[i].max():
                toks.append(drafts[i])
                continue
            toks.append(int(torch.multinomial(probs[i], 1, generator=g)))
            break
        counts[tuple(toks)] = counts.get(tuple(toks), 0) + 1
    counts = {k: v for k, v in counts.items() if k in law}
    stat, df = chi2(counts, law, N)
    assert stat > 10 * chi2_critical(df)
