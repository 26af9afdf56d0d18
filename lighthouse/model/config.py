"""Model configuration: HF Llama/Qwen2/Qwen3 fields plus the checkpoint's `lighthouse` block.

`ModelConfig.to_hf_dict()` is what goes into config.json; `ModelConfig.from_hf_dict()` reads any HF config.json
of a supported family (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`). A config without a
`lighthouse` block (an ordinary HF checkpoint) gets Lighthouse disabled: every layer runs dense.

The families differ only in the attention's projections (`MODEL_FAMILIES`):
  llama  q/k/v/o biases when attention_bias (SmolLM2, Llama 3: none); tied embeddings when tie_word_embeddings.
  qwen2  q/k/v always have a bias, o_proj never (HF's Qwen2Attention).
  qwen3  biases as llama (attention_bias), and an RMSNorm over each head's q and k (q_norm/k_norm) before RoPE.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
LIGHTHOUSE_ROPE = ("before_pool", "after_select")  # = lighthouse.ops.validation.ROPE_MODES
LIGHTHOUSE_ROPE_FREQS = ("model", "unscaled")
MODEL_FAMILIES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}

# Sizes a config.json may give, (lowest, highest): several times the largest open models' (Llama 3.1 405B: 126
# layers, hidden 16384, MLP 53248, 128 heads; vocabularies up to ~262K; Llama 4 Scout: 10M positions), so that
# a typo or a hostile file is refused before anything is built from it (1e9 layers took minutes of growing memory)
SIZE_BOUNDS = {
    "vocab_size": (1, 1 << 22),
    "hidden_size": (1, 1 << 16),
    "intermediate_size": (1, 1 << 18),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 1024),
    "num_key_value_heads": (1, 1024),
    "head_dim": (2, 1024),
    "max_position_embeddings": (2, 1 << 24),
}
MAX_LIGHTHOUSE_LEVELS = 8  # the pyramid's levels; the paper uses 3


def _whole(name: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"{name} must be a whole number in {lo}..{hi:,}, got {value!r}")


def _finite(name: str, value: Any, *, above: float, below: float = math.inf, hint: str = "",
            or_equal: bool = False) -> None:
    """A real number (not a bool, NaN or infinity) above `above` (or equal, with or_equal) and below `below`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (above <= value if or_equal else above < value) or not value < below:
        span = f"{'>=' if or_equal else '>'} {above:g}" + ("" if below == math.inf else f" and < {below:g}")
        raise ValueError(f"{name} must be a finite number {span}, got {value!r}" + (f" ({hint})" if hint else ""))


@dataclass
class LighthouseConfig:
    """Which layers run Lighthouse attention, and with which op parameters.

    enabled: False -> every layer dense (plain HF Llama checkpoints).
    full_attn_layers: layer indices that always run dense (the paper keeps the first and last two dense).
    min_seq_len: sequences shorter than this run dense (the op's own minimum applies on top).
    rope: where the Lighthouse layers' op applies RoPE (it changes what a trained model computes):
      "before_pool" (the published code; the default, and what a config.json without the key means): q/k are
        rotated at their positions before the pyramid is pooled, so a pooled entry is the mean of rotated rows.
      "after_select" (the official repository's open change "Fix RoPE for pooled tokens in hierarchical
        selection"): the op gets un-rotated q/k, scores, pools and selects on them, then rotates every gathered
        entry, query and key alike, at the last position its window covers ((i+1)*p^l - 1; a level-0 token at
        its own position), V never. Which frequencies it rotates with is `rope_freqs`.
      Either way dense layers, dense attention (short prompts, the dense tail, dense decode) and the KV cache use
      standard RoPE (this model's frequencies); sparse decode keeps the op's selected K as the op rotated it.
    rope_freqs: with rope="after_select", the RoPE frequencies of the rotations the Lighthouse layers make for the
      op and for sparse decode (it changes what a trained model computes when the model has rope_scaling):
      "model" (the default, and what a config.json without the key means): this model's inverse frequencies,
        rope_theta with its rope_scaling, the same as standard RoPE.
      "unscaled": 1 / rope_theta^(2i/D), rope_scaling ignored. This is what the official change computes:
        torchtitan's llama3 models apply the llama3 scaling (factor 8) to their dense attention's RoPE, but the
        change's rotation after selection takes rope_theta alone. The op's rotation of the selected entries uses
        these, and so, in sparse decode, do a Lighthouse layer's decode query and key and the dense tail's keys
        in the selected context. Dense attention and the KV cache keep the model's frequencies.
      "unscaled" needs rope="after_select": with before_pool the Lighthouse layers make no rotation of their own.
    """

    enabled: bool = True
    levels: int = 3
    pooling_factor: int = 4
    topk: int = 128
    scorer: str = "norm"
    full_attn_layers: list[int] = field(default_factory=list)
    min_seq_len: int = 0
    rope: str = "before_pool"
    rope_freqs: str = "model"

    def __post_init__(self) -> None:
        if self.rope not in LIGHTHOUSE_ROPE:
            raise ValueError(
                f"lighthouse.rope must be one of {LIGHTHOUSE_ROPE} (got {self.rope!r}): \"before_pool\" is the "
                f"published code, \"after_select\" applies RoPE after selection"
            )
        if self.rope_freqs not in LIGHTHOUSE_ROPE_FREQS:
            raise ValueError(
                f"lighthouse.rope_freqs must be one of {LIGHTHOUSE_ROPE_FREQS} (got {self.rope_freqs!r}): \"model\" "
                f"rotates with the model's RoPE frequencies (rope_scaling applied), \"unscaled\" with rope_theta's "
                f"alone (the official after-select change)"
            )
        if self.rope_freqs == "unscaled" and self.rope != "after_select":
            raise ValueError(
                f"lighthouse.rope_freqs='unscaled' applies only with lighthouse.rope='after_select' (got rope="
                f"{self.rope!r}): set rope_freqs to 'model', or rope to 'after_select'"
            )

    def check_op(self) -> None:
        """The op's own bounds (topk 0 served NUL characters, then a 500), named as config.json names them."""
        from lighthouse.ops.validation import check_config

        try:
            check_config(self.levels, self.pooling_factor, self.topk, self.scorer)
        except ValueError as exc:
            raise ValueError(f"lighthouse.{exc}") from None
        _whole("lighthouse.levels", self.levels, 1, MAX_LIGHTHOUSE_LEVELS)
        _whole("lighthouse.min_seq_len", self.min_seq_len, 0, SIZE_BOUNDS["max_position_embeddings"][1])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "LighthouseConfig":
        if d is None:
            return cls(enabled=False)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown keys in the config.json 'lighthouse' block: {sorted(unknown)}; known: {sorted(known)}")
        out = cls(**d)
        out.full_attn_layers = [int(i) for i in out.full_attn_layers]
        return out


@dataclass
class ModelConfig:
    """A Llama-3-style decoder (HF `LlamaConfig` field names and meanings); `model_type` picks the family."""

    model_type: str = "llama"  # a key of MODEL_FAMILIES
    vocab_size: int = 320
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF form, e.g. {"rope_type": "llama3", "factor": 8.0, ...}
    max_position_embeddings: int = 16384
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = 256
    eos_token_id: int | list[int] | None = 257
    pad_token_id: int | None = 258
    lighthouse: LighthouseConfig = field(default_factory=LighthouseConfig)

    def __post_init__(self) -> None:
        self._check_sizes()  # before head_dim is derived from them
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if isinstance(self.lighthouse, dict):
            self.lighthouse = LighthouseConfig.from_dict(self.lighthouse)
        self.validate()

    def _check_sizes(self) -> None:
        for name, (lo, hi) in SIZE_BOUNDS.items():
            value = getattr(self, name)
            if name == "head_dim" and value is None:
                continue
            if name == "num_key_value_heads" and isinstance(self.num_attention_heads, int):
                hi = min(hi, max(self.num_attention_heads, 1))  # (at most the query heads)
            _whole(name, value, lo, hi)

    def validate(self) -> None:
        """Raises ValueError saying which field to change: sizes outside SIZE_BOUNDS, a non-finite or out-of-range
        float, an unsupported family or RoPE, the Lighthouse block out of the op's bounds."""
        if self.model_type not in MODEL_FAMILIES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; supported: {sorted(MODEL_FAMILIES)}")
        self._check_sizes()
        _finite("rope_theta", self.rope_theta, above=1, hint="the RoPE base: 10000 and 500000 are usual")
        _finite("rms_norm_eps", self.rms_norm_eps, above=0, below=1, hint="1e-5 and 1e-6 are usual")
        _finite("initializer_range", self.initializer_range, above=0, or_equal=True, hint="0.02 is usual")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE (got {self.head_dim})")
        rope_type = self.rope_type
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope_scaling type {rope_type!r} is not supported; supported: {SUPPORTED_ROPE_TYPES}")
        self._check_rope_scaling(rope_type)
        self.lighthouse.__post_init__()  # lighthouse.rope/rope_freqs, also when assigned after construction
        if self.lighthouse.enabled:
            self.lighthouse.check_op()
        bad = [i for i in self.lighthouse.full_attn_layers if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise ValueError(f"lighthouse.full_attn_layers {bad} are outside 0..{self.num_hidden_layers - 1}")

    def _check_rope_scaling(self, rope_type: str) -> None:
        if rope_type == "default":
            return
        s = self.rope_scaling
        _finite("rope_scaling.factor", s.get("factor"), above=0, hint="how much longer than trained, e.g. 8")
        if rope_type != "llama3":
            return
        _finite("rope_scaling.low_freq_factor", s.get("low_freq_factor"), above=0, hint="Llama 3.1: 1")
        _finite("rope_scaling.high_freq_factor", s.get("high_freq_factor"), above=s["low_freq_factor"],
                hint="above low_freq_factor; Llama 3.1: 4")
        _finite("rope_scaling.original_max_position_embeddings", s.get("original_max_position_embeddings"), above=0,
                hint="the positions the model was trained with before scaling")

    @property
    def qkv_bias(self) -> bool:
        """Whether q_proj, k_proj and v_proj have a bias."""
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        """Whether o_proj has a bias."""
        return self.model_type != "qwen2" and self.attention_bias

    @property
    def qk_norm(self) -> bool:
        """Whether each head's q and k pass an RMSNorm (q_norm/k_norm over head_dim) before RoPE."""
        return self.model_type == "qwen3"

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    @property
    def num_parameters(self) -> int:
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * d * (2 * self.num_attention_heads + 2 * self.num_key_value_heads)
        per_layer = attn + 3 * h * i + 2 * h + (2 * d if self.qk_norm else 0)
        per_layer += d * (self.num_attention_heads + 2 * self.num_key_value_heads) if self.qkv_bias else 0
        per_layer += h if self.o_bias else 0
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + emb + h

    # ---- HF config.json ----
    def to_hf_dict(self) -> dict[str, Any]:
        rope_parameters = {"rope_type": self.rope_type, "rope_theta": float(self.rope_theta)}
        if self.rope_scaling:
            rope_parameters.update({k: v for k, v in self.rope_scaling.items() if k not in ("type", "rope_type", "rope_theta")})
        return {
            "architectures": [MODEL_FAMILIES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            # transformers 4.x reads these two; 5.x reads rope_parameters (both are written, consistent).
            "rope_theta": float(self.rope_theta),
            "rope_scaling": {k: v for k, v in self.rope_scaling.items() if k != "rope_theta"} if self.rope_scaling else None,
            "rope_parameters": rope_parameters,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "mlp_bias": self.mlp_bias,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
            "use_cache": True,
            "lighthouse": self.lighthouse.to_dict(),
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        model_type = d.get("model_type", "llama")
        if model_type not in MODEL_FAMILIES:
            raise ValueError(f"config.json has model_type {model_type!r}; supported: {sorted(MODEL_FAMILIES)}")
        if d.get("use_sliding_window"):
            raise ValueError("config.json has use_sliding_window true; sliding-window attention is not supported")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.json has hidden_act {act!r}; only 'silu' (SwiGLU) is supported")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise ValueError("pretraining_tp != 1 is not supported")
        rope_theta, rope_scaling = _read_rope(d)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in ("lighthouse", "rope_theta", "rope_scaling"):
                continue
            if f.name in d and d[f.name] is not None:
                kwargs[f.name] = d[f.name]
            elif f.name in ("bos_token_id", "eos_token_id", "pad_token_id") and f.name in d:
                kwargs[f.name] = None
        kwargs.setdefault("num_key_value_heads", d.get("num_attention_heads", cls.num_attention_heads))
        return cls(
            **kwargs,
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            lighthouse=LighthouseConfig.from_dict(d.get("lighthouse")),
        )


def _read_rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either the 4.x or the 5.x spelling."""
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        extra = {k: v for k, v in params.items() if k not in ("rope_theta", "rope_type", "type")}
        return theta, ({"rope_type": rope_type, **extra} if rope_type != "default" else None)
    theta = float(d.get("rope_theta", 10000.0))
    scaling = d.get("rope_scaling")
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        extra = {k: v for k, v in scaling.items() if k not in ("rope_type", "type", "rope_theta")}
        return theta, ({"rope_type": rope_type, **extra} if rope_type != "default" else None)
    return theta, None
