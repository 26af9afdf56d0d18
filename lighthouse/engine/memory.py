"""KV cache memory as arithmetic on a ModelConfig: bytes per token in each layout, the longest prompt a budget
holds, the budget a length needs, and the engine's startup hint when the budget caps max_model_len.
`python -m lighthouse.engine.memory` prints the table for the docs.

It counts what the engine counts, block for block: the same `KVSpec` and `CacheShape` (cache/spec.py), sized by
admission's `sized_spec` from the plan that `plan_prefill` makes (tests hold it to a real engine). Per layer and position, K and V take 2 x H_kv x D x dtype bytes; blocks hold `block_size` positions of
one layer, and the budget's first block is the engine's scratch block.
- full: every layer keeps every position. The engine's max_model_len is the usable blocks split evenly over
  the layers (whole blocks), capped by the checkpoint's positions; the longest prompt is one less (one token
  must remain for the completion).
- compact: the full-attention layers keep every position; each Lighthouse layer keeps the prompt's selected
  context (S = N/p^(levels-1) + (levels-1)*p*topk entries per query head: with GQA every one of the r = H/H_kv
  heads of a group has its own, so an entry costs r slots) plus the dense tail and the completion. During the
  prefill one more layer's worth of full K/V (the scratch, reused layer after layer, given back after) is
  held: admission reserves it too, so it counts towards the longest prompt.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from lighthouse.engine.config import DEFAULT_DENSE_TAIL_TOKENS, EngineConfig
from lighthouse.engine.admission import sized_spec
from lighthouse.engine.cache.manager import KVCacheManager
from lighthouse.engine.cache.spec import CacheShape, KVSpec
from lighthouse.engine.options import KVMode
from lighthouse.engine.plan import lighthouse_layer_indices, min_sparse_len, plan_prefill
from lighthouse.model.config import ModelConfig

_DTYPES = {1: torch.float8_e4m3fn, 2: torch.bfloat16, 4: torch.float32}
DEFAULT_BLOCK_SIZE = EngineConfig.block_size
CPU_BUDGET_BYTES = 2 << 30  # kv_cache.default_budget_bytes on the CPU


def cache_shape(config: ModelConfig, dtype_bytes: int, block_size: int = DEFAULT_BLOCK_SIZE) -> CacheShape:
    """The engine's CacheShape for K/V stored in `dtype_bytes` bytes (1: float8, 2: bfloat16, 4: float32)."""
    return CacheShape(config.num_hidden_layers, config.num_key_value_heads, config.num_attention_heads,
                      config.head_dim, _DTYPES[dtype_bytes], torch.device("cpu"), block_size)


def lighthouse_layers(config: ModelConfig) -> tuple[int, ...]:
    """Layers that run the op on long prompts, so that a compact session keeps only their context; () when the
    checkpoint has none (then it serves densely and has no compact layout)."""
    return lighthouse_layer_indices(config)


def reservation(config: ModelConfig, prompt_len: int, *, kv_mode: KVMode, max_tokens: int = 1,
                dense_tail_tokens: int = DEFAULT_DENSE_TAIL_TOKENS) -> KVSpec:
    """What admission reserves for one sequence of `prompt_len` prompt tokens and `max_tokens` (sparse prefill;
    compact: sparse decode): the spec admission sizes from `plan_prefill`'s plan. A prompt too short for the op is
    reserved in full."""
    plan = plan_prefill(config, prompt_len, prefill="sparse", decode="sparse" if kv_mode == "compact" else "dense",
                        dense_tail_tokens=dense_tail_tokens, kv_mode=kv_mode)
    return sized_spec(plan, max_tokens, config.num_hidden_layers)


def kv_bytes_per_token(config: ModelConfig, *, kv_mode: KVMode, dtype_bytes: int, prompt_len: int | None = None,
                       held: bool = False, dense_tail_tokens: int = DEFAULT_DENSE_TAIL_TOKENS) -> float:
    """K/V bytes per prompt token. full: every layer's K and V of a position. compact: what admission reserves for
    a prompt of `prompt_len` tokens (default: the checkpoint's positions) over its tokens, before block rounding:
    the full-attention layers' positions, the Lighthouse layers' context, and the prefill's one-layer scratch
    (`held=True`: without it, what the session keeps once its prefill is done)."""
    shape = cache_shape(config, dtype_bytes)
    if kv_mode == "full":
        return shape.bytes_per_token
    n = prompt_len or config.max_position_embeddings
    res = reservation(config, n, kv_mode=kv_mode, max_tokens=0, dense_tail_tokens=dense_tail_tokens)
    slots = len(res.full_layers) * res.capacity + len(res.ctx_layers) * res.ctx_entries * shape.group
    if not held:
        slots += res.scratch_positions
    return slots * shape.bytes_per_layer_token / n


def usable_blocks(config: ModelConfig, kv_budget_bytes: int, *, dtype_bytes: int,
                  block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Blocks a budget gives sequences: KVCacheManager's, less its scratch block."""
    return kv_budget_bytes // cache_shape(config, dtype_bytes, block_size).bytes_per_block - 1


def max_model_len(config: ModelConfig, kv_budget_bytes: int, *, kv_mode: KVMode = "full", dtype_bytes: int,
                  block_size: int = DEFAULT_BLOCK_SIZE, positions_cap: bool = True) -> int:
    """The engine's max_model_len for this budget and default kv_mode (compact: an upper bound, the full-attention
    layers' positions alone), with no --max-model-len; `positions_cap=False`: what the budget alone allows."""
    L = config.num_hidden_layers
    compactable = len(lighthouse_layers(config)) if kv_mode == "compact" else 0
    usable = usable_blocks(config, kv_budget_bytes, dtype_bytes=dtype_bytes, block_size=block_size)
    by_budget = usable // max(1, L - compactable) * block_size
    return min(by_budget, config.max_position_embeddings) if positions_cap else by_budget


def longest_prompt(config: ModelConfig, kv_budget_bytes: int, *, kv_mode: KVMode = "full", dtype_bytes: int,
                   block_size: int = DEFAULT_BLOCK_SIZE, dense_tail_tokens: int = DEFAULT_DENSE_TAIL_TOKENS,
                   positions_cap: bool = True) -> int:
    """The longest prompt an engine with this budget and default kv_mode admits (with one completion token):
    below its max_model_len, and (compact) whose reservation fits the usable blocks. 0: none fits."""
    cap = max_model_len(config, kv_budget_bytes, kv_mode=kv_mode, dtype_bytes=dtype_bytes, block_size=block_size,
                        positions_cap=positions_cap) - 1
    if kv_mode == "full" or not lighthouse_layers(config):
        return max(cap, 0)
    shape = cache_shape(config, dtype_bytes, block_size)
    usable = usable_blocks(config, kv_budget_bytes, dtype_bytes=dtype_bytes, block_size=block_size)

    def fits(n: int) -> bool:
        res = reservation(config, n, kv_mode="compact", dense_tail_tokens=dense_tail_tokens)
        return res.blocks(shape) <= usable

    # reservations grow with the length within each regime (a prompt too short for the op is reserved in full,
    # which can take more than a slightly longer compact one): search the compact lengths first
    lh = config.lighthouse
    shortest_compact = min_sparse_len(lh) + dense_tail_tokens
    for lo, hi in ((shortest_compact, cap), (1, min(cap, shortest_compact - 1))):
        if lo <= hi and fits(lo):
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
            return lo
    return 0


def kv_budget_for(config: ModelConfig, prompt_len: int, *, kv_mode: KVMode = "full", dtype_bytes: int,
                  block_size: int = DEFAULT_BLOCK_SIZE, dense_tail_tokens: int = DEFAULT_DENSE_TAIL_TOKENS) -> int:
    """The smallest KV budget (bytes) whose engine admits a prompt of `prompt_len` tokens with one completion
    token (the engine's max_model_len included)."""
    shape = cache_shape(config, dtype_bytes, block_size)
    res = reservation(config, prompt_len, kv_mode=kv_mode, dense_tail_tokens=dense_tail_tokens)
    blocks = res.blocks(shape)
    if kv_mode == "compact":  # the engine's max_model_len splits the budget over the full-attention layers
        full = config.num_hidden_layers - len(lighthouse_layers(config))
        blocks = max(blocks, max(1, full) * shape.blocks_for(prompt_len + 1))
    return (blocks + 1) * shape.bytes_per_block  # + the scratch block


def gpu_kv_budget(free_bytes: int, weight_bytes: int, fraction: float = EngineConfig.kv_cache_fraction) -> int:
    """The engine's default budget on a GPU: `fraction` of the memory still free once the weights are loaded."""
    return int((free_bytes - weight_bytes) * fraction)


def min_kv_budget(config: ModelConfig, *, kv_mode: KVMode = "full", dtype_bytes: int,
                  block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """The smallest KV budget (bytes) that serves anything: a one-token prompt and one completion token."""
    return kv_budget_for(config, 1, kv_mode=kv_mode, dtype_bytes=dtype_bytes, block_size=block_size)


def available_memory(device: torch.device) -> int | None:
    """Bytes this process could allocate on `device` now: a CUDA device's free memory, or the host's available
    memory for the CPU (what the kernel could give without swapping, within the container's limit). None when it
    cannot be known. The startup checks ask this; tests replace it to play a machine of any size."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    return host_memory_available()


def host_memory_available() -> int | None:
    """/proc/meminfo's MemAvailable, capped by a cgroup v2 limit (memory.max less memory.current); None off Linux."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            avail = min(avail, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(avail, 0)


def budget_hint(config: ModelConfig, kv: KVCacheManager, *, kv_mode: KVMode, max_model_len_cap: int | None,
                dense_tail_tokens: int = DEFAULT_DENSE_TAIL_TOKENS) -> str | None:
    """The startup warning when the KV budget, not the checkpoint's positions or --max-model-len, sets
    max_model_len: the cap, the bytes per token, and what would serve the checkpoint's positions; else None."""
    shape, positions, budget = kv.shape, config.max_position_embeddings, kv.budget_bytes
    dtype_bytes = shape.storage_dtype.itemsize
    kw = dict(dtype_bytes=dtype_bytes, block_size=shape.block_size)
    served = max_model_len(config, budget, kv_mode=kv_mode, **kw)
    if served >= positions or (max_model_len_cap is not None and max_model_len_cap <= served):
        return None
    longest = longest_prompt(config, budget, kv_mode=kv_mode, **kw, dense_tail_tokens=dense_tail_tokens)
    per_token = kv_bytes_per_token(config, kv_mode=kv_mode, dtype_bytes=dtype_bytes, prompt_len=longest or None,
                                   dense_tail_tokens=dense_tail_tokens)
    need = kv_budget_for(config, positions - 1, kv_mode=kv_mode, **kw, dense_tail_tokens=dense_tail_tokens)
    size = f"{budget / 2**30:.2f} GiB" if budget >= 1 << 28 else f"{budget / 2**20:.1f} MiB"
    dtype = str(shape.storage_dtype).removeprefix("torch.")
    hint = (f"max_model_len {served} is below the checkpoint's {positions} positions: the KV cache budget ({size}) "
            f"holds prompts of up to {longest} tokens at {per_token:,.0f} bytes per token (kv_mode {kv_mode}, {dtype}). "
            f"To serve all {positions}: --kv-cache-gb {math.ceil(need / 2**30 * 100) / 100:.2f}")
    compact = longest_prompt(config, budget, kv_mode="compact", **kw, dense_tail_tokens=dense_tail_tokens)
    if kv_mode == "full" and compact > longest:  # (a checkpoint without Lighthouse layers has no compact layout)
        hint += (f", or --kv-mode compact (the Lighthouse layers keep only the selected context: prompts of up to "
                 f"{compact} tokens in this budget)")
    return hint


# ---- the table for the docs ---------------------------------------------------------------------------------------

# Free device memory before the weights load, assumed (CUDA's own context takes a few hundred MiB of the card)
HOSTS = (("CPU, 2 GiB (default)", None), ("H100 80 GB", 79 << 30), ("H200 141 GB", 139 << 30))
SMOLLM2_NAME = "smollm2-135m-instruct"
# SmolLM2-135M-Instruct's shape, for when it was not prepared (`lighthouse models prepare smollm2-135m-instruct`)
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, tie_word_embeddings=True,
               rope_theta=100000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2)
# (label, kv_mode, K/V bytes, weight bytes): fp32 is what the CPU serves unless --dtype bfloat16
LAYOUTS = (("full, fp32", "full", 4, 4), ("full, bf16", "full", 2, 2), ("full, fp8 (`--kv-cache-dtype fp8_e4m3`)",
           "full", 1, 2), ("compact, fp32", "compact", 4, 4), ("compact, bf16", "compact", 2, 2))


def _cell(config: ModelConfig, budget: int, kv_mode: KVMode, dtype_bytes: int) -> str:
    served = longest_prompt(config, budget, kv_mode=kv_mode, dtype_bytes=dtype_bytes)
    if served < config.max_position_embeddings - 1:
        return f"{served:,}"
    alone = longest_prompt(config, budget, kv_mode=kv_mode, dtype_bytes=dtype_bytes, positions_cap=False)
    return f"{served:,} (positions cap; budget alone {alone / 1e6:.1f}M)" if alone >= 10**6 else \
        f"{served:,} (positions cap; budget alone {alone:,})"


def markdown_table(models: dict[str, ModelConfig]) -> str:
    """Per model and layout: KV bytes per token and the longest prompt served on each host of HOSTS, with the
    engine's default budget (2 GiB on the CPU; 0.75 of the memory free after the weights on a GPU)."""
    lines = ["| model | KV layout | KV bytes per token | " + " | ".join(h for h, _ in HOSTS) + " |",
             "|---|---|---:|" + "---:|" * len(HOSTS)]
    for name, config in models.items():
        for label, kv_mode, kv_bytes, weight_bytes in LAYOUTS:
            if kv_mode == "compact" and not lighthouse_layers(config):
                continue
            per_token = kv_bytes_per_token(config, kv_mode=kv_mode, dtype_bytes=kv_bytes)
            if kv_mode == "compact":
                held = kv_bytes_per_token(config, kv_mode=kv_mode, dtype_bytes=kv_bytes, held=True)
                per_token_text = f"{per_token:,.0f} ({held:,.0f} after the prefill)"
            else:
                per_token_text = f"{per_token:,.0f}"
            cells = [_cell(config, CPU_BUDGET_BYTES, kv_mode, kv_bytes) if free is None else
                     "-" if weight_bytes == 4 else  # GPUs serve bf16
                     _cell(config, gpu_kv_budget(free, config.num_parameters * weight_bytes), kv_mode, kv_bytes)
                     for _, free in HOSTS]
            lines.append(f"| {name} | {label} | {per_token_text} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_models() -> dict[str, ModelConfig]:
    """The bundled checkpoint and SmolLM2-135M-Instruct (its prepared config.json, else its known shape)."""
    from lighthouse.catalog.registry import models_dir
    from lighthouse.checkpoint import default_checkpoint_dir, load_config

    smol = models_dir() / SMOLLM2_NAME
    smol_config = load_config(smol) if (smol / "config.json").exists() else ModelConfig(
        **SMOLLM2, lighthouse={"enabled": False})
    return {"bundled checkpoint": load_config(default_checkpoint_dir()), "SmolLM2-135M-Instruct": smol_config}


def notes(models: dict[str, ModelConfig]) -> str:
    positions = ", ".join(f"{name} {c.max_position_embeddings:,}" for name, c in models.items())
    return (f"Longest prompt: the most prompt tokens a request may carry with one completion token, with the engine's "
            f"default KV budget and block size {DEFAULT_BLOCK_SIZE}; capped by the checkpoint's positions ({positions}): "
            "where the cap binds, the cell also says what the budget alone would hold. KV bytes per token: K and V of "
            "one position in every layer; compact: per prompt token of a prompt as long as the checkpoint's "
            "positions, reserved during its prefill (one layer's scratch included) and, in parentheses, kept after. "
            f"The CPU budget is 2 GiB; a GPU's is {EngineConfig.kv_cache_fraction} of the memory free after the weights "
            "load, assumed 79 GiB (H100 80 GB) and 139 GiB (H200 141 GB) before them, weights in bf16. fp32 is the CPU's "
            "default dtype (`--dtype bfloat16` gives the bf16 rows); GPUs serve bf16. Made by `python -m lighthouse.engine.memory`.")


def main() -> None:
    models = table_models()
    print(markdown_table(models))
    print()
    print(notes(models))


if __name__ == "__main__":
    main()
