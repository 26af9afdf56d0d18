"""The model runner: turns scheduled work into tensors and runs the model (prefill eagerly, the batched decode step
from captured CUDA graphs).

Decode step for B running sequences, one new token each: projections, MLPs and the LM head run batched over
(B, 1); every layer writes the new K/V into each sequence's paged cache and runs one `paged_decode_attention`
over the whole batch (lengths differ; GQA; a sequence with sparse decode reads its Lighthouse context in the
Lighthouse layers and the full cache elsewhere). Nothing loops over sequences on the device side.

Per-step inputs live in static device buffers, so the step can be captured once per batch-size bucket and
replayed (padding rows point at the scratch block and are discarded). The attention metadata is per layer and
row: each layer of a sequence has its own table (kv_cache.py), the full cache or, in a Lighthouse layer of a
sequence with sparse decode, its context (per query head, with a hole where the op padded).

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
from lighthouse.ops.rope import rope_cos_sin
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
    """Static device buffers of one decode step (sized for the largest batch). Per layer and row: the table the
    layer reads and writes (a sequence's full cache, or its sparse-decode context), whether it is per query head,
    and its hole."""

    def __init__(self, num_layers: int, max_batch: int, max_blocks: int, num_heads: int, device: torch.device):
        z = dict(device=device, dtype=torch.int32)
        # what changes every step, in one buffer so that one host-to-device copy moves it
        self.meta = torch.zeros(3, max_batch, dtype=torch.long, device=device)
        self.ids = self.meta[0]  # the last sampled token of each row
        self.pos = self.meta[1]  # RoPE position = full-cache length: the entry the new K/V go to in a full table
        self.ctx_len = self.meta[2]  # context entries: the entry they go to in a context table
        self.tables = torch.zeros(num_layers, max_batch, max_blocks, **z)
        self.per_head = torch.zeros(num_layers, max_batch, **z)
        self.hole_start = torch.zeros(num_layers, max_batch, num_heads, **z)
        self.hole_end = torch.zeros(num_layers, max_batch, **z)
        self.host = torch.zeros(3, max_batch, dtype=torch.long, pin_memory=device.type == "cuda")
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
        self.lh_rope = lh.enabled and lh.rope == "after_select" and lh.rope_freqs == "unscaled"
        self.max_blocks = -(-max_model_len * self.r // self.bs) + 1
        self.inputs = DecodeInputs(s.num_layers, max_batch, self.max_blocks, s.num_heads, s.device)
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
        host[:, :B] = torch.tensor([last_tokens, lengths, [kv.ctx_len for kv in kvs]])
        n = inp.ids.shape[0]
        host[:, B:] = 0
        inp.meta.copy_(host, non_blocking=True)  # host is pinned; it is rewritten only after the step's sync
        self._fill_tables(kvs, n)

    def _fill_tables(self, kvs: list[SequenceKV], n: int) -> None:
        """Each row's per-layer tables and flags; a row that holds the same sequence as in the last step is kept
        (tables do not change while a sequence decodes: its capacity was reserved up front)."""
        inp = self.inputs
        key = tuple(kv.uid for kv in kvs)
        prev = inp.batch_key or ()
        if key == prev:
            return
        for b, kv in enumerate(kvs):
            if b < len(prev) and prev[b] == kv.uid:
                continue
            if kv.decode_meta is None:
                kv.decode_meta = self._decode_meta(kv)
            table, per_head, hole_start, hole_end = kv.decode_meta
            inp.tables[:, b, : table.shape[1]].copy_(table)
            inp.per_head[:, b].copy_(per_head)
            inp.hole_start[:, b].copy_(hole_start)
            inp.hole_end[:, b].copy_(hole_end)
        if len(prev) > len(kvs):  # rows no longer used: the scratch block, no context
            for t in (inp.tables, inp.per_head, inp.hole_start, inp.hole_end):
                t[:, len(kvs) : min(n, len(prev))].zero_()
        inp.batch_key = key

    def _decode_meta(self, kv: SequenceKV) -> tuple[Tensor, ...]:
        """A sequence's per-layer decode inputs, made once (its tables do not change once it decodes): (L, W) table,
        (L,) per_head, (L, H) hole_start, (L,) hole_end. A layer with a context reads it, per query head; the
        others read the full cache."""
        L, H = len(kv.blocks), self.inputs.hole_start.shape[2]
        rows = [kv.ctx_blocks[i] or kv.blocks[i] for i in range(L)]
        table = torch.zeros(L, max(map(len, rows)), dtype=torch.int32)
        for i, row in enumerate(rows):
            table[i, : len(row)] = torch.tensor(row, dtype=torch.int32)
        per_head = torch.tensor([bool(kv.ctx_blocks[i]) for i in range(L)], dtype=torch.int32)
        hole_start = torch.zeros(L, H, dtype=torch.int32)
        hole_end = torch.zeros(L, dtype=torch.int32)
        if kv.sparse:
            assert kv.ctx_hole_start is not None
            hole_start = kv.ctx_hole_start.cpu() * per_head[:, None]
            hole_end = per_head * kv.ctx_hole_end
        return tuple(t.to(self.device) for t in (table, per_head, hole_start, hole_end))

    def _forward(self, B: int) -> Tensor:
        """The decode step over the first B rows of the static inputs (eager, or being captured)."""
        inp, r, bs = self.inputs, self.r, self.bs
        per_head = inp.per_head[:, :B].long()  # (L, B)
        entry = torch.where(per_head.bool(), inp.ctx_len[None, :B], inp.pos[None, :B])  # (L, B): where the new K/V go
        j = torch.arange(r, device=self.device)
        e = entry[..., None] * (1 + per_head[..., None] * (r - 1)) + j * per_head[..., None]  # (L, B, r) slots
        slots = inp.tables[:, :B].long().gather(2, e // bs) * bs + e % bs
        lens = (entry + 1).to(torch.int32)
        pool = self.pool

        def attention(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q (B, H, 1, D), k/v (B, H_kv, 1, D)
            rows_k = k[:, :, 0, None].expand(-1, -1, r, -1).transpose(1, 2).flatten(0, 1)  # (B*r, H_kv, D)
            rows_v = v[:, :, 0, None].expand(-1, -1, r, -1).transpose(1, 2).flatten(0, 1)
            pool.write(slots[i].flatten(), rows_k, rows_v)
            out = paged_decode_attention(q[:, :, 0], pool.k, pool.v, inp.tables[i, :B], lens[i],
                                         inp.per_head[i, :B], inp.hole_start[i, :B], inp.hole_end[i, :B])
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
        lh_cos, lh_sin = rope_cos_sin(model.lighthouse_inv_freq, pos, dtype)

        def rotated(i: int, q: Tensor, k: Tensor, v: Tensor, rotary: Rotary) -> Tensor:
            sparse = inp.per_head[i, :B].bool()[:, None, None, None]  # (B, 1, 1, 1): the row reads a context here
            cos, sin = torch.where(sparse, lh_cos, rotary.cos), torch.where(sparse, lh_sin, rotary.sin)
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
        for t in (inp.tables, inp.per_head, inp.hole_start, inp.hole_end):
            t[:, :bucket].zero_()
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
