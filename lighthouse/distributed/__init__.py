"""Work on one prompt across several GPUs (torch.distributed collectives only; NCCL on GPU, gloo on CPU)."""

from lighthouse.distributed.context_parallel import (
    context_parallel_causal_attention,
    context_parallel_len,
    context_parallel_lighthouse_attention,
    head_tail_chunks,
    shard_sequence,
    unshard_sequence,
)
from lighthouse.distributed.cp_prefill import context_parallel_prefill_logits

__all__ = [
    "context_parallel_causal_attention",
    "context_parallel_len",
    "context_parallel_lighthouse_attention",
    "context_parallel_prefill_logits",
    "head_tail_chunks",
    "shard_sequence",
    "unshard_sequence",
]
