"""The Llama-3-style model: config, presets, RoPE, and per-layer Lighthouse/dense attention."""

from lighthouse.model.config import LighthouseConfig, ModelConfig
from lighthouse.model.llama import AttentionFn, CausalLMOutput, LlamaForCausalLM, Rotary, UnrotatedAttention
from lighthouse.model.presets import MODEL_PRESETS, model_preset

__all__ = [
    "AttentionFn",
    "CausalLMOutput",
    "LighthouseConfig",
    "LlamaForCausalLM",
    "MODEL_PRESETS",
    "ModelConfig",
    "Rotary",
    "UnrotatedAttention",
    "model_preset",
]
