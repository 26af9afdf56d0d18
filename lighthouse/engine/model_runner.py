"""The model runner: runs the model over what the scheduler picked, prefill pieces eagerly and the batched decode
step from captured CUDA graphs, one per batch-size bucket (gpt-fast's two entry points over one model).

Both run the model's own layers; they differ only in the attention backend: the prefill's (prefill_backend.py,
driven by prefill.py through the model's chunked forward) and the decode step's (decode_attention.py, through the
model's batch forward).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from lighthouse.engine.decode_attention import DecodeInputs, decode_attention, step_attention, verify_positions
from lighthouse.engine.plan import PrefillPlan, context_rotated_apart
from lighthouse.engine.prefill import DEFAULT_CHUNK_TOKENS, PrefillTask

if TYPE_CHECKING:
    from lighthouse.engine.cache.manager import KVCacheManager
    from lighthouse.engine.cache.sequence_kv import SequenceKV
    from lighthouse.model.llama import LlamaForCausalLM

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
VERIFY_QUERIES = (2, 3, 5, 9)  # queries per row of a captured verify step (k + 1 for k drafts, rounded up)
VERIFY_GRAPH_LOGITS_BYTES = 256 << 20  # no graph whose (bucket, queries, V) float32 logits would pass this


def graph_buckets(max_batch: int) -> list[int]:
    """Captured batch sizes: the defaults up to max_batch, and max_batch itself."""
    return sorted({b for b in DEFAULT_BUCKETS if b < max_batch} | {max_batch})


@dataclass
class _Graph:
    graph: "torch.cuda.CUDAGraph"
    logits: Tensor  # (bucket, V) float32, written by every replay


class ModelRunner:
    def __init__(self, model: "LlamaForCausalLM", kv: "KVCacheManager", *, max_batch: int, max_model_len: int,
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
        self.rotate_context_rows = context_rotated_apart(model.config)  # context rows rotate with other frequencies
        self.max_blocks = -(-max_model_len * self.r // self.bs) + 1
        self.inputs = DecodeInputs(s.num_layers, max_batch, self.max_blocks, s.num_heads, s.device)
        self.use_graphs = s.device.type == "cuda" and not enforce_eager
        self.graph_max_batch = min(graph_max_batch or max_batch, max_batch)
        self.graphs: dict[int, _Graph] = {}
        self.verify_graphs: dict[tuple[int, int], _Graph] = {}  # (batch bucket, queries per row) -> captured verify
        self._verify_meta: dict[int, Tensor] = {}  # queries per row -> static (max_batch, Q + 3) int64 inputs
        self._verify_host: dict[int, Tensor] = {}  # ... and their host side
        self._graph_pool = None

    # ---- prefill ----------------------------------------------------------------------------------------------
    def start_prefill(self, kv: "SequenceKV", prompt_ids: Tensor, plan: PrefillPlan, *, cached: int,
                      should_abort: Callable[[], bool],
                      on_progress: Callable[[float], None] | None = None) -> PrefillTask:
        """The prompt's prefill into kv's blocks, to be run in pieces (`task.run(budget_s)` -> logits or None)."""
        return PrefillTask(self.model, self.pool, kv, prompt_ids, plan, cached=cached, should_abort=should_abort,
                           chunk_tokens=self.prefill_chunk_tokens, on_progress=on_progress)

    # ---- decode -----------------------------------------------------------------------------------------------
    def decode(self, kvs: list["SequenceKV"], last_tokens: list[int]) -> Tensor:
        """Write one token per sequence at its next position; next-token logits (B, V) float32. The lengths
        are not advanced here: the scheduler commits them once the step's tokens are sampled (kv.commit_token())."""
        self.inputs.fill(kvs, last_tokens)
        return self._decode_rows(len(kvs))

    def decode_next(self, B: int, tokens: Tensor) -> Tensor:
        """The decode step after the last one, for the same B sequences: `tokens` (B,), the last step's sampled ids
        still on the device, at the positions after it; nothing read from or waited for on the host."""
        self.inputs.advance(B, tokens)
        return self._decode_rows(B)

    def _decode_rows(self, B: int) -> Tensor:
        bucket = self._bucket(B)
        if bucket is None:
            return self._forward(B)
        g = self.graphs.get(bucket) or self._capture(bucket)
        g.graph.replay()
        return g.logits[:B]

    def verify(self, kvs: list["SequenceKV"], tokens: list[list[int]]) -> Tensor:
        """Speculative decoding's verify step: each row's tokens (its last sampled token, then its drafts) written at
        its next positions in one forward, causal among them; (B, Q, V) float32 logits with Q the longest row's
        count, each row's right-aligned (row b's are [:, Q - len(tokens[b]):]). Lengths are not advanced here: the
        scheduler commits the accepted ones (kv.commit_token(n)), so a rejected draft's K/V is overwritten later.
        On CUDA it replays a graph captured for (batch bucket, queries bucket): rows padded to the bucket (no
        tokens: they write to the scratch block and attend nothing) and each row's tokens right-aligned in more
        queries (padding queries the same)."""
        B, Q = len(kvs), max(len(t) for t in tokens)
        rows, Qs, graphed = self._verify_shape(B, Q)
        self.inputs.fill_tables(kvs)
        rows_meta = [[0] * (Qs - len(t)) + t + [kv.length, kv.ctx_len, len(t)] for kv, t in zip(kvs, tokens)]
        # ids (right-aligned), then the full position, the context entry (kv.decode_position()) and the count
        host = self._verify_host.get(Qs)
        if host is None or host.shape[0] < rows:  # pinned, reused: rewritten only after the last step's host read
            host = self._verify_host[Qs] = torch.zeros(max(rows, self.inputs.ids.shape[0]), Qs + 3, dtype=torch.long,
                                                       pin_memory=self.device.type == "cuda")
        host[:B] = torch.tensor(rows_meta)
        host[B:rows] = 0
        host = host[:rows]
        if not graphed:
            logits = self._verify_forward(host.to(self.device, non_blocking=True), rows, Qs)
        else:
            meta = self._verify_meta.get(Qs)
            if meta is None:
                meta = self._verify_meta[Qs] = torch.zeros(self.inputs.ids.shape[0], Qs + 3, dtype=torch.long,
                                                           device=self.device)
            meta[:rows].copy_(host, non_blocking=True)
            g = self.verify_graphs.get((rows, Qs)) or self._capture_verify(rows, Qs)
            g.graph.replay()
            logits = g.logits
        return logits[:B, Qs - Q :]

    def _verify_shape(self, B: int, Q: int) -> tuple[int, int, bool]:
        """(rows, queries per row, graphed) of a verify step of B rows of at most Q tokens."""
        bucket = self._bucket(B)
        Qs = next((q for q in VERIFY_QUERIES if q >= Q), None)
        vocab = self.model.config.vocab_size
        if bucket is None or Qs is None or bucket * Qs * vocab * 4 > VERIFY_GRAPH_LOGITS_BYTES:
            return B, Q, False
        return bucket, Qs, True

    def _verify_forward(self, meta: Tensor, rows: int, Q: int) -> Tensor:
        """The verify step over `rows` rows of meta (rows, Q + 3) (eager, or being captured): (rows, Q, V)."""
        meta = meta[:rows]
        ids, pos, ctx, n = meta[:, :Q], meta[:, Q], meta[:, Q + 1], meta[:, Q + 2]
        attention = step_attention(self.model, self.pool, self.inputs, rows, pos, ctx, n, Q,
                                   rotate_context_rows=self.rotate_context_rows)
        positions = pos[:, None] + verify_positions(n, Q).clamp(min=0)
        with torch.no_grad():
            out = self.model(ids, positions=positions, attention=attention, logits_to_keep=Q)
        return out.logits.float()

    def _bucket(self, B: int) -> int | None:
        if not self.use_graphs or B > self.graph_max_batch:
            return None
        return next(b for b in graph_buckets(self.graph_max_batch) if b >= B)

    def _forward(self, B: int) -> Tensor:
        """The decode step over the first B rows of the static inputs (eager, or being captured)."""
        inp = self.inputs
        attention = decode_attention(self.model, self.pool, inp, B, rotate_context_rows=self.rotate_context_rows)
        with torch.no_grad():
            out = self.model(inp.ids[:B, None], positions=inp.pos[:B, None], attention=attention, logits_to_keep=1)
        return out.logits[:, -1].float()

    # ---- CUDA graphs ------------------------------------------------------------------------------------------
    def capture_all(self) -> None:
        """Capture every bucket now (at startup), largest first so that smaller ones reuse its memory."""
        if not self.use_graphs:
            return
        for b in sorted(graph_buckets(self.graph_max_batch), reverse=True):
            self._capture(b)
        log.info("captured the decode step for batch sizes %s", sorted(self.graphs))

    def _capture(self, bucket: int) -> _Graph:
        self.inputs.clear(bucket)
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

    def _capture_verify(self, rows: int, Q: int) -> _Graph:
        """Capture the verify step of (rows, Q) at its first use, over the static inputs `verify` just filled (the
        warm-up runs write only the rows' next positions, which the replay then writes again)."""
        meta = self._verify_meta[Q]
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # compile kernels, pick cuBLAS plans
                self._verify_forward(meta, rows, Q)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool):
            logits = self._verify_forward(meta, rows, Q)
        self.verify_graphs[rows, Q] = _Graph(graph, logits)
        log.info("captured the verify step for batch %d x %d queries", rows, Q)
        return self.verify_graphs[rows, Q]
