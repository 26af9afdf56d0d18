"""Accepting drafts so that the output is what decoding one token at a time would give (greedy: exactly; sampled:
in distribution).

A row's verify step gives logits at its last sampled token and after each of its n drafts d_0..d_{n-1}: position
i is the distribution of the token that follows d_0..d_{i-1}. Each position is processed as the sampler does
(sampling.py: penalties counting the drafts before it as generated, temperature, top-k, top-p, min-p), giving p_i.
  greedy   accept d_i while d_i == argmax p_i; emit the first mismatch's argmax (or, all accepted, argmax p_n).
  sampled  the speculative rejection rule for a deterministic draft (the draft distribution is a point mass on
           d_i): accept d_i with probability p_i(d_i); on the first rejection emit a token from p_i with d_i removed
           (renormalized); all accepted, emit a token from p_n. Then P(emit t at i) = p_i(t) for every t, so the
           output distribution is the model's own.
Every step emits at least one token. Logprobs are those of the raw logits at each emitted token's position, as
the sampler reports them. All random draws use the row's own generator; a row's draws happen on the device and
the whole batch's outcome is read to the host once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lighthouse.engine.sampling import SampleRow, _filter, _penalize, _plain


@dataclass
class Verified:
    tokens: list[int]  # emitted: the accepted drafts, then one more (>= 1 token)
    accepted: int  # drafts accepted


def _with_drafts(row: SampleRow, drafts: list[int], V: int) -> SampleRow:
    """The row with per-position output counts (n+1, V): position i counts the drafts before it as generated."""
    if row.output_counts is None:
        return row
    n = len(drafts)
    step = torch.zeros(n + 1, V, dtype=row.output_counts.dtype, device=row.output_counts.device)
    if n:
        step[torch.arange(1, n + 1), torch.tensor(drafts)] = 1.0
    return SampleRow(row.params, row.generator, row.output_counts + step.cumsum(0), row.prompt_mask)


def _rejection_draws(x: Tensor, row: SampleRow, drafts: list[int]) -> Tensor:
    """x (n+1, V) penalized logits -> (2n+1,) int64 on the device: per draft 1/0 accepted, per draft the token to
    emit if it is the first rejected, then the token to emit when all are accepted."""
    probs = _filter(x, row.params).softmax(-1)  # (n+1, V)
    n, gen = len(drafts), row.generator
    bonus = torch.multinomial(probs[n:], 1, generator=gen)[:, 0]
    if n == 0:
        return bonus
    d = torch.tensor(drafts, device=x.device)
    idx = torch.arange(n, device=x.device)
    p_d = probs[idx, d]
    accept = torch.rand(n, generator=gen, device=x.device) < p_d
    residual = probs[:n].clone()
    residual[idx, d] = 0.0
    # p(d) == 1 leaves nothing (and then the draft is always accepted): any distribution does for the unused draw
    empty = residual.sum(-1, keepdim=True) <= 0
    residual = torch.where(empty, probs[:n], residual)
    instead = torch.multinomial(residual, 1, generator=gen)[:, 0]
    return torch.cat([accept.long(), instead, bonus])


def verify(logits: Tensor, rows: list[SampleRow], drafts: list[list[int]]) -> list[Verified]:
    """logits (B, Q, V) from the model runner's verify step (row b's n_b + 1 positions right-aligned); drafts[b]
    the n_b drafts row b was verified with. One Verified per row."""
    logits = logits.float()
    B, Q, V = logits.shape
    greedy = logits.argmax(-1)  # (B, Q): right for every plain greedy row
    draws: dict[int, Tensor] = {}
    for b, row in enumerate(rows):
        if _plain(row):
            continue
        n = len(drafts[b])
        x = _penalize(logits[b, Q - 1 - n :], _with_drafts(row, drafts[b], V))
        if row.params.greedy:
            greedy[b, Q - 1 - n :] = x.argmax(-1)
        else:
            draws[b] = _rejection_draws(x, row, drafts[b])
    order = sorted(draws)
    flat = torch.cat([greedy.flatten(), *(draws[b] for b in order)]).tolist()  # the step's one host read
    at, out = B * Q, []
    for b in range(B):
        d, n = drafts[b], len(drafts[b])
        if b in draws:
            acc, instead, bonus = flat[at : at + n], flat[at + n : at + 2 * n], flat[at + 2 * n]
            at += 2 * n + 1
            a = next((i for i in range(n) if not acc[i]), n)
            out.append(Verified(d[:a] + [instead[a] if a < n else bonus], a))
        else:
            g = flat[b * Q + Q - 1 - n : (b + 1) * Q]
            a = next((i for i in range(n) if d[i] != g[i]), n)
            out.append(Verified(g[: a + 1], a))
    return out


def emitted_logprobs(logits: Tensor, n_drafts: int, tokens: list[int], k: int) -> tuple[list[float], list]:
    """Row logits (Q, V) of a verify step with n_drafts drafts -> the emitted tokens' logprobs (raw logits' log
    softmax at each one's position) and each position's top k (token, logprob)."""
    Q = logits.shape[0]
    logp = torch.log_softmax(logits[Q - 1 - n_drafts : Q - 1 - n_drafts + len(tokens)].float(), dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
    if k == 0:
        return chosen, [[] for _ in tokens]
    top_v, top_i = torch.topk(logp, k, dim=-1)
    return chosen, [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
