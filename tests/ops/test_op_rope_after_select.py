"""lighthouse.rope = "after_select": RoPE applied after selection, at the last position each entry covers.

The semantics (from the official repository's open change "Fix RoPE for pooled tokens in hierarchical selection",
branch rope-fix): the op receives q/k before RoPE; scores, pooling and selection run on them; every gathered
entry, query and key alike, is rotated at the last base position its window covers, (i+1)*p^l - 1 (a token at
its own position); V is never rotated. `definition_op` below restates that from scratch (pyramid means, a loop
over the entries for the fan-out, float64 softmax, the model's own RoPE functions for the rotation); the op
(reference and Triton under the interpreter), the model and the engine are checked against it at fp32 1e-5.
The selection itself is the published one (`lighthouse_select` on the un-rotated q/k): its own tests cover it.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.prefill import PrefillTask
from lighthouse.engine.sampling import SamplingParams
from lighthouse.engine.sparse_context import selected_entries as sparse_selected_entries
from lighthouse.model import LlamaForCausalLM
from lighthouse.model.config import LighthouseConfig, ModelConfig
from lighthouse.model.llama import UnrotatedAttention
from lighthouse.model.presets import model_preset
from lighthouse.ops.rope import apply_rope, rope_cos_sin
from lighthouse.ops import dispatch
from lighthouse.ops import lighthouse_ref as ref
from lighthouse.ops.attention import causal_attention, repeat_kv
from lighthouse.ops.validation import padded_len

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except Exception:  # pragma: no cover
    HAVE_TRITON = False
needs_triton = pytest.mark.skipif(not (HAVE_TRITON and INTERPRET), reason="needs triton and TRITON_INTERPRET=1")


def inv_freq_for(D: int, theta: float = 10000.0) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))


def rand(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------ the definition


def rotate_like_the_model(x: torch.Tensor, pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x (S, D) rotated at positions pos (S,) with the model's RoPE functions (fp32 cos/sin), in float64."""
    cos, sin = rope_cos_sin(inv_freq, pos[None], torch.float32)  # (1, 1, S, D)
    return apply_rope(x[None, None].double(), cos.double(), sin.double())[0, 0]


def selected_entries(q, k, v, levels, p, topk, inv_freq, offset=0):
    """Per (b, h): the selection (on un-rotated q/k), and each entry's level, window, position and rotated q/k
    and v, from the definition. Returns a list over b of lists over h of dicts."""
    B, H, N, D = q.shape
    k, v = repeat_kv(k, H // k.shape[1]), repeat_kv(v, H // v.shape[1])
    idx = ref.lighthouse_select(q, k, levels=levels, pooling_factor=p, topk=topk)  # (B, H, S)
    n_run = padded_len(N, levels, p, topk)
    pad = [torch.nn.functional.pad(x.double(), (0, 0, 0, n_run - N)) for x in (q, k, v)]
    starts = [sum(n_run // p**m for m in range(lv)) for lv in range(levels)]
    out = []
    for b in range(B):
        off = offset[b].item() if isinstance(offset, torch.Tensor) else offset
        rows = []
        for h in range(H):
            ents = []
            for pyr in idx[b, h].tolist():
                lv = max(m for m in range(levels) if pyr >= starts[m])
                i, c = pyr - starts[lv], p**lv
                q_, k_, v_ = (x[b, h, i * c : (i + 1) * c].mean(0) for x in pad)  # the window's mean
                ents.append((lv, i, c, (i + 1) * c - 1 + off, q_, k_, v_))
            pos = torch.tensor([e[3] for e in ents])
            qs = rotate_like_the_model(torch.stack([e[4] for e in ents]).float(), pos, inv_freq)
            ks = rotate_like_the_model(torch.stack([e[5] for e in ents]).float(), pos, inv_freq)
            rows.append(dict(entries=ents, pos=pos, q=qs, k=ks, v=torch.stack([e[6] for e in ents]), idx=idx[b, h]))
        out.append(rows)
    return out


def definition_op(q, k, v, levels, p, topk, inv_freq, offset=0) -> torch.Tensor:
    """Lighthouse attention with RoPE after selection, float64: causal attention over the rotated entries in the
    selection's order, each entry's output added to positions [i*c + c - 1, i*c + 2c - 1) below N."""
    B, H, N, D = q.shape
    out = torch.zeros(B, H, N, D, dtype=torch.float64)
    for b, rows in enumerate(selected_entries(q, k, v, levels, p, topk, inv_freq, offset)):
        for h, r in enumerate(rows):
            S = len(r["entries"])
            scores = (r["q"] @ r["k"].T) / D**0.5
            scores = scores.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf"))
            o = scores.softmax(-1) @ r["v"]
            for e, (_lv, i, c, _pos, *_rest) in enumerate(r["entries"]):
                lo, hi = i * c + c - 1, min(i * c + 2 * c - 1, N)
                if lo < hi:
                    out[b, h, lo:hi] += o[e]
    return out


CASES = [  # (B, H, H_kv, N, D, levels, p, topk, offset)
    (1, 2, 1, 600, 16, 3, 2, 128, 0),  # GQA, three levels, N padded to the length unit
    (2, 2, 2, 512, 32, 2, 4, 128, "per-row"),  # B=2 with a start position per row
]


def _inputs(B, H, H_kv, N, D, offset):
    q, k, v = rand(B, H, N, D, seed=1), rand(B, H_kv, N, D, seed=2), rand(B, H_kv, N, D, seed=3)
    off = torch.tensor([0, 37])[:B] if offset == "per-row" else offset
    return q, k, v, off


@pytest.mark.parametrize("B,H,H_kv,N,D,L,p,topk,offset", CASES)
def test_reference_op_equals_the_definition(B, H, H_kv, N, D, L, p, topk, offset):
    q, k, v, off = _inputs(B, H, H_kv, N, D, offset)
    inv = inv_freq_for(D)
    kw = dict(levels=L, pooling_factor=p, topk=topk, rope="after_select", inv_freq=inv, position_offset=off)
    want = definition_op(q, k, v, L, p, topk, inv, off)
    got = ref.lighthouse_attention(q, k, v, **kw)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # the public op dispatches there on the CPU; the variant really differs from the published one
    assert torch.equal(dispatch.lighthouse_attention(q, k, v, **kw), got)
    before = ref.lighthouse_attention(q, k, v, levels=L, pooling_factor=p, topk=topk)
    assert (before - got).abs().max() > 1e-2
    # with_context: the same output, K as rotated for the inner attention, V pooled, the published selection
    out, k_sel, v_sel, idx = ref.lighthouse_attention_with_context(q, k, v, **kw)
    torch.testing.assert_close(out, got, rtol=0, atol=0)
    for b, rows in enumerate(selected_entries(q, k, v, L, p, topk, inv, off)):
        for h, r in enumerate(rows):
            assert torch.equal(idx[b, h], r["idx"])
            torch.testing.assert_close(k_sel[b, h].double(), r["k"], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v_sel[b, h].double(), r["v"], rtol=1e-5, atol=1e-5)


def test_positions_are_the_last_position_each_entry_covers():
    n, L, p = 512, 3, 2
    offs = ref.level_offsets(n, L, p)
    idx = torch.tensor([0, 5, 511, offs[1], offs[1] + 3, offs[2], offs[2] + 127])
    assert ref.entry_positions(idx, n, L, p).tolist() == [0, 5, 511, 1, 7, 3, 511]


def test_levels_one_is_causal_attention_over_standard_rope():
    q, k, v = rand(1, 2, 64, 16, seed=4), rand(1, 1, 64, 16, seed=5), rand(1, 1, 64, 16, seed=6)
    inv = inv_freq_for(16)
    got = ref.lighthouse_attention(q, k, v, levels=1, pooling_factor=2, topk=128, rope="after_select", inv_freq=inv,
                                   position_offset=3)
    cos, sin = rope_cos_sin(inv, torch.arange(3, 67)[None], torch.float32)
    want = causal_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_a_shift_of_every_position_changes_nothing_but_rounding():
    """RoPE scores depend on position differences only: the op's output is the same from any start."""
    q, k, v = rand(1, 2, 512, 16, seed=7), rand(1, 2, 512, 16, seed=8), rand(1, 2, 512, 16, seed=9)
    kw = dict(levels=2, pooling_factor=4, topk=128, rope="after_select", inv_freq=inv_freq_for(16))
    a = ref.lighthouse_attention(q, k, v, **kw)
    b = ref.lighthouse_attention(q, k, v, **kw, position_offset=1000)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(rope="after_pool"), "rope must be one of"),
    (dict(rope="after_select"), "needs inv_freq"),
    (dict(rope="after_select", inv_freq=torch.ones(4)), r"shape \(D/2,\)"),
    (dict(rope="after_select", inv_freq=torch.ones(8), position_offset=-1), "position_offset"),
    (dict(rope="after_select", inv_freq=torch.ones(8), position_offset=torch.zeros(3, dtype=torch.long)),
     "position_offset"),
])
def test_invalid_rope_arguments_raise_value_errors(kwargs, match):
    q = rand(1, 1, 256, 16, seed=0)
    for op in (ref.lighthouse_attention, dispatch.lighthouse_attention, dispatch.lighthouse_attention_with_context):
        with pytest.raises(ValueError, match=match):
            op(q, q, q, levels=2, pooling_factor=2, topk=128, **kwargs)


# ------------------------------------------------------------------------------------------ Triton path


@needs_triton
@pytest.mark.parametrize("B,H,H_kv,N,D,L,p,topk,offset", CASES)
def test_triton_path_equals_the_definition_and_the_reference_with_gradients(B, H, H_kv, N, D, L, p, topk, offset):
    from lighthouse.ops.triton import lighthouse_attention_triton, lighthouse_attention_triton_inference

    q, k, v, off = _inputs(B, H, H_kv, N, D, offset)
    q, k, v = (x.requires_grad_(True) for x in (q, k, v))
    inv = inv_freq_for(D)
    kw = dict(levels=L, pooling_factor=p, topk=topk, rope="after_select", inv_freq=inv, position_offset=off)
    got = lighthouse_attention_triton(q, k, v, scores="torch", **kw)
    want = ref.lighthouse_attention(q, k, v, **kw)
    torch.testing.assert_close(got.double(), definition_op(q.detach(), k.detach(), v.detach(), L, p, topk, inv, off),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = rand(*got.shape, seed=11)
    for name, a, b in zip("qkv", torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}")
    with torch.no_grad():
        inf = lighthouse_attention_triton_inference(q, k, v, scores="torch", **kw)
        torch.testing.assert_close(inf, want.detach(), rtol=1e-5, atol=1e-5)
        out, k_sel, v_sel, idx = lighthouse_attention_triton_inference(q, k, v, scores="torch", return_context=True,
                                                                      **kw)
        r_out, r_k, r_v, r_idx = ref.lighthouse_attention_with_context(q, k, v, **kw)
    assert torch.equal(idx, r_idx)
    for a, b in ((out, r_out), (k_sel, r_k), (v_sel, r_v)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_triton
def test_the_dispatcher_passes_the_variant_to_the_triton_path(monkeypatch):
    monkeypatch.setenv(dispatch.ENV, "triton")
    q, k, v = rand(1, 2, 512, 16, seed=12), rand(1, 1, 512, 16, seed=13), rand(1, 1, 512, 16, seed=14)
    kw = dict(levels=2, pooling_factor=4, topk=128, rope="after_select", inv_freq=inv_freq_for(16))
    assert dispatch.choose_backend(q, 4)[0] == "triton"
    torch.testing.assert_close(dispatch.lighthouse_attention(q, k, v, **kw), ref.lighthouse_attention(q, k, v, **kw),
                               rtol=1e-5, atol=1e-5)
    a = dispatch.lighthouse_attention_with_context(q, k, v, **kw)
    b = ref.lighthouse_attention_with_context(q, k, v, **kw)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------------- config


def _round_trip(cfg: ModelConfig, field: str, value: str, default: str, bad: str) -> None:
    """`lighthouse.<field>` set to `value` survives config.json; an older config.json without it reads `default`;
    `bad` is refused with the field's name."""
    setattr(cfg.lighthouse, field, value)
    d = cfg.to_hf_dict()
    assert d["lighthouse"][field] == value
    assert ModelConfig.from_hf_dict(d) == cfg
    old = dict(d, lighthouse={k: v for k, v in d["lighthouse"].items() if k != field})  # an older config.json
    assert getattr(ModelConfig.from_hf_dict(old).lighthouse, field) == default
    with pytest.raises(ValueError, match=f"lighthouse.{field} must be one of"):
        ModelConfig.from_hf_dict(dict(d, lighthouse=dict(d["lighthouse"], **{field: bad})))


def test_config_field_round_trips_defaults_to_before_pool_and_rejects_bad_values():
    cfg = model_preset("tiny")
    assert cfg.lighthouse.rope == "before_pool"
    _round_trip(cfg, "rope", "after_select", "before_pool", "after_pool")
    with pytest.raises(ValueError, match="lighthouse.rope must be one of"):
        LighthouseConfig(rope="before")
    cfg.lighthouse.rope = "sideways"
    with pytest.raises(ValueError, match="lighthouse.rope must be one of"):
        cfg.validate()


def test_checkpoint_keeps_the_field(tmp_path):
    from lighthouse.checkpoint import load_checkpoint, save_checkpoint

    model = model_with("after_select")
    save_checkpoint(model, None, tmp_path)
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.config.lighthouse.rope == "after_select"


# --------------------------------------------------------------------------------------------------- model


def model_with(rope: str, layers: int = 3, seed: int = 0, rope_freqs: str = "model",
               rope_scaling: dict | None = None) -> LlamaForCausalLM:
    """tiny (GQA 4/2, D 16): layer 0 dense, the others Lighthouse (L2 p4 k128 from 512 tokens); fp32."""
    cfg = model_preset("tiny")
    cfg.num_hidden_layers = layers
    cfg.rope_scaling = rope_scaling
    cfg.lighthouse = LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[0], min_seq_len=512,
                                      rope=rope, rope_freqs=rope_freqs)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(32, 127, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def reference_attention(model, split: int | None = None, *, decode_from: int | None = None, record=None,
                        op_freq: torch.Tensor | None = None):
    """An attention callback from the definition, with un-rotated q/k (one sequence, B = 1).

    Dense layers: causal attention over standard RoPE. Lighthouse layers: queries [0, split) the definition op
    over [0, split) with frequencies op_freq (None: the model's) (split None: the whole sequence, as the model's
    own forward); queries [split, decode_from) densely over every key before them, standard RoPE (the engine's
    dense tail); queries from decode_from on (sparse decode) over the op's real selected entries (window start <
    split, K rotated at the window's last position, pooled V) and the keys at positions [split, t], query and
    those keys rotated at their positions with op_freq too. record: a dict that gets each layer's standard-RoPE K
    ("k") and its un-rotated K ("raw")."""
    op_freq = model.inv_freq if op_freq is None else op_freq
    L, p, topk = (model.config.lighthouse.levels, model.config.lighthouse.pooling_factor,
                  model.config.lighthouse.topk)
    full = model.config.lighthouse.full_attn_layers

    def attn(i, q, k, v, rotary):
        qr, kr = (x.double() for x in rotary.apply(q, k, torch.float32))
        N, D = q.shape[2], q.shape[3]
        r = q.shape[1] // k.shape[1]
        kr, vr = repeat_kv(kr, r), repeat_kv(v.double(), r)
        if record is not None:
            record[i] = dict(k=kr[:, ::r].float(), raw=k.clone())
        mask = torch.ones(N, N, dtype=torch.bool).tril()
        dense = ((qr @ kr.transpose(-1, -2) / D**0.5).masked_fill(~mask, float("-inf")).softmax(-1) @ vr)
        if i in full:
            return dense.float()
        s = N if split is None else split
        out = dense.clone()
        out[:, :, :s] = definition_op(q[:, :, :s], k[:, :, :s], v[:, :, :s], L, p, topk, op_freq)
        if decode_from is not None:
            rows = selected_entries(q[:, :, :s], k[:, :, :s], v[:, :, :s], L, p, topk, op_freq)[0]
            cos, sin = rope_cos_sin(op_freq, rotary.positions, torch.float32)  # (1, 1, N, D)
            ql, kl = (apply_rope(x.double(), cos.double(), sin.double())[0] for x in (q, repeat_kv(k, r)))  # (H, N, D)
            for h, row in enumerate(rows):
                real = torch.tensor([e[1] * e[2] < s for e in row["entries"]])
                ck, cv = row["k"][real], row["v"][real]
                for t in range(decode_from, N):
                    keys = torch.cat([ck, kl[h, s : t + 1]])
                    vals = torch.cat([cv, vr[0, h, s : t + 1]])
                    out[0, h, t] = (keys @ ql[h, t] / D**0.5).softmax(0) @ vals
        return out.float()

    return UnrotatedAttention(attn)


def test_model_forward_equals_the_definition_and_dense_layers_stay_standard():
    model = model_with("after_select")
    x = torch.tensor([ids(600, 1)])
    with torch.no_grad():
        got = model(x, logits_to_keep=600).logits
        want = model(x, attention=reference_attention(model), logits_to_keep=600).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # dense=True, and short sequences, are plain RoPE attention: the variant changes nothing there
        before = model_with("before_pool")
        assert torch.equal(model(x, dense=True, logits_to_keep=600).logits,
                           before(x, dense=True, logits_to_keep=600).logits)
        short = torch.tensor([ids(300, 2)])
        assert torch.equal(model(short, logits_to_keep=300).logits, before(short, logits_to_keep=300).logits)
        assert (before(x, logits_to_keep=600).logits - got).abs().max() > 1e-3  # the variant is a different model
        # explicit consecutive positions shift the op's positions with them (RoPE is relative: same logits)
        shifted = model(x, positions=torch.arange(5, 605), logits_to_keep=600).logits
        torch.testing.assert_close(shifted, got, rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError, match="consecutive positions"):
            model(x, positions=torch.arange(600) * 2)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_training_gradients_flow_through_the_variant(monkeypatch, backend):
    monkeypatch.setenv(dispatch.ENV, backend)
    model = model_with("after_select", layers=2).train()
    x = torch.tensor([ids(512, 3)])
    loss = model(x, labels=x).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["model.layers.1.self_attn.q_proj.weight"].abs().sum() > 0  # a Lighthouse layer's q and k learn
    assert grads["model.layers.1.self_attn.k_proj.weight"].abs().sum() > 0
    if backend == "triton":  # the same gradients as the reference path
        monkeypatch.setenv(dispatch.ENV, "torch")
        model.zero_grad()
        model(x, labels=x).loss.backward()
        for n, p in model.named_parameters():
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


# -------------------------------------------------------------------------------------------------- engine


def engine(model) -> LLMEngine:
    return LLMEngine(model, None, EngineConfig(kv_cache_bytes=32 << 20, block_size=16, max_prefill_chunk_ms=None))


def run_prefill(eng, prompt, opts, chunk_tokens, read):
    """(logits, [(K, V) of every layer], [context (K, V) rows of every Lighthouse layer] or None)."""
    req = eng.make_request(f"p{chunk_tokens}", prompt, SamplingParams(max_tokens=4), opts)
    kv = eng.kv.allocate(req.reservation)
    logits = PrefillTask(eng.model, eng.kv.pool, kv, prompt, req.plan, chunk_tokens=chunk_tokens).run()
    cache, ctx = read(eng, kv, len(prompt), req.plan)  # the conftest fixture prefilled_cache
    eng.kv.free(kv)
    return logits, cache, ctx


N_PROMPT = 1100  # past the op's 512-token minimum, not a multiple of its length unit


@pytest.mark.parametrize("tail", [0, 100])
def test_sparse_prefill_equals_the_definition_in_one_pass_and_in_pieces(tail, prefilled_cache):
    model = model_with("after_select")
    eng = engine(model)
    prompt = ids(N_PROMPT, 4)
    split = N_PROMPT - tail
    record: dict = {}
    with torch.no_grad():
        want = model(torch.tensor([prompt]), attention=reference_attention(model, split, record=record),
                     logits_to_keep=1).logits[0, -1]
    for decode in ("dense", "sparse"):
        results = [run_prefill(eng, prompt, RequestOptions("sparse", decode, tail, cache_prompt=False), chunk, prefilled_cache)
                   for chunk in (1 << 15, 96)]  # one chunk; 12 chunks (q/k buffers rotated in place after the op)
        for logits, cache, ctx in results:
            torch.testing.assert_close(logits, want.float(), rtol=1e-5, atol=1e-5)
            for i, (k_cache, _) in enumerate(cache):  # the cache holds standard-RoPE K in every layer
                torch.testing.assert_close(k_cache, record[i]["k"], rtol=1e-5, atol=1e-5)
            assert (ctx is None) == (decode == "dense")
        for (k1, v1), (k2, v2) in zip(results[0][2] or [], results[1][2] or []):
            torch.testing.assert_close(k1, k2, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-5)


def test_sparse_decode_sees_the_selected_keys_rotated_after_selection():
    """Greedy sparse decode of an after_select checkpoint: every decode step's logits equal the definition's
    (the decode query at its own position over the real selected entries, K rotated at each window's last
    position, and the tail), and the tokens are their argmax."""
    model = model_with("after_select")
    eng = engine(model)
    prompt, tail, steps = ids(700, 5), 32, 6
    logits = []
    inner = eng.runner.decode

    def decode(kvs, last_tokens):
        out = inner(kvs, last_tokens)
        logits.append(out[0].clone())
        return out

    eng.runner.decode = decode
    eng.add_request("r", prompt, SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True),
                    RequestOptions(prefill="sparse", decode="sparse", dense_tail_tokens=tail))
    tokens = []
    while eng.has_unfinished():
        for out in eng.step():
            tokens.extend(out.token_ids)
    assert len(tokens) == steps and len(logits) == steps - 1
    seq = torch.tensor([prompt + tokens[:-1]])
    N, split = len(prompt), len(prompt) - tail
    with torch.no_grad():
        want = model(seq, attention=reference_attention(model, split, decode_from=N), logits_to_keep=steps).logits[0]
        dense = model(seq, attention=reference_attention(model, split), logits_to_keep=steps).logits[0]
    assert tokens == want.argmax(-1).tolist()
    got = torch.stack(logits)
    torch.testing.assert_close(got, want[1:], rtol=1e-5, atol=1e-5)
    assert (got - dense[1:]).abs().max() > 1e-3  # sparse decode attends to something else than the full cache


# --------------------------------------------------------- rope_freqs: the official change's unscaled frequencies
# The official change rotates the selected entries with 1 / rope_theta^(2i/D), ignoring the model's rope_scaling
# (torchtitan's llama3 models scale their dense attention's RoPE). lighthouse.rope_freqs = "unscaled" does the same
# in the op, the model, the engine's prefill and its sparse decode; "model" (the default) keeps the model's.

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 512}  # factor 8; at D=16 it changes 5 of the 8 frequencies


def llama3_formula(D: int, theta: float, s: dict) -> torch.Tensor:
    """Llama 3.1's scaled inverse frequencies, one at a time in float64: a wavelength above orig/low is slowed by
    `factor`, one below orig/high kept, one between blended: (1 - a) f / factor + a f, a = (orig/wl - low)/(high - low)."""
    orig, low, high, factor = (s["original_max_position_embeddings"], s["low_freq_factor"], s["high_freq_factor"],
                               s["factor"])
    out = []
    for i in range(0, D, 2):
        f = 1.0 / theta ** (i / D)
        wl = 2 * math.pi / f
        if wl > orig / low:
            f = f / factor
        elif wl >= orig / high:
            a = (orig / wl - low) / (high - low)
            f = (1 - a) * f / factor + a * f
        out.append(f)
    return torch.tensor(out, dtype=torch.float64)


def unscaled_formula(D: int, theta: float) -> torch.Tensor:
    return torch.tensor([1.0 / theta ** (i / D) for i in range(0, D, 2)], dtype=torch.float64)


def scaled_pair(seed: int = 0, layers: int = 3) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """The same weights (llama3 rope_scaling, after_select) with rope_freqs "unscaled" and "model"."""
    return (model_with("after_select", layers, seed, rope_freqs="unscaled", rope_scaling=dict(LLAMA3)),
            model_with("after_select", layers, seed, rope_freqs="model", rope_scaling=dict(LLAMA3)))


def test_rope_freqs_field_round_trips_defaults_to_model_and_rejects_bad_values():
    cfg = model_preset("tiny")
    assert cfg.lighthouse.rope_freqs == "model"
    cfg.lighthouse.rope = "after_select"
    _round_trip(cfg, "rope_freqs", "unscaled", "model", "scaled")
    with pytest.raises(ValueError, match="rope_freqs='unscaled' applies only with lighthouse.rope='after_select'"):
        LighthouseConfig(rope_freqs="unscaled")
    cfg.lighthouse.rope = "before_pool"
    with pytest.raises(ValueError, match="set rope_freqs to 'model', or rope to 'after_select'"):
        cfg.validate()


def test_the_model_keeps_both_frequency_sets_and_a_checkpoint_keeps_the_field(tmp_path):
    from lighthouse.checkpoint import load_checkpoint, save_checkpoint

    unscaled, model = scaled_pair()
    D, theta = 16, unscaled.config.rope_theta
    torch.testing.assert_close(unscaled.inv_freq.double(), llama3_formula(D, theta, LLAMA3), rtol=1e-6, atol=0)
    torch.testing.assert_close(unscaled.lighthouse_inv_freq.double(), unscaled_formula(D, theta), rtol=1e-6, atol=0)
    assert int((unscaled.inv_freq != unscaled.lighthouse_inv_freq).sum()) == 5
    assert torch.equal(model.lighthouse_inv_freq, model.inv_freq)  # "model": the op's are the model's, bit for bit
    save_checkpoint(unscaled, None, tmp_path)
    loaded, _ = load_checkpoint(tmp_path)  # built on the meta device: the buffers are made afresh
    assert loaded.config.lighthouse.rope_freqs == "unscaled"
    assert torch.equal(loaded.lighthouse_inv_freq, unscaled.lighthouse_inv_freq)
    assert torch.equal(loaded.inv_freq, unscaled.inv_freq)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_the_op_rotates_with_the_frequencies_it_is_given(monkeypatch, backend):
    """The op (reference / Triton) with the model's lighthouse_inv_freq equals the definition with the unscaled
    formula, and not with the scaled one."""
    monkeypatch.setenv(dispatch.ENV, backend)
    unscaled, _ = scaled_pair()
    q, k, v = rand(1, 2, 512, 16, seed=21), rand(1, 1, 512, 16, seed=22), rand(1, 1, 512, 16, seed=23)
    kw = dict(levels=2, pooling_factor=4, topk=128, rope="after_select")
    got = dispatch.lighthouse_attention(q, k, v, **kw, inv_freq=unscaled.lighthouse_inv_freq)
    want = definition_op(q, k, v, 2, 4, 128, unscaled_formula(16, 10000.0).float())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    scaled = definition_op(q, k, v, 2, 4, 128, llama3_formula(16, 10000.0, LLAMA3).float())
    assert (got.double() - scaled).abs().max() > 1e-2


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_model_forward_rotates_lighthouse_layers_with_unscaled_frequencies(monkeypatch, backend):
    monkeypatch.setenv(dispatch.ENV, backend)
    unscaled, model = scaled_pair()
    x = torch.tensor([ids(600, 21)])
    op_freq = unscaled_formula(16, 10000.0).float()
    with torch.no_grad():
        got = unscaled(x, logits_to_keep=600).logits
        want = unscaled(x, attention=reference_attention(unscaled, op_freq=op_freq), logits_to_keep=600).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # "model" gives another model (the same weights); dense attention and short inputs are the same
        assert (model(x, logits_to_keep=600).logits - got).abs().max() > 1e-3
        assert torch.equal(unscaled(x, dense=True, logits_to_keep=8).logits, model(x, dense=True, logits_to_keep=8).logits)
        short = torch.tensor([ids(300, 22)])
        assert torch.equal(unscaled(short, logits_to_keep=4).logits, model(short, logits_to_keep=4).logits)


@pytest.mark.parametrize("chunk_tokens", [1 << 15, 96])
def test_engine_prefill_with_unscaled_frequencies_equals_the_model_and_the_definition(chunk_tokens, prefilled_cache):
    """Sparse prefill with a dense tail and sparse decode: logits as the model's own forward and the definition's,
    the cache with standard (scaled) RoPE K, the context's tail with K rotated by the unscaled frequencies."""
    unscaled, model = scaled_pair()
    prompt, tail = ids(N_PROMPT, 24), 100
    split = N_PROMPT - tail
    op_freq = unscaled_formula(16, 10000.0).float()
    record: dict = {}
    with torch.no_grad():
        want = unscaled(torch.tensor([prompt]), attention=reference_attention(unscaled, split, record=record,
                                                                               op_freq=op_freq),
                        logits_to_keep=1).logits[0, -1]
        # the model's forward over [0, split) (the op) and the tail's position by position, as the engine does
        head = unscaled(torch.tensor([prompt[:split]]), logits_to_keep=1).logits[0, -1]
    eng = engine(unscaled)
    logits, cache, ctx = run_prefill(eng, prompt, RequestOptions("sparse", "sparse", tail, cache_prompt=False),
                                     chunk_tokens, prefilled_cache)
    torch.testing.assert_close(logits, want.float(), rtol=1e-5, atol=1e-5)
    for i, (k_cache, _) in enumerate(cache):
        torch.testing.assert_close(k_cache, record[i]["k"], rtol=1e-5, atol=1e-5)
    # the context: S selected entries per head, then the tail (entry e of head g*r + j at row e*r + j)
    cos, sin = rope_cos_sin(op_freq, torch.arange(split, N_PROMPT)[None], torch.float32)
    S, r = sparse_selected_entries(split, 2, 4, 128), 2
    for i, (k_ctx, _) in zip((1, 2), ctx):
        tail_k = apply_rope(record[i]["raw"][:, :, split:], cos, sin)[0].transpose(0, 1)  # (tail, H_kv, D)
        torch.testing.assert_close(k_ctx[S * r :: r], tail_k, rtol=1e-5, atol=1e-5)
        assert (k_ctx[S * r :: r] - record[i]["k"][0, :, split:].transpose(0, 1)).abs().max() > 1e-3
    # without a tail, the engine's prefill is the model's own forward; rope_freqs "model" gives other logits
    head_opts = RequestOptions("sparse", "dense", 0, cache_prompt=False)
    torch.testing.assert_close(run_prefill(eng, prompt[:split], head_opts, chunk_tokens, prefilled_cache)[0], head,
                               rtol=1e-5, atol=1e-5)
    other = run_prefill(engine(model), prompt[:split], head_opts, chunk_tokens, prefilled_cache)[0]
    assert (other - head).abs().max() > 1e-3


def test_sparse_decode_with_unscaled_frequencies_beside_a_dense_decode_in_one_batch():
    """Two greedy requests decoding in the same steps: one with sparse decode (its Lighthouse layers rotate query
    and keys with the unscaled frequencies, as its context's K was), one with dense decode (standard RoPE over the
    full cache). Every step's logits equal the definition's; the tokens are their argmax; the model's scaled
    frequencies in the sparse row would give other logits."""
    unscaled, _ = scaled_pair()
    eng = engine(unscaled)
    op_freq = unscaled_formula(16, 10000.0).float()
    prompts = {"sparse": ids(700, 25), "dense": ids(640, 26)}
    tail, steps = 32, 6
    logits: dict[str, list] = {"sparse": [], "dense": []}
    batches = []
    inner = eng.runner.decode

    def decode(kvs, last_tokens):
        out = inner(kvs, last_tokens)
        batches.append(len(kvs))
        for b, kv in enumerate(kvs):
            logits["sparse" if kv.sparse else "dense"].append(out[b].clone())
        return out

    eng.runner.decode = decode
    for name, prompt in prompts.items():
        eng.add_request(name, prompt, SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True),
                        RequestOptions(prefill="sparse", decode=name, dense_tail_tokens=tail))
    tokens: dict[str, list[int]] = {"sparse": [], "dense": []}
    while eng.has_unfinished():
        for out in eng.step():
            tokens[out.request_id].extend(out.token_ids)
    assert 2 in batches  # the two rows shared decode steps
    for name, prompt in prompts.items():
        seq = torch.tensor([prompt + tokens[name][:-1]])
        N, split = len(prompt), len(prompt) - tail
        decode_from = N if name == "sparse" else None
        with torch.no_grad():
            want = unscaled(seq, attention=reference_attention(unscaled, split, decode_from=decode_from,
                                                               op_freq=op_freq), logits_to_keep=steps).logits[0]
        assert tokens[name] == want.argmax(-1).tolist(), name
        got = torch.stack(logits[name])
        torch.testing.assert_close(got, want[1:], rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        if name == "sparse":
            with torch.no_grad():
                scaled = unscaled(seq, attention=reference_attention(unscaled, split, decode_from=N),
                                  logits_to_keep=steps).logits[0]
            assert (got - scaled[1:]).abs().max() > 1e-3
