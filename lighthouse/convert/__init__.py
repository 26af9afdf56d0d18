"""Checkpoint converters: other trainers' checkpoints -> our HF checkpoint directories.

`convert_torchtitan` reads a torchtitan llama3 run (a torch.distributed.checkpoint folder, as the official
Lighthouse code's torchtitan patch writes it); `lighthouse convert torchtitan DCP_DIR --out HF_DIR` runs it.
`convert_gguf` reads a llama.cpp GGUF file of a dense Llama, Qwen2 or Qwen3 model (dequantized with the `gguf` package);
`lighthouse convert gguf FILE --out HF_DIR` runs it.
"""

from lighthouse.convert.gguf import SUPPORTED_TYPES, GGUFConversion, convert_gguf
from lighthouse.convert.torchtitan import ConversionResult, build_model_config, convert_torchtitan
from lighthouse.convert.torchtitan_args import (
    TORCHTITAN_DEFAULTS,
    TORCHTITAN_FLAVORS,
    ConversionError,
    resolve_model_args,
    torchtitan_ffn_dim,
)

__all__ = [
    "TORCHTITAN_DEFAULTS",
    "TORCHTITAN_FLAVORS",
    "SUPPORTED_TYPES",
    "ConversionError",
    "ConversionResult",
    "GGUFConversion",
    "build_model_config",
    "convert_gguf",
    "convert_torchtitan",
    "resolve_model_args",
    "torchtitan_ffn_dim",
]
