"""The prompt-lookup proposer: the longest earlier match of the sequence's suffix (n_max down to n_min tokens), its
most recent occurrence, and the k tokens after it; checked against a brute-force statement of the same rule."""

from __future__ import annotations

import numpy as np
import pytest

from lighthouse.engine.speculative.proposer import TokenHistory, propose


def brute(tokens: list[int], k: int, n_min: int, n_max: int) -> list[int]:
    L = len(tokens)
    for n in range(min(n_max, L - 1), n_min - 1, -1):
        suffix = tokens[L - n :]
        for e in range(L - 1, n - 1, -1):  # most recent first; e < L: not the suffix itself
            if tokens[e - n : e] == suffix:
                return tokens[e : e + k]
    return []


def test_proposes_what_followed_the_match():
    t = np.array([5, 1, 2, 3, 9, 9, 7, 1, 2, 3])
    assert propose(t, 3, n_min=2, n_max=4) == [9, 9, 7]
    assert propose(t, 10, n_min=2, n_max=4) == [9, 9, 7, 1, 2, 3], "fewer than k where the sequence ends"


def test_longest_match_wins_over_a_more_recent_shorter_one():
    # suffix [1, 2, 3]: matched by 3 tokens at the start (followed by 4), by only [2, 3] later (followed by 8)
    t = np.array([1, 2, 3, 4, 0, 2, 3, 8, 0, 1, 2, 3])
    assert propose(t, 1, n_min=2, n_max=3) == [4]
    assert propose(t, 1, n_min=2, n_max=2) == [8], "with n_max 2 the most recent 2-gram"


def test_most_recent_of_equally_long_matches():
    t = np.array([7, 7, 1, 7, 7, 2, 7, 7])
    assert propose(t, 1, n_min=2, n_max=2) == [2]


def test_no_match_below_n_min_and_no_draft_when_k_is_zero():
    t = np.array([1, 2, 3, 4, 3])
    assert propose(t, 4, n_min=2, n_max=4) == []
    assert propose(t, 4, n_min=1, n_max=4) == [4, 3]
    assert propose(np.array([1, 2, 1, 2]), 0) == []
    assert propose(np.array([3]), 4, n_min=1, n_max=2) == []


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_brute_force_rule_on_random_sequences(seed):
    rng = np.random.default_rng(seed)
    L = int(rng.integers(1, 120))
    t = rng.integers(0, 3 + seed % 5, size=L)
    n_min = int(rng.integers(1, 4))
    n_max = n_min + int(rng.integers(0, 5))
    k = int(rng.integers(1, 7))
    assert propose(t, k, n_min, n_max) == brute(t.tolist(), k, n_min, n_max)


def test_history_appends_outputs_as_they_come_and_grows():
    h = TokenHistory(np.array([1, 2, 3]), capacity=4)
    out = [4]
    assert h.sync(out).tolist() == [1, 2, 3, 4]
    out += [5, 6, 7]
    assert h.sync(out).tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert h.sync(out).tolist() == [1, 2, 3, 4, 5, 6, 7], "nothing new: unchanged"


@pytest.mark.parametrize("seed", range(30))
def test_the_indexed_draft_equals_the_rule_as_the_history_grows(seed):
    """TokenHistory.draft (the 2-gram index: the prompt's sorted once, the output's added per step) proposes what
    `propose` does over the whole history, at every step of a growing output, before and after the first output."""
    rng = np.random.default_rng(100 + seed)
    vocab = 2 + seed % 6
    prompt = rng.integers(0, vocab, size=int(rng.integers(1, 80)))
    outputs = rng.integers(0, vocab, size=40).tolist()
    n_min = int(rng.integers(2, 4))
    n_max = n_min + int(rng.integers(0, 6))
    k = int(rng.integers(1, 6))
    h = TokenHistory(prompt, capacity=len(prompt) + 8)
    for i in range(len(outputs) + 1):
        whole = h.sync(outputs[:i])
        assert h.draft(k, n_min, n_max) == propose(whole, k, n_min, n_max), f"after {i} outputs"
        assert h.draft(k, n_min, n_max) == brute(whole.tolist(), k, n_min, n_max)


def test_the_indexed_draft_takes_large_token_ids_and_short_prompts():
    h = TokenHistory(np.array([49151]), capacity=2)
    assert h.draft(3) == []
    out = [7, 49151, 7, 9]
    h.sync(out)  # 49151 7 49151 7 9: suffix [7, 9] unseen
    assert h.draft(3) == []
    out += [49151, 7]  # ... 9 49151 7: [49151, 7] last seen ending at e = 4, followed by [9, 49151, 7]
    h.sync(out)
    assert h.draft(3) == [9, 49151, 7] == propose(h.sync(out), 3)


@pytest.mark.parametrize("seed", range(30))
def test_trying_the_most_recent_candidates_first_changes_nothing(seed, monkeypatch):
    """With only the 2 most recent candidates tried first (they decide when one matches as long as any can), the
    drafts are the brute-force rule's, on sequences with many candidates (a small vocabulary)."""
    from lighthouse.engine.speculative import proposer

    monkeypatch.setattr(proposer, "RECENT", 2)
    rng = np.random.default_rng(200 + seed)
    t = rng.integers(0, 2 + seed % 3, size=int(rng.integers(20, 150)))
    n_min = int(rng.integers(1, 3))
    n_max = n_min + int(rng.integers(0, 6))
    assert propose(t, 3, n_min, n_max) == brute(t.tolist(), 3, n_min, n_max)
    h = TokenHistory(t[:10], capacity=len(t))
    h.sync(t[10:].tolist())
    assert h.draft(3, max(2, n_min), n_max) == brute(t.tolist(), 3, max(2, n_min), n_max)
