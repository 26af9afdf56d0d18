"""Checkpoint converters: other trainers' checkpoints -> our HF Llama checkpoint directories.

`convert_torchtitan` reads a torchtitan llama3 run (a torch.distributed.checkpoint folder, as the official
Lighthouse code's torchtitan patch writes it); `lighthouse convert torchtitan DCP_DIR --out HF_DIR` runs it.
"""

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
    "ConversionError",
    "ConversionResult",
    "build_model_config",
    "convert_torchtitan",
    "resolve_model_args",
    "torchtitan_ffn_dim",
]
