"""The RULER table as a plot and a markdown table: average accuracy over the tasks against context length, one line
per (model, path), from one or more ruler.json files (bench/evals/ruler.py writes them).

    python -m bench.evals.ruler_plot OUT.png RULER_JSON[=LABEL] ... [--markdown OUT.md] [--tasks niah_single_1,...]

A path is what the records' keys say: prefill (with its dense tail), decode, kv_mode. A (model, path, length) cell
is plotted only where every task of the selection has a record (a partial average would mislead); the markdown
table lists every cell with the number of tasks it averages.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def path_label(record: dict) -> str:
    prefill = record["prefill"] if record["prefill"] == "dense" else f"sparse, tail {record['dense_tail']}"
    label = f"prefill {prefill}, decode {record['decode']}"
    return label + (f", {record['kv_mode']}" if record.get("kv_mode", "full") != "full" else "")


def cells(sources: list[tuple[str, dict]], tasks: list[str] | None) -> dict[tuple[str, str], dict[int, dict]]:
    """{(model label, path label): {length: {"accuracy": mean, "tasks": count, "complete": bool}}}."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for label, data in sources:
        wanted = set(tasks) if tasks else {r["task"] for r in data["records"]}
        groups: dict[tuple[str, int], dict[str, float]] = {}
        for r in data["records"]:
            if r["task"] in wanted:
                groups.setdefault((path_label(r), int(r["length"])), {})[r["task"]] = float(r["accuracy"])
        for (path, length), by_task in groups.items():
            out.setdefault((label, path), {})[length] = {
                "accuracy": round(statistics.mean(by_task.values()), 4), "tasks": len(by_task),
                "complete": set(by_task) >= wanted}
    return out


def markdown(table: dict[tuple[str, str], dict[int, dict]]) -> str:
    lengths = sorted({n for row in table.values() for n in row})
    head = "| model | path | " + " | ".join(f"{n // 1024}K" for n in lengths) + " |"
    lines = [head, "|" + "---|" * (len(lengths) + 2)]
    for (model, path), row in sorted(table.items()):
        vals = [(f"{row[n]['accuracy']:.3f}" + ("" if row[n]["complete"] else f" ({row[n]['tasks']} tasks)"))
                if n in row else "" for n in lengths]
        lines.append(f"| {model} | {path} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict[tuple[str, str], dict[int, dict]], out: Path, title: str) -> int:
    """Writes the PNG; returns the number of lines drawn."""
    import matplotlib  # noqa: PLC0415 - only for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(9, 5.5))
    drawn = 0
    for (model, path), row in sorted(table.items()):
        pts = sorted((n, c["accuracy"]) for n, c in row.items() if c["complete"])
        if not pts:
            continue
        ax.plot([n for n, _ in pts], [a for _, a in pts], marker="o", label=f"{model}: {path}")
        drawn += 1
    ax.set_xscale("log", base=2)
    lengths = sorted({n for row in table.values() for n in row})
    ax.set_xticks(lengths, [f"{n // 1024}K" for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("RULER accuracy (mean over tasks)")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.evals.ruler_plot", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("sources", nargs="+", help="ruler.json files, each optionally =LABEL (default: its model)")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--tasks", help="comma-separated tasks to average (default: all in each file)")
    ap.add_argument("--title", default="RULER")
    a = ap.parse_args(argv)
    sources = []
    for s in a.sources:
        path, _, label = s.partition("=")
        data = json.loads(Path(path).read_text())
        sources.append((label or str(data.get("model", path)), data))
    table = cells(sources, a.tasks.split(",") if a.tasks else None)
    if not table:
        ap.error("no records in those files")
    drawn = plot(table, a.out, a.title)
    md = markdown(table)
    if a.markdown:
        a.markdown.write_text(md)
    print(md, end="")
    print(f"wrote {a.out} ({drawn} lines)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
