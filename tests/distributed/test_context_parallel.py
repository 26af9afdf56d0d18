"""Context-parallel sparse prefill (lighthouse.distributed): 2 gloo processes, each holding the head and tail chunks
of the sequence, give the single-process op's output and a full model's last-position logits (fp32, 1e-5)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lighthouse.distributed import (
    context_parallel_len,
    context_parallel_lighthouse_attention,
    context_parallel_prefill_logits,
    head_tail_chunks,
    shard_sequence,
    unshard_sequence,
)
from lighthouse.model import LlamaForCausalLM, model_preset
from lighthouse.ops import lighthouse_attention_ref
from lighthouse.ops.validation import pad_seq

WORLD = 2
D = 16
INV_FREQ = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
# (name, batch, n, levels, pooling_factor, topk, rope): n is never a multiple of the sharding unit, so the last
# chunks hold padding; topk/128 = 4 tiles = one per chunk of 2 ranks
OP_CASES = [
    ("L2_p4_before_pool_B2", 2, 2100, 2, 4, 512, "before_pool"),
    ("L3_p2_after_select", 1, 3000, 3, 2, 512, "after_select"),
]
MODEL_CASES = ["before_pool", "after_select"]
MODEL_N = 2100


def _op_inputs(case):
    _, B, n, *_ = case
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, 4, n, D, generator=g) * (1 + 3 * torch.rand(B, 4, n, 1, generator=g))  # uneven norms
    k = torch.randn(B, 2, n, D, generator=g) * (1 + 3 * torch.rand(B, 2, n, 1, generator=g))  # GQA: 2 K/V heads
    return q, k, torch.randn(B, 2, n, D, generator=g)


def _op_kwargs(case):
    *_, levels, p, topk, rope = case
    kw = dict(levels=levels, pooling_factor=p, topk=topk)
    if rope == "after_select":
        kw.update(rope="after_select", inv_freq=INV_FREQ, position_offset=5)
    return kw


def _model(rope: str) -> LlamaForCausalLM:
    """The tiny model with 4 selection tiles (so 2 ranks can split them): layer 0 Lighthouse, then layer 1 dense,
    which reads every position's first-layer output (so an error at any position reaches the last logits)."""
    cfg = model_preset("tiny")
    cfg.lighthouse.levels, cfg.lighthouse.pooling_factor, cfg.lighthouse.topk = 2, 4, 512
    cfg.lighthouse.full_attn_layers, cfg.lighthouse.min_seq_len, cfg.lighthouse.rope = [1], 0, rope
    cfg.initializer_range = 0.1  # larger weights than training's init: attention moves the logits visibly
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _model_ids() -> torch.Tensor:
    return torch.randint(0, 256, (1, MODEL_N), generator=torch.Generator().manual_seed(1))


def _worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    try:
        for case in OP_CASES:
            q, k, v = _op_inputs(case)
            kw = _op_kwargs(case)
            N = context_parallel_len(q.shape[2], WORLD, levels=kw["levels"], pooling_factor=kw["pooling_factor"],
                                     topk=kw["topk"])
            ql, kl, vl = (shard_sequence(pad_seq(x, N), rank, WORLD) for x in (q, k, v))  # zero padding, as the op
            out = context_parallel_lighthouse_attention(ql, kl, vl, n_valid=q.shape[2], **kw)
            assert out.shape == ql.shape and ql.shape[2] == N // WORLD  # each rank holds half the positions
            full = unshard_sequence(out)
            if rank == 0:
                torch.save(full, f"{out_dir}/{case[0]}.pt")
        for rope in MODEL_CASES:
            logits = context_parallel_prefill_logits(_model(rope), _model_ids())
            torch.save(logits, f"{out_dir}/model_{rope}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def cp_outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(str(out),), nprocs=WORLD)
    return out


@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_two_ranks_give_the_single_process_ops_output_at_every_position(cp_outputs, case):
    q, k, v = _op_inputs(case)
    ref = lighthouse_attention_ref(q, k, v, **_op_kwargs(case))
    got = torch.load(cp_outputs / f"{case[0]}.pt")[:, :, : q.shape[2]]
    diff = (got - ref).abs()
    assert diff.max() <= 1e-5, f"max {diff.max():.3g}, mean {diff.mean():.3g}"


@pytest.mark.parametrize("rope", MODEL_CASES)
def test_two_ranks_prefill_gives_the_models_last_position_logits_on_every_rank(cp_outputs, rope):
    model, ids = _model(rope), _model_ids()
    assert model.layer_uses_lighthouse(0, MODEL_N) and not model.layer_uses_lighthouse(1, MODEL_N)
    with torch.no_grad():
        ref = model(ids, logits_to_keep=1).logits[:, -1].float()
    for rank in range(WORLD):
        got = torch.load(cp_outputs / f"model_{rope}_rank{rank}.pt")
        diff = (got - ref).abs()
        assert diff.max() <= 1e-5, f"rank {rank}: max {diff.max():.3g}, mean {diff.mean():.3g}"


def test_head_tail_layout_balances_causal_work_and_round_trips():
    world = 4
    assert [head_tail_chunks(r, world) for r in range(world)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert len({sum(c + 1 for c in head_tail_chunks(r, world)) for r in range(world)}) == 1  # equal causal work
    x = torch.arange(16)[None, None, :, None]
    shards = [shard_sequence(x, r, world) for r in range(world)]
    assert shards[1].flatten().tolist() == [2, 3, 12, 13]


def test_a_topk_whose_tiles_cannot_be_split_over_the_chunks_is_refused():
    with pytest.raises(ValueError, match="multiple of 4"):
        context_parallel_len(4096, 2, levels=2, pooling_factor=4, topk=256)  # 2 tiles, 4 chunks
    assert context_parallel_len(4000, 2, levels=2, pooling_factor=4, topk=512) == 4096
    assert context_parallel_len(5, 2) == 8  # dense only: a multiple of 2 * world
