"""`lighthouse convert torchtitan`: a DCP folder in torchtitan's layout -> our HF checkpoint directory.

The tests write a DCP folder from random weights with torchtitan's names (plus optimizer, scheduler, dataloader
and train-state entries that must be skipped), and compare the converted model with a reference forward written
here from torchtitan llama3's formulas: interleaved (complex) RoPE with the llama3 scaling, RMSNorm, SwiGLU, GQA
causal attention, fp32. The Lighthouse layers of the sparse reference call our op on the interleaved-RoPE q/k:
the conversion permutes q/k rows, which must leave every score, selection and output unchanged. For runs of the
official RoPE-after-selection change the reference's Lighthouse layers are written here from that change's
description (selection on un-rotated q/k, entries rotated as interleaved pairs with rope_theta's unscaled
frequencies at the last position their window covers).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lighthouse import cli
from lighthouse.convert import (
    TORCHTITAN_FLAVORS,
    ConversionError,
    build_model_config,
    convert_torchtitan,
    resolve_model_args,
    torchtitan_ffn_dim,
)
from lighthouse.model.config import LighthouseConfig

VOCAB, DIM, N_LAYERS, N_HEADS, N_KV, FFN = 300, 64, 4, 4, 2, 128
HEAD_DIM = DIM // N_HEADS
# torchtitan builds FFN = 2/3 * hidden_dim rounded up to multiple_of: 2/3 * 192 = 128
ARGS = {"n_heads": N_HEADS, "hidden_dim": 192, "multiple_of": 32, "rope_theta": 10000.0}
LH = {"use_selection_lighthouse": True, "lighthouse_num_levels": 3, "lighthouse_pooling_factor": 2,
      "lighthouse_topk": 128, "lighthouse_full_attn_layers": [0, 3]}
SCALING = {"factor": 8.0, "low": 1.0, "high": 4.0, "original": 8192}


# ------------------------------------------------------------------ torchtitan-layout weights and DCP folders


def _weights(seed: int = 0, tied: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def lin(out_f: int, in_f: int) -> torch.Tensor:
        return torch.randn(out_f, in_f, generator=g) / math.sqrt(in_f)

    def norm() -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(DIM, generator=g)

    w = {"tok_embeddings.weight": torch.randn(VOCAB, DIM, generator=g), "norm.weight": norm()}
    if not tied:
        w["output.weight"] = lin(VOCAB, DIM)
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        q, kv = N_HEADS * HEAD_DIM, N_KV * HEAD_DIM
        w |= {p + "attention.wq.weight": lin(q, DIM), p + "attention.wk.weight": lin(kv, DIM),
              p + "attention.wv.weight": lin(kv, DIM), p + "attention.wo.weight": lin(DIM, q),
              p + "feed_forward.w1.weight": lin(FFN, DIM), p + "feed_forward.w3.weight": lin(FFN, DIM),
              p + "feed_forward.w2.weight": lin(DIM, FFN), p + "attention_norm.weight": norm(),
              p + "ffn_norm.weight": norm()}
    return w


# optimizer: (exp_avg, step) for 2 tensors + lr and params of one param group; lr_scheduler, dataloader, train_state
NON_MODEL_ENTRIES = 2 * 2 + 2 + 1 + 1 + 1


def _write_dcp(path: Path, weights: dict[str, torch.Tensor], *, prefixed: bool = False) -> Path:
    """A single-process DCP save shaped like torchtitan's: model weights at the top level (or under "model."),
    with optimizer / lr scheduler / dataloader / train-state entries beside them."""
    import torch.distributed.checkpoint as dcp

    names = ["tok_embeddings.weight", "layers.0.attention.wq.weight"]
    state: dict = {"model": dict(weights)} if prefixed else dict(weights)
    state["optimizer"] = {
        "state": {n: {"exp_avg": torch.randn_like(weights[n]), "step": torch.tensor(7.0)} for n in names},
        "param_groups": [{"lr": 1e-3, "params": names}],
    }
    state["lr_scheduler"] = {"last_epoch": 7}
    state["dataloader"] = {"dp_rank_0": b"opaque"}
    state["train_state"] = {"step": 7}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process": intended
        dcp.save(state, checkpoint_id=str(path))
    return path


# ------------------------------------------------------------------ the reference: torchtitan llama3's formulas


def _freqs_cis(n: int, theta: float = 10000.0, scaled: bool = True) -> torch.Tensor:
    freqs = _unscaled_freqs(theta)
    if scaled:  # llama3: long wavelengths slowed by `factor`, short ones kept, a linear blend between
        wavelen = 2 * math.pi / freqs
        lo_wl, hi_wl = SCALING["original"] / SCALING["low"], SCALING["original"] / SCALING["high"]
        smooth = (SCALING["original"] / wavelen - SCALING["low"]) / (SCALING["high"] - SCALING["low"])
        blended = (1 - smooth) * freqs / SCALING["factor"] + smooth * freqs
        freqs = torch.where(wavelen > lo_wl, freqs / SCALING["factor"],
                            torch.where(wavelen < hi_wl, freqs, blended))
    angles = torch.outer(torch.arange(n).float(), freqs)
    return torch.polar(torch.ones_like(angles), angles)  # (n, head_dim/2) complex


def _unscaled_freqs(theta: float = 10000.0) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, HEAD_DIM, 2)[: HEAD_DIM // 2].float() / HEAD_DIM))


def _after_select_interleaved(q, k, v, levels: int, p: int, topk: int, freqs: torch.Tensor) -> torch.Tensor:
    """The RoPE-after-selection change's Lighthouse layer in torchtitan's layout: q, k, v (B, H, N, D) un-rotated,
    K/V repeated per query head. The published selection runs on them; each selected entry (its window's mean) has
    q and k rotated as interleaved pairs at the last position its window covers, with `freqs`; causal attention in
    the selection's order; an entry's output is added to the c = p^level positions from that last one on."""
    from lighthouse.ops import lighthouse_select

    B, H, N, D = q.shape
    idx = lighthouse_select(q, k, levels=levels, pooling_factor=p, topk=topk)  # (B, H, S), causal order
    sizes = [N // p**lv for lv in range(levels)]
    starts = torch.tensor([sum(sizes[:lv]) for lv in range(levels)])
    pyramid = [torch.cat([x.reshape(B, H, sizes[lv], p**lv, D).mean(3) for lv in range(levels)], dim=2)
               for x in (q, k, v)]
    qs, ks, vs = (x.gather(2, idx[..., None].expand(-1, -1, -1, D)) for x in pyramid)
    level = sum((idx >= starts[lv]).long() for lv in range(1, levels))
    c = p**level
    last = (idx - starts[level] + 1) * c - 1  # (B, H, S)
    angles = last[..., None].float() * freqs
    cis = torch.polar(torch.ones_like(angles), angles)
    qs, ks = (torch.view_as_real(torch.view_as_complex(x.reshape(B, H, -1, D // 2, 2)) * cis).flatten(3)
              for x in (qs, ks))
    o = _causal(qs, ks, vs)
    out = torch.zeros(B, H, N, D)
    for j in range(p ** (levels - 1)):  # fan-out: positions last .. last + c - 1, below N
        t = last + j
        keep = ((j < c) & (t < N))[..., None]
        out.scatter_add_(2, t.clamp(max=N - 1)[..., None].expand(-1, -1, -1, D), o * keep)
    return out


def _rope_interleaved(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """x (B, N, H, D): pairs (x[2i], x[2i+1]) rotated as complex numbers."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * cis[None, :, None]).flatten(3)


def _rmsnorm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    n = q.shape[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(-1) @ v


def _reference_logits(w, ids, *, lighthouse=None, scaled=True, scorer="norm", after_select=False) -> torch.Tensor:
    """torchtitan llama3 forward in fp32; `lighthouse` = (levels, pooling, topk, dense layers) runs our op in the
    other layers on torchtitan's interleaved-RoPE q/k (with K/V repeated per query head); with after_select those
    layers run `_after_select_interleaved` on the un-rotated q/k with the unscaled frequencies instead."""
    from lighthouse.ops import lighthouse_attention_ref

    w = {k: v.float() for k, v in w.items()}
    B, N = ids.shape
    cis = _freqs_cis(N, scaled=scaled)
    h = w["tok_embeddings.weight"][ids]
    for i in range(N_LAYERS):
        p = f"layers.{i}."
        x = _rmsnorm(h, w[p + "attention_norm.weight"])
        q_raw = (x @ w[p + "attention.wq.weight"].T).view(B, N, N_HEADS, HEAD_DIM)
        k_raw = (x @ w[p + "attention.wk.weight"].T).view(B, N, N_KV, HEAD_DIM)
        q, k = _rope_interleaved(q_raw, cis), _rope_interleaved(k_raw, cis)
        v = (x @ w[p + "attention.wv.weight"].T).view(B, N, N_KV, HEAD_DIM)
        q, k, v, q_raw, k_raw = (t.transpose(1, 2) for t in (q, k, v, q_raw, k_raw))
        k, v, k_raw = (t.repeat_interleave(N_HEADS // N_KV, dim=1) for t in (k, v, k_raw))
        if lighthouse is not None and i not in lighthouse[3] and after_select:
            o = _after_select_interleaved(q_raw, k_raw, v, *lighthouse[:3], _unscaled_freqs())
        elif lighthouse is not None and i not in lighthouse[3]:
            o = lighthouse_attention_ref(q, k, v, levels=lighthouse[0], pooling_factor=lighthouse[1],
                                         topk=lighthouse[2], scorer=scorer)
        else:
            o = _causal(q, k, v)
        h = h + o.transpose(1, 2).reshape(B, N, DIM) @ w[p + "attention.wo.weight"].T
        x = _rmsnorm(h, w[p + "ffn_norm.weight"])
        gate, up = x @ w[p + "feed_forward.w1.weight"].T, x @ w[p + "feed_forward.w3.weight"].T
        h = h + (F.silu(gate) * up) @ w[p + "feed_forward.w2.weight"].T
    head = w.get("output.weight", w["tok_embeddings.weight"])
    return _rmsnorm(h, w["norm.weight"]) @ head.T


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def _ours(out: Path, ids: torch.Tensor, *, dense: bool) -> torch.Tensor:
    from lighthouse.checkpoint import load_checkpoint

    model, _ = load_checkpoint(out)
    with torch.no_grad():
        return model(ids, dense=dense).logits


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("prefixed", [False, True], ids=["top-level", "model-prefix"])
def test_dense_logits_equal_the_torchtitan_reference(tmp_path, prefixed):
    w = _weights()
    dcp_dir = _write_dcp(tmp_path / "step-7", w, prefixed=prefixed)
    res = convert_torchtitan(dcp_dir, tmp_path / "hf", model_args=ARGS)
    assert res.skipped_entries == NON_MODEL_ENTRIES and not res.has_tokenizer
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert (cfg["intermediate_size"], cfg["num_key_value_heads"], cfg["head_dim"]) == (FFN, N_KV, HEAD_DIM)
    assert cfg["lighthouse"]["enabled"] is False  # no Lighthouse arguments: a dense model
    assert not (tmp_path / "hf" / "tokenizer.json").exists()  # never the byte tokenizer: it does not fit the vocab
    ids = _ids(300)
    ref = _reference_logits(w, ids)
    torch.testing.assert_close(_ours(tmp_path / "hf", ids, dense=True), ref, atol=1e-4, rtol=0)


def test_transformers_loads_the_conversion_with_equal_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    w = _weights(seed=3)
    convert_torchtitan(_write_dcp(tmp_path / "dcp", w), tmp_path / "hf", model_args=ARGS | LH)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = _ids(300, seed=4)
    with torch.no_grad():
        got = hf(ids).logits
    torch.testing.assert_close(got, _reference_logits(w, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("scorer", ["norm", "dilated"])
def test_sparse_prefill_equals_the_reference_running_our_op_in_torchtitan_layout(tmp_path, scorer):
    w = _weights(seed=5)
    out = tmp_path / "hf"
    convert_torchtitan(_write_dcp(tmp_path / "dcp", w), out, model_args=ARGS | LH | {"lighthouse_scorer": scorer})
    lh = LighthouseConfig.from_dict(json.loads((out / "config.json").read_text())["lighthouse"])
    assert (lh.enabled, lh.levels, lh.pooling_factor, lh.topk, lh.scorer, lh.full_attn_layers) == (
        True, 3, 2, 128, scorer, [0, 3])
    ids = _ids(512, seed=6)  # the op's minimum for L3 p2 k128
    ref = _reference_logits(w, ids, lighthouse=(3, 2, 128, [0, 3]), scorer=scorer)
    sparse = _ours(out, ids, dense=False)
    torch.testing.assert_close(sparse, ref, atol=1e-4, rtol=0)
    # and the Lighthouse layers really ran: dense attention gives other logits
    assert (sparse - _reference_logits(w, ids)).abs().max() > 1e-2


def test_without_the_row_permutation_or_the_rope_scaling_the_logits_differ(tmp_path, monkeypatch):
    """The checks above can fail: skipping the q/k permutation, or the llama3 scaling, changes the logits."""
    import lighthouse.convert.torchtitan as tt

    w = _weights(seed=7)
    dcp_dir = _write_dcp(tmp_path / "dcp", w)
    ids = _ids(300, seed=8)
    ref = _reference_logits(w, ids)
    convert_torchtitan(dcp_dir, tmp_path / "unscaled", model_args=ARGS, rope_scaling=False)
    assert json.loads((tmp_path / "unscaled" / "config.json").read_text())["rope_scaling"] is None
    unscaled = _ours(tmp_path / "unscaled", ids, dense=True)
    assert (unscaled - ref).abs().max() > 1e-3
    torch.testing.assert_close(unscaled, _reference_logits(w, ids, scaled=False), atol=1e-4, rtol=0)
    monkeypatch.setattr(tt, "interleaved_to_halves", lambda t, n_heads: t)
    convert_torchtitan(dcp_dir, tmp_path / "unpermuted", model_args=ARGS)
    assert (_ours(tmp_path / "unpermuted", ids, dense=True) - ref).abs().max() > 1e-2


def test_tied_head_and_bf16_weights_keep_their_form(tmp_path):
    from safetensors import safe_open

    w = {k: v.to(torch.bfloat16) for k, v in _weights(seed=9, tied=True).items()}
    res = convert_torchtitan(_write_dcp(tmp_path / "dcp", w), tmp_path / "hf", model_args=ARGS)
    assert res.config.tie_word_embeddings
    with safe_open(str(tmp_path / "hf" / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    ids = _ids(200, seed=10)
    torch.testing.assert_close(_ours(tmp_path / "hf", ids, dense=True), _reference_logits(w, ids), atol=1e-4, rtol=0)


def test_the_cli_writes_a_servable_checkpoint_with_the_tokenizer(tmp_path, capsys):
    from lighthouse.checkpoint import load_checkpoint, verify_checkpoint
    from lighthouse.tokenizer import write_byte_tokenizer

    dcp_dir = _write_dcp(tmp_path / "dcp", _weights(seed=11))
    write_byte_tokenizer(tmp_path / "tok")  # 262 ids: fits the 300-row embedding
    flags = ["--n-heads", "4", "--hidden-dim", "192", "--multiple-of", "32", "--use-selection-lighthouse",
             "--lighthouse-num-levels", "3", "--lighthouse-pooling-factor", "2", "--lighthouse-topk", "128",
             "--lighthouse-full-attn-layers", "0,3", "--max-position-embeddings", "4096"]
    assert cli.main(["convert", "torchtitan", str(dcp_dir), "--out", str(tmp_path / "hf"), *flags,
                     "--tokenizer", str(tmp_path / "tok")]) == 0
    printed = capsys.readouterr().out
    assert "Lighthouse L3 p2 k128 (norm), dense layers [0, 3]" in printed and "no tokenizer" not in printed
    verify_checkpoint(tmp_path / "hf", require_tokenizer=True)  # what `lighthouse serve` checks first
    model, tok = load_checkpoint(tmp_path / "hf")
    assert tok is not None and tok.decode(tok.encode("hi", add_special_tokens=False)) == "hi"
    c = model.config
    assert (c.bos_token_id, c.eos_token_id, c.max_position_embeddings) == (256, 257, 4096)
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["eos_token_id"] == [257, 261]

    assert cli.main(["convert", "torchtitan", str(dcp_dir), "--out", str(tmp_path / "bare"), *flags]) == 0
    assert "no tokenizer was given" in capsys.readouterr().out
    assert not (tmp_path / "bare" / "tokenizer.json").exists()


def test_flavors_give_torchtitans_sizes_and_the_lighthouse_settings():
    # torchtitan's FFN rule reproduces the known Llama 3 widths
    assert torchtitan_ffn_dim(4096, None, 1024, 1.3) == 14336
    assert torchtitan_ffn_dim(8192, None, 4096, 1.3) == 28672
    assert torchtitan_ffn_dim(16384, None, 4096, 1.2) == 53248
    assert torchtitan_ffn_dim(1024, 1536, 256, None) == 1024  # the 270M ablations: hidden_dim 1536 -> 1024 units

    def shapes(dim, layers, ffn, kv_rows, vocab=128256):
        s = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,), "output.weight": (vocab, dim)}
        for i in range(layers):
            p = f"layers.{i}."
            s |= {p + "attention.wq.weight": (dim, dim), p + "attention.wk.weight": (kv_rows, dim),
                  p + "attention.wv.weight": (kv_rows, dim), p + "attention.wo.weight": (dim, dim),
                  p + "feed_forward.w1.weight": (ffn, dim), p + "feed_forward.w3.weight": (ffn, dim),
                  p + "feed_forward.w2.weight": (dim, ffn), p + "attention_norm.weight": (dim,),
                  p + "ffn_norm.weight": (dim,)}
        return s

    args, given = resolve_model_args("ablation_270m_lighthouse_topk1536_pool4_lvl3")
    c = build_model_config(shapes(1024, 30, 1024, 1024), args, given)
    assert (c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.vocab_size, c.rope_theta) == (1024, 30, 1024, 8, 8, 128, 128256, 10000.0)
    lh = c.lighthouse
    assert (lh.enabled, lh.levels, lh.pooling_factor, lh.topk, lh.scorer, lh.full_attn_layers) == (
        True, 3, 4, 1536, "norm", [0, 1, 28, 29])
    assert c.rope_scaling["rope_type"] == "llama3" and c.rope_scaling["factor"] == 8.0
    with pytest.raises(ConversionError, match="FFN width of 1024.*has 1536 rows"):
        build_model_config(shapes(1024, 30, 1536, 1024), args, given)
    # every flavor builds a valid config for the shapes it implies
    for name, flavor in TORCHTITAN_FLAVORS.items():
        a, g = resolve_model_args(name)
        ffn = torchtitan_ffn_dim(a["dim"], a["hidden_dim"], a["multiple_of"], a["ffn_dim_multiplier"])
        kv = (a["n_kv_heads"] or a["n_heads"]) * (a["dim"] // a["n_heads"])
        n_layers = min(a["n_layers"], 30)  # fewer layers for the largest flavors: their layers repeat anyway
        c = build_model_config(shapes(a["dim"], n_layers, ffn, kv), a | {"n_layers": n_layers}, g)
        assert c.lighthouse.enabled == bool(flavor.get("use_selection_lighthouse")), name


def _error(fn, match: str):
    with pytest.raises(ConversionError, match=match) as info:
        fn()
    return str(info.value)


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    import lighthouse.convert.torchtitan as tt

    dcp_dir = _write_dcp(tmp_path / "run" / "step-7", _weights(seed=12))
    out = lambda name: tmp_path / name  # noqa: E731

    _error(lambda: convert_torchtitan(tmp_path / "nope", out("a"), model_args=ARGS), "does not exist")
    msg = _error(lambda: convert_torchtitan(tmp_path / "run", out("a"), model_args=ARGS), "no .metadata")
    assert "step-7" in msg  # points at the step folder
    msg = _error(lambda: convert_torchtitan(dcp_dir, out("a"), flavor="ablation_270m_lighthous_topk1536"),
                 "unknown torchtitan flavor")
    assert "ablation_270m_lighthouse_topk1536_lvl3" in msg
    _error(lambda: convert_torchtitan(dcp_dir, out("a"), flavor="ablation_270m_lighthouse_topk1536_pool4_lvl3"),
           r"dim=1024, but the checkpoint's tok_embeddings.weight has shape \(300, 64\)")
    _error(lambda: convert_torchtitan(dcp_dir, out("a"), model_args=ARGS | {"n_kv_heads": 4}), "n_kv_heads=4")
    _error(lambda: convert_torchtitan(dcp_dir, out("a"), model_args={"hidden_dim": 192}), "number of attention heads")
    _error(lambda: convert_torchtitan(dcp_dir, out("a"), model_args=ARGS | LH | {"lighthouse_scorer": "gla"}),
           "'gla' scorer is not supported")
    _error(lambda: convert_torchtitan(dcp_dir, out("a"), model_args=ARGS | {"lighthouse_topk": 256}),
           "use_selection_lighthouse is off")
    _error(lambda: convert_torchtitan(dcp_dir, out("a"), model_args=ARGS | LH | {"lighthouse_topk": 16}),
           "topk must be a positive multiple of 128")
    if "dilation" not in tt._lighthouse_fields():
        _error(lambda: convert_torchtitan(dcp_dir, out("a"), model_args=ARGS | LH | {
            "lighthouse_scorer": "dilated", "dilation": 8}), "dilation 8 is not supported")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in dcp_dir.iterdir():  # the same folder with its data files cut short
        (broken / f.name).write_bytes(f.read_bytes()[: 100 if f.suffix == ".distcp" else None])
    _error(lambda: convert_torchtitan(broken, out("a"), model_args=ARGS), "cannot read the model weights .*truncated")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    _error(lambda: convert_torchtitan(dcp_dir, tmp_path / "full", model_args=ARGS), "not an empty directory")
    assert (tmp_path / "full" / "keep.txt").read_text() == "x" and not out("a").exists()  # nothing written

    assert cli.main(["convert", "torchtitan", str(dcp_dir), "--out", str(out("b")), "--n-heads", "4",
                     "--dim", "128"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lighthouse convert torchtitan: the model arguments give dim=128") and not out("b").exists()


def test_rope_after_select_is_written_only_where_the_config_supports_it(tmp_path, monkeypatch):
    """`--rope after_select` needs the `lighthouse.rope` config field: written where it exists, refused where not."""
    import lighthouse.convert.torchtitan as tt

    dcp_dir = _write_dcp(tmp_path / "dcp", _weights(seed=13))
    run = lambda out: convert_torchtitan(dcp_dir, out, model_args=ARGS | LH, rope="after_select")  # noqa: E731
    if "rope" in tt._lighthouse_fields():
        run(tmp_path / "hf")
        block = json.loads((tmp_path / "hf" / "config.json").read_text())["lighthouse"]
        assert (block["rope"], block["rope_freqs"]) == ("after_select", "unscaled")
    fields = tt._lighthouse_fields() - {"rope"}
    monkeypatch.setattr(tt, "_lighthouse_fields", lambda: fields)  # a version without the field
    _error(lambda: run(tmp_path / "old"), "no `rope` field")
    assert not (tmp_path / "old").exists()
    res = convert_torchtitan(dcp_dir, tmp_path / "old", model_args=ARGS | LH)  # before_pool needs no field
    assert res.config.lighthouse.enabled


def test_rope_after_select_converts_to_the_official_changes_unscaled_rotation(tmp_path, capsys):
    """--rope after_select: the lighthouse block says rope "after_select", rope_freqs "unscaled" (the official
    change rotates the selected entries with rope_theta's frequencies alone, while torchtitan's dense attention
    keeps the llama3 scaling), and the sparse logits equal the reference in torchtitan's layout; the scaled
    frequencies in the Lighthouse layers would give other logits."""
    from lighthouse.checkpoint import load_checkpoint

    w = _weights(seed=14)
    dcp_dir = _write_dcp(tmp_path / "dcp", w)
    flags = ["--n-heads", "4", "--hidden-dim", "192", "--multiple-of", "32", "--use-selection-lighthouse",
             "--lighthouse-num-levels", "3", "--lighthouse-pooling-factor", "2", "--lighthouse-topk", "128",
             "--lighthouse-full-attn-layers", "0,3", "--rope", "after_select"]
    assert cli.main(["convert", "torchtitan", str(dcp_dir), "--out", str(tmp_path / "hf"), *flags]) == 0
    assert "RoPE after selection (unscaled frequencies)" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (cfg["lighthouse"]["rope"], cfg["lighthouse"]["rope_freqs"]) == ("after_select", "unscaled")
    assert cfg["rope_scaling"]["rope_type"] == "llama3" and cfg["rope_scaling"]["factor"] == 8.0
    ids = _ids(512, seed=15)
    lh = (3, 2, 128, [0, 3])
    ref = _reference_logits(w, ids, lighthouse=lh, after_select=True)
    model, _ = load_checkpoint(tmp_path / "hf")
    with torch.no_grad():
        got = model(ids).logits
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
        model.lighthouse_inv_freq = model.inv_freq.clone()  # what rope_freqs "model" rotates with
        assert (model(ids).logits - ref).abs().max() > 1e-3
    assert (_reference_logits(w, ids, lighthouse=lh) - ref).abs().max() > 1e-2  # before_pool is another model
