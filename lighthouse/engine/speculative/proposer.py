"""Prompt-lookup drafts (pure, numpy on the host): the tokens that followed the latest earlier occurrence of the
sequence's longest matching suffix.

For tokens t[0..L) (the prompt, then the output so far) and sizes n_max down to n_min: find the longest suffix
t[L-n..L) that also occurs earlier, ending at some e < L; of those occurrences take the most recent (largest e),
and propose t[e .. e+k) (fewer when the sequence ends first). Long-document answers copy spans of the document,
so such drafts are often right; when nothing matches there is no draft and the step decodes one token.

`propose` states the rule over the whole sequence: a vectorized pass over the L tokens (where the last token
occurs) and a few passes over those candidates. `TokenHistory.draft` gives the same drafts from an index of the
sequence's 2-grams (the prompt's sorted once, on first use; the output's added as it grows): only the occurrences
of the last two tokens are candidates, since every match of n_min >= 2 tokens ends with them. On a 512K byte-level
document, one core of the 2-core CI machine: the scan 0.54-4.9 ms a step, the index 0.13 ms
(bench/results/2026-12-07_cpu_prompt_lookup_index/). Every row of a batch drafts each step, so the per-row cost is
kept to a few numpy calls: at batch 32 on pass-key documents, 15 / 24 / 55 us per row and step at 8K / 128K / 512K
(bench/results/2026-12-07_cpu_prompt_lookup_batch/; 71 / 88 / 176 before).
"""

from __future__ import annotations

import array
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

N_MIN, N_MAX = 2, 8  # suffix sizes tried, longest first
RECENT = 64  # candidates tried first (the most recent)


def propose(tokens: np.ndarray, k: int, n_min: int = N_MIN, n_max: int = N_MAX) -> list[int]:
    """tokens (L,) integer array; up to k draft tokens (an empty list when no suffix of n_min..n_max tokens
    occurred before)."""
    L = len(tokens)
    if k <= 0 or n_min < 1 or n_max < n_min or L <= n_min:
        return []
    # ends e in [n_min, L-1] of earlier occurrences of the last token: t[e-1] == t[L-1]
    ends = np.flatnonzero(tokens[n_min - 1 : L - 1] == tokens[L - 1]) + n_min
    return _longest(tokens, ends, k, n_min, n_max)


def _longest(tokens: np.ndarray, ends: np.ndarray, k: int, n_min: int, n_max: int,
             late: list[int] | None = None, items=None) -> list[int]:
    """Of candidate ends (`ends` ascending, then `late` ascending and after them; each with t[e-1] == t[L-1],
    e < L), the most recent of the longest matches (n_min..n_max tokens): the k tokens after it, or [] when none
    reaches n_min. The most recent RECENT candidates are tried first, one by one from the most recent (plain
    Python: a decode step drafts for every row of the batch, and numpy's per-call cost over a few candidates is
    most of the work): the first that matches as long as any can wins, and no older one can beat it; only when none
    of them does are all candidates measured. `items`: the same tokens as a sequence of Python ints, read one by one
    there faster than numpy's scalars (TokenHistory keeps one)."""
    L = len(tokens)
    cap = min(n_max, L - 1)  # the longest match `_lengths` can find
    late = late or []
    total = len(ends) + len(late)
    if not total:
        return []
    recent = late[-RECENT:] if len(late) >= RECENT else ends[max(0, len(ends) - RECENT + len(late)) :].tolist() + late
    suffix = tokens[L - cap : L].tolist()[::-1]  # suffix[x] = t[L-1-x]
    t = items if items is not None else tokens
    best_n, best_e = 0, -1
    for e in recent[::-1]:
        n = 1
        while n < cap and e - 1 - n >= 0 and t[e - 1 - n] == suffix[n]:
            n += 1
        if n > best_n:
            best_n, best_e = n, e
            if n == cap:
                break
    if best_n < cap and total > RECENT:
        # an older candidate may match longer: only one whose (best_n + 1)-th token back agrees can
        every = np.concatenate([ends, np.asarray(late, dtype=np.int64)]) if late else ends
        pos = every - 1 - best_n
        agree = pos >= 0
        agree[agree] = tokens[pos[agree]] == tokens[L - 1 - best_n]
        longer = every[agree]
        if len(longer):
            length = _lengths(tokens, longer, n_max)
            if length.max() > best_n:
                return _after(tokens, longer, length, k, n_min)
    return tokens[best_e : best_e + k].tolist() if best_n >= n_min else []


def _after(tokens: np.ndarray, ends: np.ndarray, length: np.ndarray, k: int, n_min: int) -> list[int]:
    if not len(ends) or length.max() < n_min:
        return []
    best = np.flatnonzero(length == length.max())[-1]  # the most recent of the longest
    e = int(ends[best])
    return tokens[e : e + k].tolist()


def _lengths(tokens: np.ndarray, ends: np.ndarray, n_max: int) -> np.ndarray:
    """How many tokens (up to n_max) each candidate's match has: 1 + the backward extensions that agree."""
    L = len(tokens)
    length = np.ones(len(ends), dtype=np.int64)
    alive = np.ones(len(ends), dtype=bool)
    for x in range(1, min(n_max, L - 1)):  # extend each match backwards one token at a time
        pos = ends - 1 - x
        ok = alive & (pos >= 0)
        ok[ok] = tokens[pos[ok]] == tokens[L - 1 - x]
        length += ok
        alive = ok
        if not alive.any():
            break
    return length


# builds prompt indexes off the engine thread (numpy's sort and ufuncs release the GIL): see build_in_background
_BUILDER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="prompt-lookup-index")


def _prompt_index(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 2-grams of p ending at e = 2..len(p), sorted (stable), and their ends e."""
    codes = _pair(p[:-1], p[1:])  # the 2-gram ending at e = i + 2
    order = np.argsort(codes, kind="stable")
    return codes[order], order.astype(np.int64) + 2


def _pair(a, b):
    """The 2-gram (a, b) of non-negative token ids as one int64 (arrays or ints)."""
    return (np.asarray(a, dtype=np.int64) << 32) | np.asarray(b, dtype=np.int64)


class TokenHistory:
    """One sequence's prompt + output tokens as a growing int32 array (amortized appends), and the index of its
    2-grams that `draft` searches."""

    def __init__(self, prompt: np.ndarray, capacity: int):
        self.buf = np.empty(max(capacity, len(prompt)), dtype=np.int32)
        self.buf[: len(prompt)] = prompt
        self.items = array.array("i", self.buf[: len(prompt)].tobytes())  # the same tokens, as Python ints on read
        self.n_prompt = self.len = len(prompt)
        self._sorted: np.ndarray | None = None  # the prompt's 2-grams ending at e = 2..n_prompt, sorted (stable)
        self._ends: np.ndarray | None = None  # ... and their ends e, ascending within each 2-gram
        self._late: dict[int, list[int]] = {}  # 2-gram -> ends e > n_prompt (ascending), indexed up to _indexed
        self._indexed = 0
        self._building: Future | None = None  # the prompt's index being built (build_in_background)

    def build_in_background(self, shared: Future | None = None) -> Future | None:
        """Start sorting the prompt's 2-grams on a worker thread, so that the first draft (after the prefill, which
        this overlaps) does not wait for it: tens of milliseconds at 512K, tens of decode steps of a small model.
        `shared`: the index already being built for the same prompt (another sequence of the request: the index is
        only read, so one sort serves all). Returns the index being built (None once it is built)."""
        if self._sorted is None and self._building is None:
            self._building = shared or _BUILDER.submit(_prompt_index, self.buf[: self.n_prompt])
        return self._building

    def sync(self, output_ids: list[int]) -> np.ndarray:
        """Append the outputs not seen yet; the whole history (a view)."""
        new = output_ids[self.len - self.n_prompt :]
        if new:
            end = self.len + len(new)
            if end > len(self.buf):
                grown = np.empty(max(end, 2 * len(self.buf)), dtype=np.int32)
                grown[: self.len] = self.buf[: self.len]
                self.buf = grown
            self.buf[self.len : end] = new
            self.items.extend(new)
            self.len = end
        return self.buf[: self.len]

    def draft(self, k: int, n_min: int = N_MIN, n_max: int = N_MAX) -> list[int]:
        """`propose(history, k, n_min, n_max)`, from the 2-gram index."""
        t, L = self.buf[: self.len], self.len
        if k <= 0 or n_min < 2 or n_max < n_min or L <= n_min:
            return propose(t, k, n_min, n_max)
        self._index_through(L - 1)
        key = (int(t[L - 2]) << 32) | int(t[L - 1])  # _pair's, on plain ints (this runs per row and step)
        lo, hi = self._sorted.searchsorted(key, "left"), self._sorted.searchsorted(key, "right")
        ends = self._ends[lo:hi]
        if len(ends) and ends[-1] >= L:  # the prompt's last 2-gram is the suffix itself while nothing is generated
            ends = ends[ends < L]
        return _longest(t, ends, k, n_min, n_max, self._late.get(key), self.items)

    def _index_through(self, last: int) -> None:
        """Index the 2-grams ending at every e <= last."""
        if self._sorted is None:
            building, self._building = self._building, None
            self._sorted, self._ends = (building.result() if building is not None
                                        else _prompt_index(self.buf[: self.n_prompt]))
            self._indexed = self.n_prompt
        t = self.buf
        for e in range(self._indexed + 1, last + 1):
            self._late.setdefault((int(t[e - 2]) << 32) | int(t[e - 1]), []).append(e)
        self._indexed = max(self._indexed, last)
