"""Host time of the decode step with and without prompt-lookup speculation (the bundled checkpoint on the CPU, the
tree on PYTHONPATH): cProfile over the decode steps of spec_decode_bench's extractive prompts; host = the step's
time less the model's forward (whose CPU time does not carry to a GPU, where it is one graph replay).
python spec_step_host.py BATCH PROMPT_TOKENS NEW_TOKENS K [x]   (x: the engine's lines of the profile)"""
import cProfile
import io
import pstats
import sys
import time

import torch

from bench.perf.spec_decode_bench import bundled_engine, extractive_prompts
from lighthouse.engine.options import RequestOptions, Speculation
from lighthouse.engine.sampling import SamplingParams

torch.set_num_threads(1)
B, N, NEW, K = (int(x) for x in sys.argv[1:5])
eng = bundled_engine(B)
prompts = extractive_prompts(B, N)
params = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
opts = RequestOptions(speculative=Speculation("prompt_lookup", K) if K else None)
for i, ids in enumerate(prompts):
    eng.add_request(f"r{i}", ids, params, opts)
toks = {f"r{i}": 0 for i in range(B)}
while not all(toks.values()):  # every prefill done, every first token out
    for o in eng.step():
        toks[o.request_id] += len(o.token_ids)
done0 = sum(toks.values())
pr = cProfile.Profile()
steps, t = 0, time.perf_counter()
pr.enable()
while eng.has_unfinished():
    for o in eng.step():
        toks[o.request_id] += len(o.token_ids)
    steps += 1
pr.disable()
wall = time.perf_counter() - t
st = pstats.Stats(pr)
model = sum(v[3] for (f, _, n), v in st.stats.items() if f.endswith("model/llama.py") and n == "forward"
            and v[3] == max(w[3] for (g, _, m), w in st.stats.items() if g.endswith("model/llama.py") and m == "forward"))
n_tok = sum(toks.values()) - done0
print(f"B {B} N {N} K {K} steps {steps} tokens {n_tok} tokens/step {n_tok / steps:.2f} "
      f"step_ms {1e3 * wall / steps:.3f} model_ms {1e3 * model / steps:.3f} host_ms {1e3 * (wall - model) / steps:.3f} "
      f"calls/step {st.total_calls / steps:.0f}")
if len(sys.argv) > 5:
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumtime").print_stats("lighthouse/engine|numpy|torch/_tensor", 40)
    print(s.getvalue())
