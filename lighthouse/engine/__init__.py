"""Inference engine: prefill (sparse or dense), decode (dense or sparse), sampling, KV cache, scheduling.

No HTTP here. `LLM` for offline generation, `LLMEngine` (synchronous, token ids) and `AsyncEngine` (a step-loop
thread with per-request asyncio queues) for the server.
"""

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.errors import EngineError, EngineStopped, InvalidRequest, QueueFull, RequestFailed
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.request import PrefillInfo, RequestOutput, TokenLogprob

__all__ = [
    "EngineConfig", "EngineError", "EngineStopped", "InvalidRequest", "QueueFull", "RequestFailed",
    "SamplingParams", "PrefillInfo", "RequestOutput", "TokenLogprob", "LLM", "LLMEngine", "AsyncEngine",
]


def __getattr__(name):  # the heavy parts load on first use
    if name == "LLM":
        from lighthouse.engine.llm import LLM
        return LLM
    if name == "LLMEngine":
        from lighthouse.engine.engine import LLMEngine
        return LLMEngine
    if name == "AsyncEngine":
        from lighthouse.engine.async_engine import AsyncEngine
        return AsyncEngine
    raise AttributeError(name)
