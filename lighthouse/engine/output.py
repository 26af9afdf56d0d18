"""Output processing: logits -> sampled tokens (on the device, one host read per step) -> text, stop checks.

The engine calls `sample` with the sequences that produced a row of logits, then `advance` per sequence, and
`finish` for a sequence that ends (a stop, its length, an abort or an error): it marks the sequence finished and
reports it. What happens to a finished sequence's blocks is the scheduler's business (`Scheduler.update`).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from lighthouse.engine.errors import INTERNAL_ERROR, OUT_OF_MEMORY
from lighthouse.engine.request import RequestOutput, Sequence, Status, TokenLogprob
from lighthouse.engine.sampling import PendingSample, SampleResult, SampleRow, sample, sample_async
from lighthouse.engine.structured.mask import GrammarError, mask_logits

log = logging.getLogger(__name__)

# one sequence's tokens of a step (one; several from a speculative verify step) and (if asked) their logprobs
Sampled = tuple[list[int], "list[TokenLogprob] | None"]


class OutputProcessor:
    def __init__(self, vocab_size: int, eos_ids: set[int], device: torch.device):
        self.vocab_size, self.eos_ids, self.device = vocab_size, eos_ids, device

    def rows(self, seqs: list[Sequence]) -> list[SampleRow]:
        """What the sampler needs of each sequence (its penalty counts and its prompt's token mask made on first
        use), made once per sequence: what it holds never changes (the counts are updated in place)."""
        rows = []
        for s in seqs:
            row = s.sample_row
            if row is None:
                p, req = s.params, s.request
                if s.output_counts is None and (p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0):
                    s.output_counts = torch.zeros(self.vocab_size, dtype=torch.float32, device=self.device)
                if req.prompt_mask is None and p.repetition_penalty != 1.0:
                    req.prompt_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
                    req.prompt_mask[torch.tensor(req.prompt_ids, device=self.device)] = True
                row = s.sample_row = SampleRow(p, s.generator, s.output_counts, req.prompt_mask)
            rows.append(row)
        return rows

    def sample(self, seqs: list[Sequence], logits: Tensor) -> list[Sampled]:
        """logits (B, V): one ([token], logprobs or None) per sequence. Rows with a grammar are masked first (so their
        logprobs are those of the allowed tokens, as vLLM reports them)."""
        return self.sampled(seqs, sample(mask_logits(logits, seqs), self.rows(seqs)))

    def sample_async(self, seqs: list[Sequence], logits: Tensor) -> PendingSample:
        """The sampling of rows without a grammar, left on the device (`sampled(seqs, pending.read())` reads it)."""
        return sample_async(logits, self.rows(seqs))

    @staticmethod
    def sampled(seqs: list[Sequence], res: SampleResult) -> list[Sampled]:
        out: list[Sampled] = []
        for b, s in enumerate(seqs):
            lp = None
            if s.params.logprobs is not None:
                lp = [TokenLogprob(res.token_ids[b], res.logprobs[b], res.top_logprobs[b])]
            out.append(([res.token_ids[b]], lp))
        return out

    def advance(self, s: Sequence, tok: int) -> tuple[str, str | None]:
        """Append tok to s: (text that can be shown now, finish reason or None). A grammar that tok completes
        finishes the sequence ("stop")."""
        s.output_ids.append(tok)
        if s.output_counts is not None:
            s.output_counts[tok] += 1
        p, text, reason = s.params, "", None
        if tok in p.stop_token_ids or (tok in self.eos_ids and not p.ignore_eos):
            reason = "stop"
        else:
            if s.grammar is not None and not s.grammar.consume_token(tok):
                raise GrammarError(f"the output grammar refused token {tok}: {s.grammar.get_error()}")
            text = s.text.add(tok)
            if s.text.stopped_by is not None or (s.grammar is not None and s.grammar.is_stopped()):
                reason = "stop"
        if reason is None and len(s.output_ids) >= p.max_tokens:
            reason = "length"
        if reason is not None:
            text += s.text.flush()
        return text, reason

    def output(self, s: Sequence, token_ids: list[int], text: str, lp: list[TokenLogprob] | None, *,
               error: str | None = None, error_code: str | None = None) -> RequestOutput:
        """What this step reports for s (its prefill info on its first output)."""
        req = s.request
        info = None
        if not s.prefill_reported and req.prefill_info is not None:
            info, s.prefill_reported = req.prefill_info, True
        return RequestOutput(req.request_id, s.index, token_ids, text, lp, s.status is Status.FINISHED,
                             s.finish_reason, len(req.prompt_ids), len(s.output_ids), info, error,
                             error_code=error_code)

    def finish(self, s: Sequence, reason: str, *, text: str = "", token_ids: list[int] | None = None,
               logprobs: list[TokenLogprob] | None = None, error: str | None = None,
               error_code: str | None = None) -> RequestOutput:
        """s ends with `reason` ("stop", "length", "abort", "error"): its last output."""
        s.status, s.finish_reason = Status.FINISHED, reason
        if error is not None and error_code is None:
            error_code = INTERNAL_ERROR
        return self.output(s, token_ids or [], text, logprobs, error=error, error_code=error_code)

    def advance_all(self, seqs: list[Sequence], sampled: list[Sampled]) -> list[RequestOutput]:
        """Each sequence's sampled tokens appended in order, up to the first that ends it (a stop, EOS, its length:
        the rest are dropped): its output, finished when it stopped. A sequence whose detokenizing or stop check
        raises fails alone."""
        outputs = []
        for s, (toks, lp) in zip(seqs, sampled):
            try:
                text, reason = self.advance(s, toks[0])  # every step gives a sequence at least one token
                n = 1
                while reason is None and n < len(toks):
                    piece, reason = self.advance(s, toks[n])
                    text, n = text + piece, n + 1
            except Exception as exc:
                msg, code = failure(exc, "the output processing of this request")
                log.error("request %s: %s", s.request.request_id, msg, exc_info=True)
                outputs.append(self.finish(s, "error", error=msg, error_code=code))
                continue
            if n < len(toks):
                toks, lp = toks[:n], lp[:n] if lp is not None else None
            if reason is not None:
                outputs.append(self.finish(s, reason, text=text, token_ids=toks, logprobs=lp))
            else:
                outputs.append(self.output(s, toks, text, lp))
        return outputs


def failure(exc: BaseException, where: str) -> tuple[str, str]:
    """(message, code) for a request that failed in `where`: what a client may be told (no internals)."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return f"out of memory during {where}; retry later or with a shorter prompt", OUT_OF_MEMORY
    return (f"internal error ({type(exc).__name__}) during {where}; other requests were not affected",
            INTERNAL_ERROR)


def eos_ids(config_eos: int | list[int] | None, tokenizer) -> set[int]:
    """The token ids that end a sequence: the checkpoint config's and the tokenizer's."""
    ids: set[int] = set()
    for src in (config_eos, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return ids
