"""Citations: how much attention an answer paid to each position of a document it was asked about.

After generation, the tokens after the document (the question, then the answer) are run through the model again
against the document's cached K/V (a pinned prefix-cache entry: every layer's K/V of positions [0, P)), with dense
causal attention: what the dense tail and dense decode computed when the answer was made (up to summation order).
In the chosen layers, each query that produced an answer token (the last prompt position's and every answer
token's but the last) is softmaxed over all the keys it attends to, and the weights on the document's positions
are summed over heads, layers and those queries: a (P,) score per document position whose sum is the share of
attention the answer put on the document. The server turns it into ranked text spans (server/citations.py).

Memory: the tail's q/k/v per layer, and the logits of one key chunk for the answer's queries at a time (two passes
over the keys: the log-sum-exp, then the weights), so a 512K document needs no (queries x P) matrix at once.
Runs on the engine thread (it reads the KV pool), on CPU and GPU alike; no kernel of its own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor

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


class _CitationAttention:
    """The chunked forward's attention backend for positions [P, N) against the document's K/V of [0, P)."""

    def __init__(self, model: "LlamaForCausalLM", doc_kv, P: int, N: int, queries: tuple[int, int],
                 layers: list[int], key_chunk: int):
        self.model, self.doc_kv, self.P, self.N = model, doc_kv, P, N
        self.queries, self.layers, self.key_chunk = queries, set(layers), key_chunk
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
        k_doc, v_doc = self.doc_kv(layer)  # (1, H_kv, P, D)
        k = torch.cat([k_doc.to(q.dtype), *self._k], dim=2)  # (1, H_kv, N, D)
        v = torch.cat([v_doc.to(q.dtype), *self._v], dim=2)
        with torch.no_grad():
            out = attention_with_cache(q, k, v)
            if layer in self.layers:
                self.scores += self._document_weights(q, k)
        self._q = self._k = self._v = []
        yield self.P, self.N, out

    def _document_weights(self, q: Tensor, k: Tensor) -> Tensor:
        """(P,) the answer queries' softmax weights on the document's keys, summed over heads and queries."""
        q0, q1 = self.queries
        qa = q[0, :, q0 - self.P : q1 - self.P].float()  # (H, A, D): positions [q0, q1)
        H, H_kv = qa.shape[0], k.shape[1]
        kk = k[0].float().repeat_interleave(H // H_kv, dim=0)  # (H, N, D)
        scale = 1.0 / math.sqrt(qa.shape[-1])
        pos = torch.arange(q0, q1, device=qa.device)[None, :, None]  # query t attends to keys [0, t]
        chunks = range(0, self.N, self.key_chunk)
        lse = torch.full(qa.shape[:2], -math.inf, device=qa.device)
        for c0 in chunks:
            logits = self._logits(qa, kk, c0, pos, scale)
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
        out = torch.zeros(self.P, dtype=torch.float32, device=qa.device)
        for c0 in range(0, self.P, self.key_chunk):
            c1 = min(c0 + self.key_chunk, self.P)
            w = torch.exp(self._logits(qa, kk, c0, pos, scale)[..., : c1 - c0] - lse[..., None])
            out[c0:c1] = w.sum(dim=(0, 1))
        return out.cpu()

    def _logits(self, qa: Tensor, kk: Tensor, c0: int, pos: Tensor, scale: float) -> Tensor:
        c1 = min(c0 + self.key_chunk, kk.shape[1])
        logits = torch.einsum("had,hnd->han", qa, kk[:, c0:c1]) * scale  # (H, A, c)
        keys = torch.arange(c0, c1, device=qa.device)[None, None, :]
        return logits.masked_fill(keys > pos, -math.inf)


@torch.no_grad()
def answer_attention(model: "LlamaForCausalLM", pool: "KVPool", tables: list[list[int]], P: int, tail_ids: list[int],
                     answer_len: int, layers: list[int] | None = None, *, key_chunk: int = 16384,
                     chunk_tokens: int = 4096) -> Tensor:
    """(P,) float32 on the CPU: the mean attention weight an answer put on each of the document's P positions.

    tables: per layer, the block table holding the document's K/V of positions [0, P) (a full prefix-cache entry's);
    tail_ids: the token ids after them, the prompt's rest and then the answer's `answer_len` tokens; layers: where
    to read the attention (default `citation_layers`). The queries read are positions [N_prompt - 1, N - 1), those
    that produced the answer's tokens; the result is averaged over them, the heads and the layers (so it sums to
    the share of their attention on the document)."""
    if answer_len < 1 or answer_len > len(tail_ids):
        raise ValueError(f"answer_len must be in [1, {len(tail_ids)}], got {answer_len}")
    layers = citation_layers(model.config) if layers is None else layers
    if any(not tables[i] for i in range(len(tables))):
        raise ValueError("citations need every layer's K/V of the document (a full entry, not a compact one)")
    N = P + len(tail_ids)
    queries = (max(P, N - answer_len - 1), N - 1)  # (the last prompt position is the document's own: not read)
    H, A = model.config.num_attention_heads, queries[1] - queries[0]
    key_chunk = max(256, min(key_chunk, (1 << 26) // max(1, H * A)))  # one chunk's logits: at most 64M floats
    backend = _CitationAttention(model, lambda i: pool.read(tables[i], P), P, N, queries, layers, key_chunk)
    device = pool.k.device
    forward = chunked_forward(model, torch.tensor(tail_ids, dtype=torch.long, device=device), P, backend,
                              chunk_tokens)
    for _ in forward:
        pass
    return backend.scores / (H * max(1, A) * max(1, len(layers)))
