"""The model's resumable forward over one long sequence: embed, then each layer in token chunks, then the head at
the last position only; a generator that pauses between units of work so that a caller (the engine's prefill)
can stop, interleave other work, or abandon it.

The layer math is layers.py's (`attention_input`, `add_output`), as in `LlamaForCausalLM.forward`; the
attention between them is the caller's `ChunkedAttention` backend:
  project(layer, start, end, q, k, v)  q/k/v of positions [start, end) before RoPE, chunk by chunk: the backend
                                       rotates them as its plan says, writes K/V where it keeps them, keeps q/k/v
  attend(layer, last) -> iterator of (start, end, out (1, H, end - start, D)): the layer's attention outputs,
                                       one unit of work per item (with `last`, only what position N - 1 needs)
Every autograd-free region ends before a yield: a suspended generator never leaves grad mode changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generator, Iterator, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from lighthouse.model.llama import LlamaForCausalLM


class ChunkedAttention(Protocol):
    def project(self, layer: int, start: int, end: int, q: Tensor, k: Tensor, v: Tensor) -> None: ...

    def attend(self, layer: int, last: bool) -> Iterator[tuple[int, int, Tensor]]: ...


def token_chunks(start: int, end: int, chunk_tokens: int) -> list[tuple[int, int]]:
    """[start, end) in chunks of about chunk_tokens, evenly sized (a prompt of 2^k + a short tail stays one
    chunk): absolute positions."""
    n = end - start
    m = max(1, round(n / chunk_tokens))
    size = -(-n // m)
    return [(a, min(a + size, end)) for a in range(start, end, size)]


def chunked_forward(model: "LlamaForCausalLM", ids: Tensor, start: int, attention: ChunkedAttention,
                    chunk_tokens: int) -> Generator[float, None, Tensor]:
    """ids (n,) int64 on the model's device: positions [start, start + n) of the sequence (earlier ones are the
    backend's to provide). Yields the fraction of layers done after each unit of work; returns the last
    position's logits (V,) float32."""
    N = start + ids.shape[0]
    layers = model.model.layers
    chunks = token_chunks(start, N, chunk_tokens)
    with torch.no_grad():
        h = model.model.embed_tokens(ids[None])  # (1, n, hidden): positions [start, N)
    yield 0.0
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        with torch.no_grad():
            for a, b in chunks:
                attention.project(i, a, b, *layer.attention_input(h[:, a - start : b - start]))
        yield i / len(layers)
        outs: list[tuple[int, int, Tensor]] = []
        for item in attention.attend(i, last):
            outs.append(item)
            yield i / len(layers)
        with torch.no_grad():  # o_proj and the MLP, in token chunks (the last layer: position N - 1 alone)
            for a, b, out in outs:
                for x0 in range(N - 1 if last else a, b, chunk_tokens):
                    x1 = min(x0 + chunk_tokens, b)
                    layer.add_output(h[:, x0 - start : x1 - start], out[:, :, x0 - a : x1 - a], inplace=True)
        outs = []
        yield (i + 1) / len(layers)
    with torch.no_grad():
        return model.lm_head(model.model.norm(h[:, -1:]))[0, -1].float()
