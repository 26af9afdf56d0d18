"""The paper's official Lighthouse code, imported from a folder outside this repository (it is never vendored).

Lay it out in an ignored folder (e.g. `.official/`) as the torchtitan package path it imports itself through:
DIR/torchtitan/models/llama3/model/lighthouse_selection{,_cuda}.py, with empty __init__.py files on the way. Then
`python -m bench.perf.attention_bench --official DIR` times it, and tests/ops/test_matches_official_gpu.py compares
the op with it (LIGHTHOUSE_OFFICIAL=DIR, default .official).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SELECTION = "torchtitan.models.llama3.model.lighthouse_selection"
SELECTION_CUDA = "torchtitan.models.llama3.model.lighthouse_selection_cuda"


def available(root: str | Path) -> bool:
    """Whether `root` holds the official selection module at its package path."""
    return (Path(root) / (SELECTION.replace(".", "/") + ".py")).is_file()


def import_official(root: str | Path, name: str = SELECTION) -> ModuleType:
    """The official module `name` from under `root`, without putting `root` on sys.path: the top package
    `torchtitan` is loaded from `root` (once per process), and its submodules resolve through its __path__."""
    top = name.split(".")[0]
    if top not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec(top, [str(root)])
        if spec is None:
            raise ModuleNotFoundError(f"no {top} package under {root} (bench/official.py says how to lay it out)")
        module = importlib.util.module_from_spec(spec)
        sys.modules[top] = module
        if spec.loader is not None:
            spec.loader.exec_module(module)
    return importlib.import_module(name)
