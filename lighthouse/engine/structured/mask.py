"""Token masks of grammar rows, filled on the host and applied to the logits on the device.

A sequence with a grammar (`Sequence.grammar`, an llguidance matcher in step with its output) gets a packed
bitmask per position, (W,) int32 with W = ceil(V / 32), bit t of word t // 32 set when token t may follow. The
masks of a step are filled into one host array (llguidance's parallel executor for the decode step), copied to
the device at once and unpacked there; the rows' logits outside the mask become -inf. Rows without a grammar are
not touched, and neither is the decode forward: the mask is applied to the logits its CUDA graph wrote.

A verify step (speculative decoding) needs a row's mask at each of its draft positions: the matcher consumes the
drafts one by one between fills and is rolled back afterwards, so it never stays advanced by a draft that the
acceptance may reject (vLLM's #15554); the tokens actually emitted advance it in OutputProcessor.advance.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_executor = None


class GrammarError(RuntimeError):
    """A matcher is in an error state (it refused a token the mask allowed): its sequence fails alone."""


def _par_executor():
    global _executor
    if _executor is None:
        from llguidance import LLExecutor

        _executor = LLExecutor()
    return _executor


def _check(matcher) -> None:
    if matcher.is_error():
        raise GrammarError(f"the output grammar failed: {matcher.get_error()}")


def words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def unpack(packed: np.ndarray, vocab_size: int, device: torch.device) -> Tensor:
    """packed (G, W) int32 host masks -> (G, V) bool on `device`. On a GPU the packed words are copied (V/8 bytes a
    row) and unpacked there; on the CPU numpy's unpackbits does it (bit t of a little-endian word is bit t % 8 of
    its byte t // 8)."""
    if device.type == "cpu":
        bits = np.unpackbits(packed.view(np.uint8), axis=1, bitorder="little")[:, :vocab_size]
        return torch.from_numpy(bits.view(np.bool_))
    return unpack_on_device(packed, vocab_size, device)


def unpack_on_device(packed: np.ndarray, vocab_size: int, device: torch.device) -> Tensor:
    words_ = torch.from_numpy(packed).to(device, non_blocking=True)  # (G, W)
    shifts = torch.arange(32, device=device, dtype=torch.int32)
    return ((words_[:, :, None] >> shifts) & 1).view(len(packed), -1)[:, :vocab_size].bool()


def apply_packed(logits: Tensor, rows: list[int], packed: np.ndarray) -> None:
    """logits (R, V) float, in place: rows[i] keeps only the tokens whose bit is set in packed[i] (W,) int32; the
    other rows keep every value."""
    R, V = logits.shape
    allowed = unpack(packed, V, logits.device)  # (G, V)
    if rows != list(range(R)):  # some rows have no grammar: they allow everything
        full = torch.ones(R, V, dtype=torch.bool, device=logits.device)
        full[torch.tensor(rows, device=logits.device)] = allowed
        allowed = full
    logits.masked_fill_(~allowed, float("-inf"))


def mask_logits(logits: Tensor, seqs: list) -> Tensor:
    """logits (B, V) of the sequences' next tokens -> the same logits with each grammar row masked (a contiguous
    copy first when `logits` is an expanded view, as after a prefill with n > 1)."""
    rows = [b for b, s in enumerate(seqs) if s.grammar is not None]
    if not rows:
        return logits
    from llguidance.numpy import fill_next_token_bitmask_par

    packed = np.zeros((len(rows), words(logits.shape[-1])), dtype=np.int32)
    for b in rows:
        _check(seqs[b].grammar)
    fill_next_token_bitmask_par(_par_executor(), [(seqs[b].grammar, i) for i, b in enumerate(rows)], packed)
    logits = logits.contiguous()
    apply_packed(logits, rows, packed)
    return logits


def checked_drafts(matcher, drafts: list[int]) -> list[int]:
    """The longest prefix of `drafts` the grammar accepts, short of a token that would complete it (that one the
    step emits itself, so no position is verified after the grammar stopped). The matcher ends where it began."""
    n = matcher.validate_tokens(drafts) if drafts else 0
    k = 0
    while k < n:
        matcher.consume_token(drafts[k])
        k += 1
        if matcher.is_stopped():
            k -= 1
            matcher.rollback(1)
            break
    if k:
        matcher.rollback(k)
    return drafts[:k]


def mask_verify_logits(logits: Tensor, seqs: list, drafts: list[list[int]]) -> Tensor:
    """logits (B, Q, V) of a verify step (row b's n_b + 1 positions right-aligned), in place: each grammar row's
    position i masked as the grammar stands after its first i drafts (which `checked_drafts` let through)."""
    B, Q, V = logits.shape
    todo = [b for b, s in enumerate(seqs) if s.grammar is not None]
    if not todo:
        return logits
    logits = logits.contiguous()
    from llguidance.numpy import fill_next_token_bitmask_par_with_draft_tokens

    packed = np.zeros((sum(len(drafts[b]) + 1 for b in todo), words(V)), dtype=np.int32)
    rows: list[int] = []
    work = []  # (matcher, its first mask's index, its drafts): the executor fills every row's masks in parallel,
    for b in todo:  # advancing each matcher through its drafts and rolling it back
        m, d = seqs[b].grammar, drafts[b]
        _check(m)
        work.append((m, len(rows), list(d)))
        rows += [b * Q + Q - 1 - len(d) + i for i in range(len(d) + 1)]
    fill_next_token_bitmask_par_with_draft_tokens(_par_executor(), work, packed)
    for m, _, _ in work:
        _check(m)
    empty = np.flatnonzero(~packed.any(axis=1))
    if empty.size:  # a checked draft the grammar refused after all: the positions after it got no mask
        raise GrammarError(f"the output grammar refused a checked draft token (mask {int(empty[0])} empty)")
    apply_packed(logits.view(B * Q, V), rows, packed)
    return logits
