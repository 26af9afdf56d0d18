"""Engine configuration: one dataclass, built by the CLI or the server settings, never from argv here."""

from __future__ import annotations

from dataclasses import dataclass

PREFILL_MODES = ("sparse", "dense")
DECODE_MODES = ("dense", "sparse")

# The last 64 prompt tokens (the question, in document QA) are prefilled densely against the full cache. Measured
# on the bundled checkpoint (passkeys at 8K and 16K, bench/results/2026-11-28_cpu_default_checkpoint_serving/):
# no dense tail retrieves 9 of 10, a tail of 16, 64 or 256 tokens 10 of 10; 64 holds a one-line question whole.
DEFAULT_DENSE_TAIL_TOKENS = 64


@dataclass
class EngineConfig:
    prefill: str = "sparse"  # default prefill path; per-request override
    decode: str = "dense"  # default decode path; per-request override
    dense_tail_tokens: int = DEFAULT_DENSE_TAIL_TOKENS
    max_model_len: int | None = None  # None: min(checkpoint's max_position_embeddings, what the KV budget holds)
    max_num_seqs: int = 64  # sequences decoded together in one batched step
    kv_cache_bytes: int | None = None  # None: a fraction of free device memory (CUDA) or 2 GiB (CPU)
    kv_cache_fraction: float = 0.75  # of free CUDA memory after the model is loaded, when kv_cache_bytes is None
    enable_prefix_caching: bool = True  # keep finished prompts' K/V for later prompts that start the same way
    prefix_cache_min_tokens: int = 256  # shorter prompts get no prefix-cache entry

    def __post_init__(self) -> None:
        if self.prefill not in PREFILL_MODES:
            raise ValueError(f"prefill must be one of {PREFILL_MODES}, got {self.prefill!r}")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {self.decode!r}")
        if self.dense_tail_tokens < 0:
            raise ValueError(f"dense_tail_tokens must be >= 0, got {self.dense_tail_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
