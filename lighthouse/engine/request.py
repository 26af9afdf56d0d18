"""A request (one prompt, n choices) and its sequences, and what a step reports about them.

This module imports nothing else of the engine at run time (the names below are annotations only): a request is
data that the engine builds (engine.py), the scheduler moves through its lifecycle (scheduler.py) and the output
processor appends tokens to (output.py). What the scheduler decides per step (a prefix-cache hit, the prefill in
progress) lives in the scheduler, not here.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lighthouse.engine.cache.sequence_kv import SequenceKV
    from lighthouse.engine.cache.spec import KVSpec
    from lighthouse.engine.detokenizer import IncrementalText
    from lighthouse.engine.options import RequestOptions
    from lighthouse.engine.sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token_id, logprob), best first


@dataclass
class PrefillInfo:
    path: str  # "sparse" | "dense"
    sparse_tokens: int
    dense_tokens: int
    decode: str  # decode path actually used: "sparse" | "dense"
    seconds: float
    cached_tokens: int = 0  # prompt positions reused from the prefix cache (not prefilled again)
    note: str | None = None  # why a sparse prefill was asked for and a dense one ran (None otherwise)


@dataclass(frozen=True)
class PromptProgress:
    """How far a prompt's prefill is, in llama.cpp's `prompt_progress` terms: `processed` of `total` prompt tokens
    are in the cache, `cache` of them came from the prefix cache (processed starts there), `time_ms` since the
    prefill began."""

    total: int
    cache: int
    processed: int
    time_ms: int


@dataclass
class RequestOutput:
    """What one step produced for one choice: new tokens and text since the last output."""

    request_id: str
    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int
    completion_tokens: int
    prefill: PrefillInfo | None = None  # on the first output of each choice
    error: str | None = None
    progress: PromptProgress | None = None  # while prefilling (no tokens then)
    error_code: str | None = None  # with error: errors.FAILURE_CODES says which (out_of_memory, internal_error, ...)


@dataclass
class Sequence:
    """One choice of a request: its tokens, its sampler state and (while it runs) its tables in the KV cache."""

    index: int
    params: SamplingParams
    text: IncrementalText
    generator: torch.Generator | None
    kv: SequenceKV | None = None
    output_ids: list[int] = field(default_factory=list)
    output_counts: torch.Tensor | None = None  # (V,) for presence/frequency/repetition penalties
    status: Status = Status.WAITING
    finish_reason: str | None = None
    prefill_reported: bool = False
    request: Request | None = None
    history: Any = None  # prompt + output tokens for prompt-lookup drafts (speculative/proposer.py), made on use
    grammar: Any = None  # an llguidance matcher in step with output_ids (structured/), if the output has a grammar
    sample_row: Any = None  # what the sampler reads of it (sampling.SampleRow), made once (output.py)


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    options: RequestOptions  # resolved: no None left
    seqs: list[Sequence]
    plan: Any  # the PrefillPlan it was sized for (engine/plan.py); a compact prefix-cache hit runs with the entry's
    capacity: int  # cache positions per sequence
    ctx_entries: int  # sparse-decode context entries per sequence (0: dense decode)
    reservation: KVSpec  # what each sequence holds in the KV cache, as sized (cache/spec.py)
    arrival: float = field(default_factory=time.monotonic)
    prompt_mask: torch.Tensor | None = None
    aborted: threading.Event = field(default_factory=threading.Event)
    prefill_info: PrefillInfo | None = None  # set once its prefill ran and its first tokens were sampled
    dense_note: str | None = None  # why the sparse prefill asked for (or defaulted to) runs densely, if it does
    prompt_cached: bool = False  # this prompt's K/V went to the prefix cache already (once per request)
    prompt_tensor: torch.Tensor | None = None  # (N,) int64 on the CPU, for prefix-cache matching (made once)

    def prompt(self) -> torch.Tensor:
        """The prompt as an (N,) int64 CPU tensor (prefix-cache matching, the prefill), made once."""
        if self.prompt_tensor is None:
            self.prompt_tensor = torch.tensor(self.prompt_ids, dtype=torch.long)
        return self.prompt_tensor

    @property
    def spec(self) -> KVSpec:
        return self.reservation

    @property
    def cache_prompt(self) -> bool:
        return self.options.cache_prompt

    @property
    def finished(self) -> bool:
        return all(s.status is Status.FINISHED for s in self.seqs)
