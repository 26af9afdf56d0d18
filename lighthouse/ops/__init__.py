"""Attention ops: Lighthouse (pure-PyTorch reference and, on GPU, the Triton fast path) and dense inner attention."""

from lighthouse.ops.attention import attention_with_cache, causal_attention, repeat_kv

# The public op: dispatch.py picks Triton on CUDA and the pure-PyTorch reference elsewhere (backend= or
# LIGHTHOUSE_ATTENTION_BACKEND overrides); the reference stays importable as lighthouse_attention_ref.
from lighthouse.ops.dispatch import lighthouse_attention, lighthouse_attention_with_context
from lighthouse.ops.lighthouse_ref import (
    build_pyramid,
    level_offsets,
    lighthouse_select,
    selected_length,
)
from lighthouse.ops.lighthouse_ref import lighthouse_attention as lighthouse_attention_ref
from lighthouse.ops.paged_attention import paged_decode_attention, paged_decode_attention_ref
from lighthouse.ops.validation import min_seq_len as lighthouse_min_seq_len
from lighthouse.ops.validation import padded_len

__all__ = [
    "attention_with_cache",
    "build_pyramid",
    "causal_attention",
    "level_offsets",
    "lighthouse_attention",
    "lighthouse_attention_ref",
    "lighthouse_attention_with_context",
    "lighthouse_min_seq_len",
    "lighthouse_select",
    "padded_len",
    "paged_decode_attention",
    "paged_decode_attention_ref",
    "repeat_kv",
    "selected_length",
]
