"""Per-step host time of a batch-128 decode with a tiny model on the CPU (the tree on PYTHONPATH), under cProfile:
python step_host.py STEPS [x] (x: print the engine's lines of the profile)."""
import cProfile
import io
import pstats
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

torch.set_num_threads(1)
cfg = replace(paper_config(4096, layers=2, topk=128), hidden_size=64, intermediate_size=64, num_attention_heads=1,
              num_key_value_heads=1, head_dim=64, vocab_size=512)
cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[0, 1])
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).eval()
eng = LLMEngine(model, None, EngineConfig(prefill="dense", decode="dense", max_num_seqs=128, kv_cache_bytes=1 << 28))
B, steps = 128, int(sys.argv[1]) if len(sys.argv) > 1 else 40
sp = SamplingParams(max_tokens=steps + 400, temperature=0, ignore_eos=True)
for i in range(B):
    eng.add_request(f"r{i}", [(i * 7 + j) % 500 + 1 for j in range(32)], sp, RequestOptions())
while True:  # until every request is admitted and decoding
    outs = eng.step()
    if len(eng.scheduler.running) == B and not eng.scheduler.waiting and len(outs) == B:
        break
t = time.perf_counter()
pr = cProfile.Profile()
pr.enable()
for _ in range(steps):
    assert len(eng.step()) == B
pr.disable()
dt = (time.perf_counter() - t) / steps
st = pstats.Stats(pr)
print(f"STEP_MS {dt * 1e3:.2f} CALLS_PER_STEP {st.total_calls / steps:.0f}")
if len(sys.argv) > 2:
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats("lighthouse/engine|lighthouse/model", 25)
    print(s.getvalue())
