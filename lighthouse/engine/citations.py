"""Citations: how much attention an answer paid to each position of a document it was asked about, beyond what the
prompt's own queries paid to it.

After generation, the tokens after the document (the question, then the answer) are run through the model again
against the document's cached K/V (a pinned prefix-cache entry: every layer's K/V of positions [0, P)), with dense
causal attention: what the dense tail and dense decode computed when the answer was made (up to summation order).
In the chosen layers, every query of the tail is softmaxed over all the keys it attends to, and per head two means
of the weights on the document's positions are taken: over the queries that produced the answer's tokens (the last
prompt position's and every answer token's but the last), and over the prompt's queries before them (the question
and the chat template's tokens, at most the last 1,024: the baseline). A position's score is the answer's weight in excess of the
baseline's, per head (max(0, answer - baseline)), averaged over heads and layers: a (P,) score per document
position. Positions that every query attends (attention sinks, recent text, long stretches of filler) get as much
from the prompt's queries as from the answer's and cancel; the positions the answer reads and its question did
not (the needle, once the answer copies from it) keep their weight. Per head, not after averaging: a question that
repeats the needle's key attends the needle too, in other heads than the ones that copy the value. With no prompt
queries before the answer's (a one-token question) the baseline is zero and the score is the answer's weight.
The server turns the scores into ranked text spans (server/citations.py); docs/documents.md has the measurements
behind the method.

A compact document (kv_mode "compact") keeps the full K/V only in its full-attention layers, which are read as above.
Its Lighthouse layers keep their sparse-decode context: per query head the entries the op selected (pooled windows),
then the positions after the split. There the tail's queries attend that context and their own keys, as the
engine's compact follow-up does (citations_context.py), and the weight on a pooled entry is spread evenly over the
positions of its window; the baseline and the excess are taken the same way.

Memory: the tail's q/k/v per layer, and the logits of one key chunk for the tail's queries at a time (two passes
over the keys: the log-sum-exp, then the weights), so a 512K document needs no (queries x P) matrix at once.
Runs on the engine thread (it reads the KV pool), on CPU and GPU alike; no kernel of its own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

from lighthouse.engine.citations_context import DocumentContext, context_attention_weights, read_context, spread
from lighthouse.model.chunked import chunked_forward
from lighthouse.ops.attention import attention_with_cache
from lighthouse.ops.fused import rope_qk
from lighthouse.ops.rope import rope_cos_sin

if TYPE_CHECKING:
    from lighthouse.engine.cache.pool import KVPool
    from lighthouse.model.llama import LlamaForCausalLM


def citation_layers(config) -> list[int]:
    """The layers whose attention the scores read: all of them. On the bundled checkpoint's pass keys, the
    full-attention layers alone (0, 1, 2, 5) or without the first rarely put the needle in the top 3; layer 3 alone,
    layers 3-4 and all six always did (docs/documents.md, bench/results/2026-12-07_cpu_citations)."""
    return list(range(config.num_hidden_layers))


def head_excess(answer: Tensor, baseline: Tensor) -> Tensor:
    """(P,) the answer's weight in excess of the baseline's, summed over heads: sum_h max(0, answer_h - baseline_h).

    answer, baseline: (H, P) float32, one layer's mean softmax weight per head on the document's positions, over the
    answer's queries and over the prompt's queries before them (zeros when there are none)."""
    return (answer - baseline).clamp_min(0).sum(dim=0)


class _CitationAttention:
    """The chunked forward's attention backend for positions [P, N) against the document's K/V of [0, P).

    queries: (q0, q1), the answer's queries; b0: the baseline's are the prompt's [b0, q0) (b0 = q0: none);
    context: a compact document's context, read in the layers whose doc_kv is None."""

    def __init__(self, model: "LlamaForCausalLM", doc_kv, P: int, N: int, queries: tuple[int, int], b0: int,
                 layers: list[int], key_chunk: int, context: tuple["KVPool", DocumentContext] | None = None):
        self.model, self.doc_kv, self.P, self.N, self.context = model, doc_kv, P, N, context
        self.queries, self.b0, self.layers, self.key_chunk = queries, b0, set(layers), key_chunk
        self.scores = torch.zeros(P, dtype=torch.float32)
        self._q: list[Tensor] = []
        self._k: list[Tensor] = []
        self._v: list[Tensor] = []

    def project(self, layer: int, a: int, b: int, q: Tensor, k: Tensor, v: Tensor) -> None:
        if a == self.P:
            self._q, self._k, self._v = [], [], []
        cos, sin = rope_cos_sin(self.model.inv_freq, torch.arange(a, b, device=v.device)[None], v.dtype)
        q, k = rope_qk(q, k, cos, sin, v.dtype)
        self._q.append(q)
        self._k.append(k)
        self._v.append(v)

    def attend(self, layer: int, last: bool) -> Iterator[tuple[int, int, Tensor]]:
        q = torch.cat(self._q, dim=2)  # (1, H, N - P, D)
        doc = self.doc_kv(layer)
        if doc is None:
            yield self.P, self.N, self._context_layer(layer, q)
            return
        k_doc, v_doc = doc  # (1, H_kv, P, D)
        k = torch.cat([k_doc.to(q.dtype), *self._k], dim=2)  # (1, H_kv, N, D)
        v = torch.cat([v_doc.to(q.dtype), *self._v], dim=2)
        with torch.no_grad():
            out = attention_with_cache(q, k, v)
            if layer in self.layers:
                answer, baseline = self._document_weights(q, k)
                self.scores += head_excess(answer, baseline).cpu()
        self._q = self._k = self._v = []
        yield self.P, self.N, out

    def _context_layer(self, layer: int, q: Tensor) -> Tensor:
        """A compact Lighthouse layer: the tail against the layer's context and itself (citations_context.py)."""
        assert self.context is not None
        pool, ctx = self.context
        H = q.shape[1]
        r = H // self._k[0].shape[1]
        with torch.no_grad():
            k_ctx, v_ctx, valid = read_context(pool, ctx, layer, self.P)  # (H, E, D), (H, E)
            k_tail, v_tail = (torch.cat(x, dim=2)[0].repeat_interleave(r, dim=0) for x in (self._k, self._v))
            k = torch.cat([k_ctx.to(q.dtype), k_tail], dim=1)  # (H, E + T, D)
            v = torch.cat([v_ctx.to(q.dtype), v_tail], dim=1)
            (q0, q1), b0, P = self.queries, self.b0, self.P
            out, answer, baseline = context_attention_weights(q[0], k, v, valid, (b0 - P, q0 - P, q1 - P),
                                                              self.key_chunk)
            if layer in self.layers:
                excess = head_excess(spread(answer, ctx, layer, P), spread(baseline, ctx, layer, P))
                self.scores += excess.cpu()
        self._q = self._k = self._v = []
        return out.to(q.dtype)[None]

    def _document_weights(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """(H, P) each: the mean softmax weight on the document's keys of the answer's queries [q0, q1), and of the
        baseline's [b0, q0) (zeros when there are none)."""
        (q0, q1), b0 = self.queries, self.b0
        qs = q[0, :, b0 - self.P : q1 - self.P].float()  # (H, Q, D): positions [b0, q1)
        H, H_kv = qs.shape[0], k.shape[1]
        kk = k[0].float().repeat_interleave(H // H_kv, dim=0)  # (H, N, D)
        scale = 1.0 / math.sqrt(qs.shape[-1])
        pos = torch.arange(b0, q1, device=qs.device)[None, :, None]  # query t attends to keys [0, t]
        lse = torch.full(qs.shape[:2], -math.inf, device=qs.device)
        for c0 in range(0, self.N, self.key_chunk):
            logits = self._logits(qs, kk, c0, pos, scale)
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
        split = q0 - b0  # queries [0, split) are the baseline's
        answer = torch.zeros(H, self.P, dtype=torch.float32, device=qs.device)
        baseline = torch.zeros_like(answer)
        for c0 in range(0, self.P, self.key_chunk):
            c1 = min(c0 + self.key_chunk, self.P)
            w = torch.exp(self._logits(qs, kk, c0, pos, scale)[..., : c1 - c0] - lse[..., None])  # (H, Q, c)
            if q1 > q0:
                answer[:, c0:c1] = w[:, split:].mean(dim=1)
            if split:
                baseline[:, c0:c1] = w[:, :split].mean(dim=1)
        return answer, baseline

    def _logits(self, qa: Tensor, kk: Tensor, c0: int, pos: Tensor, scale: float) -> Tensor:
        c1 = min(c0 + self.key_chunk, kk.shape[1])
        logits = torch.einsum("had,hnd->han", qa, kk[:, c0:c1]) * scale  # (H, Q, c)
        keys = torch.arange(c0, c1, device=qa.device)[None, None, :]
        return logits.masked_fill(keys > pos, -math.inf)


@torch.no_grad()
def answer_attention(model: "LlamaForCausalLM", pool: "KVPool", tables: list[list[int]], P: int, tail_ids: list[int],
                     answer_len: int, layers: list[int] | None = None, *, excess: bool = True,
                     baseline_queries: int = 1024, key_chunk: int = 16384, chunk_tokens: int = 4096,
                     context: DocumentContext | None = None) -> Tensor:
    """(P,) float32 on the CPU: per document position, the answer's attention on it in excess of the prompt's.

    tables: per layer, the block table holding the document's K/V of positions [0, P) (a prefix-cache entry's; []
    in a compact entry's Lighthouse layers, whose `context` is then read); tail_ids: the token ids after them, the
    prompt's rest and then the answer's `answer_len` tokens; layers: where to read the attention (default
    `citation_layers`). The answer's queries are positions [N_prompt - 1, N - 1), those that produced the answer's
    tokens; the baseline's, the prompt's before them, [P, N_prompt - 1), at most the last `baseline_queries` of them
    (a long prompt tail costs no more than that). Per layer and head, max(0, answer's mean weight - baseline's mean
    weight), averaged over heads and layers (so the scores sum to at most the share of the answer's attention on
    the document). excess=False: the answer's mean weight alone (the scores then sum to that share)."""
    return citation_forward(model, pool, tables, P, tail_ids, answer_len, layers, excess=excess,
                            baseline_queries=baseline_queries, key_chunk=key_chunk, chunk_tokens=chunk_tokens,
                            context=context)[0]


@torch.no_grad()
def citation_forward(model: "LlamaForCausalLM", pool: "KVPool", tables: list[list[int]], P: int, tail_ids: list[int],
                     answer_len: int, layers: list[int] | None = None, *, excess: bool = True,
                     baseline_queries: int = 1024, key_chunk: int = 16384, chunk_tokens: int = 4096,
                     context: DocumentContext | None = None) -> tuple[Tensor, Tensor]:
    """`answer_attention`'s scores, and the forward's logits at the last position (V,) float32: what the engine's
    follow-up after the document gives for the same tokens (up to summation order)."""
    if answer_len < 1 or answer_len > len(tail_ids):
        raise ValueError(f"answer_len must be in [1, {len(tail_ids)}], got {answer_len}")
    layers = citation_layers(model.config) if layers is None else layers
    if any(not tables[i] and (context is None or not context.tables[i]) for i in range(len(tables))):
        raise ValueError("citations need every layer's K/V of the document, or a compact one's context")
    N = P + len(tail_ids)
    queries = (max(P, N - answer_len - 1), N - 1)  # (the last prompt position is the document's own: not read)
    b0 = max(P, queries[0] - baseline_queries) if excess else queries[0]
    H, T = model.config.num_attention_heads, N - P
    Q = T if context is not None else queries[1] - b0  # the queries whose logits one key chunk holds
    key_chunk = max(256, min(key_chunk, (1 << 26) // max(1, H * Q)))  # one chunk's logits: at most 64M floats
    backend = _CitationAttention(model, lambda i: pool.read(tables[i], P) if tables[i] else None, P, N, queries, b0,
                                 layers, key_chunk, None if context is None else (pool, context))
    device = pool.k.device
    forward = chunked_forward(model, torch.tensor(tail_ids, dtype=torch.long, device=device), P, backend,
                              chunk_tokens)
    while True:
        try:
            next(forward)
        except StopIteration as end:
            logits = end.value
            break
    return backend.scores / (H * max(1, len(layers))), logits
