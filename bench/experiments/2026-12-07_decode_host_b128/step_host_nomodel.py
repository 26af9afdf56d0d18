"""The decode step's host work alone (the tree on PYTHONPATH): step_host.py's engine with the model runner's forward
replaced by a fixed logits tensor, so what is timed is the engine's own work per step (scheduling, inputs, sampling,
output processing), which on a GPU runs in series with the graph replay. python step_host_nomodel.py B STEPS REPEATS"""
import statistics
import sys
import time
from dataclasses import replace

import torch

from bench.perf.paper_server import paper_config
from lighthouse.engine import model_runner
from lighthouse.engine.config import EngineConfig
from lighthouse.engine.engine import LLMEngine
from lighthouse.engine.options import RequestOptions
from lighthouse.engine.sampling import SamplingParams
from lighthouse.model import LlamaForCausalLM

torch.set_num_threads(1)
B, steps, repeats = (int(x) for x in sys.argv[1:4])
cfg = replace(paper_config(4096, layers=2, topk=128), hidden_size=64, intermediate_size=64, num_attention_heads=1,
              num_key_value_heads=1, head_dim=64, vocab_size=512)
cfg.lighthouse = replace(cfg.lighthouse, full_attn_layers=[0, 1])
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).eval()
eng = LLMEngine(model, None, EngineConfig(prefill="dense", decode="dense", max_num_seqs=B, kv_cache_bytes=1 << 28))
logits = torch.zeros(256, cfg.vocab_size)
logits[:, 7] = 1.0
model_runner.ModelRunner._forward = lambda self, n: logits[:n]
sp = SamplingParams(max_tokens=steps * (repeats + 1) + 400, temperature=0, ignore_eos=True)
for i in range(B):
    eng.add_request(f"r{i}", [(i * 7 + j) % 500 + 1 for j in range(32)], sp, RequestOptions())
while True:  # until every request is admitted and decoding
    outs = eng.step()
    if len(eng.scheduler.running) == B and not eng.scheduler.waiting and len(outs) == B:
        break
for _ in range(steps):  # warm
    eng.step()
times = []
for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
        assert len(eng.step()) == B
    times.append((time.perf_counter() - t) / steps * 1e3)
print(f"B {B} host_ms_per_step median {statistics.median(times):.4f} min {min(times):.4f} all "
      + " ".join(f"{x:.4f}" for x in times))
