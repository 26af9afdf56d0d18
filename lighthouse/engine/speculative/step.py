"""The decode step with prompt-lookup speculation: propose each sequence's drafts, verify them all in the model
runner's one forward, accept (acceptance.py), count.

A sequence's drafts per step: its request's `speculative.num_tokens` (else the engine's default), at most what its
max_tokens leaves after this step's guaranteed token, so the K/V written stays inside the positions reserved for it.
When no sequence of the batch has a draft this step, the engine runs the ordinary decode step (its CUDA graphs).
A sequence with a grammar keeps only the drafts its grammar accepts (structured/mask.py), and its logits at every
verified position are masked as the grammar stands there, so acceptance never lets a token out of the grammar.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from lighthouse.engine.request import Sequence, TokenLogprob
from lighthouse.engine.speculative.acceptance import emitted_logprobs, verify
from lighthouse.engine.speculative.proposer import TokenHistory
from lighthouse.engine.structured.mask import checked_drafts, mask_verify_logits

if TYPE_CHECKING:
    from lighthouse.engine.model_runner import ModelRunner
    from lighthouse.engine.output import OutputProcessor, Sampled


class Speculator:
    def __init__(self, default_num_tokens: int = 0):
        self.default_num_tokens = default_num_tokens
        self.proposed = 0  # draft tokens verified (running totals, for the metrics)
        self.accepted = 0  # ... and accepted
        self._forced: Callable[[Sequence, int], list[int]] | None = None  # see `drafting`

    @contextmanager
    def drafting(self, drafts: Callable[[Sequence, int], list[int]]) -> Iterator[None]:
        """Inside: a sequence's k drafts are drafts(sequence, k), not prompt lookup's (the warm-up's verify steps
        at every query bucket, whatever the model generates)."""
        self._forced = drafts
        try:
            yield
        finally:
            self._forced = None

    def admit(self, request) -> None:
        """A request arrives: if it will draft, its sequences' prompt indexes start building in the background
        (proposer.TokenHistory.build_in_background), overlapping its prefill instead of delaying its first step."""
        drafting = [s for s in request.seqs if self.num_tokens(s)]
        if drafting:
            prompt, index = request.prompt().numpy(), None
            for s in drafting:  # the request's sequences share one prompt, so one index (n > 1: built once)
                index = self._history(s, prompt).build_in_background(index)

    def num_tokens(self, s: Sequence) -> int:
        spec = s.request.options.speculative
        k = spec.num_tokens if spec is not None else self.default_num_tokens
        return max(0, min(k, s.params.max_tokens - len(s.output_ids) - 1))

    def propose(self, batch: list[Sequence]) -> list[list[int]] | None:
        """Each sequence's drafts, or None when none has any (decode one token each as usual)."""
        if not self.default_num_tokens and all(s.request.options.speculative is None for s in batch):
            return None  # nobody asked: no per-row work (bench/results/2026-12-07_cpu_decode_host_b128/)
        drafts = []
        for s in batch:
            k = self.num_tokens(s)
            d = self._draft(s, k) if k else []
            drafts.append(checked_drafts(s.grammar, d) if s.grammar is not None and d else d)
        return drafts if any(drafts) else None

    def _draft(self, s: Sequence, k: int) -> list[int]:
        if self._forced is not None:
            return self._forced(s, k)[:k]
        history = self._history(s)
        history.sync(s.output_ids)
        return history.draft(k)

    @staticmethod
    def _history(s: Sequence, prompt=None) -> TokenHistory:
        """The sequence's token history, made on first use (from `prompt`, its request's prompt as an array)."""
        if s.history is None:
            prompt = s.request.prompt().numpy() if prompt is None else prompt
            s.history = TokenHistory(prompt, len(prompt) + s.params.max_tokens)
        return s.history

    def step(self, runner: "ModelRunner", outputs: "OutputProcessor", batch: list[Sequence]) -> list["Sampled"]:
        """The decode step of `batch`: a verify step when some sequence has drafts, else the ordinary one."""
        drafts = self.propose(batch)
        if drafts is not None:
            return self.run(runner, outputs, batch, drafts)
        logits = runner.decode([s.kv for s in batch], [s.output_ids[-1] for s in batch])
        return outputs.sample(batch, logits)

    def run(self, runner: "ModelRunner", outputs: "OutputProcessor", batch: list[Sequence],
            drafts: list[list[int]]) -> list["Sampled"]:
        """Verify `drafts` for `batch` in one forward: each sequence's tokens of this step (and logprobs)."""
        logits = runner.verify([s.kv for s in batch], [[s.output_ids[-1], *d] for s, d in zip(batch, drafts)])
        logits = mask_verify_logits(logits, batch, drafts)  # grammar rows: each position as its drafts leave it
        verified = verify(logits, outputs.rows(batch), drafts)
        sampled: list[Sampled] = []
        for b, (s, v) in enumerate(zip(batch, verified)):
            lp = None
            if s.params.logprobs is not None:
                chosen, top = emitted_logprobs(logits[b], len(drafts[b]), v.tokens, s.params.logprobs)
                lp = [TokenLogprob(t, c, tp) for t, c, tp in zip(v.tokens, chosen, top)]
            sampled.append((v.tokens, lp))
        self.proposed += sum(len(d) for d in drafts)
        self.accepted += sum(v.accepted for v in verified)
        return sampled
