"""A prefill run in pieces: the same logits and cache as in one pass, and decode steps of the running sequences
between the pieces (the scheduler interleaves them; an abort stops the prefill between pieces)."""

from __future__ import annotations

import pytest
import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.prefill import PrefillTask
from lighthouse.engine.prefill_attention import query_chunks
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.config import LighthouseConfig
from lighthouse.model.presets import model_preset
from lighthouse.ops.attention import attention_with_cache, causal_attention

N = 1100  # past the op's 512-token minimum and not a multiple of its length unit (the op pads)


def three_layer_model() -> LlamaForCausalLM:
    """tiny (GQA 4/2) with 3 layers: layer 0 dense, layers 1-2 Lighthouse (L2 p4 k128 from 512 tokens); fp32."""
    cfg = model_preset("tiny")
    cfg.num_hidden_layers = 3
    cfg.lighthouse = LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0], min_seq_len=512)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return three_layer_model()


def engine(model, **config) -> LLMEngine:
    return LLMEngine(model, None, EngineConfig(**{"kv_cache_bytes": 32 << 20, "block_size": 16, "max_prefill_chunk_ms": None, **config}))


def ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


def prefill(eng: LLMEngine, prompt: list[int], opts: RequestOptions, *, chunk_tokens: int, budget: float | None,
            read):
    """(logits, the cache of every layer [(K, V) of positions [0, N)], context entries or None, pieces)."""
    req = eng.make_request(f"p{chunk_tokens}-{budget}", prompt, SamplingParams(max_tokens=4), opts)
    kv = eng.kv.allocate(req.reservation)
    task = PrefillTask(eng.model, eng.kv.pool, kv, prompt, req.plan, chunk_tokens=chunk_tokens)
    pieces = 1
    while (logits := task.run(budget)) is None:
        pieces += 1
    cache, ctx = read(eng, kv, len(prompt), req.plan)  # the conftest fixture prefilled_cache
    eng.kv.free(kv)
    return logits, cache, ctx, pieces


CASES = [  # (prefill, decode, dense tail)
    ("dense", "dense", 0), ("sparse", "dense", 0), ("sparse", "dense", 100), ("sparse", "sparse", 0),
    ("sparse", "sparse", 100),
]


@pytest.mark.parametrize("prefill_mode,decode,tail", CASES)
def test_a_prefill_in_pieces_gives_the_logits_and_cache_of_one_pass(model, prefill_mode, decode, tail, prefilled_cache):
    eng = engine(model)
    opts = RequestOptions(prefill_mode, decode, tail, cache_prompt=False)
    prompt = ids(N, 1)
    whole = prefill(eng, prompt, opts, chunk_tokens=1 << 15, budget=None, read=prefilled_cache)
    pieces = prefill(eng, prompt, opts, chunk_tokens=128, budget=0.0, read=prefilled_cache)  # every unit of work its own piece
    assert whole[3] == 1
    # per layer: projections (9 token chunks), >= 2 attention units, o_proj + MLP; the embedding, the logits
    assert pieces[3] >= 3 * 4 + 2, pieces[3]
    torch.testing.assert_close(pieces[0], whole[0], rtol=1e-5, atol=1e-5)
    for (k1, v1), (k2, v2) in zip(pieces[1], whole[1]):
        torch.testing.assert_close(k1, k2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)
    assert (pieces[2] is None) == (whole[2] is None) == (decode == "dense")
    for (k1, v1), (k2, v2) in zip(pieces[2] or [], whole[2] or []):
        torch.testing.assert_close(k1, k2, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefill_mode", ["dense", "sparse"])
def test_one_pass_equals_the_models_own_forward(model, prefill_mode, prefilled_cache):
    """Tail 0: the engine's prefill (either chunking) is the model's forward: dense, or the op in layers 1-2."""
    eng = engine(model)
    prompt = ids(N, 2)
    ref = model(torch.tensor([prompt]), dense=prefill_mode == "dense", logits_to_keep=1).logits[0, -1]
    for chunk in (1 << 15, 96):
        got = prefill(eng, prompt, RequestOptions(prefill_mode, "dense", 0, cache_prompt=False), chunk_tokens=chunk,
                      budget=None, read=prefilled_cache)
        torch.testing.assert_close(got[0], ref.float(), rtol=1e-5, atol=1e-5)


def test_query_chunks_cover_the_queries_once_with_even_work():
    for start, end, pairs in [(0, 524288, 8 * 32768**2), (0, 1100, 5000), (524288, 524352, 1 << 30), (100, 101, 1)]:
        chunks = query_chunks(start, end, pairs)
        assert chunks[0][0] == start and chunks[-1][1] == end
        assert all(a < b for a, b in chunks) and all(b == a2 for (_, b), (a2, _) in zip(chunks, chunks[1:]))
        assert all(a % 128 == 0 for a, _ in chunks[1:])
    chunks = query_chunks(0, 524288, 8 * 32768**2)
    work = [(b * b - a * a) / 2 for a, b in chunks]
    assert len(chunks) == 16 and max(work) < 1.02 * min(work) and max(work) <= 1.02 * 8 * 32768**2, work
    assert len(query_chunks(0, 32768, 8 * 32768**2)) == 1  # a short prompt: one causal call


def test_attention_of_a_query_chunk_equals_those_rows_of_full_causal_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 300, 16), torch.randn(1, 2, 300, 16), torch.randn(1, 2, 300, 16)
    full = causal_attention(q, k, v)
    for c0, c1 in [(0, 100), (100, 237), (237, 300), (299, 300)]:
        got = attention_with_cache(q[:, :, c0:c1], k[:, :, :c1], v[:, :, :c1])
        torch.testing.assert_close(got, full[:, :, c0:c1], rtol=1e-5, atol=1e-5)


# ---- the scheduler ----------------------------------------------------------------------------------------------
def traced(eng: LLMEngine) -> list[str]:
    """Records each step's work: "P" (a prefill piece), "E" (an express prefill, whole) or "D" (a decode step)."""
    trace: list[str] = []
    inner_p, inner_d = eng._prefill, eng._decode
    eng._prefill = lambda req, whole=False: (trace.append("E" if whole else "P"), inner_p(req, whole=whole))[1]
    eng._decode = lambda batch: (trace.append("D"), inner_d(batch))[1]
    return trace


def run(eng: LLMEngine, after_first: list | None = None, abort_long_after: int | None = None) -> dict:
    """Greedy: "short" (40 tokens) first; once it has a token, "long" (N-token prompt, 3 tokens) is added.
    Returns {request: [tokens]}, {request: finish_reason}, and the trace of steps after "long" came."""
    greedy = dict(temperature=0.0, ignore_eos=True)
    eng.add_request("short", ids(40, 3), SamplingParams(max_tokens=40, **greedy))
    tokens, reasons = {"short": [], "long": []}, {}
    trace = traced(eng)
    long_added, pieces = False, 0
    while eng.has_unfinished():
        if not long_added and tokens["short"]:
            eng.add_request("long", ids(N, 4), SamplingParams(max_tokens=3, **greedy),
                            RequestOptions("sparse", "dense", 100, cache_prompt=False))
            long_added, trace[:] = True, []
        before = len(trace)
        for out in eng.step():
            tokens[out.request_id] += out.token_ids
            if out.finished:
                reasons[out.request_id] = out.finish_reason
        pieces += trace[before:] == ["P"] and long_added
        if abort_long_after is not None and pieces == abort_long_after:
            eng.abort_request("long")
            abort_long_after = None
    return {"tokens": tokens, "reasons": reasons, "trace": "".join(trace)}


def test_decode_steps_of_running_sequences_come_between_the_pieces_of_a_long_prefill(model):
    alone = run(engine(model, max_prefill_chunk_ms=None))
    assert alone["trace"].count("P") == 1, alone["trace"]  # the whole prefill in one step
    pieces = run(engine(model, max_prefill_chunk_ms=1e-6, prefill_chunk_tokens=128))  # every unit a piece
    trace = pieces["trace"]
    prefill_part = trace[: trace.rindex("P") + 1]
    assert prefill_part.count("P") >= 10, trace
    assert "PP" not in prefill_part, trace  # never two pieces in a row while "short" waits to decode
    assert prefill_part.count("D") >= prefill_part.count("P") - 1, trace
    assert pieces["tokens"] == alone["tokens"]  # exact: greedy tokens of both requests unchanged
    assert pieces["reasons"] == {"short": "length", "long": "length"}


def test_an_abort_stops_a_prefill_between_pieces_and_frees_its_blocks(model):
    eng = engine(model, max_prefill_chunk_ms=1e-6, prefill_chunk_tokens=128)
    alone = run(engine(model, max_prefill_chunk_ms=None))
    got = run(eng, abort_long_after=3)
    assert got["reasons"] == {"short": "length", "long": "abort"}
    assert got["tokens"]["long"] == [] and got["tokens"]["short"] == alone["tokens"]["short"]
    assert eng.kv.usage_ratio == 0.0 and eng.scheduler.prefilling is None


def run_with_question(eng: LLMEngine, after_pieces: int = 1) -> dict:
    """"long" (N-token prompt) alone; after its `after_pieces`-th piece a 40-token question "q" arrives. Greedy."""
    greedy = dict(temperature=0.0, ignore_eos=True)
    trace = traced(eng)
    eng.add_request("long", ids(N, 4), SamplingParams(max_tokens=3, **greedy),
                    RequestOptions("sparse", "dense", 100, cache_prompt=False))
    tokens, first_token_at = {"long": [], "q": []}, {}
    while eng.has_unfinished():
        if trace.count("P") == after_pieces and "q_added" not in first_token_at:
            first_token_at["q_added"] = len(trace)
            eng.add_request("q", ids(40, 5), SamplingParams(max_tokens=5, **greedy))
        for out in eng.step():
            if out.token_ids and out.request_id not in first_token_at:
                first_token_at[out.request_id] = len(trace)
            tokens[out.request_id] += out.token_ids
    return {"tokens": tokens, "first": first_token_at, "trace": "".join(trace)}


def test_a_short_prompt_is_prefilled_between_the_pieces_of_a_long_one_and_answers_first(model):
    """Express prefill: the question arriving during a long prefill gets its first token before the long prompt
    does, and every token is what each request gives alone; with express prefills off it waits for the long one."""
    pieces = dict(max_prefill_chunk_ms=1e-6, prefill_chunk_tokens=128)
    got = run_with_question(engine(model, **pieces))
    assert "E" in got["trace"] and got["trace"].index("E") < got["trace"].rindex("P"), got["trace"]
    assert got["first"]["q"] < got["first"]["long"], got
    off = run_with_question(engine(model, express_prefill_tokens=0, **pieces))
    assert "E" not in off["trace"] and off["first"]["q"] > off["first"]["long"], off
    alone = {}
    for name, prompt, n in (("long", ids(N, 4), 3), ("q", ids(40, 5), 5)):
        eng = engine(model)
        opts = RequestOptions("sparse", "dense", 100, cache_prompt=False) if name == "long" else None
        eng.add_request(name, prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True), opts)
        alone[name] = []
        while eng.has_unfinished():
            for out in eng.step():
                alone[name] += out.token_ids
    assert got["tokens"] == off["tokens"] == alone  # exact: interleaving changes no token


def test_a_short_remainder_after_a_prefix_hit_runs_whole_without_a_budget(model, monkeypatch):
    """A budget makes the prefill sync the device after every unit (to time it); after a prefix hit, a rest of at most
    express_prefill_tokens (a question on a cached document) runs whole instead. A long uncached prompt still runs
    under the budget."""
    budgets = []
    real = PrefillTask.run

    def record(self, budget_s=None):
        budgets.append(budget_s)
        return real(self, budget_s)

    monkeypatch.setattr(PrefillTask, "run", record)
    eng = engine(model, max_prefill_chunk_ms=50.0, express_prefill_tokens=64)
    doc = ids(N, 7)
    sp = SamplingParams(max_tokens=1, temperature=0.0)
    eng.add_request("doc", doc, sp, RequestOptions(prefill="dense"))
    while eng.has_unfinished():
        eng.step()
    assert budgets and all(b == 0.05 for b in budgets)  # 1,100 uncached tokens: under the budget
    budgets.clear()
    eng.add_request("question", doc + ids(40, 8), sp, RequestOptions(prefill="dense"))
    while eng.has_unfinished():
        eng.step()
    assert budgets == [None]  # 40 uncached tokens after the hit: whole, in one call


@pytest.mark.parametrize("decode", ["dense", "sparse"])
def test_the_tail_tables_uploaded_at_once_are_each_layers_full_table(model, decode):
    """The paged tail (CUDA) reads every layer's full table from one upload: row i is layer i's blocks (zeros past
    them, never read: the kernel stops at the sequence's length); compact layers (no full table) have none."""
    from lighthouse.engine.prefill_attention import CachedTail
    from lighthouse.engine.prefill_backend import PrefillBackend

    eng = engine(model)
    req = eng.make_request("tables", ids(N, 3), SamplingParams(max_tokens=4),
                           RequestOptions("sparse", decode, 0, cache_prompt=False))
    kv = eng.kv.allocate(req.reservation)
    backend = PrefillBackend(eng.model, eng.kv.pool, kv, req.plan, N, 0, 1 << 15, False)
    for i in range(len(kv.blocks)):
        if not kv.full_table(i):
            continue
        want = CachedTail.table_of(eng.kv.pool, kv.full_table(i))
        got = backend._tail_table(i)
        assert got.shape[0] == 1 and got.dtype == torch.int32 and got.is_contiguous()
        assert torch.equal(got[:, : want.shape[1]], want) and not got[:, want.shape[1] :].any()
    eng.kv.free(kv)
