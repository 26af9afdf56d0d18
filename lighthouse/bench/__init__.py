"""Benchmarks: `lighthouse bench attention` (the attention op against dense and official baselines)."""
