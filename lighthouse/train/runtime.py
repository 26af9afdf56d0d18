"""Where and how a training process runs: its rank in a process group, its device, bf16 autocast."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist


def init_distributed(cfg) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and cfg.parallel != "fsdp":
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if (cfg.device != "cpu" and torch.cuda.is_available()) else "gloo"
        if "MASTER_ADDR" in os.environ:  # torchrun (or a launcher that sets the same variables)
            dist.init_process_group(backend=backend)
        else:  # FSDP in one plain process: a one-rank group, no rendezvous
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def pick_device(cfg, rank: int) -> torch.device:
    want = cfg.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(want)


def use_bf16(cfg, device: torch.device) -> bool:
    return cfg.dtype == "bf16" or (cfg.dtype == "auto" and device.type == "cuda")


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
