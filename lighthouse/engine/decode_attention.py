"""The decode step's attention backend: the static per-step inputs (nano-vllm's context) and the attention the
model's forward calls in every layer.

One query per row (B running sequences; or Q per row, speculative decoding's verify step: `step_attention`): each
layer writes the row's new K/V at its next entry and runs one
`paged_decode_attention` over the whole batch (lengths differ; GQA; a sequence with sparse decode reads its
Lighthouse context, per query head with a hole where the op padded, in the Lighthouse layers and the full cache
elsewhere). Nothing loops over sequences on the device side.

The inputs live in static device buffers, so that the step can be captured once per batch-size bucket and replayed
(padding rows point at the scratch block and are discarded). Per layer and row: the table the layer reads and
writes (`SequenceKV.decode_table`), whether it is per query head, and its hole.

RoPE (`plan.context_rotated_apart`): where a sparse-decode context holds K rotated with the model's
`lighthouse_inv_freq` (after_select, unscaled frequencies), that row's query and new key in that layer are rotated
with those too; every other row and layer uses standard RoPE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lighthouse.engine.cache.pool import padded_tables
from lighthouse.model.llama import AttentionFn, Rotary, UnrotatedAttention
from lighthouse.ops.fused import rope_qk
from lighthouse.ops.paged_attention import paged_decode_attention
from lighthouse.ops.rope import rope_cos_sin

if TYPE_CHECKING:
    from lighthouse.engine.cache.pool import KVPool
    from lighthouse.engine.cache.sequence_kv import SequenceKV
    from lighthouse.model.llama import LlamaForCausalLM


class DecodeInputs:
    """Static device buffers of one decode step (sized for the largest batch)."""

    def __init__(self, num_layers: int, max_batch: int, max_blocks: int, num_heads: int, device: torch.device):
        z = dict(device=device, dtype=torch.int32)
        self.device = device
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

    def fill(self, kvs: list["SequenceKV"], last_tokens: list[int]) -> None:
        """Rows 0..B-1 for these sequences (their next positions, as their lengths say), the rest zero."""
        B, host = len(kvs), self.host
        positions = [kv.decode_position() for kv in kvs]
        host[:, :B] = torch.tensor([last_tokens, [p[0] for p in positions], [p[1] for p in positions]])
        host[:, B:] = 0
        self.meta.copy_(host, non_blocking=True)  # host is pinned; it is rewritten only after the step's sync
        self.fill_tables(kvs)

    def advance(self, B: int, tokens: Tensor) -> None:
        """Rows [0, B) one position on, their ids `tokens` (B,) on the device: the inputs of the step after the last
        one for the same sequences, written by the device alone (engine/overlap.py). Both entries move: a row's
        context entry is read only in the layers where it has a context (`step_attention`), so a dense row's may."""
        self.ids[:B].copy_(tokens)
        self.meta[1:, :B] += 1

    def clear(self, rows: int) -> None:
        """Rows [0, rows) as padding (before a capture)."""
        self.batch_key = None
        self.meta[:, :rows].zero_()
        for t in (self.tables, self.per_head, self.hole_start, self.hole_end):
            t[:, :rows].zero_()

    def fill_tables(self, kvs: list["SequenceKV"]) -> None:
        """Each row's per-layer tables and flags; a row that holds the same sequence as in the last step is kept
        (tables do not change while a sequence decodes: its capacity was reserved up front)."""
        key = tuple(kv.uid for kv in kvs)
        prev = self.batch_key or ()
        if key == prev:
            return
        for b, kv in enumerate(kvs):
            if b < len(prev) and prev[b] == kv.uid:
                continue
            if kv.decode_meta is None:
                kv.decode_meta = self._decode_meta(kv)
            table, per_head, hole_start, hole_end = kv.decode_meta
            self.tables[:, b, : table.shape[1]].copy_(table)
            self.per_head[:, b].copy_(per_head)
            self.hole_start[:, b].copy_(hole_start)
            self.hole_end[:, b].copy_(hole_end)
        if len(prev) > len(kvs):  # rows no longer used: the scratch block, no context
            for t in (self.tables, self.per_head, self.hole_start, self.hole_end):
                t[:, len(kvs) : min(self.ids.shape[0], len(prev))].zero_()
        self.batch_key = key

    def _decode_meta(self, kv: "SequenceKV") -> tuple[Tensor, ...]:
        """A sequence's per-layer decode inputs, made once (its tables do not change once it decodes): (L, W) table,
        (L,) per_head, (L, H) hole_start, (L,) hole_end."""
        L, H = len(kv.blocks), self.hole_start.shape[2]
        rows = [kv.decode_table(i) for i in range(L)]
        table = padded_tables([row for row, _ in rows])
        per_head = torch.tensor([ctx for _, ctx in rows], dtype=torch.int32)
        hole_start = torch.zeros(L, H, dtype=torch.int32)
        hole_end = torch.zeros(L, dtype=torch.int32)
        if kv.sparse:
            assert kv.ctx_hole_start is not None
            hole_start = kv.ctx_hole_start.cpu() * per_head[:, None]
            hole_end = per_head * kv.ctx_hole_end
        return tuple(t.to(self.device) for t in (table, per_head, hole_start, hole_end))


def decode_attention(model: "LlamaForCausalLM", pool: "KVPool", inp: DecodeInputs, B: int, *,
                     rotate_context_rows: bool) -> AttentionFn | UnrotatedAttention:
    """The attention of the decode step over rows [0, B) of `inp` (eager, or being captured): writes each row's
    new K/V and attends over its table. rotate_context_rows: context rows use `lighthouse_inv_freq` (see above)."""
    return step_attention(model, pool, inp, B, inp.pos[:B], inp.ctx_len[:B], None, 1,
                          rotate_context_rows=rotate_context_rows)


def verify_positions(n_new: Tensor, Q: int) -> Tensor:
    """(B, Q) index of each query among its row's n_new (B,) new tokens, right-aligned: -1 marks a padding query (a
    row with fewer than Q tokens puts them last)."""
    u = torch.arange(Q, device=n_new.device) - (Q - n_new)[:, None]
    return u.clamp(min=-1)


def step_attention(model: "LlamaForCausalLM", pool: "KVPool", inp: DecodeInputs, B: int, pos: Tensor, ctx: Tensor,
                   n_new: Tensor | None, Q: int, *, rotate_context_rows: bool) -> AttentionFn | UnrotatedAttention:
    """The attention of a step that appends Q tokens per row (1: decode; k + 1: speculative decoding's verify,
    causal among them) over rows [0, B) of `inp`'s tables. pos, ctx (B,): each row's first new entry in a full
    and in a context table; n_new (B,) real tokens per row, right-aligned among the Q (None: all Q real). A
    padding query writes its K/V to the scratch block and attends fewer entries; its output is discarded."""
    r, bs = pool.shape.group, pool.shape.block_size
    per_head = inp.per_head[:, :B].long()  # (L, B)
    entry = torch.where(per_head.bool(), ctx[None, :], pos[None, :])  # (L, B): where the first new K/V go
    n = torch.full_like(pos, Q) if n_new is None else n_new
    u = verify_positions(n, Q) if Q > 1 else torch.zeros_like(pos)[:, None]  # (B, Q)
    e_new = entry[..., None] + u.clamp(min=0)[None]  # (L, B, Q) entries of the new tokens
    j = torch.arange(r, device=inp.device)
    ph = per_head[..., None, None]
    e = e_new[..., None] * (1 + ph * (r - 1)) + j * ph  # (L, B, Q, r) slots in the table
    L_ = e.shape[0]
    slots = inp.tables[:, :B].long().gather(2, (e // bs).reshape(L_, B, -1)).view_as(e) * bs + e % bs
    if Q > 1:
        slots = torch.where(u[None, :, :, None] >= 0, slots, 0)  # padding queries: the scratch block
    lens = (entry + n[None, :]).to(torch.int32)  # (L, B) entries the row's last query attends

    def attention(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # q (B, H, Q, D), k/v (B, H_kv, Q, D)
        rows_k = k.transpose(1, 2)[:, :, None].expand(-1, -1, r, -1, -1).flatten(0, 2)  # (B*Q*r, H_kv, D)
        rows_v = v.transpose(1, 2)[:, :, None].expand(-1, -1, r, -1, -1).flatten(0, 2)
        pool.write(slots[i].flatten(), rows_k, rows_v)
        out = paged_decode_attention(q[:, :, 0] if Q == 1 else q, pool.k, pool.v, inp.tables[i, :B], lens[i],
                                     inp.per_head[i, :B], inp.hole_start[i, :B], inp.hole_end[i, :B])
        return out[:, :, None] if Q == 1 else out

    if not rotate_context_rows:
        return attention
    positions = pos[:, None] + u.clamp(min=0)  # (B, Q)
    lh_cos, lh_sin = rope_cos_sin(model.lighthouse_inv_freq, positions, model.model.embed_tokens.weight.dtype)

    def rotated(i: int, q: Tensor, k: Tensor, v: Tensor, rotary: Rotary) -> Tensor:
        context = inp.per_head[i, :B].bool()[:, None, None, None]  # (B, 1, 1, 1): the row reads a context here
        cos, sin = torch.where(context, lh_cos, rotary.cos), torch.where(context, lh_sin, rotary.sin)
        q, k = rope_qk(q, k, cos, sin, v.dtype)
        return attention(i, q, k, v)

    return UnrotatedAttention(rotated)
