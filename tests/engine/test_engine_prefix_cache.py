"""Prefix caching: a later prompt that starts like an earlier, finished one prefills only its new tokens, with the
same greedy output as without the cache; only exactly reusable K/V are reused; the cache stays in the KV budget."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from lighthouse.engine.options import RequestOptions
from lighthouse.engine.plan import plan_prefill
from lighthouse.engine.prefill import run_prefill
from lighthouse.engine.sampling import SamplingParams

DOC, Q = 600, 40  # the document is >= the tiny preset's min_seq_len (512): sparse-eligible on its own


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def llm(ckpt, tiny_llm):
    return tiny_llm(ckpt)


@pytest.fixture(autouse=True)
def empty_cache(llm):
    llm.engine.prefix_cache.clear()
    yield
    kv, cache = llm.engine.kv, llm.engine.prefix_cache
    held = {b for e in cache.entries for t in e.blocks for b in t}
    assert kv.usage_ratio == 0  # no request holds a block
    assert kv.num_free + len(held) == kv.allocator.usable  # every block is free or the cache's
    assert all(kv.allocator.refs[b] == sum(b in t for e in cache.entries for t in e.blocks) for b in held)


def tokens(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(32, 127, (n,), generator=g).tolist()


DOCUMENT = tokens(DOC, 1)
Q1, Q2 = tokens(Q, 2), tokens(Q, 3)
Q2[0] = 32 + (Q1[0] - 32 + 1) % 95  # the questions differ from their first token on


@contextmanager
def counting_positions(model):
    """The sequence length of every embedding lookup (a prefill or a decode step: the positions actually run)."""
    seen = []
    handle = model.model.embed_tokens.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    try:
        yield seen
    finally:
        handle.remove()


def run(llm, ids, **options):
    """Greedy, 8 tokens with logprobs; `options` are RequestOptions fields."""
    params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0)
    return llm.generate([ids], params, RequestOptions(**options))[0]


def logprobs(gen) -> torch.Tensor:
    return torch.tensor([e.logprob for e in gen.choices[0].logprobs])


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_second_question_on_a_document_prefills_only_its_new_tokens(llm, mode):
    opts = {"prefill": "dense"} if mode == "dense" else {"prefill": "sparse", "dense_tail_tokens": Q}  # head = doc
    first = run(llm, DOCUMENT + Q1, **opts)
    assert first.prefill.cached_tokens == 0 and first.prefill.path == mode
    with counting_positions(llm.engine.model) as seen:
        second = run(llm, DOCUMENT + Q2, **opts)
    assert second.prefill.cached_tokens == DOC
    assert seen[0] == Q  # the first forward pass is the prefill: the question only
    assert (second.prefill.sparse_tokens, second.prefill.dense_tokens) == (0, Q)
    without = run(llm, DOCUMENT + Q2, cache_prompt=False, **opts)
    assert without.prefill.cached_tokens == 0
    assert second.choices[0].token_ids == without.choices[0].token_ids
    diff = (logprobs(second) - logprobs(without)).abs().max().item()
    assert diff < 1e-4, f"max logprob diff {diff}"
    # the two questions' entries share the document's blocks: it is held once
    entries = llm.engine.prefix_cache.entries
    assert [(e.length, e.split) for e in entries] == [(DOC + Q, DOC if mode == "sparse" else 0)] * 2
    full = DOC // llm.engine.kv.block_size
    for i in range(llm.engine.kv.num_layers):
        assert entries[0].blocks[i][:full] == entries[1].blocks[i][:full]
        assert all(llm.engine.kv.allocator.refs[b] == 2 for b in entries[0].blocks[i][:full])


def test_a_repeated_prompt_recomputes_only_its_last_token(llm):
    ids = DOCUMENT + Q1
    first = run(llm, ids, prefill="dense")
    with counting_positions(llm.engine.model) as seen:
        again = run(llm, ids, prefill="dense")
    assert again.prefill.cached_tokens == DOC + Q - 1 and seen[0] == 1
    assert again.choices[0].token_ids == first.choices[0].token_ids


def test_sparse_head_kv_depend_on_tokens_after_them(llm):
    """Why a sparse head is reused only whole: the op's selection over [0, split) makes the K/V of early positions
    (from the first Lighthouse layer on) depend on later head tokens. Embedding-fed layer 0 stays causal."""
    eng = llm.engine
    a, b = DOCUMENT + Q1, DOCUMENT + Q2  # heads of 640 - 16 differ only after position 600
    kvs = []
    for ids in (a, b):
        plan = plan_prefill(eng.model.config, len(ids), prefill="sparse", decode="dense", dense_tail_tokens=16)
        assert plan.sparse and plan.split > DOC and 0 in plan.lighthouse_layers
        kv = eng.kv.allocate(eng.kv.reservation(len(ids)))
        run_prefill(eng.model, eng.kv.pool, kv, ids, plan)
        kvs.append(kv)
    layer = [[eng.kv.pool.read(kv.blocks[i], DOC)[0] for i in (0, 1)] for kv in kvs]
    for kv in kvs:
        eng.kv.free(kv)
    assert torch.equal(layer[0][0], layer[1][0])
    assert not torch.allclose(layer[0][1], layer[1][1], atol=1e-3)


def test_only_exactly_reusable_entries_are_reused(llm):
    eng = llm.engine
    run(llm, DOCUMENT + Q1, prefill="sparse", dense_tail_tokens=Q)  # a sparse head of DOC tokens
    other_split = run(llm, DOCUMENT + Q2, prefill="sparse")  # default tail: its head would be 640 - 64 long
    assert other_split.prefill.cached_tokens == 0 and other_split.prefill.sparse_tokens == DOC + Q - 64
    dense = run(llm, DOCUMENT + Q2, prefill="dense")  # sparse heads are not dense K/V
    assert dense.prefill.cached_tokens == 0
    sparse_decode = run(llm, DOCUMENT + Q2, prefill="sparse", dense_tail_tokens=Q, decode="sparse")
    assert sparse_decode.prefill.cached_tokens == 0  # its selected context needs the head's queries
    assert {e.split for e in eng.prefix_cache.entries} == {0, DOC, DOC + Q - 64}


def test_per_request_opt_out_neither_reads_nor_writes_the_cache(llm):
    run(llm, DOCUMENT + Q1, prefill="dense", cache_prompt=False)
    assert llm.engine.prefix_cache.entries == []
    run(llm, DOCUMENT + Q1, prefill="dense")
    assert run(llm, DOCUMENT + Q1, prefill="dense", cache_prompt=False).prefill.cached_tokens == 0


def test_short_prompts_get_no_entry(llm):
    run(llm, tokens(100, 4), prefill="dense")
    assert llm.engine.prefix_cache.entries == []


def test_the_cache_stays_in_the_kv_budget_and_evicts_least_recently_used(ckpt, tiny_llm):
    llm = tiny_llm(ckpt, kv_cache_bytes=1 << 20)
    eng = llm.engine
    a, b, c = (tokens(700, s) for s in (10, 11, 12))  # each entry ~ a third of the budget
    for ids in (a, b):
        run(llm, ids, prefill="dense")
    assert eng.prefix_cache.cache_only_blocks() == 2 * eng.kv.num_layers * eng.kv.shape.blocks_for(700)
    assert run(llm, a, prefill="dense").prefill.cached_tokens == 699  # a is now the most recently used
    run(llm, c, prefill="dense")  # needs room: b goes
    held = [e.tokens.tolist() for e in eng.prefix_cache.entries]
    assert held == [a, c]
    assert eng.kv.usage_ratio == 0 and eng.kv.cached_ratio <= 1
    big = tokens(eng.max_model_len - 8, 13)  # needs the whole budget: every entry is evicted
    assert run(llm, big, prefill="dense").choices[0].finish_reason == "length"
    assert [e.tokens.tolist() for e in eng.prefix_cache.entries] == [big]


def test_disabled_by_config(ckpt, tiny_llm):
    llm = tiny_llm(ckpt, enable_prefix_caching=False)
    run(llm, DOCUMENT + Q1, prefill="dense")
    assert llm.engine.prefix_cache is None
    assert run(llm, DOCUMENT + Q1, prefill="dense").prefill.cached_tokens == 0


def test_a_short_common_prefix_is_not_worth_a_hit(llm):
    run(llm, DOCUMENT + Q1, prefill="dense")
    assert run(llm, DOCUMENT[:100] + Q2 * 10, prefill="dense").prefill.cached_tokens == 0
    assert run(llm, DOCUMENT[:300] + Q2 * 10, prefill="dense").prefill.cached_tokens == 300


def test_a_hit_shares_the_documents_blocks_instead_of_copying_them(llm):
    eng = llm.engine
    run(llm, DOCUMENT + Q1, prefill="dense")
    entry = eng.prefix_cache.entries[0]
    free = eng.kv.num_free
    eng.add_request("shared", DOCUMENT + Q2, SamplingParams(temperature=0.0, max_tokens=8), RequestOptions(prefill="dense"))
    eng.step()  # the prefill: the document's filled blocks are the entry's own
    seq = eng._requests["shared"].seqs[0]
    full = DOC // eng.kv.block_size
    assert all(seq.kv.blocks[i][:full] == entry.blocks[i][:full] for i in range(eng.kv.num_layers))
    assert free - eng.kv.num_free == eng.kv.num_layers * (eng.kv.shape.blocks_for(DOC + Q + 8) - full)
    while eng.has_unfinished():
        eng.step()
