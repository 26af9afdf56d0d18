"""A GGUF file's metadata and tensor shapes -> our ModelConfig, for the architectures in ARCHITECTURES.

llama.cpp's convert_hf_to_gguf.py writes the hyperparameters under the architecture's name (`llama.*`, `qwen2.*`,
`qwen3.*`: general.architecture is the prefix) and names the tensors alike for all three; what differs:
- llama  RoPE on adjacent pairs, so the converter reorders the rows of attn_q / attn_k (see gguf.unpermute_rows).
- qwen2  NEOX-style RoPE (rotate-half, HF's own order): rows as HF has them. blk.N.attn_q.bias / attn_k.bias /
         attn_v.bias are required (HF's Qwen2 always has q/k/v biases, never an o_proj bias).
- qwen3  NEOX-style RoPE, no biases, and blk.N.attn_q_norm.weight / attn_k_norm.weight (head_dim,): the per-head
         RMSNorm of q and k before RoPE. head_dim is attention.key_length (written from config.json's head_dim;
         Qwen3 models have 128, not hidden_size / heads).
Every architecture: no output.weight means tied embeddings; attention.key_length defaults to embedding_length /
head_count (llama.cpp's default); rope.dimension_count, if present, must be head_dim (llama.cpp writes it for llama
only); expert_count > 0 (a mixture of experts) is refused.

Keys read (prefix = the architecture): embedding_length, block_count, feed_forward_length, attention.head_count(_kv),
attention.key_length / value_length, attention.layer_norm_rms_epsilon, rope.freq_base (rope_theta), context_length
(max_position_embeddings); vocab from token_embd; BOS/EOS/pad ids from tokenizer.ggml.* (given by the caller).
RoPE scaling: rope.scaling.type "linear" (or the old rope.scale_linear) -> rope_scaling linear with its factor;
"none" or absent -> none; yarn and others are refused. Llama 3.1-style scaling has no metadata: llama.cpp stores
a `rope_freqs.weight` tensor instead, one divisor per frequency (frequency i turns at inv_freq_i / rope_freqs_i),
computed from (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings). We recover those:
factor is the largest divisor; in the band between, 1/divisor is linear in 1/wavelength, and the line gives
low/high_freq_factor for an original length taken from rope.scaling.original_context_length, else 8192 (only
length / low and length / high set the frequencies, so any length that reproduces the divisors is exact). The
result is checked: the model's llama3 formula must reproduce every divisor to 1e-4, otherwise the conversion is
refused (config.json cannot express that tensor). All-one divisors are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lighthouse.convert.torchtitan_args import ConversionError
from lighthouse.model.config import ModelConfig


@dataclass(frozen=True)
class Architecture:
    """How one GGUF architecture maps to our model family (model_type = the architecture's name)."""

    permuted_qk: bool  # llama.cpp reordered the q/k rows (adjacent-pair RoPE): undo it
    extra: dict[str, str] = field(default_factory=dict)  # GGUF per-layer tensor (after blk.N.) -> HF suffix


ARCHITECTURES = {
    "llama": Architecture(permuted_qk=True),
    "qwen2": Architecture(permuted_qk=False, extra={
        "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.bias": "self_attn.v_proj.bias"}),
    "qwen3": Architecture(permuted_qk=False, extra={
        "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight"}),
}


def architecture(meta: dict[str, Any], source: str = "the GGUF file") -> str:
    """general.architecture, or ConversionError naming the supported ones."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise ConversionError(f"{source} is a {arch!r} model; supported architectures: {', '.join(ARCHITECTURES)} "
                              "(dense decoders that convert to our Llama, Qwen2 and Qwen3 families)")
    return arch


def _f32(v) -> float:
    """A float32 metadata value as the decimal it was written from (9.999999747e-06 -> 1e-05)."""
    return float(str(np.float32(v)))


def _llama3_scaling(divisors: np.ndarray, head_dim: int, theta: float, original: int | None) -> dict[str, Any]:
    """rope_scaling {"rope_type": "llama3", ...} that reproduces llama.cpp's rope_freqs divisors (see the module
    docstring), checked with the model's own RoPE code; or ConversionError."""
    from lighthouse.ops.rope import rope_inv_freq

    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (head_dim // 2,)
    factor = float(divisors.max())
    band = (divisors > 1 + 1e-6) & (divisors < factor * (1 - 1e-6))
    old = float(original or 8192)
    fits = [(1.0, 4.0)]  # Llama 3.1's low/high_freq_factor, for a band too narrow to fit a line
    if band.sum() >= 2:  # smooth = (1/divisor - 1/factor) / (1 - 1/factor) = a / wavelength + b
        smooth = (1 / divisors[band] - 1 / factor) / (1 - 1 / factor)
        a, b = np.polyfit(inv[band] / (2 * np.pi), smooth, 1)  # a = old / (high - low), b = -low / (high - low)
        low, high = float(-b * old / a), float(-b * old / a + old / a)
        fits = [(round(low, 3), round(high, 3)), (low, high)]
    for low, high in fits:
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                   "original_max_position_embeddings": int(old)}
        if not 0 < low < high:
            continue
        probe = ModelConfig(hidden_size=head_dim, num_attention_heads=1, num_key_value_heads=1, rope_theta=theta,
                            rope_scaling=scaling)
        if np.max(np.abs(inv / divisors / rope_inv_freq(probe).double().numpy() - 1)) < 1e-4:
            return scaling
    raise ConversionError(f"the GGUF's rope_freqs.weight (per-frequency RoPE divisors {np.round(divisors, 4)}) does "
                          "not follow Llama 3's rope scaling for any parameters: config.json cannot express it")


def _rope_scaling(meta: dict[str, Any], arch: str, rope_freqs: np.ndarray | None, head_dim: int, theta: float):
    kind = str(meta.get(f"{arch}.rope.scaling.type", "none")).lower()
    factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
    if kind == "none" and f"{arch}.rope.scale_linear" in meta:
        kind = "linear"
    if rope_freqs is not None:
        if kind not in ("none", "linear") or (kind == "linear" and factor not in (None, 1.0)):
            raise ConversionError(f"the GGUF has both rope_freqs.weight and rope scaling {kind!r}: not supported")
        if np.allclose(rope_freqs, 1.0):
            return None
        if rope_freqs.shape != (head_dim // 2,):
            raise ConversionError(f"rope_freqs.weight has shape {rope_freqs.shape}; head_dim {head_dim} implies "
                                  f"({head_dim // 2},)")
        return _llama3_scaling(rope_freqs.astype(np.float64), head_dim, theta,
                               meta.get(f"{arch}.rope.scaling.original_context_length"))
    if kind == "none" or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind == "linear":
        return {"rope_type": "linear", "factor": _f32(factor)}
    raise ConversionError(f"the GGUF's rope scaling type {kind!r} is not supported (supported: none, linear, and "
                          "llama3 as a rope_freqs.weight tensor)")


def _expected_shapes(arch: str, shapes: dict[str, tuple[int, ...]], dim: int, n_layers: int, ffn: int, n_heads: int,
                     n_kv: int, head_dim: int) -> dict[str, tuple[int, ...]]:
    """Every tensor the architecture needs (output.weight only if the file has it) -> its numpy shape."""
    vocab = shapes["token_embd.weight"][0]
    want = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,)}
    if "output.weight" in shapes:
        want["output.weight"] = (vocab, dim)
    q, kv = n_heads * head_dim, n_kv * head_dim
    per_layer = {"attn_norm.weight": (dim,), "attn_q.weight": (q, dim), "attn_k.weight": (kv, dim),
                 "attn_v.weight": (kv, dim), "attn_output.weight": (dim, q), "ffn_norm.weight": (dim,),
                 "ffn_gate.weight": (ffn, dim), "ffn_up.weight": (ffn, dim), "ffn_down.weight": (dim, ffn)}
    extra = {"attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,), "attn_q_norm.weight": (head_dim,),
             "attn_k_norm.weight": (head_dim,)}
    per_layer |= {k: extra[k] for k in ARCHITECTURES[arch].extra}
    return want | {f"blk.{i}.{k}": s for i in range(n_layers) for k, s in per_layer.items()}


def build_config(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]], tok_ids: dict[str, int | None],
                 rope_freqs: np.ndarray | None = None) -> ModelConfig:
    """Our ModelConfig (model_type = general.architecture) from a GGUF's metadata and tensor shapes (numpy order);
    checks every shape."""
    arch = architecture(meta)
    family = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3"}[arch]

    def need(key: str) -> int:
        if f"{arch}.{key}" not in meta:
            raise ConversionError(f"the GGUF metadata has no {arch}.{key}")
        return int(meta[f"{arch}.{key}"])

    if int(meta.get(f"{arch}.expert_count", 0) or 0) > 0:
        raise ConversionError(f"this is a mixture-of-experts {arch} ({arch}.expert_count="
                              f"{meta[f'{arch}.expert_count']}): only dense {family} models are supported")
    dim, n_layers, ffn = need("embedding_length"), need("block_count"), need("feed_forward_length")
    n_heads = need("attention.head_count")
    n_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length", dim // n_heads))
    if int(meta.get(f"{arch}.attention.value_length", head_dim)) != head_dim:
        raise ConversionError(f"attention.value_length differs from key_length: not a {family} attention")
    if int(meta.get(f"{arch}.rope.dimension_count", head_dim)) != head_dim:
        raise ConversionError(f"{arch}.rope.dimension_count is {meta[f'{arch}.rope.dimension_count']} but head_dim "
                              f"is {head_dim}: partial rotary embeddings are not supported")
    if "token_embd.weight" not in shapes:
        raise ConversionError("the GGUF has no token_embd.weight")
    want = _expected_shapes(arch, shapes, dim, n_layers, ffn, n_heads, n_kv, head_dim)
    for name, shape in want.items():
        if name not in shapes:
            raise ConversionError(f"the GGUF is missing tensor {name!r}")
        if tuple(shapes[name]) != shape:
            raise ConversionError(f"tensor {name!r} has shape {tuple(shapes[name])}; the metadata implies {shape}")
    extra = sorted(set(shapes) - set(want) - {"rope_freqs.weight"})
    if extra:
        raise ConversionError(f"unexpected tensor {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1
                              else "") + f": not a plain {family} weight")
    theta = _f32(meta.get(f"{arch}.rope.freq_base", 10000.0))
    try:
        return ModelConfig(
            model_type=arch, vocab_size=shapes["token_embd.weight"][0], hidden_size=dim, intermediate_size=ffn,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv, head_dim=head_dim,
            rms_norm_eps=_f32(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)), rope_theta=theta,
            rope_scaling=_rope_scaling(meta, arch, rope_freqs, head_dim, theta),
            max_position_embeddings=int(meta.get(f"{arch}.context_length", 4096)),
            tie_word_embeddings="output.weight" not in shapes, **tok_ids,
        )
    except ValueError as exc:
        raise ConversionError(f"the GGUF's hyperparameters are not a valid {family} config: {exc}") from None
