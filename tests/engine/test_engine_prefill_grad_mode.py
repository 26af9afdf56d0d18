"""A prefill stopped between its pieces leaves the caller's grad mode as it was (a PrefillTask is a generator: a
piece that ended inside `torch.no_grad()` used to leave grad mode off in the caller's thread until the abandoned
task was garbage-collected, and later autograd in that thread failed)."""

from __future__ import annotations

import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.prefill import PrefillTask
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.presets import model_preset


def test_grad_mode_is_unchanged_between_pieces_and_after_an_abandoned_prefill():
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_preset("tiny")).eval()
    eng = LLMEngine(model, None, EngineConfig(kv_cache_bytes=16 << 20, block_size=16, max_prefill_chunk_ms=None))
    prompt = torch.randint(32, 127, (700,), generator=torch.Generator().manual_seed(0)).tolist()
    for prefill in ("dense", "sparse"):
        req = eng.make_request(prefill, prompt, SamplingParams(max_tokens=2),
                               RequestOptions(prefill, "dense", 32, cache_prompt=False))
        kv = eng.kv.allocate(req.reservation)
        task = PrefillTask(model, eng.kv.pool, kv, prompt, req.plan, chunk_tokens=64)
        pieces = 0
        while task.run(budget_s=0.0) is None:  # every unit of work its own piece
            pieces += 1
            assert torch.is_grad_enabled(), f"grad mode off after piece {pieces} of a {prefill} prefill"
            if pieces == 20:
                break  # abandon it mid-way, as an abort does
        eng.kv.free(kv)
        del task
        assert torch.is_grad_enabled()
