"""Per-step host time of a batch-128 decode with a tiny model on the CPU (the tree on PYTHONPATH), under cProfile:
python step_host.py STEPS [x] (x: print the engine's lines of the profile)."""
import cProfile
import io
import pstats
import sys
import time

from tiny_decoding import decoding_engine

B, steps = 128, int(sys.argv[1]) if len(sys.argv) > 1 else 40
eng = decoding_engine(B, steps + 400)
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
