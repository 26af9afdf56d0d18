"""Importing an op's Triton kernels once, and how loudly to say that they cannot be imported.

Each dispatch point (dispatch.py, fused.py, paged_attention.py) imports its kernels on first use and falls back
to the torch reference when that fails. On a host without CUDA the fallback is the expected path (a CPU image
ships no Triton, or one that cannot start without a GPU), so the reason is logged at DEBUG; with CUDA present a
missing Triton costs the fast path, so it is a WARNING.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

import torch

UNAVAILABLE = "triton unavailable"


def import_kernels(name: str) -> ModuleType | str:
    """The module `name` (one that imports triton), or why it cannot be imported: "triton unavailable (...)"."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - triton missing, or a broken install: the torch path serves
        return f"{UNAVAILABLE} ({type(exc).__name__}: {exc})"


def fallback_level(reason: str) -> int:
    """The log level of a dispatch choice made for `reason`: DEBUG for Triton missing where there is no CUDA,
    WARNING for Triton missing where there is, INFO for any other reason."""
    if not reason.startswith(UNAVAILABLE):
        return logging.INFO
    return logging.WARNING if torch.cuda.is_available() else logging.DEBUG
