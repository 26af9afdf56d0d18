"""The decode step's host work alone (the tree on PYTHONPATH): step_host.py's engine (tiny_decoding.py) with the
model runner's forward replaced by a fixed logits tensor, so what is timed is the engine's own work per step
(scheduling, inputs, sampling, output processing), which on a GPU runs in series with the graph replay.
python step_host_nomodel.py B STEPS REPEATS"""
import statistics
import sys
import time

import torch

from lighthouse.engine import model_runner
from tiny_decoding import decoding_engine

B, steps, repeats = (int(x) for x in sys.argv[1:4])
eng = decoding_engine(B, steps * (repeats + 1) + 400)
logits = torch.zeros(256, 512)  # the model's vocabulary
logits[:, 7] = 1.0
model_runner.ModelRunner._forward = lambda self, n: logits[:n]
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
