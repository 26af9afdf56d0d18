"""Where the KV cache used to live: it is the package `lighthouse.engine.cache` now (pool, allocator, per-layer
spec, sequence tables, prefix cache, host tier). These names are re-exported for modules not yet moved over."""

from lighthouse.engine.cache.allocator import SCRATCH_BLOCK, BlockAllocator
from lighthouse.engine.cache.manager import KVCacheManager, default_budget_bytes
from lighthouse.engine.cache.pool import FP8, FP8_MAX, KV_CACHE_DTYPES, KVPool, as_bytes, quantize_fp8
from lighthouse.engine.cache.sequence_kv import SequenceKV
from lighthouse.engine.cache.spec import CacheShape, KVSpec, LayerSpec, Reservation

__all__ = ["SCRATCH_BLOCK", "BlockAllocator", "KVCacheManager", "default_budget_bytes", "FP8", "FP8_MAX",
           "KV_CACHE_DTYPES", "KVPool", "as_bytes", "quantize_fp8", "SequenceKV", "CacheShape", "KVSpec", "LayerSpec",
           "Reservation"]
