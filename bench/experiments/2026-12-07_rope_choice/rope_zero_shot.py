"""Zero-shot comparison of RoPE extensions for SmolLM2-135M-Instruct (8K positions, theta 1e5) before any training:
next-token loss of the King James Bible text (Debian bible-kjv, dumped by its own `bible` program) by position
bucket, in 64K-token sequences, dense attention, bf16 on the GPU. The variant whose long-position loss stays
nearest its short-position loss is the better start for long-context training.
    python rope_zero_shot.py MODEL_DIR TEXT OUT_JSON
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

from lighthouse.checkpoint import load_checkpoint
from lighthouse.ops.rope import lighthouse_inv_freq, rope_inv_freq

model_dir, text_path, out_path = sys.argv[1:4]
model, tok = load_checkpoint(model_dir, device="cuda", dtype=torch.bfloat16)
ids = tok(open(text_path).read(), add_special_tokens=False)["input_ids"]
N, SEQS = 65536, 4
seqs = torch.tensor([ids[i * N : (i + 1) * N] for i in range(SEQS)], device="cuda")
BUCKETS = [(0, 4096), (4096, 8192), (8192, 16384), (16384, 32768), (32768, 65536)]
old = model.config.max_position_embeddings
VARIANTS = {
    "base (theta 1e5)": dict(rope_theta=1e5, rope_scaling=None),
    "llama3 x64": dict(rope_theta=1e5, rope_scaling={"rope_type": "llama3", "factor": 64.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": old}),
    "llama3 x16": dict(rope_theta=1e5, rope_scaling={"rope_type": "llama3", "factor": 16.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": old}),
    "linear x8": dict(rope_theta=1e5, rope_scaling={"rope_type": "linear", "factor": 8.0}),
    "theta 1e6": dict(rope_theta=1e6, rope_scaling=None),
    "theta 1e7": dict(rope_theta=1e7, rope_scaling=None),
    "theta 5e7": dict(rope_theta=5e7, rope_scaling=None),
}
results = {}
for name, kv in VARIANTS.items():
    for k, v in kv.items():
        setattr(model.config, k, v)
    model.inv_freq = rope_inv_freq(model.config).cuda()
    model.lighthouse_inv_freq = lighthouse_inv_freq(model.config).cuda()
    t0 = time.time()
    sums = torch.zeros(len(BUCKETS), device="cuda")
    with torch.no_grad():
        for s in range(SEQS):
            x = seqs[s : s + 1]
            h = model(x, dense=True, hidden_only=True).hidden[0, :-1]
            tgt = x[0, 1:]
            ce = torch.cat([F.cross_entropy(F.linear(h[i : i + 8192], model.lm_head.weight).float(), tgt[i : i + 8192],
                                            reduction="none") for i in range(0, h.shape[0], 8192)])
            for b, (lo, hi) in enumerate(BUCKETS):
                sums[b] += ce[lo : hi - 1].mean()
    results[name] = {f"{lo // 1024}K-{hi // 1024}K": round(float(sums[b] / SEQS), 4) for b, (lo, hi) in enumerate(BUCKETS)}
    print(f"{name:18s} {results[name]}  ({time.time() - t0:.1f} s)", flush=True)
json.dump({"model": model_dir, "text": "bible-kjv 4.38 (Debian), first 4 x 65,536 tokens", "seq_len": N,
           "device": torch.cuda.get_device_name(), "torch": torch.__version__, "loss_by_position": results},
          open(out_path, "w"), indent=2)
