"""Rank every span of each captured sample (capture.py's .npz) by candidate span scores and grade them as
citations_ruler.py does: a needle among the top 3 (`any_top3`), every needle among the top max(3, needles)
(`all_topk`), a needle first (`top1`), among correct answers whose needles were located; and how far the needle
leads (its best span's score over the best and over the third-best other span's).

The candidates, fixed before the dev split was captured (a = the answer's queries' weight per document token,
averaged over layers, heads and those queries, the server's score; q, t, p = the same for the question's queries,
the chat template's, and all prompt queries before the answer's (q and t weighted by their counts); S(x) = the sum
of x over a span's tokens, n = its tokens; spans without a token are never ranked):
- sum            S(a)                       the server's method until now
- mean           S(a) / n
- sqrt           S(a) / sqrt(n)
- diff_tpl       S(a - t)
- diff_q         S(a - q)
- diff_prompt    S(a - p)
- lift_prompt    S(a) / S(p)
- excess_tpl     S(mean over layers and heads of max(0, a_lh - t_lh))   per head, before averaging
- excess_q       the same with q_lh
- excess_prompt  the same with p_lh

    PYTHONPATH=. .venv/bin/python bench/experiments/2026-12-07_cpu_citations_ruler_v2/score.py \\
        --capture bench/results/2026-12-07_cpu_citations_ruler_v2/capture_dev.json --arrays runs/cite_v2/dev \\
        --out bench/results/2026-12-07_cpu_citations_ruler_v2/dev_scores.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.evals import citations_ruler as cr


def token_scores(z) -> dict[str, np.ndarray | tuple]:
    """Per document token, each candidate's score (a tuple (numerator, denominator) for the span ratios)."""
    ans, qst, tpl = z["ans"].astype(np.float64), z["qst"].astype(np.float64), z["tpl"].astype(np.float64)
    e, a0, _ = (int(x) for x in z["bounds"])
    prm = (qst * e + tpl * (a0 - e)) / a0  # (L, H, n): all prompt queries before the answer's
    a, q, t, p = (x.mean((0, 1)) for x in (ans, qst, tpl, prm))
    return {"sum": a, "mean": ("per_token", a), "sqrt": ("per_sqrt", a), "diff_tpl": a - t, "diff_q": a - q,
            "diff_prompt": a - p, "lift_prompt": ("ratio", a, p),
            "excess_tpl": np.maximum(ans - tpl, 0).mean((0, 1)), "excess_q": np.maximum(ans - qst, 0).mean((0, 1)),
            "excess_prompt": np.maximum(ans - prm, 0).mean((0, 1))}


def span_scores(x, span_of: np.ndarray, S: int) -> np.ndarray:
    count = np.bincount(span_of, minlength=S).astype(np.float64)

    def tot(v):
        return np.bincount(span_of, weights=v, minlength=S)

    if isinstance(x, tuple) and x[0] == "per_token":
        out = tot(x[1]) / np.maximum(count, 1)
    elif isinstance(x, tuple) and x[0] == "per_sqrt":
        out = tot(x[1]) / np.sqrt(np.maximum(count, 1))
    elif isinstance(x, tuple) and x[0] == "ratio":
        out = tot(x[1]) / np.maximum(tot(x[2]), 1e-30)
    else:
        out = tot(x)
    return np.where(count > 0, out, -np.inf)


def grade_sample(path: Path, needles) -> dict:
    """Per candidate: the needles' ranks and grades, and the margin: the best needle span's score over the best and
    the third-best other span's."""
    z = np.load(path)
    spans, span_of = z["spans"], z["span_of"]
    hit = np.array([any(a < y and x < b for regions in needles for x, y in regions) for a, b in spans])
    out = {}
    for name, x in token_scores(z).items():
        s = span_scores(x, span_of, len(spans))
        order = np.argsort(-s, kind="stable")
        ranked = [{"start": int(spans[i][0]), "end": int(spans[i][1])} for i in order]
        g = cr.grade(needles, ranked)  # ranks among all spans: the cited top-k are a prefix of this order
        others = np.sort(s[~hit])[::-1]
        out[name] = {"ranks": g["ranks"], "any_top3": g["any_top3"], "all_topk": g["all_topk"], "top1": g["top1"],
                     "over_best": float(s[hit].max() / others[0]), "over_third": float(s[hit].max() / others[2])}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--capture", nargs="+", required=True)
    p.add_argument("--arrays", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rows = [r for f in args.capture for r in json.loads(Path(f).read_text())]
    graded = []
    for r in rows:
        path = Path(args.arrays) / f"{r['task']}-{r['index']}.npz"
        if r["correct"] and r["needles"] is not None and path.exists():
            needles = [[tuple(x) for x in regions] for regions in r["needles"]]
            graded.append({"task": r["task"], "index": r["index"], "server_ranks": r["ranks"], "k": len(r["cited"]),
                           **grade_sample(path, needles)})
    names = list(graded[0]) if graded else []
    names = [n for n in names if n not in ("task", "index", "server_ranks", "k")]
    tasks = sorted({g["task"] for g in graded})
    table = {}
    for name in names:
        table[name] = {t: {k: sum(g[name][k] for g in graded if g["task"] == t) for k in ("any_top3", "all_topk", "top1")}
                       | {"graded": sum(g["task"] == t for g in graded)} for t in tasks}
        table[name]["all"] = {k: sum(g[name][k] for g in graded) for k in ("any_top3", "all_topk", "top1")} | {
            "graded": len(graded)}
    agree = sum([r if r is not None and r < g["k"] else None for r in g["sum"]["ranks"]] == g["server_ranks"]
                for g in graded)
    print(f"sum reproduces the server's cited ranks: {agree}/{len(graded)}")
    head = f"{'candidate':14}" + "".join(f"{t[:15]:>17}" for t in tasks) + f"{'all':>10}"
    print(head)
    for name in names:
        cells = "".join(f"{table[name][t]['any_top3']:>5}/{table[name][t]['graded']:<3} (1st {table[name][t]['top1']:>2})"
                        for t in tasks)
        print(f"{name:14}{cells}  {table[name]['all']['any_top3']}/{table[name]['all']['graded']}")
    print("the needle's best span over the best / the third-best other span (min, median):")
    for name in names:
        best, third = ([g[name][k] for g in graded] for k in ("over_best", "over_third"))
        print(f"{name:14} {min(best):6.2f} {np.median(best):6.2f}   {min(third):6.2f} {np.median(third):6.2f}")
    Path(args.out).write_text(json.dumps({"table": table, "samples": graded}, indent=1) + "\n")


if __name__ == "__main__":
    main()
