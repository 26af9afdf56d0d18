"""The RULER plot/table (bench/evals/ruler_plot.py): averages over the selected tasks per (model, path, length),
partial cells marked and left off the plot, and the PNG written."""

from __future__ import annotations

import json

import pytest

from bench.evals import ruler_plot


def record(task, length, acc, prefill="dense", tail=64, decode="dense", kv_mode="full"):
    return dict(task=task, length=length, prefill=prefill, dense_tail=tail, decode=decode, kv_mode=kv_mode,
                accuracy=acc, n=50, seconds=1.0)


RECORDS = [record("a", 4096, 1.0), record("b", 4096, 0.5), record("a", 8192, 0.25), record("b", 8192, 0.75),
           record("a", 4096, 0.0, prefill="sparse"), record("b", 4096, 0.5, prefill="sparse"),
           record("a", 8192, 0.5, prefill="sparse"),  # b missing: partial
           record("a", 131072, 1.0, prefill="sparse", decode="sparse", kv_mode="compact")]


def test_cells_average_the_tasks_and_mark_partial_ones():
    t = ruler_plot.cells([("m", {"records": RECORDS})], None)
    dense = t[("m", "prefill dense, decode dense")]
    assert dense[4096] == {"accuracy": 0.75, "tasks": 2, "complete": True}
    assert dense[8192]["accuracy"] == 0.5
    sparse = t[("m", "prefill sparse, tail 64, decode dense")]
    assert sparse[4096]["accuracy"] == 0.25 and not sparse[8192]["complete"]
    assert ("m", "prefill sparse, tail 64, decode sparse, compact") in t
    only_a = ruler_plot.cells([("m", {"records": RECORDS})], ["a"])
    assert only_a[("m", "prefill sparse, tail 64, decode dense")][8192] == {"accuracy": 0.5, "tasks": 1,
                                                                           "complete": True}


def test_markdown_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    src = tmp_path / "ruler.json"
    src.write_text(json.dumps({"model": "tiny", "records": RECORDS}))
    png, md = tmp_path / "r.png", tmp_path / "r.md"
    assert ruler_plot.main([str(png), f"{src}=base", "--markdown", str(md)]) == 0
    table = md.read_text()
    assert "| base | prefill dense, decode dense | 0.750 | 0.500 |  |" in table
    assert "0.500 (1 tasks)" in table  # the partial sparse 8K cell
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(2 lines)" in capsys.readouterr().out  # sparse keeps its complete 4K point; compact has none
