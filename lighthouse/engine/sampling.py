"""Sampling parameters (validated) and the batched sampler: logits (B, V) -> next token per row.

Order of operations per row, as vLLM applies them: repetition penalty (prompt + output tokens), presence and
frequency penalties (output tokens), temperature, top-k, top-p, min-p, then sample with the row's own
generator (so a seeded request gives the same tokens whatever it is batched with). Temperature 0 (anything
below 1e-5, as vLLM) is greedy.
Logprobs are the model's own distribution (log-softmax of the raw logits), as vLLM reports by default.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lighthouse.engine.errors import InvalidRequest

MAX_TOP_LOGPROBS = 20
GREEDY_BELOW = 1e-5  # temperatures under this are greedy


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob plus the top k
    n: int = 1

    def validate(self, vocab_size: int | None = None) -> "SamplingParams":
        """Raise InvalidRequest naming the first bad field; returns self."""
        floats = {
            "temperature": (self.temperature, 0.0, 100.0),
            "top_p": (self.top_p, 0.0, 1.0),
            "min_p": (self.min_p, 0.0, 1.0),
            "presence_penalty": (self.presence_penalty, -2.0, 2.0),
            "frequency_penalty": (self.frequency_penalty, -2.0, 2.0),
            "repetition_penalty": (self.repetition_penalty, 0.0, 100.0),
        }
        for name, (value, lo, hi) in floats.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
                raise InvalidRequest(f"{name} must be a finite number in [{lo}, {hi}], got {value!r}", param=name)
        if self.top_p == 0.0:
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        if self.repetition_penalty == 0.0:
            raise InvalidRequest("repetition_penalty must be > 0", param="repetition_penalty")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}", param="max_tokens")
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise InvalidRequest(f"top_k must be -1 (off) or >= 0, got {self.top_k!r}", param="top_k")
        if not isinstance(self.n, int) or not 1 <= self.n <= 16:
            raise InvalidRequest(f"n must be an integer in [1, 16], got {self.n!r}", param="n")
        if self.logprobs is not None and not (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            raise InvalidRequest(f"logprobs/top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]", param="logprobs")
        if self.seed is not None and not isinstance(self.seed, int):
            raise InvalidRequest("seed must be an integer", param="seed")
        if any(not isinstance(s, str) or not s for s in self.stop) or len(self.stop) > 16:
            raise InvalidRequest("stop must be up to 16 non-empty strings", param="stop")
        for t in self.stop_token_ids:
            if not isinstance(t, int) or t < 0 or (vocab_size is not None and t >= vocab_size):
                raise InvalidRequest(f"stop_token_ids contains an invalid id {t!r}", param="stop_token_ids")
        return self

    @property
    def greedy(self) -> bool:
        # below 1e-5 (vLLM's threshold) logits / temperature overflows to inf and the softmax to NaN: argmax
        return self.temperature < GREEDY_BELOW


def choice_seed(seed: int, i: int) -> int:
    """The seed of choice i of a request seeded `seed`: the seed itself for the first, a 64-bit hash of (seed, i) for
    the others, so that choice i of seed s is not choice 0 of seed s + i (seed + i would alias them)."""
    if i == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator of its own for one sequence: `seed` (an int64, or None for a random one) picks its stream.
    Every int64 seed gets a stream of its own: CUDA's Philox takes all 64 bits, but the CPU's mt19937 keeps only
    the low 32 of `manual_seed`'s (seed 5 + 2^32 drew as seed 5, -1 as 2^63 - 1), so there a seed outside
    0..2^32 - 1 sets the whole state from both halves (`_mt19937_state`)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
        return g
    seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF  # an int64 as the uint64 of the same bits
    g.manual_seed(seed)
    if g.device.type == "cpu" and seed >= 1 << 32:
        state = g.get_state()  # the legacy layout: u64 seed, i32 left, i32 seeded, u64 next, u64 state[624], ...
        if state.numel() != _CPU_STATE_BYTES:  # another torch's layout: refuse rather than write the wrong bytes
            raise RuntimeError(f"this torch's CPU generator state has {state.numel()} bytes, not the "
                               f"{_CPU_STATE_BYTES} of the layout make_generator writes; seeds >= 2**32 need it")
        words = state[24:24 + 8 * _MT_N].view(torch.int64)  # (624,) one 32-bit word each
        words.copy_(torch.tensor(_mt19937_state([seed & 0xFFFF_FFFF, seed >> 32]), dtype=torch.int64))
        g.set_state(state)  # left 1 and next 0, as manual_seed leaves them: the first draw twists this state
    return g


_MT_N = 624
_CPU_STATE_BYTES = 5056  # torch's CPUGeneratorImplState (torch 2.x)


def _mt19937_state(key: list[int]) -> list[int]:
    """mt19937's state seeded from a key of 32-bit words: `init_by_array` of the reference implementation (as
    numpy's RandomState seeded with an array), whose every step is invertible, so distinct keys give distinct
    states."""
    mt = [19650218]
    for i in range(1, _MT_N):
        mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & 0xFFFF_FFFF)
    i, j = 1, 0
    for _ in range(max(_MT_N, len(key))):
        mt[i] = ((mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1664525)) + key[j] + j) & 0xFFFF_FFFF
        i, j = i + 1, (j + 1) % len(key)
        if i >= _MT_N:
            mt[0], i = mt[_MT_N - 1], 1
    for _ in range(_MT_N - 1):
        mt[i] = ((mt[i] ^ ((mt[i - 1] ^ (mt[i - 1] >> 30)) * 1566083941)) - i) & 0xFFFF_FFFF
        i += 1
        if i >= _MT_N:
            mt[0], i = mt[_MT_N - 1], 1
    mt[0] = 0x8000_0000
    return mt


@dataclass
class SampleRow:
    """What the sampler needs about one sequence."""

    params: SamplingParams
    generator: torch.Generator | None
    output_counts: Tensor | None  # (V,) float counts of generated tokens, only if a penalty needs them
    prompt_mask: Tensor | None  # (V,) bool, tokens seen in the prompt, only for repetition_penalty


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[float] | None  # chosen token's logprob per row (None when no row asked)
    top_logprobs: list[list[tuple[int, float]]] | None


def _penalize(logits: Tensor, row: SampleRow) -> Tensor:
    p = row.params
    if p.repetition_penalty != 1.0:
        seen = row.output_counts > 0 if row.output_counts is not None else torch.zeros_like(logits, dtype=torch.bool)
        if row.prompt_mask is not None:
            seen = seen | row.prompt_mask
        penalized = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
        big = torch.finfo(logits.dtype).max  # a tiny penalty overflows: the largest finite values, never inf
        logits = torch.where(seen, torch.nan_to_num(penalized, posinf=big, neginf=-big), logits)
    if row.output_counts is not None and (p.presence_penalty or p.frequency_penalty):
        logits = logits - p.frequency_penalty * row.output_counts - p.presence_penalty * (row.output_counts > 0).to(logits.dtype)
    return logits


def _filter(logits: Tensor, p: SamplingParams) -> Tensor:
    """Temperature-scaled logits with everything outside top-k / top-p / min-p set to -inf. logits: (..., V), each
    row filtered on its own (the verify step of speculative decoding filters every position of a row at once)."""
    logits = (logits - logits.amax(-1, keepdim=True)) / p.temperature  # the max at 0: a tiny temperature gives
    # -inf to the others, never inf - inf (the same distribution: softmax ignores a shift)
    if p.top_k > 0 and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        cum = probs.cumsum(-1)
        drop = (cum - probs) > p.top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    if p.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < p.min_p * probs.amax(-1, keepdim=True), float("-inf"))
    return logits


def _plain(row: SampleRow) -> bool:
    p = row.params
    return p.greedy and p.repetition_penalty == 1.0 and not (row.output_counts is not None
                                                             and (p.presence_penalty or p.frequency_penalty))


def sample(logits: Tensor, rows: list[SampleRow]) -> SampleResult:
    """logits: (B, V) for the B rows' next positions. Returns one token id per row (`sample_async`, then read)."""
    return sample_async(logits, rows).read()


@dataclass
class PendingSample:
    """A step's sampled tokens (and logprobs) on the device, their copy to the host started: `read()` waits for
    that copy alone, so the device may already run the next step (engine/overlap.py)."""

    tokens: Tensor  # (B,) int64 on the logits' device: the next step's input ids
    _host: list[Tensor]  # tokens, then (if a row asked) chosen logprobs, top values, top ids: host copies
    _topk: list[int] | None  # per row: how many top logprobs (None: no row asked for logprobs)
    _ready: "torch.cuda.Event | None"

    def read(self) -> SampleResult:
        if self._ready is not None:
            self._ready.synchronize()
        token_list = self._host[0].tolist()
        if self._topk is None:
            return SampleResult(token_list, None, None)
        chosen, top_v, top_i = (t.tolist() for t in self._host[1:])
        return SampleResult(token_list, chosen, [list(zip(top_i[b][:k], top_v[b][:k])) for b, k in enumerate(self._topk)])


def sample_async(logits: Tensor, rows: list[SampleRow]) -> PendingSample:
    """The sampler's device work for logits (B, V), without waiting for it: plain greedy rows take one batched
    argmax; the others are sampled row by row (each with its own generator, so a seeded row does not depend on
    its batch). Nothing here reads the device (CUDA: the results are copied to pinned host memory behind the
    sampling, and an event marks when they are there)."""
    logits = logits.float()
    tokens = torch.argmax(logits, dim=-1)  # (B,): right for every plain greedy row
    for b, row in enumerate(rows):
        if _plain(row):
            continue
        x = _penalize(logits[b], row)
        if row.params.greedy:
            tokens[b] = torch.argmax(x)
        else:
            probs = _filter(x, row.params).softmax(-1)
            tokens[b] = torch.multinomial(probs, 1, generator=row.generator)[0]
    out, topk = [tokens], None
    if any(r.params.logprobs is not None for r in rows):
        logp = torch.log_softmax(logits, dim=-1)
        topk = [r.params.logprobs or 0 for r in rows]
        chosen = logp.gather(1, tokens[:, None])[:, 0]
        top_v, top_i = torch.topk(logp, max(topk), dim=-1) if max(topk) > 0 else (logp[:, :0], tokens[:, None][:, :0])
        out += [chosen, top_v, top_i]
    if tokens.device.type != "cuda":
        return PendingSample(tokens, out, topk, None)
    host = [t.to("cpu", non_blocking=True) for t in out]  # into pinned memory (the caching host allocator)
    ready = torch.cuda.Event()
    ready.record()
    return PendingSample(tokens, host, topk, ready)
