"""Where a LoRA training step of SmolLM2-135M's shape goes, at 64K (and 128K) tokens: Lighthouse layers vs all
dense. Random weights in SmolLM2-135M-Instruct's shape (no checkpoint to stage: the time does not depend on the
values), the recipe's settings (rope_theta 1e6, L3 p4 k1024 on layers 2-27, LoRA r16 a32 on the seven projections +
norms, bf16 autocast, activation checkpointing, chunked loss). Prints per-variant seconds/step and a profile table
(self CUDA time by kernel) of one Lighthouse and one dense step; writes OUT_DIR/train_profile.json and
OUT_DIR/profile_train_<mode>.txt.
    python profile_train_step.py OUT_DIR [LENGTHS] [VARIANTS]
VARIANTS (comma list): base (as the trainer runs), bf16w (frozen weights stored in bf16), nockpt (no activation
checkpointing)."""

import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from lighthouse.model.config import LighthouseConfig, ModelConfig
from lighthouse.model.llama import LlamaForCausalLM
from lighthouse.model.lora import add_lora
from lighthouse.train.loss import token_losses

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
lengths = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "65536").split(",")]
variants = (sys.argv[3] if len(sys.argv) > 3 else "base,bf16w").split(",")
dev = "cuda" if torch.cuda.is_available() else "cpu"
SMOKE = dev == "cpu"  # a CPU dry run: 4 layers, Lighthouse from 2,048 tokens
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)


def build(variant: str) -> LlamaForCausalLM:
    cfg = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=4 if SMOKE else 30,
                      num_attention_heads=9, num_key_value_heads=3, rope_theta=1e6, max_position_embeddings=524288,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      lighthouse=LighthouseConfig(enabled=True, levels=3, pooling_factor=4, topk=1024, scorer="norm",
                                                  full_attn_layers=[0, 3] if SMOKE else [0, 1, 28, 29],
                                                  min_seq_len=2048 if SMOKE else 16384))
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).to(dev)
    if variant == "bf16w":
        m.to(torch.bfloat16)
    for p in m.parameters():
        p.requires_grad_(False)
    add_lora(m, 16, 32.0)
    for n, p in m.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
            p.requires_grad_(True)
        elif "norm" in n:
            p.data = p.data.float() if variant != "bf16w" else p.data
            p.requires_grad_(True)
    m.train()
    m.gradient_checkpointing = variant != "nockpt"
    return m


def step(m, ids, dense: bool) -> None:
    with torch.autocast(dev, dtype=torch.bfloat16):
        ce = token_losses(m, ids, ids, dense=dense)
    ce.mean().backward()
    m.zero_grad(set_to_none=True)


def timed(m, ids, dense: bool, reps: int = 3) -> float:
    ts = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        step(m, ids, dense)
        sync()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


res: dict = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}
for variant in variants:
    m = build(variant)
    for n in lengths:
        ids = torch.randint(100, 40000, (1, n), device=dev)
        for mode in ("lighthouse", "dense"):
            key = f"{variant}_{n}_{mode}"
            try:
                step(m, ids, mode == "dense")  # warm-up (Triton compiles, cuDNN plans)
                dev == "cuda" and torch.cuda.reset_peak_memory_stats()
                t = timed(m, ids, mode == "dense", reps=2 if n > 65536 else 3)
                res[key] = {"s_per_step": round(t, 4), "tokens_per_s": round(n / t),
                            "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if dev == "cuda" else None}
            except torch.OutOfMemoryError:
                res[key] = "out of memory"
                torch.cuda.empty_cache()
            print(key, res[key], flush=True)
            if variant == variants[0] and n == lengths[0] and isinstance(res[key], dict):
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    step(m, ids, mode == "dense")
                    sync()
                table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=70)
                (out / f"profile_train_{mode}.txt").write_text(table)
                print(table[:6000], flush=True)
        for mode in ("lighthouse", "dense"):
            a, b = res.get(f"{variant}_{n}_lighthouse"), res.get(f"{variant}_{n}_dense")
            if isinstance(a, dict) and isinstance(b, dict):
                res[f"{variant}_{n}_speedup"] = round(b["s_per_step"] / a["s_per_step"], 2)
        json.dump(res, open(out / "train_profile.json", "w"), indent=2)
    del m
    torch.cuda.empty_cache()
print(json.dumps(res, indent=1))
