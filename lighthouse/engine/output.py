"""Output processing: logits -> sampled tokens (on the device, one host read per step) -> text, stop checks.

The engine calls `sample` with the sequences that produced a row of logits, then `advance` per sequence; what to
do with a finished sequence (free its blocks, keep its prompt in the prefix cache) is the engine's business.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lighthouse.engine.sampling import SampleRow, sample
from lighthouse.engine.sequence import Sequence, TokenLogprob


class OutputProcessor:
    def __init__(self, vocab_size: int, eos_ids: set[int], device: torch.device):
        self.vocab_size, self.eos_ids, self.device = vocab_size, eos_ids, device

    def sample(self, seqs: list[Sequence], logits: Tensor) -> list[tuple[int, list[TokenLogprob] | None]]:
        """logits (B, V): one (token, logprobs or None) per sequence."""
        for s in seqs:
            p = s.params
            if s.output_counts is None and (p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0):
                s.output_counts = torch.zeros(self.vocab_size, dtype=torch.float32, device=self.device)
        rows = [SampleRow(s.params, s.generator, s.output_counts, s.request.prompt_mask) for s in seqs]
        res = sample(logits, rows)
        out = []
        for b, s in enumerate(seqs):
            lp = None
            if s.params.logprobs is not None:
                lp = [TokenLogprob(res.token_ids[b], res.logprobs[b], res.top_logprobs[b])]
            out.append((res.token_ids[b], lp))
        return out

    def advance(self, s: Sequence, tok: int) -> tuple[str, str | None]:
        """Append tok to s: (text that can be shown now, finish reason or None)."""
        s.output_ids.append(tok)
        if s.output_counts is not None:
            s.output_counts[tok] += 1
        p, text, reason = s.params, "", None
        if tok in p.stop_token_ids or (tok in self.eos_ids and not p.ignore_eos):
            reason = "stop"
        else:
            text = s.text.add(tok)
            if s.text.stopped_by is not None:
                reason = "stop"
        if reason is None and len(s.output_ids) >= p.max_tokens:
            reason = "length"
        if reason is not None:
            text += s.text.flush()
        return text, reason
