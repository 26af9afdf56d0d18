"""Adapted models: a prepared base with a LoRA adapter merged over it, cached beside the base.

Two ways in, both through lighthouse.catalog.registry, which prepares the base first:
- a catalog name (`lighthouse serve --model NAME`, NAME in ADAPTED_MODELS): the adapter ships in this package
  under lighthouse/assets/adapters/;
- an adapter folder given as the checkpoint (`lighthouse serve --checkpoint ADAPTER_DIR`): its
  adapter_config.json names its base (a catalog model) and the base's weights hash, which the merge checks.
The merged folder carries a stamp naming the base and the adapter's hash, so an unchanged pair is merged once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lighthouse.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError, merge_adapter
from lighthouse.catalog.models import STAMP

ADAPTERS_DIR = Path(__file__).resolve().parent.parent / "assets" / "adapters"


def adapter_sha256(adapter_dir: str | os.PathLike) -> str:
    h = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        h.update((Path(adapter_dir) / name).read_bytes())
    return h.hexdigest()


def adapter_base_name(adapter_dir: str | os.PathLike) -> str:
    """The catalog name of the base an adapter folder was trained on; AdapterError when it names none."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} cannot be read: {exc}") from None
    name = (cfg.get("lighthouse", {}).get("base") or {}).get("name") or cfg.get("base_model_name_or_path")
    if not name:
        raise AdapterError(f"{path} names no base model: merge it yourself with `lighthouse adapter merge BASE "
                           f"{adapter_dir} --out DIR` and serve DIR")
    return str(name)


def merged_folder(base_dir: Path, adapter_dir: Path, out: Path, log=lambda _m: None) -> Path:
    """`out` = base + adapter, merged unless a folder with the same base and adapter is already there."""
    stamp = {"format": 1, "base": str(base_dir), "base_stamp": _read(base_dir / STAMP),
             "adapter_sha256": adapter_sha256(adapter_dir)}
    if _read(out / STAMP) == stamp:
        return out
    log(f"merging the adapter {adapter_dir} over {base_dir} into {out} (once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    merge_adapter(base_dir, adapter_dir, out)
    (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return out


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
