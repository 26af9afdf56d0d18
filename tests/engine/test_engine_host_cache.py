"""The host-memory tier of the prefix cache: a document evicted from the device moves to host memory and comes
back on its next question with the same logits as if it had never left; the tier's budget and metrics."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.cache import host_tier as host_cache
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.presets import model_preset

BLOCK_BYTES = 16 * 2 * 2 * 2 * 16 * 4  # tiny preset: 2 layers x 2 KV heads of 16, fp32, K and V, 16 positions
DENSE = RequestOptions(prefill="dense", cache_prompt=True)


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(32, 127, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


A, B, Q1, Q2 = ids(600, 1), ids(600, 2), ids(20, 3), ids(20, 4)


def engine(blocks: int, host_bytes: int) -> LLMEngine:
    torch.manual_seed(0)
    model = LlamaForCausalLM(model_preset("tiny")).eval()
    return LLMEngine(model, None, EngineConfig(kv_cache_bytes=blocks * BLOCK_BYTES, block_size=16,
                                               host_cache_bytes=host_bytes, max_prefill_chunk_ms=None))


def ask(eng: LLMEngine, prompt: list[int], options: RequestOptions = DENSE) -> tuple[list[float], int]:
    """Greedy, 4 tokens with logprobs: (their logprobs, prompt tokens reused from the prefix cache)."""
    eng.add_request(f"r{id(prompt)}-{len(eng.scheduler.running)}-{torch.rand(1).item()}", prompt,
                    SamplingParams(max_tokens=4, temperature=0.0, logprobs=0), options)
    lps, cached = [], None
    while eng.has_unfinished():
        for out in eng.step():
            lps += [e.logprob for e in out.logprobs or []]
            if out.prefill is not None:
                cached = out.prefill.cached_tokens
    return lps, cached


@pytest.mark.parametrize("copy_blocks,segment_bytes", [(2048, 1 << 30), (3, 1 << 30), (2048, 5 * 1024)])
def test_an_evicted_document_returns_from_host_memory_with_the_same_logits(copy_blocks, segment_bytes, monkeypatch):
    """One copy, many pieces (as a 512K document takes), or a host pool of many small segments (a block's K is
    2 KiB here: two blocks per segment)."""
    monkeypatch.setattr(host_cache, "COPY_BLOCKS", copy_blocks)
    monkeypatch.setattr(host_cache, "SEGMENT_BYTES", segment_bytes)
    roomy = engine(400, 0)  # everything stays on the device
    tight = engine(64, 64 * BLOCK_BYTES)  # one 620-token document at a time; the host tier holds both
    for eng in (roomy, tight):
        ask(eng, A + Q1)
        ask(eng, B + Q1)  # in the tight engine A's entry is evicted to make room: it goes to host memory
    host = tight.prefix_cache.host
    assert len(host.entries) == 1 and host.bytes_to_host > 0 and 0 < host.usage_ratio <= 1
    want, cached_roomy = ask(roomy, A + Q2)
    got, cached_tight = ask(tight, A + Q2)
    assert cached_roomy == cached_tight >= len(A)  # the same reuse, from the host tier
    assert got == want  # the same bytes: the same logits
    stats = tight.stats()
    assert stats["host_cache_hit_tokens"] == cached_tight and stats["host_cache_bytes_to_device"] > 0
    assert tight.kv.usage_ratio == 0.0  # nothing leaked: requests hold no blocks once finished


def test_without_a_host_tier_the_evicted_document_is_prefilled_again():
    eng = engine(64, 0)
    ask(eng, A + Q1)
    ask(eng, B + Q1)
    assert ask(eng, A + Q2)[1] == 0 and eng.prefix_cache.host is None


def test_the_tier_evicts_its_least_recently_used_entries_within_its_budget():
    eng = engine(64, 45 * BLOCK_BYTES)  # room for one 39-block document, not two
    for doc in (A, B, ids(600, 5)):
        ask(eng, doc + Q1)
    host = eng.prefix_cache.host
    assert len(host.entries) == 1 and host.used_bytes <= host.budget_bytes
    assert host.entries[0].tokens[:600].tolist() == B  # A went first
    assert ask(eng, B + Q2)[1] >= len(B) and ask(eng, A + Q2)[1] == 0


def test_host_cache_metrics_are_exported(settings_for, tiny_checkpoint, loopback_server):
    import httpx

    settings = settings_for(tiny_checkpoint, host_cache_gb=0.01)
    with loopback_server(settings) as srv:
        text = httpx.get(srv.url + "/metrics").text
    assert "lighthouse_host_cache_usage_ratio" in text and "lighthouse_host_cache_hit_tokens_total" in text


def test_runs_of_host_blocks_break_at_gaps_limits_and_segments():
    assert host_cache.runs([1, 2, 3, 7, 8, 9, 10], 10, 100) == [(0, 1, 3), (3, 7, 4)]
    assert host_cache.runs([1, 2, 3, 4, 5], 2, 100) == [(0, 1, 2), (2, 3, 2), (4, 5, 1)]
    assert host_cache.runs([3, 4, 5, 6], 10, 5) == [(0, 3, 2), (2, 5, 2)]  # ids 5.. are the next segment


COMPACT = RequestOptions(prefill="sparse", decode="sparse", kv_mode="compact", cache_prompt=True)


def test_an_evicted_compact_document_returns_from_host_memory_with_its_context():
    """A compact session's entry (the full-attention layers' caches and each Lighthouse layer's selected context)
    moves to the host tier when evicted, and a compact follow-up gets it back: the same reuse and the same logits
    as from an entry that never left the device (it was dropped before: prefilled again)."""
    roomy = engine(400, 0)
    tight = engine(212, 200 * BLOCK_BYTES)  # one compact document (192 blocks of one layer) + a request (233)
    for eng in (roomy, tight):
        ask(eng, A + Q1, COMPACT)
        ask(eng, B + Q1, COMPACT)  # in the tight engine A's compact entry goes to host memory
    host = tight.prefix_cache.host
    assert [e.compact for e in host.entries] == [True] and host.entries[0].tokens[:600].tolist() == A
    spans = host.entries[0].ctx_spans  # each selected entry's window (citations) travels with it
    assert spans is not None and spans.any()
    want, cached_roomy = ask(roomy, A + Q2, COMPACT)
    got, cached_tight = ask(tight, A + Q2, COMPACT)
    assert cached_roomy == cached_tight >= len(A)
    assert got == want
    back = [e for e in tight.prefix_cache.entries if e.tokens[:600].tolist() == A]  # restored, and its follow-up's
    assert back and all(e.ctx_spans is spans for e in back)
    assert tight.stats()["host_cache_bytes_to_device"] > 0 and tight.kv.usage_ratio == 0.0
    assert tight.prefix_cache.match(torch.tensor(B + Q2), 0) is None  # a dense request never takes a compact entry


def test_a_host_entry_that_could_never_come_back_with_the_request_is_skipped_not_waited_for():
    """The budget holds the request alone but not with its document restored beside it: it prefills from scratch
    (it used to wait for room that could never come)."""
    eng = engine(41, 64 * BLOCK_BYTES)  # 81 blocks of one layer: a 624-position request takes 80
    ask(eng, A + Q1)
    ask(eng, B + Q1)  # A's entry (76 blocks) goes to the host tier
    assert len(eng.prefix_cache.host.entries) == 1
    lps, cached = ask(eng, A + Q2)
    assert cached == 0 and len(lps) == 4
