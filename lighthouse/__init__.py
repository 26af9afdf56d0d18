"""Lighthouse: long-document inference and training on Lighthouse attention.

The library half of the project (no HTTP in here): the attention op, the model,
checkpoints, tokenizer, trainer and inference engine.
"""

from lighthouse.ops import lighthouse_attention

__all__ = ["lighthouse_attention"]
__version__ = "0.1.0"
