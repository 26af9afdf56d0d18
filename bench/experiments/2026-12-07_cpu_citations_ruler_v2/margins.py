"""How far ahead of the other spans is the needle's best span, per candidate (score.py's), on the captured correct
answers: its score over the best non-needle span's and over the third-best's (medians and minima).

    PYTHONPATH=. .venv/bin/python bench/experiments/2026-12-07_cpu_citations_ruler_v2/margins.py CAPTURE.json ARRAYS
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from score import span_scores, token_scores  # noqa: E402

rows = json.loads(Path(sys.argv[1]).read_text())
names = ["sum", "sqrt", "diff_tpl", "excess_tpl", "excess_q", "excess_prompt"]
res = {n: [] for n in names}
for r in rows:
    p = Path(sys.argv[2]) / f"{r['task']}-{r['index']}.npz"
    if not p.exists(): continue
    z = np.load(p); spans = z["spans"]
    hit = np.array([any(a < y and x < b for reg in r["needles"] for x, y in reg) for a, b in spans])
    for n, x in token_scores(z).items():
        if n not in names: continue
        s = span_scores(x, z["span_of"], len(spans))
        best_needle = s[hit].max(); others = np.sort(s[~hit])[::-1]
        res[n].append((r["task"], best_needle / others[0], best_needle / others[2]))
for n in names:
    v = np.array([x[1] for x in res[n]]); v3 = np.array([x[2] for x in res[n]])
    print(f"{n:14} needle/best-other: median {np.median(v):.2f} min {v.min():.2f}   needle/3rd-other: median {np.median(v3):.2f} min {v3.min():.2f}")
