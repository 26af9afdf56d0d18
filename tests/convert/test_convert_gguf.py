"""`lighthouse convert gguf`: a llama.cpp GGUF file of a Llama model -> our HF checkpoint directory (Qwen2 and
Qwen3 files: test_convert_gguf_qwen.py).

The tests write small GGUF files with `gguf.GGUFWriter` the way llama.cpp's convert_hf_to_gguf.py writes them:
llama.* hyperparameters, tensors named blk.N.attn_q.weight, token_embd.weight, ..., the rows of attn_q / attn_k
reordered by llama.cpp's `LlamaModel.permute` (rows viewed as (n_head, 2, D/2), the last two axes swapped), and
tokenizer.ggml.* metadata of a small byte-level BPE with merges, control tokens and a chat template. Types the
library quantizes (F32, F16, BF16, Q8_0, Q4_0, Q4_1) go through `gguf.quants.quantize`; the K-quants (Q4_K,
Q5_K, Q6_K), which it cannot quantize, are random blocks with valid fp16 scales.

Every converted tensor is checked against a dequantizer written here from ggml's block layouts, and the logits
against a reference forward written here from llama.cpp's Llama graph: it runs on the GGUF's tensors as stored
(rows still permuted) and rotates adjacent pairs (dims 2i, 2i+1) as llama.cpp's RoPE does, so it shares neither
the un-permutation nor HF's rotate-half with the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lighthouse import cli
from lighthouse.convert import ConversionError, convert_gguf

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

DIM, N_LAYERS, N_HEADS, N_KV, FFN = 256, 2, 4, 2, 512  # K-quant blocks hold 256 values: rows of 256 or 512
HEAD_DIM = DIM // N_HEADS
EPS, THETA, CTX = 1e-5, 10000.0, 2048
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2: control tokens, as in SmolLM2
MERGES = ["Ġ t", "h e", "Ġt he", "1 2", "Ġ 1", "l l", "he ll", "hell o"]
USER_TOKEN = "<tool>"
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# tensor type of each weight in the "mixed" file: every supported type, q and k among the quantized ones
MIXED = {
    "token_embd": Q.Q8_0, "output": Q.Q6_K,
    "blk.0.attn_q": Q.Q4_K, "blk.0.attn_k": Q.Q5_K, "blk.0.attn_v": Q.Q6_K, "blk.0.attn_output": Q.Q8_0,
    "blk.0.ffn_gate": Q.Q4_0, "blk.0.ffn_up": Q.Q4_1, "blk.0.ffn_down": Q.BF16,
    "blk.1.attn_q": Q.Q8_0, "blk.1.attn_k": Q.Q4_0, "blk.1.attn_v": Q.Q4_1, "blk.1.attn_output": Q.F16,
    "blk.1.ffn_gate": Q.Q6_K, "blk.1.ffn_up": Q.Q5_K, "blk.1.ffn_down": Q.Q4_K,
}


# ------------------------------------------------------------------ the tokenizer's vocabulary


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255 (the alphabet of byte-level BPE vocabularies)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def _vocab() -> tuple[list[str], list[int]]:
    tokens = SPECIALS + _byte_alphabet() + [m.replace(" ", "") for m in MERGES] + [USER_TOKEN]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS) - 1) + [4]
    return tokens, types


TOKENS, TOKEN_TYPES = _vocab()
VOCAB = len(TOKENS)


# ------------------------------------------------------------------ ggml block layouts (reference dequantizers)


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)  # (n, 2) bytes -> (n, 1)


def _q8_0(b):  # 34 bytes: d, 32 x int8
    return _f16(b[:, :2]) * np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)


def _q4_0(b):  # 18 bytes: d, 16 bytes of nibbles: low nibbles are values 0..15, high nibbles 16..31
    qs = b[:, 2:].astype(np.int32)
    return np.concatenate([(qs & 15) - 8, (qs >> 4) - 8], axis=1).astype(np.float32) * _f16(b[:, :2])


def _q4_1(b):  # 20 bytes: d, m, 16 bytes of nibbles
    qs = b[:, 4:].astype(np.float32)
    q = np.concatenate([qs % 16, np.floor(qs / 16)], axis=1)
    return q * _f16(b[:, :2]) + _f16(b[:, 2:4])


def _scale_min_k4(s: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """The 6-bit scale and min of sub-block j (0..7) from a K-quant's 12 packed scale bytes s (n, 12)."""
    s = s.astype(np.int32)
    if j < 4:
        return s[:, j] & 63, s[:, j + 4] & 63
    return (s[:, j + 4] & 15) | ((s[:, j - 4] >> 6) << 4), (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)


def _q45_k(b, five: bool):  # Q4_K 144 bytes: d, dmin, scales[12], qs[128]; Q5_K adds qh[32] before qs
    d, dmin, scales = _f16(b[:, :2]), _f16(b[:, 2:4]), b[:, 4:16]
    qh = b[:, 16:48].astype(np.int32) if five else None
    qs = b[:, 48:].astype(np.int32) if five else b[:, 16:].astype(np.int32)
    out = np.empty((b.shape[0], 256), np.float32)
    for j in range(4):  # 64 values: 32 low nibbles (sub-block 2j), then 32 high nibbles (2j+1)
        for half in range(2):
            sc, m = _scale_min_k4(scales, 2 * j + half)
            q = (qs[:, 32 * j:32 * j + 32] >> (4 * half)) & 15
            if five:
                q = q + 16 * ((qh >> (2 * j + half)) & 1)
            out[:, 64 * j + 32 * half:64 * j + 32 * half + 32] = (d * sc[:, None]) * q - (dmin * m[:, None])
    return out


def _q6_k(b):  # 210 bytes: ql[128], qh[64], scales[16] (int8), d
    ql, qh = b[:, :128].astype(np.int32), b[:, 128:192].astype(np.int32)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(b[:, 208:210])
    out = np.empty((b.shape[0], 256), np.float32)
    for n in range(2):  # two halves of 128 values
        lo, hi, s = ql[:, 64 * n:64 * n + 64], qh[:, 32 * n:32 * n + 32], sc[:, 8 * n:8 * n + 8]
        for part in range(4):  # values 32*part .. : nibble (part // 2), byte half (part % 2), qh bits 2*part
            q = ((lo[:, 32 * (part % 2):32 * (part % 2) + 32] >> (4 * (part // 2))) & 15) | (((hi >> (2 * part)) & 3) << 4)
            for l16 in range(2):  # a scale per 16 values
                cols = slice(128 * n + 32 * part + 16 * l16, 128 * n + 32 * part + 16 * l16 + 16)
                out[:, cols] = (d * s[:, 2 * part + l16, None]) * (q[:, 16 * l16:16 * l16 + 16] - 32)
    return out


BLOCKS = {Q.Q8_0: (32, 34, _q8_0), Q.Q4_0: (32, 18, _q4_0), Q.Q4_1: (32, 20, _q4_1),
          Q.Q4_K: (256, 144, lambda b: _q45_k(b, False)), Q.Q5_K: (256, 176, lambda b: _q45_k(b, True)),
          Q.Q6_K: (256, 210, _q6_k)}


def _reference_dequantize(raw: np.ndarray, qtype, shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) float32 from the bytes (or F32/F16 values) the file stores."""
    if qtype in (Q.F32, Q.F16):
        return raw.astype(np.float32).reshape(shape)
    if qtype == Q.BF16:
        return (np.ascontiguousarray(raw).view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    _, size, fn = BLOCKS[qtype]
    return fn(np.ascontiguousarray(raw).reshape(-1, size)).reshape(shape)


# ------------------------------------------------------------------ writing GGUF files


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: HF q/k rows -> llama.cpp's order."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _random_k_blocks(rng: np.random.Generator, qtype, rows: int, cols: int) -> np.ndarray:
    """Random K-quant blocks whose fp16 scales are finite and sized for weights of std ~ 1/sqrt(cols)."""
    _, size, _ = BLOCKS[qtype]
    b = rng.integers(0, 256, (rows * cols // 256, size), dtype=np.uint8)
    n = b.shape[0]
    std = 1 / math.sqrt(cols)
    f16 = lambda x: x.astype(np.float16).view(np.uint8).reshape(n, 2)
    if qtype == Q.Q6_K:  # value = d * scale(int8) * (q - 32)
        b[:, 208:210] = f16(rng.uniform(0.5, 1.5, n) * std / (64 * 18))
    else:  # value = d * scale(0..63) * q - dmin * min(0..63); the mean of q is 7.5 (Q4_K) or 15.5 (Q5_K)
        d = rng.uniform(0.5, 1.5, n) * std / (32 * (9 if qtype == Q.Q4_K else 18))
        b[:, 0:2] = f16(d)
        b[:, 2:4] = f16(d * (7.5 if qtype == Q.Q4_K else 15.5) * rng.uniform(0.9, 1.1, n))
    return b.reshape(rows, -1)


def _hf_weights(seed: int) -> dict[str, np.ndarray]:
    """Float weights in HF's layout, keyed by GGUF base name (no '.weight')."""
    rng = np.random.default_rng(seed)
    lin = lambda o, i: (rng.standard_normal((o, i)) / math.sqrt(i)).astype(np.float32)
    norm = lambda: (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32)
    w = {"token_embd": (0.25 * rng.standard_normal((VOCAB, DIM))).astype(np.float32), "output": lin(VOCAB, DIM),
         "output_norm": norm()}
    for i in range(N_LAYERS):
        w |= {f"blk.{i}.attn_q": lin(N_HEADS * HEAD_DIM, DIM), f"blk.{i}.attn_k": lin(N_KV * HEAD_DIM, DIM),
              f"blk.{i}.attn_v": lin(N_KV * HEAD_DIM, DIM), f"blk.{i}.attn_output": lin(DIM, N_HEADS * HEAD_DIM),
              f"blk.{i}.ffn_gate": lin(FFN, DIM), f"blk.{i}.ffn_up": lin(FFN, DIM), f"blk.{i}.ffn_down": lin(DIM, FFN),
              f"blk.{i}.attn_norm": norm(), f"blk.{i}.ffn_norm": norm()}
    return w


def write_gguf(path: Path, *, types: dict | None = None, seed: int = 0, tied: bool = False, arch: str = "llama",
               pre: str = "smollm", tokenizer_model: str = "gpt2", rope_freqs: np.ndarray | None = None,
               meta: dict | None = None, add_bos: bool | None = False, theta: float = THETA, ctx: int = CTX) -> dict:
    """A llama GGUF file as llama.cpp writes one. types: GGUF base name -> type (default F32). Returns what the
    file stores: {"raw": name -> stored array, "type": name -> type, "hf": name -> HF-layout float weights (the
    pre-quantization values; for K-quants none exist), "shape": name -> the float shape (rows, cols)}."""
    rng = np.random.default_rng(seed + 100)
    hf = _hf_weights(seed)
    if tied:
        del hf["output"]
    w = gguf.GGUFWriter(str(path), arch=arch)
    a = arch
    for key, value in {f"{a}.block_count": N_LAYERS, f"{a}.context_length": ctx, f"{a}.embedding_length": DIM,
                       f"{a}.feed_forward_length": FFN, f"{a}.attention.head_count": N_HEADS,
                       f"{a}.attention.head_count_kv": N_KV, f"{a}.rope.dimension_count": HEAD_DIM,
                       f"{a}.vocab_size": VOCAB, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                       "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.padding_token_id": 2}.items():
        w.add_uint32(key, value)
    w.add_float32(f"{a}.rope.freq_base", theta)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", EPS)
    w.add_string("tokenizer.ggml.model", tokenizer_model)
    w.add_string("tokenizer.ggml.pre", pre)
    w.add_array("tokenizer.ggml.tokens", TOKENS)
    w.add_array("tokenizer.ggml.token_type", TOKEN_TYPES)
    w.add_array("tokenizer.ggml.merges", MERGES)
    if add_bos is not None:
        w.add_bool("tokenizer.ggml.add_bos_token", add_bos)
    w.add_string("tokenizer.chat_template", CHAT_TEMPLATE)
    for key, value in (meta or {}).items():
        (w.add_float32 if isinstance(value, float) else w.add_string if isinstance(value, str) else w.add_uint32)(
            key, value)
    stored: dict = {"raw": {}, "type": {}, "shape": {}, "hf": {}}
    for name, value in hf.items():
        qtype = (types or {}).get(name, Q.F32) if value.ndim == 2 else Q.F32  # norms stay F32, as in llama.cpp
        n_head = N_HEADS if name.endswith("attn_q") else N_KV if name.endswith("attn_k") else None
        if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
            raw = _random_k_blocks(rng, qtype, *value.shape)
        else:
            raw = gguf.quants.quantize(llama_cpp_permute(value, n_head) if n_head else value, qtype)
            stored["hf"][name] = value
        w.add_tensor(f"{name}.weight", raw, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
        stored["raw"][name], stored["type"][name], stored["shape"][name] = raw, qtype, value.shape
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def _stored_floats(stored: dict) -> dict[str, np.ndarray]:
    """The file's weights as the reference dequantizers read them (rows in llama.cpp's order)."""
    return {name: _reference_dequantize(raw, stored["type"][name], stored["shape"][name])
            for name, raw in stored["raw"].items()}


HF_TOP = {"token_embd": "model.embed_tokens", "output": "lm_head", "output_norm": "model.norm"}
HF_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def _hf_name(name: str) -> str:
    if name in HF_TOP:
        return HF_TOP[name] + ".weight"
    _, i, base = name.split(".")
    return f"model.layers.{i}.{HF_LAYER[base]}.weight"


# ------------------------------------------------------------------ llama.cpp's forward, written here


def llama_cpp_logits(w: dict[str, np.ndarray], ids: list[int], divisors: np.ndarray | None = None,
                     theta: float = THETA) -> torch.Tensor:
    """(N, vocab) float64 logits of llama.cpp's Llama graph on the GGUF's tensors as stored: q/k rows in its order,
    RoPE on adjacent pairs (2i, 2i+1) with frequency base^(-2i/D) / divisor_i, GQA, RMSNorm, SwiGLU."""
    t = {k: torch.from_numpy(v).double() for k, v in w.items()}
    n = len(ids)
    rms = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * g
    freq = theta ** (-torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    if divisors is not None:
        freq = freq / torch.from_numpy(divisors).double()
    angle = torch.arange(n, dtype=torch.float64)[:, None, None] * freq  # (N, 1, D/2)
    cos, sin = angle.cos(), angle.sin()

    def rope(x):  # (N, H, D)
        even, odd = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
        return out

    x = t["token_embd"][ids]
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    for i in range(N_LAYERS):
        p = f"blk.{i}."
        h = rms(x, t[p + "attn_norm"])
        q = rope((h @ t[p + "attn_q"].T).view(n, N_HEADS, HEAD_DIM))
        k = rope((h @ t[p + "attn_k"].T).view(n, N_KV, HEAD_DIM)).repeat_interleave(N_HEADS // N_KV, dim=1)
        v = (h @ t[p + "attn_v"].T).view(n, N_KV, HEAD_DIM).repeat_interleave(N_HEADS // N_KV, dim=1)
        att = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(HEAD_DIM) + mask, dim=-1)
        x = x + torch.einsum("hqk,khd->qhd", att, v).reshape(n, -1) @ t[p + "attn_output"].T
        h = rms(x, t[p + "ffn_norm"])
        x = x + (torch.nn.functional.silu(h @ t[p + "ffn_gate"].T) * (h @ t[p + "ffn_up"].T)) @ t[p + "ffn_down"].T
    return rms(x, t["output_norm"]) @ t.get("output", t["token_embd"]).T


IDS = [1, 3 + ord("h"), 3 + ord("i"), 260, 2, 7, 100, 200, 264, 30, 0, 150]


def _ours(out: Path) -> torch.Tensor:
    from lighthouse.checkpoint import load_checkpoint

    model, _ = load_checkpoint(out)
    with torch.no_grad():
        return model(torch.tensor([IDS]), dense=True).logits[0].double()


def _transformers(out: Path) -> torch.Tensor:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([IDS])).logits[0].double()


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str, rel: float = 2e-6) -> None:
    """|got - want| <= rel * max|want| everywhere: fp32's rounding against the float64 reference is ~1e-6 of the
    logits' scale (about 1e-5 for these logits, which reach 5-25)."""
    diff, tol = (got - want).abs(), rel * max(1.0, want.abs().max().item())
    assert diff.max() <= tol, f"{what}: max |diff| {diff.max():.3g}, mean {diff.mean():.3g} (tolerance {tol:.3g})"


# ------------------------------------------------------------------ tests


def test_every_supported_type_dequantizes_as_its_block_layout_says(tmp_path):
    """Each converted weight, put back in llama.cpp's row order, equals the reference dequantizer's reading of the
    stored bytes; weights that went through quantize() are also within their type's error of the originals."""
    stored = write_gguf(tmp_path / "m.gguf", types=MIXED)
    res = convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", dtype="float32")
    assert set(res.tensor_types) == {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"}
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    for name, want in _stored_floats(stored).items():
        hf = _hf_name(name)
        got = state[hf].numpy()
        n_head = N_HEADS if name.endswith("attn_q") else N_KV if name.endswith("attn_k") else None
        got = llama_cpp_permute(got, n_head) if n_head else got
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{name} ({stored['type'][name].name})")
        if name in stored["hf"] and stored["type"][name] != Q.F32:  # quantization error, relative to the weights' scale
            orig = stored["hf"][name]
            err = np.abs(state[hf].numpy() - orig).max() / np.abs(orig).max()
            assert err < {Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 1e-2}.get(stored["type"][name], 0.15), (name, err)


def test_logits_equal_llama_cpps_graph_and_transformers_in_fp32(tmp_path):
    stored = write_gguf(tmp_path / "m.gguf", types=MIXED, seed=1)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", dtype="float32")
    ref = llama_cpp_logits(_stored_floats(stored), IDS)
    ours, hf = _ours(tmp_path / "hf"), _transformers(tmp_path / "hf")
    assert ref.abs().max() > 1  # logits that say something
    _assert_close(ours, hf, "ours vs transformers")
    _assert_close(ours, ref, "ours vs llama.cpp's graph")


def test_q_and_k_rows_return_to_hf_order_and_skipping_that_breaks_the_logits(tmp_path, monkeypatch):
    stored = write_gguf(tmp_path / "m.gguf", seed=2)  # all F32: the HF-layout originals come back exactly
    convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", dtype="float32")
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    for i in range(N_LAYERS):
        for base, hf in (("attn_q", "q_proj"), ("attn_k", "k_proj")):
            assert torch.equal(state[f"model.layers.{i}.self_attn.{hf}.weight"],
                               torch.from_numpy(stored["hf"][f"blk.{i}.{base}"]))
    ref = llama_cpp_logits(_stored_floats(stored), IDS)
    _assert_close(_ours(tmp_path / "hf"), ref, "ours vs llama.cpp's graph")
    import lighthouse.convert.gguf as conv

    monkeypatch.setattr(conv, "unpermute_rows", lambda w, n_head: w)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "unpermuted", dtype="float32")
    assert (_ours(tmp_path / "unpermuted") - ref).abs().max() > 1e-2


def test_no_output_tensor_means_tied_embeddings(tmp_path):
    stored = write_gguf(tmp_path / "m.gguf", types={"token_embd": Q.Q8_0}, tied=True, seed=3)
    res = convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", dtype="float32")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert res.config.tie_word_embeddings and cfg["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(str(tmp_path / "hf" / "model.safetensors"))
    ref = llama_cpp_logits(_stored_floats(stored), IDS)
    _assert_close(_ours(tmp_path / "hf"), ref, "ours vs llama.cpp's graph (tied)")
    _assert_close(_transformers(tmp_path / "hf"), ref, "transformers vs llama.cpp's graph (tied)")


def test_config_carries_the_metadata_and_no_lighthouse_block(tmp_path):
    write_gguf(tmp_path / "m.gguf", meta={"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0})
    res = convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "lighthouse" not in cfg and res.dtype == "bfloat16" and cfg["torch_dtype"] == "bfloat16"
    assert {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
                                "rms_norm_eps", "rope_theta", "bos_token_id", "eos_token_id", "pad_token_id")} == {
        "hidden_size": DIM, "intermediate_size": FFN, "num_hidden_layers": N_LAYERS, "num_attention_heads": N_HEADS,
        "num_key_value_heads": N_KV, "head_dim": HEAD_DIM, "vocab_size": VOCAB, "max_position_embeddings": CTX,
        "rms_norm_eps": EPS, "rope_theta": THETA, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert cfg["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert {t.dtype for t in load_file(str(tmp_path / "hf" / "model.safetensors")).values()} == {torch.bfloat16}
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (1, 2)


def _llama3_divisors(factor=8.0, low=1.0, high=4.0, old=8192, theta=500000.0) -> np.ndarray:
    """llama.cpp's rope_freqs.weight for Llama 3.1's rope scaling (its convert script's formula)."""
    out = []
    for f in theta ** (-np.arange(0, HEAD_DIM, 2, dtype=np.float32) / HEAD_DIM):
        wavelen = 2 * math.pi / f
        smooth = (old / wavelen - low) / (high - low)
        out.append(1.0 if wavelen < old / high else factor if wavelen > old / low else 1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("params", [(8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (8.0, 2.0, 8.0, 8192),
                                    (8.0, 1.0, 4.0, 4096)])
def test_llama3_rope_freqs_become_rope_scaling_with_equal_logits(tmp_path, params):
    """Llama 3.1-style scaling is stored as divisors; the recovered rope_scaling computes the same frequencies.
    Only (old / low, old / high) change them: with no original length in the file 8192 is assumed, so the last
    case comes back as the equivalent (low 2, high 8, 8192)."""
    divisors = _llama3_divisors(*params)
    factor, low, high, old = params
    assert ((divisors > 1) & (divisors < factor)).sum() >= 2  # the band between is fitted
    stored = write_gguf(tmp_path / "m.gguf", seed=4, rope_freqs=divisors, theta=500000.0, ctx=131072)
    res = convert_gguf(tmp_path / "m.gguf", tmp_path / "hf", dtype="float32")
    assert res.config.rope_scaling == {"rope_type": "llama3", "factor": factor, "low_freq_factor": low * 8192 / old,
                                       "high_freq_factor": high * 8192 / old, "original_max_position_embeddings": 8192}
    ref = llama_cpp_logits(_stored_floats(stored), IDS, divisors=divisors, theta=500000.0)
    unscaled = llama_cpp_logits(_stored_floats(stored), IDS, theta=500000.0)
    assert (unscaled - ref).abs().max() > 1e-3  # the scaling matters at these positions
    _assert_close(_ours(tmp_path / "hf"), ref, "ours vs llama.cpp's graph (rope_freqs)")
    _assert_close(_transformers(tmp_path / "hf"), ref, "transformers vs llama.cpp's graph (rope_freqs)")


def test_rope_freqs_that_no_llama3_scaling_explains_are_refused(tmp_path):
    divisors = np.random.default_rng(0).uniform(1, 8, HEAD_DIM // 2)
    write_gguf(tmp_path / "m.gguf", rope_freqs=divisors)
    with pytest.raises(ConversionError, match="rope_freqs.weight"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("pre, digits", [("smollm", ["Ġ", "1", "2", "3"]), ("gpt-2", ["Ġ", "12", "3"])])
def test_tokenizer_encodes_like_the_vocabulary_and_keeps_specials_and_template(tmp_path, pre, digits):
    transformers = pytest.importorskip("transformers")
    write_gguf(tmp_path / "m.gguf", pre=pre)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    text = "hello the 123<|im_start|>user<tool>"
    ids = tok(text)["input_ids"]
    # smollm splits digits one by one before GPT-2's regex; gpt-2's regex keeps " 123" whole, so "1 2" merges
    want = ["hello", "Ġthe", *digits, "<|im_start|>", "u", "s", "e", "r", "<tool>"]
    assert tok.convert_ids_to_tokens(ids) == want and ids == [TOKENS.index(t) for t in want]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "hello the 123user<tool>"
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<|im_start|>", "<|im_end|>",
                                                                          "<|im_end|>", "<|endoftext|>")
    assert tok.chat_template == CHAT_TEMPLATE
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    from lighthouse.checkpoint import load_checkpoint

    _, ours = load_checkpoint(tmp_path / "hf")
    assert ours(text)["input_ids"] == ids and ours.chat_template == CHAT_TEMPLATE


def test_llama3_pre_tokenizer_groups_digits_by_three_and_adds_bos(tmp_path):
    transformers = pytest.importorskip("transformers")
    # no add_bos_token key: llama.cpp's default for this pre-tokenizer adds BOS
    write_gguf(tmp_path / "m.gguf", pre="llama-bpe", meta={"tokenizer.ggml.eot_token_id": 0}, add_bos=None)
    convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert tok.convert_ids_to_tokens(tok("1234")["input_ids"]) == ["<|im_start|>", "12", "3", "4"]
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 0]  # EOS, then the end-of-turn id: both stop generation


def test_an_unsupported_architecture_is_refused_naming_the_supported_ones(tmp_path):
    write_gguf(tmp_path / "m.gguf", arch="phi3")
    with pytest.raises(ConversionError, match="'phi3' model; supported architectures: llama, qwen2, qwen3"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_an_unsupported_tensor_type_is_refused_naming_the_tensor_and_type(tmp_path):
    write_gguf(tmp_path / "m.gguf", types={"blk.1.ffn_up": Q.Q5_0})
    with pytest.raises(ConversionError) as err:
        convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")
    msg = str(err.value)
    assert "'blk.1.ffn_up.weight'" in msg and "Q5_0" in msg and "Q4_K" in msg and "Q8_0" in msg
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.tmp-*"))


def test_a_sentencepiece_tokenizer_is_refused(tmp_path):
    write_gguf(tmp_path / "m.gguf", tokenizer_model="llama")
    with pytest.raises(ConversionError, match="'llama' \\(SentencePiece\\).*only 'gpt2'"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "hf")


def test_the_cli_converts_and_exits_2_with_the_message_on_error(tmp_path, capsys):
    write_gguf(tmp_path / "m.gguf", types={"blk.0.attn_q": Q.Q4_K})
    assert cli.main(["convert", "gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "hf")]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "weights bfloat16" in printed and "1 Q4_K" in printed
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "x").write_text("")
    assert cli.main(["convert", "gguf", str(tmp_path / "m.gguf"), "--out", str(tmp_path / "nonempty")]) == 2
    assert "is not an empty directory" in capsys.readouterr().err
    write_gguf(tmp_path / "q.gguf", arch="phi3")
    assert cli.main(["convert", "gguf", str(tmp_path / "q.gguf"), "--out", str(tmp_path / "q")]) == 2
    assert "lighthouse convert gguf:" in (err := capsys.readouterr().err) and "'phi3'" in err
