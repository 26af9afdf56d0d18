"""Timing of GPU work: CUDA-event timings (attention_bench, triton_stages_bench) and a host sync for wall-clock
benchmarks that also run on the CPU (memory_bench, documents_bench)."""

from __future__ import annotations

import torch


def time_ms(fn, reps: int = 10, warmup: int = 2) -> float:
    """Median of `reps` CUDA-event timings of fn() after `warmup` calls, in ms."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


def sync() -> None:
    """Wait for the GPU's queued work (no-op without CUDA), so that a host clock read after it counts that work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
