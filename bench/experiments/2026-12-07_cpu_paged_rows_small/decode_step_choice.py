"""The CPU decode step of a tiny model at batch B, with the attention's automatic choice (the batched reference when
its padded gathers are small, paged_attention._padded_is_small) and with the row loop forced for every size (as
before), alternating in one process; per-step wall time, medians. Runs against commit dd1c544 (the only tree with the
automatic choice: it was reverted after this measure). Usage: decode_step_choice.py OUT.json"""
import json
import platform
import sys
import time
from dataclasses import replace

import torch

from bench.perf.paper_server import paper_config
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM
from lighthouse.ops import paged_attention

torch.set_num_threads(1)
cfg = replace(paper_config(4096, layers=2, topk=128), hidden_size=64, intermediate_size=64, num_attention_heads=1,
              num_key_value_heads=1, head_dim=64, vocab_size=512)
cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[0, 1])
STEPS = 60
res = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": "cpu", "machine": platform.machine(),
       "torch": torch.__version__, "model": "2 layers, hidden 64, 1 head of 64 (paper_config shrunk)",
       "prompt_tokens": 32, "steps": STEPS, "cases": []}


def step_ms(B: int, small: int) -> float:
    paged_attention.PADDED_SMALL = small
    torch.manual_seed(0)
    eng = LLMEngine(LlamaForCausalLM(cfg).eval(), None,
                    EngineConfig(prefill="dense", decode="dense", max_num_seqs=B, kv_cache_bytes=1 << 28))
    sp = SamplingParams(max_tokens=STEPS + 400, temperature=0, ignore_eos=True)
    for i in range(B):
        eng.add_request(f"r{i}", [(i * 7 + j) % 500 + 1 for j in range(32)], sp, RequestOptions(cache_prompt=False))
    while True:
        outs = eng.step()
        if not eng.scheduler.waiting and len(outs) == B and all(o.token_ids for o in outs):
            break
    t = time.perf_counter()
    for _ in range(STEPS):
        eng.step()
    return 1e3 * (time.perf_counter() - t) / STEPS


default = paged_attention.PADDED_SMALL
for B in (32, 128):
    runs = {"rows_always": [], "automatic": []}
    for _ in range(3):
        runs["rows_always"].append(round(step_ms(B, -1), 3))
        runs["automatic"].append(round(step_ms(B, default), 3))
    case = {"batch": B, "ms_per_step": runs, "rows_always_median": sorted(runs["rows_always"])[1],
            "automatic_median": sorted(runs["automatic"])[1]}
    res["cases"].append(case)
    print(case, flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
