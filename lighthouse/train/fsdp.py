"""FSDP2 for the trainer: sharding, sharded (DCP) training checkpoints, and the full-weight export.

`--parallel fsdp` shards every parameter, gradient and AdamW moment over the ranks with
`torch.distributed.fsdp.fully_shard`: one unit per decoder layer (its all-gather overlaps the previous layer's
compute) and the root (embedding, final norm, head). On CUDA with bf16 the units compute in bf16 and reduce
gradients in fp32 (MixedPrecisionPolicy; no autocast); on the CPU, or with --dtype fp32, everything is fp32.
Gradients are reduce-scattered as a mean over ranks, as DDP all-reduces them, so the trainer's loss scaling is
the same on both paths.

Training checkpoints are torch.distributed.checkpoint (DCP) directories: every rank writes its own shards of the
model and optimizer state (`get_state_dict`), nobody gathers the whole model; a later run loads them with any
number of ranks (`set_state_dict`; DCP reshards on load). The layout and the crash safety are state.py's:
out_dir/checkpoints/step_NNNNNN/ written under a temporary name and renamed when complete, trainer_state.json
last, with "format": "dcp". With several hosts out_dir must be on a file system they share.

The final model is exported as an ordinary HF directory (lighthouse.checkpoint.save_checkpoint) from a full
state dict gathered to rank 0's CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from lighthouse.model.llama import LlamaForCausalLM
from lighthouse.train.state import _delete, _fsync, _fsync_dir_files, _prune, checkpoints_dir

DCP_FORMAT = "dcp"


def shard_model(model: LlamaForCausalLM, device: torch.device, *, bf16: bool) -> LlamaForCausalLM:
    """Apply fully_shard to each decoder layer, then to the root, in place (a process group must exist).

    bf16: compute in bf16 with fp32 master weights and fp32 gradient reduction. Returns the model, whose
    parameters are now DTensors sharded on dim 0 over all ranks."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def full_value(x) -> float:
    """A scalar that may be a DTensor (clip_grad_norm_ over sharded gradients returns one) as a float."""
    return float(x.full_tensor() if isinstance(x, DTensor) else x)


def is_dcp_checkpoint(ckpt: Path) -> bool:
    try:
        return json.loads((ckpt / "trainer_state.json").read_text()).get("format") == DCP_FORMAT
    except (OSError, ValueError):
        return False


def save_dcp_state(model, optimizer, state: dict, out_dir: str | os.PathLike, keep_last: int) -> Path:
    """Collective: every rank writes its shards to step_NNNNNN/; rank 0 adds trainer_state.json and renames."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    root = checkpoints_dir(out_dir)
    final = root / f"step_{state['step']:06d}"
    tmp = root / f".tmp-step_{state['step']:06d}-dcp"  # one name for all ranks; clean_partial removes leftovers
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    _barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    _barrier()  # every shard is on disk
    if rank == 0:
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "format": DCP_FORMAT}, indent=2) + "\n")
        _fsync_dir_files(tmp)
        if final.exists():
            _delete(final)  # renamed out of the way first: a kill never leaves a step_ directory half deleted
        os.replace(tmp, final)
        _fsync(root)
        _prune(root, keep_last)
    _barrier()
    return final


def load_dcp_state(model, optimizer, ckpt: Path) -> dict:
    """Collective: load the shards this rank needs into `model`/`optimizer` (sharded or not); returns the state."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with warnings.catch_warnings():  # one process without a group is a supported way to load: say nothing
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(ckpt))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return json.loads((ckpt / "trainer_state.json").read_text())


def gather_full_model(model: LlamaForCausalLM) -> LlamaForCausalLM | None:
    """Collective: an unsharded fp32 copy of `model` on rank 0's CPU (None on the other ranks), for export."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):
        copy = LlamaForCausalLM(model.config)
    copy.load_state_dict({k: v.float() for k, v in full.items()}, assign=True)
    if model.config.tie_word_embeddings:
        copy.lm_head.weight = copy.model.embed_tokens.weight
    copy.inv_freq = model.inv_freq.detach().cpu()
    return copy


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
