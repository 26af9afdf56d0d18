"""Engine configuration: one dataclass, built by the CLI or the server settings, never from argv here."""

from __future__ import annotations

from dataclasses import dataclass

from lighthouse.engine.options import (DECODE_MODES, KV_MODES, PREFILL_MODES, DecodeMode, KVMode, PrefillMode, parse_decode,
                                      parse_kv_mode, parse_prefill)

__all__ = ["EngineConfig", "DEFAULT_DENSE_TAIL_TOKENS", "PREFILL_MODES", "DECODE_MODES", "KV_MODES"]

# The last 64 prompt tokens (the question, in document QA) are prefilled densely against the full cache. Measured
# on the bundled checkpoint (passkeys at 8K and 16K, bench/results/2026-11-28_cpu_default_checkpoint_serving/):
# no dense tail retrieves 9 of 10, a tail of 16, 64 or 256 tokens 10 of 10; 64 holds a one-line question whole.
DEFAULT_DENSE_TAIL_TOKENS = 64


@dataclass
class EngineConfig:
    prefill: PrefillMode = "sparse"  # default prefill path; per-request override
    decode: DecodeMode = "dense"  # default decode path; per-request override
    # default KV layout: "compact" keeps only the selected context in the Lighthouse layers (a 512K document in
    # ~14 GB instead of ~70 in bf16) and decodes sparsely, whatever `decode` says; per-request override
    kv_mode: KVMode = "full"
    dense_tail_tokens: int = DEFAULT_DENSE_TAIL_TOKENS
    max_model_len: int | None = None  # None: min(checkpoint's max_position_embeddings, what the KV budget holds)
    max_num_seqs: int = 64  # sequences decoded together in one batched step
    kv_cache_bytes: int | None = None  # None: a fraction of free device memory (CUDA) or 2 GiB (CPU)
    kv_cache_fraction: float = 0.75  # of free CUDA memory after the model is loaded, when kv_cache_bytes is None
    enable_prefix_caching: bool = True  # keep finished prompts' K/V for later prompts that start the same way
    prefix_cache_min_tokens: int = 256  # shorter prompts get no prefix-cache entry
    block_size: int = 128  # KV cache positions per block (a power of two, 16..1024)
    enforce_eager: bool = False  # True: no CUDA graphs for the decode step (always eager on the CPU)
    cuda_graph_max_batch: int | None = None  # largest captured decode batch (None: max_num_seqs)
    # A long prefill runs in pieces of about this many milliseconds while other sequences decode, a decode step of
    # those between pieces (their inter-token latency stays near it); None: a prefill runs whole, others wait.
    max_prefill_chunk_ms: float | None = 100.0
    # A prompt of at most this many tokens at the head of the queue is prefilled whole between two pieces of a long
    # prefill in progress instead of waiting for its end (0: strictly one prefill at a time)
    express_prefill_tokens: int = 4096
    prefill_chunk_tokens: int = 32768  # token chunk of a prefill's projections and MLP (bounds its activations)
    host_cache_bytes: int = 0  # host-memory tier of the prefix cache (0: off): evicted documents wait there
    kv_cache_dtype: str = "auto"  # "auto": the model's dtype; "fp8_e4m3": float8 K/V, half the bytes of bf16

    def __post_init__(self) -> None:
        parse_prefill(self.prefill)
        parse_decode(self.decode)
        parse_kv_mode(self.kv_mode)
        if self.dense_tail_tokens < 0:
            raise ValueError(f"dense_tail_tokens must be >= 0, got {self.dense_tail_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_prefill_chunk_ms is not None and not self.max_prefill_chunk_ms > 0:
            raise ValueError(f"max_prefill_chunk_ms must be > 0 (or None), got {self.max_prefill_chunk_ms}")
        from lighthouse.engine.kv_cache import KV_CACHE_DTYPES

        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {sorted(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.host_cache_bytes < 0:
            raise ValueError(f"host_cache_bytes must be >= 0, got {self.host_cache_bytes}")
        if self.express_prefill_tokens < 0:
            raise ValueError(f"express_prefill_tokens must be >= 0, got {self.express_prefill_tokens}")
        if self.prefill_chunk_tokens < 16:
            raise ValueError(f"prefill_chunk_tokens must be >= 16, got {self.prefill_chunk_tokens}")
        if self.block_size < 16 or self.block_size > 1024 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two in [16, 1024], got {self.block_size}")
