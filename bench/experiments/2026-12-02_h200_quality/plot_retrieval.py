"""retrieval.png for bench/results/2026-12-02_h200_quality/: pass-key accuracy against context, dense vs sparse
prefill (tail 64, dense decode), as a completion and through documents.ask, 20 prompts per point."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

R = Path(__file__).resolve().parents[2] / "results" / "2026-12-02_h200_quality"


def series(path: Path, fmt: str, prefill: str) -> tuple[list[int], list[float]]:
    recs = json.loads(path.read_text())["records"]
    pts = sorted((r["context_requested"], r["accuracy"]) for r in recs
                 if r["task"] == "passkey" and r["format"] == fmt and r["prefill"] == prefill
                 and r["layout"] == "dense:0,1,2,5" and r["decode"] == "dense" and r["dense_tail"] in (None, 64))
    return [c // 1024 for c, _ in pts], [a for _, a in pts]


fig, ax = plt.subplots(figsize=(7.5, 4))
for path, fmt, label, style in [(R / "retrieval.json", "completion", "completion", "-"),
                                (R / "retrieval.json", "documents_ask", "documents.ask", ":")]:
    for prefill, marker in (("dense", "o"), ("sparse", "x")):
        x, y = series(path, fmt, prefill)
        ax.plot(x, y, style, marker=marker, label=f"{label}, {prefill} prefill")
ax.set_xscale("log", base=2)
ax.set_xticks([16, 64, 128, 256, 512], ["16K", "64K", "128K", "256K", "512K"])
ax.set_ylim(-0.05, 1.05)
ax.set_xlabel("context (tokens)")
ax.set_ylabel("pass-key accuracy")
ax.set_title("Bundled checkpoint, H200: sparse prefill (Lighthouse on layers 3-4, tail 64) vs dense; 20 prompts each")
ax.title.set_fontsize(9)
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(R / "retrieval.png", dpi=120)
print("wrote", R / "retrieval.png")
