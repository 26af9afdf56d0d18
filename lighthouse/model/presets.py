"""Named model sizes. `tiny` is the one every test uses (torchtitan's "debugmodel").

tiny     2 layers, hidden 64: trains on the CPU in seconds; Lighthouse L2 p4 k128 from 512 tokens.
default  the bundled checkpoint: 6 layers, hidden 256, GQA 4/2, ~5M params (~20 MB fp32), 16K context,
         Lighthouse L3 p4 k256 on layers 1-4 in training (first and last layer dense, as the paper keeps its edge
         layers dense). The bundled checkpoint serves with Lighthouse on layers 3-4 only: with layers 1-2 under
         Lighthouse at prefill it loses passkey retrieval (bench/results/2026-11-28_h200_default_recipe/).
h200     a larger run for the H200: 8 layers, hidden 512, ~25M params, 32K context.
"""

from __future__ import annotations

import copy

from lighthouse.model.config import LighthouseConfig, ModelConfig

# byte-level vocabulary: 256 bytes + specials, padded to a multiple of 64 (see lighthouse.tokenizer)
BYTE_VOCAB_SIZE = 320

MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384, rope_theta=10000.0,
        lighthouse=LighthouseConfig(levels=2, pooling_factor=4, topk=128, full_attn_layers=[], min_seq_len=512),
    ),
    "default": ModelConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384, rope_theta=100000.0,
        lighthouse=LighthouseConfig(levels=3, pooling_factor=4, topk=256, full_attn_layers=[0, 5], min_seq_len=4096),
    ),
    "h200": ModelConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=500000.0,
        lighthouse=LighthouseConfig(levels=3, pooling_factor=4, topk=512, full_attn_layers=[0, 7], min_seq_len=8192),
    ),
}


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}")
    return copy.deepcopy(MODEL_PRESETS[name])
