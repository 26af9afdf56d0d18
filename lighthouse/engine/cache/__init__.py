"""The KV cache: the pool of blocks (pool.py), their allocator (allocator.py), what each layer of a sequence keeps
(spec.py), a sequence's tables (sequence_kv.py), the budget and the tables' lifecycle (manager.py), the prefix cache
(prefix_cache.py) and its host-memory tier (host_tier.py). Nothing here knows about requests or the model."""
