"""torchtitan's llama3 model arguments: defaults, the official Lighthouse patch's flavors, the FFN size rule, and
resolving flavor + JSON file + flags into one set of arguments.

Argument names are torchtitan's `TransformerModelArgs` fields (torchtitan 61c25f8d plus the Lighthouse patch of
ighoshsubho/lighthouse-attention @ cfea089), so a run's flavor name, or its arguments as flags or JSON, read the
same here as in the run. Each flavor lists only the arguments it sets; the others keep torchtitan's defaults.

The FFN width is not the flavor's `hidden_dim`: torchtitan's FeedForward takes 2/3 of it, multiplies by
`ffn_dim_multiplier` if set and rounds up to a multiple of `multiple_of` (`torchtitan_ffn_dim`). So the 270M
ablation flavors (hidden_dim 1536) have w1/w2/w3 with 1024 hidden units.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any


class ConversionError(ValueError):
    """The input cannot be converted; the message says what is wrong and what to pass instead."""


# TransformerModelArgs defaults (those a converted model depends on). n_kv_heads None means n_heads;
# hidden_dim None means 4 * dim (upstream's rule, kept by the patch when a flavor sets no hidden_dim).
TORCHTITAN_DEFAULTS: dict[str, Any] = {
    "dim": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "n_kv_heads": None,
    "vocab_size": 128256,
    "multiple_of": 256,
    "ffn_dim_multiplier": None,
    "hidden_dim": None,
    "norm_eps": 1e-5,
    "rope_theta": 10000.0,
    # RoPEScalingArgs: torchtitan's llama3 model always applies this scaling (there is no "off" switch)
    "rope_scaling_args": {
        "scaling_factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "max_seq_len": 131072,
    "use_selection_lighthouse": False,
    "use_lighthouse_cp": False,
    "lighthouse_num_levels": 3,
    "lighthouse_pooling_factor": 16,
    "lighthouse_topk": 16,
    "lighthouse_scorer": "norm",
    "dilation": 4,
    "lighthouse_full_attn_layers": None,
}

# Fields that do not change the weights or the computation we reproduce (accepted in JSON, otherwise ignored).
IGNORED_FIELDS = ("depth_init", "use_flex_attn", "attn_mask_type", "eos_id")

_M270 = {"dim": 1024, "n_layers": 30, "hidden_dim": 1536, "n_heads": 8, "n_kv_heads": 8, "rope_theta": 10000.0}


def _lighthouse(levels: int, pool: int, topk: int, *, cp: bool = False, full=(0, 1, 28, 29)) -> dict[str, Any]:
    out = dict(_M270, use_selection_lighthouse=True, lighthouse_num_levels=levels, lighthouse_pooling_factor=pool,
               lighthouse_topk=topk, dilation=4, lighthouse_full_attn_layers=list(full))
    if cp:
        out["use_lighthouse_cp"] = True
    return out


# name -> (levels, pooling factor, topk[, context-parallel]) of the patch's 270M Lighthouse flavors
_LIGHTHOUSE_270M = {
    "ablation_270m_lighthouse": (2, 2, 8192),
    "ablation_270m_lighthouse_topk4096": (2, 2, 4096),
    "ablation_270m_lighthouse_topk8192": (2, 2, 8192),
    "ablation_270m_lighthouse_topk16384": (2, 2, 16384),
    "ablation_270m_lighthouse_topk8192_pool4": (2, 4, 8192),
    "ablation_270m_lighthouse_topk4096_pool4": (2, 4, 4096),
    "ablation_270m_lighthouse_topk2048_pool4": (2, 4, 2048),
    "ablation_270m_lighthouse_topk8192_lvl3": (3, 2, 8192),
    "ablation_270m_lighthouse_topk4096_lvl3": (3, 2, 4096),
    "ablation_270m_lighthouse_topk1536_lvl3": (3, 2, 1536),
    "ablation_270m_lighthouse_topk2048_lvl3": (3, 2, 2048),
    "ablation_270m_lighthouse_topk3072_lvl3": (3, 2, 3072),
    "ablation_270m_lighthouse_topk6144_lvl3": (3, 2, 6144),
    "ablation_270m_lighthouse_topk2048_pool4_lvl3": (3, 4, 2048),
    "ablation_270m_lighthouse_topk1536_pool4_lvl3": (3, 4, 1536),
    "ablation_270m_lighthouse_topk4096_pool4_lvl3_cp": (3, 4, 4096, True),
    "ablation_270m_lighthouse_topk6144_pool4_lvl4_cp": (4, 4, 6144, True),
    "ablation_270m_lighthouse_topk16384_pool4_lvl3_cp": (3, 4, 16384, True),
    "ablation_270m_lighthouse_topk1536_pool4_lvl3_cp": (3, 4, 1536, True),
    "ablation_270m_lighthouse_topk2048_pool4_lvl3_cp": (3, 4, 2048, True),
    "ablation_270m_lighthouse_topk1536_pool8_lvl3": (3, 8, 1536),
    "ablation_270m_lighthouse_topk768_pool4_lvl3": (3, 4, 768),
    "ablation_270m_lighthouse_topk768_pool8_lvl3": (3, 8, 768),
    "ablation_270m_lighthouse_topk2048_lvl4": (4, 2, 2048),
    "ablation_270m_lighthouse_topk1536_lvl4": (4, 2, 1536),
    "ablation_270m_lighthouse_topk2048_lvl5": (5, 2, 2048),
    "ablation_270m_lighthouse_topk1536_lvl5": (5, 2, 1536),
}

TORCHTITAN_FLAVORS: dict[str, dict[str, Any]] = {
    name: _lighthouse(*spec[:3], cp=len(spec) > 3) for name, spec in _LIGHTHOUSE_270M.items()
}
TORCHTITAN_FLAVORS.update({
    # the 1M-token context-parallel flavor keeps no layer dense
    "ablation_270m_lighthouse_topk4096_pool4_lvl4_cp_1m": _lighthouse(4, 4, 4096, cp=True, full=()),
    # dense flavors (no Lighthouse block): the small baseline, the dense-resume stage of the recipe, larger ones
    "ablation_270m": dict(_M270, dim=576),
    "ablation_270m_topk1536_pool4_lvl3_sdpa": dict(_M270),
    "ablation_2b": {"dim": 2048, "n_layers": 24, "hidden_dim": 8192, "n_heads": 32, "n_kv_heads": 32,
                    "rope_theta": 10000.0},
    "llama_8b": {"dim": 4096, "n_layers": 32, "hidden_dim": 14336, "n_heads": 32, "n_kv_heads": 8,
                 "rope_theta": 10000.0},
    # upstream flavors the patch keeps
    "70B": {"dim": 8192, "n_layers": 80, "n_heads": 64, "n_kv_heads": 8, "ffn_dim_multiplier": 1.3,
            "multiple_of": 4096, "rope_theta": 500000.0},
    "405B": {"dim": 16384, "n_layers": 126, "n_heads": 128, "n_kv_heads": 8, "ffn_dim_multiplier": 1.2,
             "multiple_of": 4096, "rope_theta": 500000.0},
})


def torchtitan_ffn_dim(dim: int, hidden_dim: int | None, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The hidden width torchtitan's FeedForward builds (w1/w3 rows) from the model arguments."""
    h = 4 * dim if hidden_dim is None else int(hidden_dim)
    h = int(2 * h / 3)
    if ffn_dim_multiplier is not None:
        h = int(ffn_dim_multiplier * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def resolve_model_args(
    flavor: str | None = None, config_json: str | os.PathLike | None = None, model_args: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], set[str]]:
    """torchtitan's model arguments: its defaults <- the flavor <- the JSON file <- model_args.
    Returns (arguments, the names some source set explicitly)."""
    args = json.loads(json.dumps(TORCHTITAN_DEFAULTS))  # a deep copy
    given: set[str] = set()
    layers: list[dict[str, Any]] = []
    if flavor is not None:
        if flavor not in TORCHTITAN_FLAVORS:
            close = difflib.get_close_matches(flavor, list(TORCHTITAN_FLAVORS), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConversionError(
                f"unknown torchtitan flavor {flavor!r}{hint} Known flavors: {', '.join(sorted(TORCHTITAN_FLAVORS))}. "
                "For another model pass its arguments as flags or with --config-json."
            )
        layers.append(TORCHTITAN_FLAVORS[flavor])
    if config_json is not None:
        path = Path(config_json)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConversionError(f"cannot read the model arguments file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConversionError(f"{path} must hold a JSON object of torchtitan model arguments")
        layers.append(data)
    layers.append({k: v for k, v in (model_args or {}).items() if v is not None})
    for layer in layers:
        unknown = sorted(set(layer) - set(args) - set(IGNORED_FIELDS))
        if unknown:
            raise ConversionError(f"unknown torchtitan model arguments {unknown}; known: {sorted(args)}")
        for k, v in layer.items():
            if k in IGNORED_FIELDS:
                continue
            if k == "rope_scaling_args":
                extra = sorted(set(v) - set(args[k])) if isinstance(v, dict) else ["(not an object)"]
                if extra:
                    raise ConversionError(f"unknown rope_scaling_args keys {extra}; known: {sorted(args[k])}")
                args[k].update(v)
            else:
                args[k] = v
            given.add(k)
    return args, given
