"""Training checkpoints: out_dir/checkpoints/step_NNNNNN/ = a normal model checkpoint + optimizer + state.

The model part is an ordinary HF-compatible checkpoint (it loads anywhere), or for a LoRA run an adapter folder
(lighthouse.adapter: the adapter and the trained norms, which resume the run and are small enough to carry to
another machine); the AdamW moments go to
optimizer.safetensors under the parameters' names and the schedule position to trainer_state.json. No pickle.

A process killed at any point (SIGKILL, OOM killer, preemption) leaves only complete step directories under
their real names: a step is written under a temporary name, synced, and renamed when complete; a directory is
replaced or pruned by renaming it out of the way first (rename is atomic), then deleting it. Leftovers of a
killed save are removed by `clean_partial`, which the trainer runs before resuming.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lighthouse.adapter import save_adapter
from lighthouse.checkpoint import load_weights, save_checkpoint
from lighthouse.model.lora import has_lora
from lighthouse.train.lora_setup import load_adapter_weights, trained_extras

_STEP_DIR = re.compile(r"^step_(\d+)$")
_PARTIAL = (".tmp-step_", ".trash-step_")  # prefixes of a save or delete in progress


def checkpoints_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    root = checkpoints_dir(out_dir)
    if not root.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / "trainer_state.json").exists()]
    return max(steps)[1] if steps else None


def clean_partial(out_dir: str | os.PathLike) -> list[str]:
    """Remove what a killed save or prune left behind (never a complete step directory); returns the names."""
    root = checkpoints_dir(out_dir)
    if not root.is_dir():
        return []
    gone = sorted(p.name for p in root.iterdir() if p.name.startswith(_PARTIAL))
    for name in gone:
        shutil.rmtree(root / name, ignore_errors=True)
    return gone


def save_training_state(model, optimizer, state: dict, out_dir: str | os.PathLike, keep_last: int,
                        tokenizer=None, base_dir: str | os.PathLike | None = None) -> Path:
    """Write step_NNNNNN/ (with `tokenizer`, an HF tokenizer; None: the byte tokenizer) and prune to keep_last.
    A model with LoRA layers writes an adapter folder of `base_dir` (lighthouse.adapter) instead of its weights,
    and the optimizer state of what trains: megabytes, not the whole model."""
    root = checkpoints_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{state['step']:06d}"
    tmp = root / f".tmp-step_{state['step']:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    if has_lora(model):
        save_adapter(model, tmp, base_dir=base_dir, extra_trained=trained_extras(model))
    else:
        save_checkpoint(model, tokenizer, tmp)
    save_file(_optimizer_tensors(model, optimizer), str(tmp / "optimizer.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")  # last: marks it complete
    _fsync_dir_files(tmp)
    if final.exists():
        _delete(final)
    os.replace(tmp, final)
    _fsync(root)
    _prune(root, keep_last)
    return final


def _delete(step_dir: Path) -> None:
    """Rename out of the way (atomic), then delete: a kill midway leaves a .trash- directory, never a step_ one
    with some files gone."""
    trash = step_dir.with_name(f".trash-{step_dir.name}-{os.getpid()}")
    os.replace(step_dir, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_files(d: Path) -> None:
    for f in d.iterdir():
        _fsync(f)
    _fsync(d)


def load_training_state(model, optimizer, ckpt: Path) -> dict:
    """Load weights and AdamW moments into `model`/`optimizer` in place; returns trainer_state.json."""
    if has_lora(model):
        load_adapter_weights(model, ckpt)
    else:
        load_weights(model, ckpt, dtype=next(model.parameters()).dtype)
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    names = _param_names(model)
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            if f"{name}.exp_avg" not in tensors:
                continue  # no step taken for it yet
            optimizer.state[p] = {
                "step": tensors[f"{name}.step"].clone(),
                "exp_avg": tensors[f"{name}.exp_avg"].to(p.device, p.dtype),
                "exp_avg_sq": tensors[f"{name}.exp_avg_sq"].to(p.device, p.dtype),
            }
    return json.loads((ckpt / "trainer_state.json").read_text())


def _param_names(model) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def _optimizer_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    names = _param_names(model)
    out = {}
    for p, st in optimizer.state.items():
        name = names[id(p)]
        out[f"{name}.step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(()).cpu()
        out[f"{name}.exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
        out[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
    return out


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)))
    for _, p in steps[: max(0, len(steps) - max(1, keep_last))]:
        _delete(p)
