"""The model runner: turns scheduled work into tensors and runs the model (prefill eagerly, the batched decode step
from captured CUDA graphs).

Decode step for B running sequences, one new token each: projections, MLPs and the LM head run batched over
(B, 1); every layer writes the new K/V into each sequence's paged cache and runs one `paged_decode_attention`
over the whole batch (lengths differ; GQA; a sequence with sparse decode reads its Lighthouse context in the
Lighthouse layers and the full cache elsewhere). Nothing loops over sequences on the device side.

Per-step inputs live in static device buffers, so the step can be captured once per batch-size bucket and
replayed (padding rows point at the scratch block and are discarded). Two sets of attention metadata exist:
kind 0 (every sequence's full cache) for full-attention layers, kind 1 for Lighthouse layers (the sparse
context of sequences with sparse decode, the full cache of the others).

A checkpoint with lighthouse.rope == "after_select" and rope_freqs == "unscaled": a sparse-decode sequence's context
in a Lighthouse layer holds K rotated with the model's `lighthouse_inv_freq` (the op's selection, the tail), so
there its decode query and new key are rotated with those too; every other row and layer uses standard RoPE.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from lighthouse.engine.kv_cache import KVCacheManager, SequenceKV
from lighthouse.engine.prefill import DEFAULT_CHUNK_TOKENS, PrefillPlan, PrefillTask
from lighthouse.model.llama import LlamaForCausalLM, Rotary, UnrotatedAttention
from lighthouse.model.rope import rope_cos_sin
from lighthouse.ops.fused import rope_qk
from lighthouse.ops.paged_attention import paged_decode_attention

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def graph_buckets(max_batch: int) -> list[int]:
    """Captured batch sizes: the defaults up to max_batch, and max_batch itself."""
    return sorted({b for b in DEFAULT_BUCKETS if b < max_batch} | {max_batch})


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    logits: Tensor  # (bucket, V) float32, written by every replay


class DecodeInputs:
    """Static device buffers of one decode step (sized for the largest batch)."""

    def __init__(self, max_batch: int, max_blocks: int, num_heads: int, device: torch.device):
        z = dict(device=device, dtype=torch.int32)
        # what changes every step, in one buffer so that one host-to-device copy moves it
        self.meta = torch.zeros(4, max_batch, dtype=torch.long, device=device)
        self.ids = self.meta[0]  # the last sampled token of each row
        self.pos = self.meta[1]  # RoPE position = full-cache length
        self.entry = self.meta[2:4]  # per kind: the entry index the new K/V go to
        self.tables = torch.zeros(2, max_batch, max_blocks, **z)
        self.per_head = torch.zeros(2, max_batch, **z)
        self.hole_start = torch.zeros(2, max_batch, num_heads, **z)
        self.hole_end = torch.zeros(2, max_batch, **z)
        self.host = torch.zeros(4, max_batch, dtype=torch.long, pin_memory=device.type == "cuda")
        self.batch_key: tuple | None = None


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv: KVCacheManager, *, max_batch: int, max_model_len: int,
                 enforce_eager: bool = False, graph_max_batch: int | None = None,
                 prefill_chunk_tokens: int = DEFAULT_CHUNK_TOKENS):
        self.model = model
        self.prefill_chunk_tokens = prefill_chunk_tokens
        if kv.shape.device.type == "cuda":
            model.fuse_projections()  # two GEMMs per layer where five ran (decode is launch- and GEMV-bound)
        self.kv = kv
        self.pool = kv.pool
        s = kv.shape
        self.device, self.r, self.bs = s.device, s.group, s.block_size
        lh = model.config.lighthouse
        self.lh_layers = frozenset(i for i in range(s.num_layers) if lh.enabled and lh.levels >= 2
                                   and i not in lh.full_attn_layers)
        self.lh_rope = lh.enabled and lh.rope == "after_select" and lh.rope_freqs == "unscaled"
        self.max_blocks = -(-max_model_len * self.r // self.bs) + 1
        self.inputs = DecodeInputs(max_batch, self.max_blocks, s.num_heads, s.device)
        self.use_graphs = s.device.type == "cuda" and not enforce_eager
        self.graph_max_batch = min(graph_max_batch or max_batch, max_batch)
        self.graphs: dict[int, _Graph] = {}
        self._graph_pool = None

    # ---- prefill ----------------------------------------------------------------------------------------------
    def start_prefill(self, kv: SequenceKV, prompt_ids: Tensor, plan: PrefillPlan, *, cached: int,
                      should_abort: Callable[[], bool],
                      on_progress: Callable[[float], None] | None = None) -> PrefillTask:
        """The prompt's prefill into kv's blocks, to be run in pieces (`task.run(budget_s)` -> logits or None)."""
        return PrefillTask(self.model, self.pool, kv, prompt_ids, plan, cached=cached, should_abort=should_abort,
                           chunk_tokens=self.prefill_chunk_tokens, on_progress=on_progress)

    # ---- decode -----------------------------------------------------------------------------------------------
    def decode(self, kvs: list[SequenceKV], last_tokens: list[int]) -> Tensor:
        """Append one token per sequence; next-token logits (B, V) float32. Advances each kv's lengths."""
        B = len(kvs)
        self._fill_inputs(kvs, last_tokens)
        bucket = self._bucket(B)
        if bucket is None:
            logits = self._forward(B)
        else:
            g = self.graphs.get(bucket) or self._capture(bucket)
            g.graph.replay()
            logits = g.logits[:B]
        for kv in kvs:
            kv.length += 1
            if kv.sparse:
                kv.ctx_len += 1
        return logits

    def _bucket(self, B: int) -> int | None:
        if not self.use_graphs or B > self.graph_max_batch:
            return None
        return next(b for b in graph_buckets(self.graph_max_batch) if b >= B)

    def _fill_inputs(self, kvs: list[SequenceKV], last_tokens: list[int]) -> None:
        inp, B = self.inputs, len(kvs)
        host = inp.host
        lengths = [kv.length for kv in kvs]
        host[:, :B] = torch.tensor([last_tokens, lengths, lengths,
                                    [kv.ctx_len if kv.sparse else kv.length for kv in kvs]])
        n = inp.ids.shape[0]
        host[:, B:] = 0
        inp.meta.copy_(host, non_blocking=True)  # host is pinned; it is rewritten only after the step's sync
        key = tuple(id(kv) for kv in kvs)
        if key != inp.batch_key:  # tables change only when the batch does (capacity is reserved up front)
            self._fill_tables(kvs, n)
            inp.batch_key = key

    def _fill_tables(self, kvs: list[SequenceKV], n: int) -> None:
        inp = self.inputs
        H = inp.hole_start.shape[2]
        tables = torch.zeros(2, n, self.max_blocks, dtype=torch.int32)
        per_head = torch.zeros(2, n, dtype=torch.int32)
        hole_start = torch.zeros(2, n, H, dtype=torch.int32)
        hole_end = torch.zeros(2, n, dtype=torch.int32)
        for b, kv in enumerate(kvs):
            tables[0, b, : len(kv.blocks)] = torch.tensor(kv.blocks, dtype=torch.int32)
            if kv.sparse:
                tables[1, b, : len(kv.ctx_blocks)] = torch.tensor(kv.ctx_blocks, dtype=torch.int32)
                per_head[1, b] = 1
                hole_start[1, b] = kv.ctx_hole_start.cpu()
                hole_end[1, b] = kv.ctx_hole_end
            else:
                tables[1, b] = tables[0, b]
        inp.tables.copy_(tables.to(self.device))
        inp.per_head.copy_(per_head.to(self.device))
        inp.hole_start.copy_(hole_start.to(self.device))
        inp.hole_end.copy_(hole_end.to(self.device))

    def _forward(self, B: int) -> Tensor:
        """The decode step over the first B rows of the static inputs (eager, or being captured)."""
        inp, r, bs = self.inputs, self.r, self.bs
        entry = inp.entry[:, :B]  # (2, B) int64
        per_head = inp.per_head[:, :B].long()
        j = torch.arange(r, device=self.device)
        e = entry[..., None] * (1 + per_head[..., None] * (r - 1)) + j * per_head[..., None]  # (2, B, r) slots
        slots = inp.tables[:, :B].long().gather(2, e // bs) * bs + e % bs
        lens = (entry + 1).to(torch.int32)
        pool = self.pool

        def attention(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q (B, H, 1, D), k/v (B, H_kv, 1, D)
            kind = 1 if i in self.lh_layers else 0
            rows_k = k[:, :, 0, None].expand(-1, -1, r, -1).transpose(1, 2).flatten(0, 1)  # (B*r, H_kv, D)
            rows_v = v[:, :, 0, None].expand(-1, -1, r, -1).transpose(1, 2).flatten(0, 1)
            pool.write(i, slots[kind].flatten(), rows_k, rows_v)
            out = paged_decode_attention(q[:, :, 0], pool.k[i], pool.v[i], inp.tables[kind, :B], lens[kind],
                                         inp.per_head[kind, :B], inp.hole_start[kind, :B], inp.hole_end[kind, :B])
            return out[:, :, None]

        if self.lh_rope:
            attention = self._sparse_rows_rotated(B, attention)
        with torch.no_grad():
            out = self.model(inp.ids[:B, None], positions=inp.pos[:B, None], attention=attention, logits_to_keep=1)
        return out.logits[:, -1].float()

    def _sparse_rows_rotated(self, B: int, attention: Callable) -> UnrotatedAttention:
        """`attention` behind RoPE that, in Lighthouse layers, rotates the rows of sparse-decode sequences with
        `lighthouse_inv_freq` (as their context's K was) and the others with the model's frequencies."""
        inp, model = self.inputs, self.model
        pos = inp.pos[:B, None]
        dtype = model.model.embed_tokens.weight.dtype
        sparse = inp.per_head[1, :B].bool()[:, None, None, None]  # (B, 1, 1, 1): the row reads a context
        lh_cos, lh_sin = rope_cos_sin(model.lighthouse_inv_freq, pos, dtype)

        def rotated(i: int, q: Tensor, k: Tensor, v: Tensor, rotary: Rotary) -> Tensor:
            cos, sin = rotary.cos, rotary.sin
            if i in self.lh_layers:
                cos, sin = torch.where(sparse, lh_cos, cos), torch.where(sparse, lh_sin, sin)
            q, k = rope_qk(q, k, cos, sin, v.dtype)
            return attention(i, q, k, v)

        return UnrotatedAttention(rotated)

    # ---- CUDA graphs ------------------------------------------------------------------------------------------
    def capture_all(self) -> None:
        """Capture every bucket now (at startup), largest first so that smaller ones reuse its memory."""
        if not self.use_graphs:
            return
        for b in sorted(graph_buckets(self.graph_max_batch), reverse=True):
            self._capture(b)
        log.info("captured the decode step for batch sizes %s", sorted(self.graphs))

    def _capture(self, bucket: int) -> _Graph:
        inp = self.inputs
        inp.batch_key = None
        inp.meta[:, :bucket].zero_()
        inp.tables[:, :bucket].zero_(), inp.per_head[:, :bucket].zero_()
        inp.hole_start[:, :bucket].zero_(), inp.hole_end[:, :bucket].zero_()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # compile kernels, pick cuBLAS plans
                self._forward(bucket)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            logits = self._forward(bucket)
        self.graphs[bucket] = _Graph(graph, logits)
        return self.graphs[bucket]
