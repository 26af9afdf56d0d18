"""The causal LM (Llama, Qwen2, Qwen3): config, presets, the layer defined once, its chunked forward, and the per-layer
Lighthouse/dense rule (layer_plan.py). RoPE lives in lighthouse.ops.rope."""

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
