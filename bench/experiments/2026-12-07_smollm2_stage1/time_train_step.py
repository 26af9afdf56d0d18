"""Training throughput of SmolLM2-135M with LoRA (rank 32, + norms) at 64K and 128K tokens per sequence: one
forward + backward with the Lighthouse layers (L3 p4 k1024, layers 0,1,28,29 dense) against every layer dense,
in the same process on the same card, bf16 autocast, activation checkpointing, chunked loss.
    python time_train_step.py BASE_DIR OUT_JSON [LENGTHS]"""

import json
import sys
import time

import torch

from lighthouse.checkpoint import load_checkpoint
from lighthouse.model.config import LighthouseConfig
from lighthouse.model.lora import add_lora
from lighthouse.train.loss import token_losses

base, out = sys.argv[1], sys.argv[2]
lengths = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "65536,131072").split(",")]
model, _ = load_checkpoint(base, device="cuda", dtype=torch.float32)
model.config.lighthouse = LighthouseConfig(enabled=True, levels=3, pooling_factor=4, topk=1024, scorer="norm",
                                           full_attn_layers=[0, 1, 28, 29], min_seq_len=16384)
for p in model.parameters():
    p.requires_grad_(False)
add_lora(model, 32, 64.0)
model.train()
model.gradient_checkpointing = True
res = {}
for n in lengths:
    ids = torch.randint(100, 40000, (1, n), device="cuda")
    for mode in ("lighthouse", "dense"):
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                ce = token_losses(model, ids, ids, dense=mode == "dense")
            ce.mean().backward()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        t = sorted(times[1:])[len(times[1:]) // 2]
        res[f"{n}_{mode}"] = {"seconds_per_seq": round(t, 4), "tokens_per_s": round(n / t),
                              "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
        torch.cuda.reset_peak_memory_stats()
        print(n, mode, res[f"{n}_{mode}"], flush=True)
    res[f"{n}_speedup"] = round(res[f"{n}_dense"]["seconds_per_seq"] / res[f"{n}_lighthouse"]["seconds_per_seq"], 2)
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "lora_rank": 32,
           "lighthouse": "L3 p4 k1024, dense layers 0,1,28,29", "results": res}, open(out, "w"), indent=2)
