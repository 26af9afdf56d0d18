"""What `lighthouse serve` checks before it loads any weights, so that each mistake is one line and a non-zero exit
within seconds, not a traceback, a hang or an out-of-memory kill an hour later.

In order (server/cli.py runs them; the checkpoint's own checks, config.json bounds included, sit between the port
and the memory, in lighthouse/checkpoint.py's verify_checkpoint):
1. The port: bound as uvicorn would bind it and kept for the server, so a port in use is found before the model
   loads and none can take it meanwhile.
2. The device and dtype exist.
3. Memory: what the settings will allocate, against what is available where it lives. On the CPU the weights, the
   KV cache (--kv-cache-gb, default 2 GiB) and the host cache (--host-cache-gb) all take host memory; on a GPU the
   weights and a given --kv-cache-gb take the device's free memory (the default budget is a share of what the
   weights leave, so it fits by construction) and the host cache takes pinned host memory. Above REFUSE_SHARE of
   the available memory: refused; above WARN_SHARE: a warning. A KV budget too small to hold one sequence (a block
   per layer and the scratch block) is refused too.
"""

from __future__ import annotations

import math
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from lighthouse.model.config import ModelConfig
from lighthouse_server.settings import Settings

REFUSE_SHARE = 0.9  # of the memory available before loading
WARN_SHARE = 0.7
GiB = 1 << 30
DTYPES = ("float32", "bfloat16", "float16")


class StartupError(Exception):
    """A setting the machine cannot honour; the message is one line that says what to change."""


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind host:port as uvicorn would (SO_REUSEADDR, IPv6 for a host with a colon) and keep the socket: the server
    listens on this one (`shutdown.serve(..., sock=)`), so no other process can take the port while the model
    loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    with closed_on_error(sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except socket.gaierror as exc:
            raise StartupError(f"cannot listen on --host {host}: {exc.strerror}; give an address of this machine "
                               "(127.0.0.1, 0.0.0.0, ::)") from None
        except OSError as exc:
            if exc.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
                raise StartupError(f"port {port} on {host} is already in use (another server?): stop it or pass "
                                   "--port N") from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@contextmanager
def closed_on_error(sock: socket.socket) -> Iterator[None]:
    """Close `sock` if the block raises (the reserved port goes back when startup fails)."""
    try:
        yield
    except BaseException:
        sock.close()
        raise


def resolve_device(settings: Settings) -> tuple[torch.device, torch.dtype]:
    """The device and weight dtype load_engine will use for these settings (refusing ones that do not exist)."""
    try:
        device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise StartupError(f"--device {settings.device!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StartupError(f"--device {settings.device} but no CUDA device is available: use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise StartupError(f"--device {settings.device} but this machine has {torch.cuda.device_count()} CUDA "
                           f"device(s): use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if settings.dtype is not None and settings.dtype not in DTYPES:
        raise StartupError(f"--dtype {settings.dtype!r} is not supported: use one of {', '.join(DTYPES)}")
    dtype = getattr(torch, settings.dtype) if settings.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    return device, dtype


@dataclass
class Use:
    """Memory the server will take: what, how many bytes, the flag that sets it (None: the weights)."""

    what: str
    nbytes: int
    flag: str | None


def memory_uses(settings: Settings, config: ModelConfig, device: torch.device,
                dtype: torch.dtype) -> dict[str, list[Use]]:
    """Per place ("host", or the CUDA device's name), what these settings will allocate there."""
    weights = Use("weights", config.num_parameters * dtype.itemsize, None)
    kv = None
    if settings.kv_cache_gb is not None:
        kv = Use("KV cache", int(settings.kv_cache_gb * GiB), "--kv-cache-gb")
    elif device.type == "cpu":
        kv = Use("KV cache (the CPU default)", 2 * GiB, "--kv-cache-gb")
    host_cache = None
    if settings.host_cache_gb and settings.enable_prefix_caching:
        host_cache = Use("host cache", int(settings.host_cache_gb * GiB), "--host-cache-gb")
    if device.type == "cpu":
        return {"host": [u for u in (weights, kv, host_cache) if u]}
    return {str(device): [u for u in (weights, kv) if u], "host": [host_cache] if host_cache else []}


def check_memory(settings: Settings, config: ModelConfig) -> list[str]:
    """Raises StartupError when the settings cannot fit this machine; returns warnings (one line each) when they
    take most of it. The available memory comes from lighthouse.engine.memory.available_memory."""
    from lighthouse.engine import memory

    device, dtype = resolve_device(settings)
    _check_kv_floor(settings, config, dtype)
    warnings = []
    for place, uses in memory_uses(settings, config, device, dtype).items():
        need = sum(u.nbytes for u in uses)
        if not need:
            continue
        available = memory.available_memory(torch.device("cpu") if place == "host" else device)
        if available is None:
            continue
        parts = " + ".join(f"{u.what} {_size(u.nbytes)}" + (f" ({u.flag})" if u.flag else "") for u in uses)
        where = "host memory" if place == "host" else f"free memory on {place}"
        share = need / available if available else math.inf
        if share > REFUSE_SHARE:
            raise StartupError(f"not enough memory: {parts} = {_size(need)}, more than {REFUSE_SHARE:.0%} of the "
                               f"{_size(available)} of {where} available; {_remedy(uses, available)}")
        if share > WARN_SHARE:
            warnings.append(f"{parts} = {_size(need)} take {share:.0%} of the {_size(available)} of {where} "
                            f"available (over {WARN_SHARE:.0%}): other processes may push the server out of memory")
    return warnings


def _remedy(uses: list[Use], available: int) -> str:
    """What to lower: the flags that take memory here (with the most the one flag could be, if one alone)."""
    flagged = [u for u in uses if u.flag]
    room = REFUSE_SHARE * available - sum(u.nbytes for u in uses if not u.flag)
    if room <= 0 or not flagged:
        return "the weights alone do not fit: serve a smaller model, or in bfloat16 (--dtype bfloat16) on the CPU"
    if len(flagged) == 1:
        return f"lower {flagged[0].flag} (at most {math.floor(room / GiB * 100) / 100:.2f} fits)"
    return "lower " + " or ".join(u.flag for u in flagged)


def _check_kv_floor(settings: Settings, config: ModelConfig, dtype: torch.dtype) -> None:
    """A KV budget that holds no sequence (or a host cache that holds no block) is refused, with the least that
    would serve."""
    from lighthouse.engine.memory import cache_shape, min_kv_budget

    kv_bytes = 1 if settings.kv_cache_dtype == "fp8_e4m3" else dtype.itemsize
    shape = cache_shape(config, kv_bytes, settings.block_size)
    least = min_kv_budget(config, kv_mode=settings.kv_mode, dtype_bytes=kv_bytes, block_size=settings.block_size)
    if settings.kv_cache_gb is not None and settings.kv_cache_gb * GiB < least:
        raise StartupError(f"--kv-cache-gb {settings.kv_cache_gb:g} holds no sequence of this model: it needs at "
                           f"least {_size(least)} (one block of {settings.block_size} positions per layer and a "
                           f"scratch block): use --kv-cache-gb {_gib_up(least)} or more")
    if settings.host_cache_gb and settings.host_cache_gb * GiB < shape.bytes_per_block:
        raise StartupError(f"--host-cache-gb {settings.host_cache_gb:g} holds no block of this model "
                           f"({_size(shape.bytes_per_block)}): use --host-cache-gb "
                           f"{_gib_up(shape.bytes_per_block)} or more, or 0 for none")


def _gib_up(nbytes: int) -> str:
    """nbytes in GiB, rounded up to 3 significant digits (a value to pass to a _gb flag)."""
    gib = nbytes / GiB
    step = 10 ** (math.floor(math.log10(gib)) - 2)
    return f"{math.ceil(gib / step) * step:.{max(0, 2 - math.floor(math.log10(gib)))}f}"


def _size(nbytes: int) -> str:
    return f"{nbytes / GiB:.2f} GiB" if nbytes >= GiB // 10 else f"{nbytes / (1 << 20):.2f} MiB"
