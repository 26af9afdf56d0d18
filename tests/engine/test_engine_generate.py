"""The engine on the tiny checkpoint: greedy equals references, the sparse paths run, batching and accounting."""

from __future__ import annotations

import threading

import pytest
import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.errors import InvalidRequest
from lighthouse.engine.llm import greedy_generate, load_engine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.plan import plan_prefill
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.sparse_context import selected_entries
from lighthouse.ops import attention_with_cache, causal_attention

LONG = 700  # >= the tiny preset's min_seq_len (512) + the dense tail


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def llm(ckpt, tiny_llm):
    return tiny_llm(ckpt)


def prompt(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


GREEDY = dict(temperature=0.0, max_tokens=12)


def test_dense_greedy_equals_transformers(llm, ckpt):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(ckpt), torch_dtype=torch.float32).eval()
    ids = prompt(40)
    ours = llm.generate([ids], SamplingParams(**GREEDY), RequestOptions(prefill="dense"))[0].choices[0].token_ids
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                      pad_token_id=0)[0, len(ids):].tolist()
    assert ours == ref


def one_pass_logits(model, ids: list[int], split: int, n: int) -> torch.Tensor:
    """(n, V) logits of the last n positions of `ids` from one forward pass without a KV cache that attends as the
    engine's plan does: positions [0, split) as a sparse prefill's head (the checkpoint's per-layer rule at length
    split), every later position densely over all positions before it. split 0: dense causal everywhere."""
    head = model.default_attention()

    def attn(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # q (1, H, N, D)
        if split == 0:
            return causal_attention(q, k, v)
        out_head = head(i, q[:, :, :split], k[:, :, :split], v[:, :, :split])
        return torch.cat([out_head, attention_with_cache(q[:, :, split:], k, v)], dim=2)

    with torch.no_grad():
        return model(torch.tensor([ids]), attention=attn, logits_to_keep=n).logits[0]


@pytest.mark.parametrize("prefill", ["dense", "sparse"])
def test_greedy_tokens_are_the_argmax_of_one_uncached_forward_pass(llm, prefill):
    ids = prompt(LONG)
    gen = llm.generate([ids], SamplingParams(**GREEDY), RequestOptions(prefill=prefill))[0]
    out = gen.choices[0].token_ids
    tail = llm.engine.config.dense_tail_tokens if prefill == "sparse" else 0
    logits = one_pass_logits(llm.engine.model, ids + out[:-1], LONG - tail if prefill == "sparse" else 0, len(out))
    gap = (logits.max(-1).values - logits[torch.arange(len(out)), torch.tensor(out)]).max().item()
    assert gap < 1e-4, f"a generated token is {gap:.2e} below the best logit of the uncached pass"
    assert gen.prefill.path == prefill
    if prefill == "sparse":
        assert (gen.prefill.sparse_tokens, gen.prefill.dense_tokens) == (LONG - tail, tail)
    # the in-memory entry point (tests, the trainer's passkey evals) runs the same engine path
    ref = greedy_generate(llm.engine.model, torch.tensor([ids]), 12, prefill=prefill, dense_tail_tokens=tail)
    assert ref[0].tolist() == out


def test_greedy_generate_stops_when_every_row_hit_eos_and_pads_the_rows_that_stopped_sooner(llm):
    model = llm.engine.model
    ids = torch.tensor([prompt(30, seed=1), prompt(30, seed=2)])
    free = greedy_generate(model, ids, 12)
    assert free.shape == (2, 12) and free.dtype == torch.long
    eos = free[0, 3].item()
    first = free[0].tolist().index(eos)
    alone = greedy_generate(model, ids[:1], 12, eos_token_id=eos)
    assert alone.tolist() == [free[0, : first + 1].tolist()]  # ends early: its only row stopped
    both = greedy_generate(model, ids, 12, eos_token_id=eos)
    stops = [row.index(eos) + 1 if eos in row else 12 for row in free.tolist()]
    expected = [row[:k] + [eos] * (max(stops) - k) for row, k in zip(free.tolist(), stops)]
    assert both.tolist() == expected
    model.train()
    try:
        greedy_generate(model, ids[:1], 2)
        assert model.training  # the one-off engine (which runs in eval mode) left the model's mode as it was
    finally:
        model.eval()


def test_sparse_prefill_changes_the_logits_of_a_long_prompt(llm):
    model = llm.engine.model
    ids = prompt(LONG)
    eng = llm.engine
    outs = {}
    for mode in ("dense", "sparse"):
        req = eng.make_request(f"logits-{mode}", ids, SamplingParams(max_tokens=1, temperature=0),
                               RequestOptions(prefill=mode))
        from lighthouse.engine.prefill import run_prefill

        kv = eng.kv.allocate(req.reservation)
        outs[mode] = run_prefill(model, eng.kv.pool, kv, ids, req.plan)
        eng.kv.free(kv)
    assert not torch.allclose(outs["dense"], outs["sparse"], atol=1e-4)


def test_short_prompts_prefill_densely_even_when_sparse_is_asked(llm):
    plan = plan_prefill(llm.engine.model.config, 100, prefill="sparse", decode="sparse", dense_tail_tokens=64)
    assert plan.path == "dense" and not plan.sparse_decode and plan.split == 0


def test_sparse_decode_attends_to_the_selected_sub_sequence(llm):
    eng = llm.engine
    ids = prompt(LONG)
    lh = eng.model.config.lighthouse
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=0)
    dense = llm.generate([ids], params, RequestOptions(decode="dense"))[0]
    sparse = llm.generate([ids], params, RequestOptions(decode="sparse"))[0]
    assert sparse.prefill.decode == "sparse" and dense.prefill.decode == "dense"
    # the first token comes from prefill (same in both); later ones attend to different contexts
    assert sparse.choices[0].token_ids[0] == dense.choices[0].token_ids[0]
    lp_d = [e.logprob for e in dense.choices[0].logprobs[1:]]
    lp_s = [e.logprob for e in sparse.choices[0].logprobs[1:]]
    assert lp_d != lp_s
    # the context kept per Lighthouse layer is the op's S entries plus the tail and generated positions
    sparse_decode = RequestOptions(decode="sparse")
    req = eng.make_request("ctx", ids, SamplingParams(max_tokens=4, temperature=0), sparse_decode)
    assert req.plan.selected == selected_entries(LONG - 64, lh.levels, lh.pooling_factor, lh.topk)
    # at 2K tokens (tiny preset L2 p4 k128) the selection is half the prompt
    big = eng.make_request("ctx2", prompt(2048 + 64), SamplingParams(max_tokens=4, temperature=0), sparse_decode)
    assert big.plan.selected == 2048 // 4 + 4 * 128 < 2048


def test_batched_decode_equals_one_at_a_time(llm):
    prompts = [prompt(30 + 17 * i, seed=i) for i in range(4)]
    alone = [llm.generate([p], SamplingParams(**GREEDY))[0].choices[0].token_ids for p in prompts]
    together = [g.choices[0].token_ids for g in llm.generate(prompts, SamplingParams(**GREEDY))]
    assert together == alone


def test_seeded_n2_is_reproducible_and_the_choices_differ(llm):
    params = SamplingParams(temperature=1.0, max_tokens=16, seed=123, n=2)
    a = llm.generate([prompt(20)], params)[0]
    b = llm.generate([prompt(20)], params)[0]
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]
    assert a.choices[0].token_ids != a.choices[1].token_ids


def test_choice_i_of_a_seed_is_not_choice_0_of_the_seed_plus_i(llm):
    """Per-choice seeds are hashed from (seed, i): seed + i made choice 1 of seed 123 equal to choice 0 of seed 124."""
    p = prompt(20)
    two = llm.generate([p], SamplingParams(temperature=1.0, max_tokens=16, seed=123, n=2))[0]
    nxt = llm.generate([p], SamplingParams(temperature=1.0, max_tokens=16, seed=124))[0]
    one = llm.generate([p], SamplingParams(temperature=1.0, max_tokens=16, seed=123))[0]
    assert two.choices[0].token_ids == one.choices[0].token_ids  # choice 0 keeps the request's seed
    assert two.choices[1].token_ids != nxt.choices[0].token_ids


def test_stop_token_ids_and_max_tokens_finish_reasons(llm):
    ids = prompt(20)
    free = llm.generate([ids], SamplingParams(**GREEDY))[0].choices[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    stop_at = free.token_ids[3]
    first = free.token_ids.index(stop_at)
    stopped = llm.generate([ids], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_at]))[0].choices[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == free.token_ids[: first + 1]


def test_requests_that_can_never_fit_are_refused_up_front(ckpt):
    eng = load_engine(str(ckpt), EngineConfig(kv_cache_bytes=200_000, max_prefill_chunk_ms=None), device="cpu", dtype="float32")
    per_block = eng.kv.shape.bytes_per_block  # one layer's block
    L = eng.model.config.num_hidden_layers  # the default layout (full): every layer holds every position
    assert eng.max_model_len == (200_000 // per_block - 1) // L * eng.kv.block_size  # block 0 is scratch
    with pytest.raises(InvalidRequest) as info:
        eng.make_request("a", prompt(eng.max_model_len), SamplingParams(max_tokens=1))
    assert info.value.code == "context_length_exceeded" and info.value.param == "prompt"
    with pytest.raises(InvalidRequest) as info:
        eng.make_request("b", prompt(10), SamplingParams(max_tokens=eng.max_model_len))
    assert info.value.code == "context_length_exceeded" and info.value.param == "max_tokens"
    with pytest.raises(InvalidRequest) as info:
        eng.make_request("c", prompt(10), SamplingParams(max_tokens=eng.max_model_len - 10, n=2))
    assert info.value.param == "n" and "KV cache" in info.value.message


def test_kv_cache_is_reserved_while_running_and_freed_after(llm):
    eng = llm.engine
    free = eng.kv.num_free
    eng.add_request("acct", prompt(50), SamplingParams(temperature=0, max_tokens=5, n=2))
    eng.step()  # prefill: each choice holds ceil(55 / block_size) blocks per layer (the prompt fits one partial block)
    assert free - eng.kv.num_free == 2 * eng.kv.num_layers * eng.kv.shape.blocks_for(55)
    assert eng.kv.usage_ratio > 0
    while eng.has_unfinished():
        eng.step()
    assert eng.kv.num_free == free and eng.kv.usage_ratio == 0 and eng.stats()["running"] == 0


def test_abort_during_prefill_stops_between_layers_and_frees_the_cache(llm):
    eng = llm.engine
    started = threading.Event()

    def on_progress(rid, progress):
        started.set()
        eng.abort_request(rid)  # as the async wrapper does from another thread

    eng.progress_callback = on_progress
    try:
        eng.add_request("gone", prompt(LONG), SamplingParams(temperature=0, max_tokens=5))
        outs = []
        while eng.has_unfinished():
            outs += eng.step()
    finally:
        eng.progress_callback = None
    assert started.is_set()
    assert [(o.finished, o.finish_reason, o.token_ids) for o in outs] == [(True, "abort", [])]
    assert eng.kv.usage_ratio == 0


def test_engine_never_mixes_up_ids_of_invalid_requests(llm):
    with pytest.raises(InvalidRequest) as info:
        llm.engine.make_request("x", [], SamplingParams())
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequest) as info:
        llm.engine.make_request("x", [10**6], SamplingParams())
    assert info.value.param == "prompt"
